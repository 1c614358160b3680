// kvrun serve: the OpenAI-compatible HTTP server (src/server).
#include <cstdio>
#include <fstream>
#include <memory>

#include "commands.h"
#include "kvrun/error.h"
#include "server/server.h"

namespace kvrun::cli {

Command add_serve_command(CLI::App& app) {
  auto o = std::make_shared<server::ServeOptions>();
  auto key_file = std::make_shared<std::string>();
  auto body_mb = std::make_shared<double>(4), upload_mb = std::make_shared<double>(25);
  auto* c = app.add_subcommand("serve",
                               "OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models, "
                               "/v1/audio/transcriptions, /v1/translations, /tokenize, /detokenize, /health, /metrics "
                               "(docs/serve.md)");
  c->add_option("models", o->models,
                "Models to serve, each PATH or NAME=PATH: kvrun packages (chat, speech, translation), GGUF files, "
                "third-party decoder folders; served under NAME (default: the folder or file name)")
      ->required();
  c->add_option("--host", o->host, "Address to listen on (keep 127.0.0.1 unless behind a proxy)")
      ->capture_default_str();
  c->add_option("--port", o->port, "Port (0: any free port; the one taken is printed)")->capture_default_str();
  c->add_option("--parallel,--np", o->parallel, "Slots per chat model: requests decoded together (continuous batching)")
      ->capture_default_str();
  c->add_option("--max-queue", o->max_queue,
                "Requests that may wait per model while every slot is busy; more get 429 with Retry-After")
      ->capture_default_str();
  c->add_option("--ctx", o->ctx,
                "Positions per slot (prompt + generated); the KV cache holds parallel x ctx positions, allocated "
                "at start. 0: the model's max length, at most 4096")
      ->capture_default_str();
  c->add_option("--prefill-chunk", o->prefill_chunk,
                "Prompt positions prefilled between two decode steps (running requests wait at most one chunk)")
      ->capture_default_str();
  c->add_option("--api-key", o->api_key,
                "Require 'Authorization: Bearer KEY' (or X-Api-Key) on every route but /health");
  c->add_option("--api-key-file", *key_file, "Read the API key from this file (first line)");
  c->add_option("--threads", o->threads, "ONNX Runtime intra-op threads per model (0: one per core)")
      ->capture_default_str();
  c->add_option("--max-body-mb", *body_mb, "Largest JSON request body (413 beyond)")->capture_default_str();
  c->add_option("--max-upload-mb", *upload_mb, "Largest audio upload (413 beyond)")->capture_default_str();
  c->add_option("--timeout", o->timeout_seconds, "Socket read/write timeout, seconds")->capture_default_str();
  c->add_option("--http-threads", o->http_threads,
                "HTTP worker threads (each open stream holds one); 0: parallel x models + max-queue + 8")
      ->capture_default_str();
  return {c, [o, key_file, body_mb, upload_mb]() {
            if (!key_file->empty()) {
              std::ifstream f(*key_file);
              if (!f) throw Error(*key_file + ": cannot read the API key file");
              std::getline(f, o->api_key);
              while (!o->api_key.empty() && (o->api_key.back() == '\r' || o->api_key.back() == ' '))
                o->api_key.pop_back();
              if (o->api_key.empty()) throw Error(*key_file + ": the API key file is empty");
            }
            o->max_body_bytes = static_cast<int64_t>(*body_mb * 1048576.0);
            o->max_upload_bytes = static_cast<int64_t>(*upload_mb * 1048576.0);
            return server::serve(*o);
          }};
}

}  // namespace kvrun::cli
