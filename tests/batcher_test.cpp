// Continuous batching (runtime/batcher.h): every request gets the tokens it gets alone.
#include "runtime/batcher.h"

#include <gtest/gtest.h>

#include <future>

#include "kvrun/runtime.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace kvrun::test {
namespace {
using runtime::Batcher;
using runtime::BatcherOptions;
using runtime::BatchRequest;

struct Outcome {
  GenerationResult result;
  std::string error, streamed;
  int events = 0;
  std::vector<float> logprobs;
};

struct Pending {
  std::shared_ptr<runtime::Ticket> ticket;
  std::shared_ptr<Outcome> out = std::make_shared<Outcome>();
  std::shared_ptr<std::promise<void>> done = std::make_shared<std::promise<void>>();
};

Pending submit(Batcher& b, const std::vector<TokenId>& prompt, const GenerationOptions& opt, int stop_after = -1,
               int top_logprobs = -1) {
  Pending p;
  BatchRequest r;
  r.prompt = prompt;
  r.opt = opt;
  r.top_logprobs = top_logprobs;
  auto out = p.out;
  auto done = p.done;
  r.on_token = [out, stop_after](const runtime::TokenEvent& ev) {
    out->streamed += ev.text;
    if (ev.token >= 0) out->logprobs.push_back(ev.logprob);
    return stop_after < 0 || ++out->events < stop_after;
  };
  r.on_done = [out, done](const GenerationResult& res, const std::string& err) {
    out->result = res;
    out->error = err;
    done->set_value();
  };
  p.ticket = b.submit(std::move(r));
  return p;
}

void wait(Pending& p) {
  ASSERT_EQ(p.done->get_future().wait_for(std::chrono::seconds(120)), std::future_status::ready);
}

std::vector<std::vector<TokenId>> prompts_of(Model& m) {
  std::vector<std::vector<TokenId>> ps;
  if (!m.tokenizer()) {  // ids of several lengths, some past a small sliding window
    for (int n : {5, 19, 3, 33, 11}) {
      ps.emplace_back();
      for (int i = 0; i < n; ++i) ps.back().push_back(static_cast<TokenId>((7 * i + 3 * n) % 97 + 2));
    }
    return ps;
  }
  for (const char* s : {"The history of the city", "Once upon a time there was a small dog who", "In the morning the",
                        "Scientists have found that the weather in the north of the country is", "She said"})
    ps.push_back(m.prompt_ids(Prompt().text(s)));
  return ps;
}

void same_as_alone(const std::string& fixture_name, int64_t slots, int64_t chunk, bool reuses) {
  auto model = Model::load(built_package(fixture_name, "ort", "fp32"));
  auto* engine = dynamic_cast<runtime::Engine*>(model.get());
  ASSERT_NE(engine, nullptr);
  GenerationOptions opt;
  opt.max_new_tokens = 24;
  opt.stop_at_eos = false;
  const auto prompts = prompts_of(*model);
  std::vector<GenerationResult> alone;
  for (const auto& p : prompts) alone.push_back(model->generate(Prompt().ids(p), opt));

  BatcherOptions bo;
  bo.slots = slots, bo.context = 128, bo.prefill_chunk = chunk, bo.max_queue = 16;
  Batcher b(*engine, bo);
  ASSERT_TRUE(b.batched());
  std::vector<Pending> pend;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationOptions o = opt;
    o.max_new_tokens = 12 + 3 * static_cast<int64_t>(i);  // requests end at different steps
    pend.push_back(submit(b, prompts[i], o));
  }
  for (size_t i = 0; i < pend.size(); ++i) {
    wait(pend[i]);
    const Outcome& o = *pend[i].out;
    EXPECT_EQ(o.error, "");
    const std::vector<TokenId> want(alone[i].tokens.begin(),
                                    alone[i].tokens.begin() + 12 + 3 * static_cast<int64_t>(i));
    EXPECT_EQ(o.result.tokens, want) << fixture_name << " request " << i;
    EXPECT_EQ(o.result.finish_reason, "length");
    EXPECT_EQ(o.streamed, o.result.text);
  }
  // The last prompt again (its slot was not taken since) reuses its cached prefix: all but one
  // position (unless sliding-window layers dropped rows it needs), and gives the same tokens.
  GenerationOptions o = opt;
  o.max_new_tokens = 12;
  Pending again = submit(b, prompts[4], o);
  wait(again);
  EXPECT_EQ(again.out->result.stats.reused_tokens, reuses ? static_cast<int64_t>(prompts[4].size()) - 1 : 0);
  EXPECT_EQ(again.out->result.tokens, std::vector<TokenId>(alone[4].tokens.begin(), alone[4].tokens.begin() + 12));
}

TEST(Batcher, ConcurrentRequestsGetTheirAloneTokens) { same_as_alone("qwen3-trained", 3, 5, true); }

// Gemma 3's sliding-window layers (window 8) on bounded buffers: prompts and outputs past the
// window; the 11 + 12 positions of the last request leave too few local rows to reuse.
TEST(Batcher, ConcurrentRequestsGetTheirAloneTokensGemma3) { same_as_alone("gemma3-tiny", 2, 7, false); }

TEST(Batcher, CancelFreesTheSlotAndQueueIsBounded) {
  auto model = Model::load(built_package("qwen3-trained", "ort", "fp32"));
  auto* engine = dynamic_cast<runtime::Engine*>(model.get());
  GenerationOptions opt;
  opt.max_new_tokens = 16;
  opt.stop_at_eos = false;
  const auto prompts = prompts_of(*model);
  const GenerationResult alone = model->generate(Prompt().ids(prompts[1]), opt);

  BatcherOptions bo;
  bo.slots = 1, bo.context = 64, bo.max_queue = 1;
  Batcher b(*engine, bo);
  GenerationOptions long_opt = opt;
  long_opt.max_new_tokens = 40;
  Pending first = submit(b, prompts[0], long_opt, /*stop_after=*/3);  // its client goes away
  Pending second = submit(b, prompts[1], opt);
  wait(first);
  EXPECT_EQ(first.out->result.finish_reason, "cancelled");
  EXPECT_EQ(first.out->result.tokens.size(), 3u);
  wait(second);
  EXPECT_EQ(second.out->result.tokens, alone.tokens);

  // Prompt that cannot fit: both numbers in the message.
  expect_error([&] { submit(b, std::vector<TokenId>(64, 5), opt); }, {"64 tokens", "64 positions"});
  // Log-probabilities of the greedy token are <= 0 and the top one.
  Pending lp = submit(b, prompts[3], opt, -1, 3);
  wait(lp);
  ASSERT_EQ(lp.out->logprobs.size(), lp.out->result.tokens.size());
  for (float x : lp.out->logprobs) EXPECT_LE(x, 0.f);
  EXPECT_EQ(b.stats().running, 0);
}

TEST(Batcher, QueueFullWhileTheSlotIsBusy) {
  auto model = Model::load(built_package("qwen3-trained", "ort", "fp32"));
  auto* engine = dynamic_cast<runtime::Engine*>(model.get());
  GenerationOptions opt;
  opt.max_new_tokens = 8;
  opt.stop_at_eos = false;
  const auto prompts = prompts_of(*model);
  BatcherOptions bo;
  bo.slots = 1, bo.context = 64, bo.max_queue = 0;
  Batcher b(*engine, bo);
  // No queue: while the one slot is busy (its request holds the batcher's thread in on_token),
  // another request is refused with the numbers; after it, one is taken again.
  std::promise<void> gate;
  auto gate_f = gate.get_future().share();
  BatchRequest r;
  r.prompt = prompts[0];
  r.opt = opt;
  r.on_token = [gate_f](const runtime::TokenEvent&) {
    gate_f.wait();
    return true;
  };
  std::promise<void> done;
  r.on_done = [&](const GenerationResult&, const std::string&) { done.set_value(); };
  b.submit(std::move(r));
  EXPECT_THROW(
      {
        try {
          submit(b, prompts[1], opt);
        } catch (const runtime::QueueFull& e) {
          EXPECT_NE(std::string(e.what()).find("(--max-queue 0)"), std::string::npos) << e.what();
          throw;
        }
      },
      runtime::QueueFull);
  gate.set_value();
  ASSERT_EQ(done.get_future().wait_for(std::chrono::seconds(60)), std::future_status::ready);
  Pending after = submit(b, prompts[1], opt);
  wait(after);
  EXPECT_EQ(after.out->result.tokens.size(), 8u);
}

}  // namespace
}  // namespace kvrun::test
