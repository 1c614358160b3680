// Request parsing and OpenAI-shaped errors for kvrun serve.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kvrun/error.h"

namespace kvrun::server {

using ojson = nlohmann::ordered_json;

// An error with its HTTP status and OpenAI error fields: {"error": {message, type, param, code}}.
class HttpError : public Error {
 public:
  HttpError(int status, std::string type, const std::string& message, std::string param = "", std::string code = "")
      : Error(message), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type, param, code;
};

// 400 invalid_request_error naming the field.
[[noreturn]] void bad_request(const std::string& message, const std::string& param = "");

ojson error_body(int status, const std::string& type, const std::string& message, const std::string& param = "",
                 const std::string& code = "");

// The request body as a JSON object (400 naming the problem otherwise).
ojson parse_body(const std::string& body);

// Typed optional fields: absent or null -> nullopt; a wrong type or a value out of range ->
// 400 naming the field and what was expected.
std::optional<double> number_field(const ojson& o, const char* name, double lo, double hi);
std::optional<int64_t> int_field(const ojson& o, const char* name, int64_t lo, int64_t hi);
std::optional<bool> bool_field(const ojson& o, const char* name);
std::optional<std::string> string_field(const ojson& o, const char* name);
// "stop": a string or an array of up to 4 non-empty strings.
std::vector<std::string> stop_field(const ojson& o);

// Server-sent event: "data: <json>\n\n".
std::string sse(const ojson& event);

// "chatcmpl-" / "cmpl-" + 24 random hex digits.
std::string new_id(const std::string& prefix);

// SubRip / WebVTT timestamps.
std::string srt_time(double seconds);
std::string vtt_time(double seconds);

}  // namespace kvrun::server
