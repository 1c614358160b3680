// libFuzzer target: kvrun serve's request parsing (src/server/http_util.cpp): the body as a JSON
// object, then every typed field reader and the stop sequences, as the routes use them. Malformed
// input must end in kvrun::Error (HttpError: a 400), never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "kvrun/error.h"
#include "server/http_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvrun::server;
  try {
    const ojson body = parse_body(std::string(reinterpret_cast<const char*>(data), size));
    (void)number_field(body, "temperature", 0, 2);
    (void)int_field(body, "max_tokens", 0, 1 << 30);
    (void)int_field(body, "seed", INT64_MIN, INT64_MAX);
    (void)bool_field(body, "stream");
    (void)string_field(body, "model");
    (void)stop_field(body);
    if (auto so = body.find("stream_options"); so != body.end() && so->is_object()) (void)bool_field(*so, "include_usage");
    (void)sse(body);
  } catch (const kvrun::Error&) {
  }
  return 0;
}
