// A small Jinja renderer: the subset of Jinja2 that Hugging Face chat templates use,
// rendering byte-identical to jinja2 as transformers configures it
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols).
// Supported syntax and semantics: docs/chat-templates.md.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace kvrun::jinja {

// Bounds on one render, so a hostile or broken template fails with kvrun::Error
// instead of exhausting memory, the stack or time.
struct Limits {
  size_t max_output_bytes = 64u << 20;  // rendered text and any string built while rendering
  int max_call_depth = 64;              // nested macro calls
  uint64_t max_steps = 2'000'000;       // loop iterations + macro calls + filter element visits
};

struct RenderOptions {
  Limits limits;
  // The time strftime_now() formats, as UTC fields. Default: the current local time
  // (what transformers' datetime.now() gives).
  std::optional<std::chrono::system_clock::time_point> now;
};

class Template {
 public:
  // Parses once; throws kvrun::Error naming line and column on a syntax error.
  explicit Template(std::string_view source);
  ~Template();
  Template(const Template&) = default;
  Template& operator=(const Template&) = default;

  // `context` must be a JSON object: its members are the template's variables.
  // Throws kvrun::Error (with line and column) on a render error or raise_exception().
  std::string render(const nlohmann::ordered_json& context, const RenderOptions& opt = {}) const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

}  // namespace kvrun::jinja
