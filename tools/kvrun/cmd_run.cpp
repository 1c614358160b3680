// kvrun run / kvrun chat: generation from the command line (the library does the work).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "kvrun/chat_template.h"
#include "kvrun/error.h"
#include "kvrun/runtime.h"
#include "kvrun/tokenizer.h"

namespace kvrun::cli {
namespace {

// Flags shared by run and chat.
struct GenFlags {
  std::string model;
  int threads = 0;
  GenerationOptions gen;
  bool ignore_eos = false;
  bool stats = false;
  std::string system;
  bool no_think = false;
  StageProgress build_progress;  // a GGUF file's first-use build into the package cache

  void add(CLI::App* app) {
    gen.max_new_tokens = 256;
    app->add_option("model", model,
                    "Model folder (kvrun package, GenAI folder, optimum export, split export), .onnx, or a .gguf "
                    "file (built into the package cache on first use, see docs/run.md)")
        ->required();
    app->add_option("--max-new-tokens", gen.max_new_tokens, "Tokens to generate at most")->capture_default_str();
    app->add_option("--temperature", gen.sampling.temperature, "Sampling temperature; 0 means greedy")
        ->capture_default_str();
    app->add_option("--top-k", gen.sampling.top_k, "Keep the k most likely tokens (0: off)");
    app->add_option("--top-p", gen.sampling.top_p,
                    "Nucleus sampling: keep tokens up to this probability mass (1: off)");
    app->add_option("--min-p", gen.sampling.min_p, "Drop tokens below min_p x the top probability (0: off)");
    app->add_option("--repetition-penalty", gen.sampling.repetition_penalty,
                    "Divide positive / multiply negative logits of tokens already in the context (1: off)");
    app->add_option("--presence-penalty", gen.sampling.presence_penalty,
                    "Subtract from logits of tokens generated at least once (0: off)");
    app->add_option("--frequency-penalty", gen.sampling.frequency_penalty,
                    "Subtract this x count from logits of generated tokens (0: off)");
    app->add_option("--seed", gen.sampling.seed, "Random seed (same seed, same output)")->capture_default_str();
    app->add_option("--stop", gen.stop_strings, "Stop when the output contains this text (repeatable)");
    app->add_option("--stop-id", gen.stop_ids, "Stop on this token id (repeatable; EOS ids are always included)");
    app->add_flag("--ignore-eos", ignore_eos, "Do not stop on the model's EOS ids");
    app->add_option("--prefill-chunk", gen.prefill_chunk, "Feed the prompt in chunks of N positions (0: all at once)");
    app->add_option("--max-length", gen.max_length,
                    "KV cache capacity in positions (default: prompt + max-new-tokens, grown on demand in chat)");
    app->add_option("--threads", threads, "ONNX Runtime intra-op threads (0: one per core)");
    app->add_flag("--stats", stats, "Print prefill and decode tokens/s and time to first token on stderr");
  }

  std::unique_ptr<Model> load() {
    gen.stop_at_eos = !ignore_eos;
    gen.validate();
    ModelOptions mo;
    mo.threads = threads;
    mo.build_progress = build_progress.fn();
    return Model::load(model, mo);
  }
};

// Streams generated text to stdout as it comes.
bool print_piece(size_t, TokenId, const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  return true;
}

void print_stats(const GenerationStats& s) {
  std::fflush(stdout);  // keep the order of text (stdout) and stats (stderr) when both go to one file
  std::fprintf(stderr,
               "prompt %lld tokens (%lld reused from cache) | prefill %.1f tok/s | time to first token %.3f s | "
               "generated %lld tokens | decode %.1f tok/s\n",
               static_cast<long long>(s.prompt_tokens), static_cast<long long>(s.reused_tokens),
               s.prefill_tokens_per_second(), s.time_to_first_token, static_cast<long long>(s.generated_tokens),
               s.decode_tokens_per_second());
}

nlohmann::json result_json(const GenerationResult& r) {
  return {{"tokens", r.tokens},
          {"text", r.text},
          {"finish_reason", r.finish_reason},
          {"stats",
           {{"prompt_tokens", r.stats.prompt_tokens},
            {"reused_tokens", r.stats.reused_tokens},
            {"generated_tokens", r.stats.generated_tokens},
            {"prefill_seconds", r.stats.prefill_seconds},
            {"time_to_first_token", r.stats.time_to_first_token},
            {"decode_seconds", r.stats.decode_seconds},
            {"prefill_tokens_per_second", r.stats.prefill_tokens_per_second()},
            {"decode_tokens_per_second", r.stats.decode_tokens_per_second()}}}};
}

std::string render_chat(const Model& m, const nlohmann::ordered_json& messages, const GenFlags& f) {
  ChatOptions co;
  co.add_generation_prompt = true;
  if (f.no_think) co.enable_thinking = false;
  return m.chat_template().render(messages, co);
}

}  // namespace

std::vector<int64_t> parse_id_list(const std::string& s, const std::string& flag) {
  std::vector<int64_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t pos = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    if (pos != item.size() || v < 0 || v > INT32_MAX)
      throw Error(flag + ": expected comma-separated non-negative integer ids, found '" + item + "'");
    ids.push_back(v);
  }
  return ids;
}

Command add_run_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "run",
      "Generate from a prompt with a KV cache. Text prompts are wrapped in the model's chat template when it has one "
      "(--raw: as is); several --prompt run as one batch.");
  auto f = std::make_shared<GenFlags>();
  auto prompts = std::make_shared<std::vector<std::string>>();
  auto prompt_ids = std::make_shared<std::string>();
  auto raw = std::make_shared<bool>(false);
  auto print_ids = std::make_shared<bool>(false);
  auto json = std::make_shared<bool>(false);
  auto info = std::make_shared<bool>(false);
  f->add(cmd);
  cmd->add_option("-p,--prompt", *prompts, "Prompt text (repeatable: a batch)");
  cmd->add_option("--prompt-ids", *prompt_ids, "Prompt as comma-separated token ids (no tokenizer needed)");
  cmd->add_option("--system", f->system, "System message for the chat template");
  cmd->add_flag("--raw", *raw, "Do not apply the chat template to --prompt");
  cmd->add_flag("--no-think", f->no_think, "enable_thinking=false for templates that know it (Qwen3)");
  cmd->add_flag("--print-ids", *print_ids, "Print the generated token ids (one JSON array per prompt)");
  cmd->add_flag("--json", *json, "Print one JSON object per prompt: tokens, text, finish_reason, stats");
  cmd->add_flag("--info", *info, "Print what was detected about the model (layout, KV cache, inputs) on stderr");
  return {cmd, [=]() -> int {
            if (prompts->empty() == prompt_ids->empty())
              throw Error("give either --prompt (text, repeatable) or --prompt-ids");
            auto m = f->load();
            if (*info) std::fputs(m->info().to_text().c_str(), stderr);
            std::vector<Prompt> ps;
            if (!prompt_ids->empty()) {
              const std::vector<int64_t> ids = parse_id_list(*prompt_ids, "--prompt-ids");
              if (ids.empty()) throw Error("--prompt-ids: no ids given");
              ps.push_back(Prompt().ids(std::vector<TokenId>(ids.begin(), ids.end())));
            } else {
              for (const auto& p : *prompts) {
                if (*raw || !m->info().chat_template) {
                  ps.push_back(Prompt().text(p, /*add_special_tokens=*/true));
                } else {
                  nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
                  if (!f->system.empty()) msgs.push_back({{"role", "system"}, {"content", f->system}});
                  msgs.push_back({{"role", "user"}, {"content", p}});
                  ps.push_back(Prompt().text(render_chat(*m, msgs, *f)));
                }
              }
            }
            // Stream text as it comes for one prompt without --json; batches print at the end.
            const bool streaming = ps.size() == 1 && !*json && m->tokenizer() && !*print_ids;
            StreamFn stream;
            if (streaming) stream = print_piece;
            const auto rs = m->generate(ps, f->gen, stream);
            for (const auto& r : rs) {
              if (*json) {
                std::printf("%s\n", result_json(r).dump().c_str());
              } else if (*print_ids || !m->tokenizer()) {
                std::printf("%s\n", nlohmann::json(r.tokens).dump().c_str());
              } else if (streaming) {
                std::printf("\n");
              } else {
                std::printf("%s\n", r.text.c_str());
              }
              if (f->stats) print_stats(r.stats);
            }
            return 0;
          }};
}

Command add_chat_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "chat",
      "Interactive chat: reads a user message per line on stdin, streams the reply. The history and its KV cache are "
      "kept between turns. Commands: /reset (new conversation), /exit.");
  auto f = std::make_shared<GenFlags>();
  f->add(cmd);
  cmd->add_option("--system", f->system, "System message");
  cmd->add_flag("--no-think", f->no_think, "enable_thinking=false for templates that know it (Qwen3)");
  return {cmd, [=]() -> int {
            auto m = f->load();
            if (!m->tokenizer())
              throw Error(f->model + ": chat needs a tokenizer (tokenizer.json, tokenizer.model or tokenizer.gguf)");
            auto seq = m->new_sequence();
            nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
            auto start = [&] {
              msgs = nlohmann::ordered_json::array();
              if (!f->system.empty()) msgs.push_back({{"role", "system"}, {"content", f->system}});
            };
            start();
            // A base model without a chat template (e.g. Gemma 3 270M from its GGUF) gets the
            // conversation as plain text: each line continues what came before.
            const bool plain = !m->info().chat_template;
            std::string text;
            if (plain)
              std::fprintf(stderr,
                           "kvrun: this model has no chat template (a base model): each line is continued as plain "
                           "text\n");
            const bool tty = isatty(fileno(stdin));
            std::string line;
            for (;;) {
              if (tty) std::fputs("> ", stdout), std::fflush(stdout);
              if (!std::getline(std::cin, line)) break;
              if (line == "/exit" || line == "/quit") break;
              if (line == "/reset") {
                start();
                text.clear();
                seq->reset();
                continue;
              }
              if (line.empty()) continue;
              if (plain) {
                text += (text.empty() ? "" : "\n") + line;
                const GenerationResult r =
                    seq->generate(Prompt().text(text, /*add_special_tokens=*/true), f->gen, print_piece);
                std::printf("\n");
                if (f->stats) print_stats(r.stats);
                text += r.text;
                continue;
              }
              msgs.push_back({{"role", "user"}, {"content", line}});
              const std::string ctx = render_chat(*m, msgs, *f);
              const GenerationResult r = seq->generate(Prompt().text(ctx), f->gen, print_piece);
              std::printf("\n");
              if (f->stats) print_stats(r.stats);
              msgs.push_back({{"role", "assistant"}, {"content", r.text}});
            }
            return 0;
          }};
}

}  // namespace kvrun::cli
