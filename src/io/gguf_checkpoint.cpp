#include "io/gguf_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include "io/fs.h"
#include "kvrun/error.h"

namespace kvrun::io {
namespace fs = std::filesystem;
using nlohmann::json;

bool is_gguf_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {};
  f.read(magic, 4);
  return f.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

namespace {

struct ArchInfo {
  const char* gguf;
  const char* hf;  // architectures[0]
  const char* model_type;
};
constexpr ArchInfo kArchs[] = {
    {"llama", "LlamaForCausalLM", "llama"},
    {"qwen2", "Qwen2ForCausalLM", "qwen2"},
    {"qwen3", "Qwen3ForCausalLM", "qwen3"},
    {"gemma3", "Gemma3ForCausalLM", "gemma3_text"},
};

// GGUF tensor name -> transformers name ("" for tensors kvrun does not use).
std::string hf_name(const std::string& gguf, const std::string& arch) {
  static const std::map<std::string, std::string> top = {{"token_embd.weight", "model.embed_tokens.weight"},
                                                         {"output_norm.weight", "model.norm.weight"},
                                                         {"output.weight", "lm_head.weight"}};
  if (auto it = top.find(gguf); it != top.end()) return it->second;
  // blk.<layer>.<part>.<weight|bias>
  if (gguf.rfind("blk.", 0) != 0) return "";
  const size_t d1 = gguf.find('.', 4), d2 = gguf.rfind('.');
  if (d1 == std::string::npos || d1 == 4 || d2 <= d1 + 1) return "";
  const std::string index = gguf.substr(4, d1 - 4), part = gguf.substr(d1 + 1, d2 - d1 - 1), kind = gguf.substr(d2 + 1);
  if (index.find_first_not_of("0123456789") != std::string::npos || (kind != "weight" && kind != "bias")) return "";
  const std::string pre = "model.layers." + index + ".";
  const bool gemma = arch == "gemma3";
  std::map<std::string, std::string> layer = {
      {"attn_norm", "input_layernorm"},
      {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"},
      {"attn_q_norm", "self_attn.q_norm"},
      {"attn_k_norm", "self_attn.k_norm"},
      {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
      {"ffn_norm", gemma ? "pre_feedforward_layernorm" : "post_attention_layernorm"},
  };
  if (gemma) {
    layer["post_attention_norm"] = "post_attention_layernorm";
    layer["post_ffw_norm"] = "post_feedforward_layernorm";
  }
  auto it = layer.find(part);
  return it == layer.end() ? "" : pre + it->second + "." + kind;
}

}  // namespace

GgufCheckpoint::GgufCheckpoint(const fs::path& path) : file_(std::make_unique<GgufFile>(path)) {
  const GgufFile& f = *file_;
  const std::string src = path.string();
  arch_ = f.get_string("general.architecture");
  const ArchInfo* info = nullptr;
  for (const auto& a : kArchs)
    if (arch_ == a.gguf) info = &a;
  if (!info)
    throw Error(src + ": general.architecture is '" + arch_ +
                "', kvrun builds GGUF files of the architectures llama, qwen2, qwen3 and gemma3");
  const std::string k = arch_ + ".";
  const int64_t hidden = f.get_int(k + "embedding_length"), layers = f.get_int(k + "block_count");
  const int64_t heads = f.get_int(k + "attention.head_count");
  const int64_t kv_heads = f.opt_int(k + "attention.head_count_kv").value_or(heads);
  if (heads <= 0 || kv_heads <= 0 || hidden <= 0 || layers <= 0)
    throw Error(src + ": " + k + "embedding_length, block_count and attention.head_count[_kv] must be positive");
  const int64_t head_dim = f.opt_int(k + "attention.key_length").value_or(hidden / heads);
  if (const auto vl = f.opt_int(k + "attention.value_length"); vl && *vl != head_dim)
    throw Error(src + ": " + k + "attention.value_length " + std::to_string(*vl) + " differs from key_length " +
                std::to_string(head_dim) + "; kvrun's graphs need equal key and value head sizes");
  const GgufTensor& embd = f.tensor("token_embd.weight");
  if (embd.ne.size() != 2 || embd.ne[0] != hidden)
    throw Error(src + ": tensor 'token_embd.weight' has ne " + shape_str(embd.ne) + ", expected [" +
                std::to_string(hidden) + ", vocab]");
  json c = {
      {"architectures", {info->hf}},
      {"model_type", info->model_type},
      {"hidden_size", hidden},
      {"intermediate_size", f.get_int(k + "feed_forward_length")},
      {"num_hidden_layers", layers},
      {"num_attention_heads", heads},
      {"num_key_value_heads", kv_heads},
      {"head_dim", head_dim},
      {"vocab_size", embd.ne[1]},
      {"max_position_embeddings", f.opt_int(k + "context_length").value_or(4096)},
      {"rms_norm_eps", f.opt_float(k + "attention.layer_norm_rms_epsilon").value_or(1e-6)},
      {"rope_theta", f.opt_float(k + "rope.freq_base").value_or(arch_ == "gemma3" ? 1e6 : 10000.0)},
      {"tie_word_embeddings", f.find_tensor("output.weight") == nullptr},
      {"torch_dtype", "float32"},
  };
  if (const auto st = f.opt_string(k + "rope.scaling.type"); st && *st != "none") {
    const double factor = f.opt_float(k + "rope.scaling.factor").value_or(1.0);
    if (*st != "linear")
      throw Error(src + ": " + k + "rope.scaling.type '" + *st + "' is not supported (kvrun reads 'linear')");
    c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", factor}};
  }
  // Llama 3 rope scaling: llama.cpp's converter stores the per-frequency divisors.
  if (const GgufTensor* rf = f.find_tensor("rope_freqs.weight")) {
    if (rf->numel() != head_dim / 2)
      throw Error(src + ": tensor 'rope_freqs.weight' has " + std::to_string(rf->numel()) +
                  " values, expected head_dim/2 = " + std::to_string(head_dim / 2));
    const std::vector<float> v = f.to_f32(*rf);
    c["rope_scaling"] = {{"rope_type", "factors"}, {"factors", std::vector<double>(v.begin(), v.end())}};
  }
  if (arch_ == "qwen2" || (arch_ == "llama" && f.find_tensor("blk.0.attn_q.bias")))
    c["attention_bias"] = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  if (arch_ == "gemma3") {
    c["sliding_window"] = f.opt_int(k + "attention.sliding_window").value_or(512);
    c["sliding_window_pattern"] = 6;
    c["rope_local_base_freq"] = 10000.0;
    // llama.cpp: 1/sqrt(key_length), except Gemma 3 27B (62 layers): 1/sqrt(hidden / heads).
    c["query_pre_attn_scalar"] = layers == 62 ? hidden / heads : head_dim;
    c["hidden_activation"] = "gelu_pytorch_tanh";
    if (const auto cap = f.opt_float(k + "final_logit_softcapping")) c["final_logit_softcapping"] = *cap;
    // GGUF stores Gemma norms as (1 + w) already.
    c["kvrun_norm_weight_offset"] = 0.0;
  }
  if (const auto v = f.opt_int("tokenizer.ggml.bos_token_id")) c["bos_token_id"] = *v;
  if (const auto v = f.opt_int("tokenizer.ggml.eos_token_id")) c["eos_token_id"] = *v;
  if (const auto v = f.opt_int("tokenizer.ggml.padding_token_id")) c["pad_token_id"] = *v;
  config_ = std::move(c);

  // tensors under transformers names
  for (const GgufTensor& t : f.tensors()) {
    const std::string name = hf_name(t.name, arch_);
    if (name.empty()) continue;
    const GgmlTypeTraits* tr = ggml_type_traits(t.type);
    TensorView v;
    v.name = name;
    v.shape = t.shape();
    v.data = t.data;
    v.nbytes = t.nbytes;
    v.file = src;
    switch (static_cast<GgmlType>(t.type)) {
      case GgmlType::F32:
        v.dtype = DType::F32;
        break;
      case GgmlType::F16:
        v.dtype = DType::F16;
        break;
      case GgmlType::BF16:
        v.dtype = DType::BF16;
        break;
      default:
        if (!tr || !tr->dequantizable)
          throw Error(src + ": tensor '" + t.name + "' has type " + ggml_type_name(t.type) +
                      ", which kvrun cannot read (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, "
                      "Q5_K, Q6_K)");
        v.dtype = DType::F32;
        v.ggml_type = static_cast<int32_t>(t.type);
    }
    tensors_[name] = v;
  }
  // llama: undo the converter's q/k row permutation (interleaved -> rotate-half rotary).
  if (arch_ == "llama") {
    for (int64_t l = 0; l < layers; ++l)
      for (const auto& [part, nh] : {std::pair<std::string, int64_t>{"q_proj", heads}, {"k_proj", kv_heads}}) {
        for (const char* kind : {"weight", "bias"}) {
          auto it = tensors_.find("model.layers." + std::to_string(l) + ".self_attn." + part + "." + kind);
          if (it == tensors_.end()) continue;
          TensorView& v = it->second;
          const int64_t rows = v.shape[0];
          if (rows != nh * head_dim)
            throw Error(src + ": tensor '" + v.name + "' has " + std::to_string(rows) + " rows, expected " +
                        std::to_string(nh * head_dim));
          const size_t row_bytes = v.nbytes / static_cast<size_t>(rows);
          std::vector<uint8_t> out(v.nbytes);
          const int64_t half = head_dim / 2;
          for (int64_t h = 0; h < nh; ++h)
            for (int64_t a = 0; a < 2; ++a)
              for (int64_t b = 0; b < half; ++b) {
                const int64_t dst = h * head_dim + a * half + b, from = h * head_dim + 2 * b + a;
                std::memcpy(out.data() + dst * row_bytes, v.data + from * row_bytes, row_bytes);
              }
          owned_.push_back(std::move(out));
          v.data = owned_.back().data();
        }
      }
  }
}

namespace {

class GgufWriter {
 public:
  explicit GgufWriter(AtomicFile& f) : f_(f) {}
  template <class T>
  void pod(T v) {
    f_.write(&v, sizeof v);
  }
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    f_.write(s.data(), s.size());
  }
  void value(const GgufValue& v) {
    using T = GgufValue::Type;
    switch (v.type) {
      case T::U8:
        return pod<uint8_t>(static_cast<uint8_t>(v.u));
      case T::I8:
        return pod<int8_t>(static_cast<int8_t>(v.i));
      case T::U16:
        return pod<uint16_t>(static_cast<uint16_t>(v.u));
      case T::I16:
        return pod<int16_t>(static_cast<int16_t>(v.i));
      case T::U32:
        return pod<uint32_t>(static_cast<uint32_t>(v.u));
      case T::I32:
        return pod<int32_t>(static_cast<int32_t>(v.i));
      case T::F32:
        return pod<float>(static_cast<float>(v.f));
      case T::BOOL:
        return pod<uint8_t>(v.u ? 1 : 0);
      case T::STRING:
        return str(v.s);
      case T::U64:
        return pod<uint64_t>(v.u);
      case T::I64:
        return pod<int64_t>(v.i);
      case T::F64:
        return pod<double>(v.f);
      case T::ARRAY:
        pod<uint32_t>(static_cast<uint32_t>(v.elem_type));
        pod<uint64_t>(v.elems.size());
        for (const auto& e : v.elems) value(e);
        return;
    }
  }

 private:
  AtomicFile& f_;
};

}  // namespace

void write_gguf_metadata(const fs::path& path, const GgufFile& src, const std::vector<std::string>& key_prefixes) {
  std::vector<const std::pair<const std::string, GgufValue>*> keep;
  for (const auto& kv : src.metadata())
    for (const auto& p : key_prefixes)
      if (kv.first.compare(0, p.size(), p) == 0) {
        keep.push_back(&kv);
        break;
      }
  AtomicFile f(path);
  GgufWriter w(f);
  f.write("GGUF", 4);
  w.pod<uint32_t>(3);
  w.pod<uint64_t>(0);  // tensors
  w.pod<uint64_t>(keep.size());
  for (const auto* kv : keep) {
    w.str(kv->first);
    w.pod<uint32_t>(static_cast<uint32_t>(kv->second.type));
    w.value(kv->second);
  }
  f.commit();
}

json GgufCheckpoint::generation_config() const {
  json g = json::object();
  std::vector<int64_t> eos;
  if (config_.contains("eos_token_id")) eos.push_back(config_["eos_token_id"].get<int64_t>());
  if (const auto eot = file_->opt_int("tokenizer.ggml.eot_token_id")) eos.push_back(*eot);
  // Chat models end a turn with a token llama.cpp also treats as end of generation.
  if (file_->has("tokenizer.ggml.tokens")) {
    const std::vector<std::string> toks = file_->get_string_array("tokenizer.ggml.tokens");
    for (const char* t : {"<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>"})
      for (size_t i = 0; i < toks.size(); ++i)
        if (toks[i] == t) eos.push_back(static_cast<int64_t>(i));
  }
  std::vector<int64_t> uniq;
  for (auto e : eos)
    if (std::find(uniq.begin(), uniq.end(), e) == uniq.end()) uniq.push_back(e);
  if (!uniq.empty()) g["eos_token_id"] = uniq;
  if (config_.contains("bos_token_id")) g["bos_token_id"] = config_["bos_token_id"];
  if (config_.contains("pad_token_id")) g["pad_token_id"] = config_["pad_token_id"];
  return g;
}

}  // namespace kvrun::io
