// kvrun serve: an OpenAI-compatible HTTP server (cpp-httplib) over kvrun's runtimes.
//
//   chat / completion models (kvrun packages, GGUF files, third-party decoder folders):
//     continuous batching (runtime/batcher.h) with --parallel slots of --ctx positions;
//   speech packages (FunASR-nano): POST /v1/audio/transcriptions, one request at a time;
//   translation packages (Marian): POST /v1/translations, one request at a time.
// Every model is served under its name (the folder or file name, or NAME=PATH). docs/serve.md
// lists the endpoints, the metrics and the limits.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kvrun::server {

struct ServeOptions {
  std::vector<std::string> models;  // PATH or NAME=PATH
  std::string host = "127.0.0.1";
  int port = 8080;                      // 0: any free port (the one taken is printed)
  int64_t parallel = 4;                 // slots per chat model
  int64_t max_queue = 64;               // requests waiting per model beyond its busy slots
  int64_t ctx = 0;                      // positions per slot; 0: the model's max length, at most 4096
  int64_t prefill_chunk = 256;          // prompt positions between two decode steps
  std::string api_key;                  // empty: no key needed
  int threads = 0;                      // ONNX Runtime intra-op threads per model (0: one per core)
  int64_t max_body_bytes = 4 << 20;     // JSON request bodies (413 beyond)
  int64_t max_upload_bytes = 25 << 20;  // audio uploads (413 beyond)
  int timeout_seconds = 600;            // socket read/write timeout
  int64_t http_threads = 0;             // 0: parallel x models + max_queue + 8
  void validate() const;                // throws kvrun::Error naming the option
};

// Starts listening, loads the models (GET /health answers 503 meanwhile), serves until
// SIGINT / SIGTERM or `stop` returns true (polled). on_listening(port) runs once bound.
// Returns the process exit code.
int serve(const ServeOptions& opt, const std::function<void(int port)>& on_listening = {},
          const std::function<bool()>& stop = {});

}  // namespace kvrun::server
