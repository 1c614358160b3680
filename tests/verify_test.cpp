// kvrun verify's verdict for quantized packages: argmax agreement where the reference
// has a clear favourite, mean KL where its distributions are flat.
#include "kvrun/verify.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kvrun/build.h"
#include "test_util.h"

namespace kvrun {
namespace {

using test::fixture;
using test::TempDir;

VerifyReport build_and_verify(const std::filesystem::path& ckpt, const std::filesystem::path& out,
                              const std::string& precision) {
  BuildOptions o;
  o.checkpoint = ckpt;
  o.out = out;
  o.precision = precision;
  build_package(o);
  VerifyOptions vo;
  vo.package = out;
  vo.greedy_tokens = 24;
  return verify_package(vo);
}

// A synthetic checkpoint with the usual initializer range (0.02) gives next-token
// distributions close to uniform over the 512 ids: the top token's probability is a
// few times 1/512 and its lead over the runner-up is far below int4 noise.
TEST(VerifyQuantized, FlatReferenceIsJudgedByKl) {
  TempDir d;
  SynthOptions so;
  so.config = fixture("qwen3-tiny") / "config.json";
  so.out = d / "ckpt";
  synth_checkpoint(so);
  for (const char* prec : {"int8", "int4"}) {
    const VerifyReport r = build_and_verify(so.out, d / prec, prec);
    EXPECT_TRUE(r.flat_reference) << r.to_text();
    EXPECT_LT(r.reference_top1, 0.05);
    EXPECT_GT(r.reference_top1, 1.0 / 512);  // a distribution over 512 ids
    EXPECT_DOUBLE_EQ(r.max_kl, std::string(prec) == "int8" ? 5e-3 : 5e-2);
    EXPECT_TRUE(r.passed) << r.to_text();
    EXPECT_LE(r.mean_kl, r.max_kl);
    EXPECT_NE(r.to_text().find("flat reference"), std::string::npos);
    const auto j = nlohmann::json::parse(r.to_json());
    EXPECT_EQ(j.at("flat_reference"), true);
    EXPECT_DOUBLE_EQ(j.at("reference_top1").get<double>(), r.reference_top1);
  }
}

// The random test fixtures have peaked distributions (lm_head std 0.6): the argmax gate
// applies, and their int4 package fails it (agreement ~40%, PERFORMANCE.md) -- the KL
// fallback must not rescue it.
TEST(VerifyQuantized, PeakedReferenceKeepsTheArgmaxGate) {
  TempDir d;
  const VerifyReport r = build_and_verify(fixture("qwen3-tiny"), d / "int4", "int4");
  EXPECT_FALSE(r.flat_reference) << r.to_text();
  EXPECT_GE(r.reference_top1, 0.05);
  EXPECT_LT(r.argmax_agreement, 0.90);
  EXPECT_FALSE(r.passed) << r.to_text();
  EXPECT_EQ(r.to_text().find("flat reference"), std::string::npos);
}

}  // namespace
}  // namespace kvrun
