// libFuzzer target: the restricted unpickler (io/pickle.h) on arbitrary bytes. Any
// outcome other than a value tree or a kvrun::Error (a crash, a sanitizer report, another
// exception, a leak) is a finding.
#include <cstddef>
#include <cstdint>

#include "io/pickle.h"
#include "kvrun/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const kvrun::io::pickle::Document doc = kvrun::io::pickle::unpickle(data, size, "fuzz.pkl");
    (void)doc.root();
  } catch (const kvrun::Error&) {
  }
  return 0;
}
