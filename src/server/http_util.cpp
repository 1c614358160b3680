#include "server/http_util.h"

#include <cmath>
#include <cstdio>
#include <random>

namespace kvrun::server {

void bad_request(const std::string& message, const std::string& param) {
  throw HttpError(400, "invalid_request_error", message, param);
}

ojson error_body(int status, const std::string& type, const std::string& message, const std::string& param,
                 const std::string& code) {
  ojson e = {{"message", message}, {"type", type}};
  e["param"] = param.empty() ? ojson() : ojson(param);
  e["code"] = code.empty() ? ojson(status) : ojson(code);
  return {{"error", e}};
}

ojson parse_body(const std::string& body) {
  ojson j;
  try {
    j = ojson::parse(body);
  } catch (const std::exception& e) {
    bad_request(std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) bad_request("the request body must be a JSON object, found " + std::string(j.type_name()));
  return j;
}

namespace {
const ojson* present(const ojson& o, const char* name) {
  auto it = o.find(name);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}
}  // namespace

std::optional<double> number_field(const ojson& o, const char* name, double lo, double hi) {
  const ojson* v = present(o, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad_request(std::string("'") + name + "' must be a number, found " + v->type_name(), name);
  const double d = v->get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    bad_request(std::string("'") + name + "' must be in [" + fmt(lo) + ", " + fmt(hi) + "], found " + v->dump(), name);
  return d;
}

std::optional<int64_t> int_field(const ojson& o, const char* name, int64_t lo, int64_t hi) {
  const ojson* v = present(o, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer() &&
      !(v->is_number_float() && std::floor(v->get<double>()) == v->get<double>() && std::fabs(v->get<double>()) < 9e15))
    bad_request(std::string("'") + name + "' must be an integer, found " + v->dump(), name);
  const auto i = v->is_number_integer() ? v->get<int64_t>() : static_cast<int64_t>(v->get<double>());
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    bad_request(std::string("'") + name + "' is out of range: " + v->dump(), name);
  if (i < lo || i > hi)
    bad_request(std::string("'") + name + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                    "], found " + std::to_string(i),
                name);
  return i;
}

std::optional<bool> bool_field(const ojson& o, const char* name) {
  const ojson* v = present(o, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad_request(std::string("'") + name + "' must be true or false, found " + v->dump(), name);
  return v->get<bool>();
}

std::optional<std::string> string_field(const ojson& o, const char* name) {
  const ojson* v = present(o, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) bad_request(std::string("'") + name + "' must be a string, found " + v->type_name(), name);
  return v->get<std::string>();
}

std::vector<std::string> stop_field(const ojson& o) {
  const ojson* v = present(o, "stop");
  if (!v) return {};
  std::vector<std::string> out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > 4) bad_request("'stop' takes at most 4 sequences, found " + std::to_string(v->size()), "stop");
    for (const auto& s : *v) {
      if (!s.is_string()) bad_request("'stop' must be a string or an array of strings", "stop");
      out.push_back(s.get<std::string>());
    }
  } else {
    bad_request("'stop' must be a string or an array of strings, found " + std::string(v->type_name()), "stop");
  }
  for (const auto& s : out)
    if (s.empty()) bad_request("'stop' sequences must not be empty", "stop");
  return out;
}

std::string sse(const ojson& event) {
  return "data: " + event.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n\n";
}

std::string new_id(const std::string& prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char b[32];
  std::snprintf(b, sizeof b, "%016llx%08llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffffULL));
  return prefix + b;
}

namespace {
std::string clock(double seconds, char sep) {
  const auto ms = static_cast<int64_t>(std::llround(std::max(0.0, seconds) * 1000));
  char b[40];
  std::snprintf(b, sizeof b, "%02lld:%02lld:%02lld%c%03lld", static_cast<long long>(ms / 3600000),
                static_cast<long long>(ms / 60000 % 60), static_cast<long long>(ms / 1000 % 60), sep,
                static_cast<long long>(ms % 1000));
  return b;
}
}  // namespace

std::string srt_time(double seconds) { return clock(seconds, ','); }
std::string vtt_time(double seconds) { return clock(seconds, '.'); }

}  // namespace kvrun::server
