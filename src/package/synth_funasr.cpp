// kvrun synth-checkpoint --funasr-nano: a FunASR-nano folder in the published layout
// (model.pt with audio_encoder.* / audio_adaptor.* / llm.* tensors under "state_dict",
// config.yaml, Qwen3-0.6B/config.json) with deterministic random weights, for benchmarks
// at the real dimensions (--size real) and quick tests (--size tiny).
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "arch/sensevoice_encoder.h"
#include "arch/tensor_names.h"
#include "io/fs.h"
#include "io/model_config.h"
#include "io/torch_writer.h"
#include "kvrun/build.h"
#include "package/synth_common.h"

namespace kvrun {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using arch::TensorSpec;

// The encoder's and adaptor's tensors (names as funasr's modules register them).
std::vector<TensorSpec> audio_tensors(const arch::AudioEncoderConfig& c) {
  std::vector<TensorSpec> t;
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    t.push_back({name + ".weight", {out, in}, TensorSpec::Init::Normal});
    t.push_back({name + ".bias", {out}, TensorSpec::Init::Zeros});
  };
  auto norm = [&](const std::string& name, int64_t n) {
    t.push_back({name + ".weight", {n}, TensorSpec::Init::Ones});
    t.push_back({name + ".bias", {n}, TensorSpec::Init::Zeros});
  };
  const int64_t d = c.d_model;
  for (int64_t i = 0; i < c.blocks + c.tp_blocks; ++i) {
    const std::string L = c.enc(c.encoder_layer(i)) + ".";
    const int64_t in = i == 0 ? c.input_size : d;
    linear(L + "self_attn.linear_q_k_v", 3 * d, in);
    linear(L + "self_attn.linear_out", d, d);
    t.push_back({L + "self_attn.fsmn_block.weight", {d, 1, c.kernel}, TensorSpec::Init::Normal});
    linear(L + "feed_forward.w_1", c.ffn, d);
    linear(L + "feed_forward.w_2", d, c.ffn);
    norm(L + "norm1", in);
    norm(L + "norm2", d);
  }
  norm(c.enc("after_norm"), d);
  norm(c.enc("tp_norm"), d);
  linear(c.adp("linear1"), c.adaptor_ffn, d * c.downsample);
  linear(c.adp("linear2"), c.llm_dim, c.adaptor_ffn);
  for (int64_t j = 0; j < c.adaptor_layers; ++j) {
    const std::string B = c.adp("blocks." + std::to_string(j)) + ".";
    for (const char* p : {"linear_q", "linear_k", "linear_v", "linear_out"})
      linear(B + "self_attn." + p, c.llm_dim, c.llm_dim);
    linear(B + "feed_forward.w_1", c.adaptor_block_ffn, c.llm_dim);
    linear(B + "feed_forward.w_2", c.llm_dim, c.adaptor_block_ffn);
    norm(B + "norm1", c.llm_dim);
    norm(B + "norm2", c.llm_dim);
  }
  return t;
}

std::string yaml_config(const arch::AudioEncoderConfig& c) {
  char buf[4096];
  std::snprintf(buf, sizeof buf,
                "# FunASR-nano configuration (written by kvrun synth-checkpoint --funasr-nano)\n"
                "model: FunASRNano\n"
                "model_conf:\n"
                "  lsm_weight: 0.1\n"
                "  length_normalized_loss: true\n"
                "audio_encoder: SenseVoiceEncoderSmall\n"
                "audio_encoder_conf:\n"
                "  output_size: %lld\n"
                "  attention_heads: %lld\n"
                "  linear_units: %lld\n"
                "  num_blocks: %lld\n"
                "  tp_blocks: %lld\n"
                "  dropout_rate: 0.1\n"
                "  positional_dropout_rate: 0.1\n"
                "  attention_dropout_rate: 0.1\n"
                "  input_layer: pe\n"
                "  pos_enc_class: SinusoidalPositionEncoder\n"
                "  normalize_before: true\n"
                "  kernel_size: %lld\n"
                "  sanm_shfit: %lld\n"
                "  selfattention_layer_type: sanm\n"
                "  freeze: true\n"
                "audio_adaptor: Transformer\n"
                "audio_adaptor_conf:\n"
                "  downsample_rate: %lld\n"
                "  use_low_frame_rate: true\n"
                "  ffn_dim: %lld\n"
                "  llm_dim: %lld\n"
                "  encoder_dim: %lld\n"
                "  n_layer: %lld\n"
                "  attention_heads: %lld\n"
                "  freeze: true\n"
                "llm: Qwen3-0.6b\n"
                "llm_conf:\n"
                "  hub: hf\n"
                "  freeze: true\n"
                "  llm_dtype: fp32\n"
                "  init_param_path: Qwen3-0.6B\n"
                "  use_lora: false\n"
                "input_size: %lld\n"
                "frontend: WavFrontend\n"
                "frontend_conf:\n"
                "  fs: 16000\n"
                "  window: hamming\n"
                "  n_mels: 80\n"
                "  frame_length: 25\n"
                "  frame_shift: 10\n"
                "  lfr_m: 7\n"
                "  lfr_n: 6\n"
                "  cmvn_file: null\n"
                "tokenizer: HuggingfaceTokenizer\n"
                "tokenizer_conf:\n"
                "  init_param_path: Qwen3-0.6B\n",
                (long long)c.d_model, (long long)c.heads, (long long)c.ffn, (long long)c.blocks, (long long)c.tp_blocks,
                (long long)c.kernel, (long long)c.sanm_shift, (long long)c.downsample, (long long)c.adaptor_ffn,
                (long long)c.llm_dim, (long long)c.d_model, (long long)c.adaptor_layers, (long long)c.adaptor_heads,
                (long long)c.input_size);
  return buf;
}

}  // namespace

void synth_funasr_nano(const SynthOptions& opt) {
  if (opt.out.empty()) throw Error("synth-checkpoint: an output folder is required (-o)");
  if (opt.size != "real" && opt.size != "tiny")
    throw Error("synth-checkpoint: --size must be real or tiny, found '" + opt.size + "'");
  const bool tiny = opt.size == "tiny";
  json llm_raw;
  if (!opt.config.empty()) {
    const fs::path f = fs::is_directory(opt.config) ? opt.config / "config.json" : opt.config;
    llm_raw = io::read_json_file(f);
  } else {
    // Qwen3-0.6B as published (the LLM of Fun-ASR-Nano-2512); tiny: the same shape family.
    llm_raw = {{"architectures", {"Qwen3ForCausalLM"}},
               {"attention_bias", false},
               {"bos_token_id", 151643},
               {"eos_token_id", 151645},
               {"head_dim", tiny ? 16 : 128},
               {"hidden_act", "silu"},
               {"hidden_size", tiny ? 32 : 1024},
               {"initializer_range", 0.02},
               {"intermediate_size", tiny ? 64 : 3072},
               {"max_position_embeddings", 40960},
               {"model_type", "qwen3"},
               {"num_attention_heads", tiny ? 4 : 16},
               {"num_hidden_layers", tiny ? 2 : 28},
               {"num_key_value_heads", tiny ? 2 : 8},
               {"rms_norm_eps", 1e-6},
               {"rope_scaling", nullptr},
               {"rope_theta", 1000000},
               {"tie_word_embeddings", true},
               {"torch_dtype", "bfloat16"},
               {"use_cache", true},
               {"vocab_size", 151936}};
  }
  const io::ModelConfig cfg = io::parse_model_config(llm_raw, "LLM config");
  arch::AudioEncoderConfig ec;  // the published dimensions
  if (tiny) {
    ec.d_model = 32;
    ec.heads = 4;
    ec.ffn = 64;
    ec.blocks = 3;
    ec.tp_blocks = 2;
    ec.adaptor_ffn = 64;
    ec.adaptor_heads = 4;
  }
  ec.llm_dim = cfg.hidden_size;
  ec.adaptor_block_ffn = cfg.hidden_size / 4;
  ec.validate();

  const io::DType dt = synth::dtype_of(opt.dtype.empty() ? "bf16" : opt.dtype);
  const double std_dev = opt.std_dev > 0 ? opt.std_dev : 0.02;
  std::vector<TensorSpec> specs = audio_tensors(ec);
  for (TensorSpec s : arch::expected_tensors(cfg)) {
    s.name = "llm." + s.name;
    specs.push_back(s);
  }
  // The published file stores the tied lm_head as its own tensor (same values).
  if (cfg.tie_word_embeddings) {
    TensorSpec head = {"llm.lm_head.weight", {cfg.vocab_size, cfg.hidden_size}, TensorSpec::Init::Normal};
    specs.push_back(head);
  }
  std::vector<io::TensorToWrite> tensors;
  for (const auto& s : specs) tensors.push_back({s.name, dt, s.shape, nullptr});

  io::StagedDir staged(opt.out, opt.overwrite);
  std::vector<float> f;
  io::write_torch_checkpoint_streaming(
      staged.path() / "model.pt", tensors, "state_dict", [&](size_t i, std::vector<uint8_t>& buf) {
        std::string seed_name = specs[i].name;
        if (seed_name == "llm.lm_head.weight") seed_name = "llm.model.embed_tokens.weight";
        synth::fill_tensor(specs[i], seed_name, dt, opt.seed, std_dev, f, buf);
        if (opt.progress) opt.progress("weights", static_cast<int64_t>(i + 1), static_cast<int64_t>(specs.size()));
      });
  io::write_text_file_atomic(staged.path() / "config.yaml", yaml_config(ec));
  io::write_text_file_atomic(staged.path() / "configuration.json",
                             json({{"framework", "pytorch"},
                                   {"task", "auto-speech-recognition"},
                                   {"model", {{"type", "funasr"}}},
                                   {"file_path_metas", {{"init_param", "model.pt"}, {"config", "config.yaml"}}}})
                                     .dump(2) +
                                 "\n");
  const fs::path llm_dir = staged.path() / "Qwen3-0.6B";
  fs::create_directories(llm_dir);
  io::write_text_file_atomic(llm_dir / "config.json", llm_raw.dump(2) + "\n");
  if (!opt.tokenizer.empty()) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"})
      if (fs::exists(opt.tokenizer / name)) fs::copy_file(opt.tokenizer / name, llm_dir / name);
    if (!fs::exists(llm_dir / "tokenizer.json"))
      throw Error("synth-checkpoint: --tokenizer " + opt.tokenizer.string() + " holds no tokenizer.json");
  }
  staged.commit();
}

}  // namespace kvrun
