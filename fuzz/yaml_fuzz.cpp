// libFuzzer target: config.yaml reading (yaml-cpp, then OmegaConf-style typing into JSON).
#include <cstddef>
#include <cstdint>
#include <string>

#include "io/yaml_config.h"
#include "kvrun/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const nlohmann::json j = kvrun::io::parse_yaml(std::string(reinterpret_cast<const char*>(data), size), "fuzz.yaml");
    (void)kvrun::io::yaml_find(j, "a.b.0");
  } catch (const kvrun::Error&) {
  }
  return 0;
}
