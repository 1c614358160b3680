// kvrun synth-checkpoint: a checkpoint with deterministic random weights for any
// supported config, so tests and benchmarks use real dimensions without downloads.
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "arch/tensor_names.h"
#include "io/fs.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "kvrun/build.h"
#include "package/synth_common.h"

namespace kvrun {
namespace fs = std::filesystem;
using nlohmann::json;

namespace synth {

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

// Normal(0, std) samples via Box-Muller from a splitmix64 stream seeded by (seed, tensor name).
void fill_normal(float* out, size_t n, uint64_t seed, const std::string& name, double std_dev) {
  uint64_t s = seed ^ fnv1a(name);
  for (size_t i = 0; i < n; i += 2) {
    const double u1 = (static_cast<double>(splitmix64(s) >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(splitmix64(s) >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1)) * std_dev;
    out[i] = static_cast<float>(r * std::cos(2 * M_PI * u2));
    if (i + 1 < n) out[i + 1] = static_cast<float>(r * std::sin(2 * M_PI * u2));
  }
}

io::DType dtype_of(const std::string& dtype) {
  if (dtype == "f32") return io::DType::F32;
  if (dtype == "f16") return io::DType::F16;
  if (dtype == "bf16") return io::DType::BF16;
  throw Error("synth-checkpoint: --dtype must be f32, f16 or bf16, found '" + dtype + "'");
}

void fill_tensor(const arch::TensorSpec& spec, const std::string& seed_name, io::DType dt, uint64_t seed,
                 double std_dev, std::vector<float>& f, std::vector<uint8_t>& buf) {
  const size_t n = buf.size() / io::dtype_size(dt);
  f.assign(n, 0.0f);
  if (spec.init == arch::TensorSpec::Init::Normal)
    fill_normal(f.data(), n, seed, seed_name, std_dev);
  else if (spec.init == arch::TensorSpec::Init::Ones)
    std::fill(f.begin(), f.end(), 1.0f);
  auto* h = reinterpret_cast<uint16_t*>(buf.data());
  if (dt == io::DType::F32)
    std::memcpy(buf.data(), f.data(), buf.size());
  else if (dt == io::DType::F16)
    for (size_t k = 0; k < n; ++k) h[k] = io::f32_to_f16(f[k]);
  else
    for (size_t k = 0; k < n; ++k) h[k] = io::f32_to_bf16(f[k]);
}

}  // namespace synth

void synth_checkpoint(const SynthOptions& opt) {
  if (opt.funasr_nano) return synth_funasr_nano(opt);
  if (opt.out.empty()) throw Error("synth-checkpoint: an output folder is required (-o)");
  const fs::path cfg_file = fs::is_directory(opt.config) ? opt.config / "config.json" : opt.config;
  json raw = io::read_json_file(cfg_file);
  const io::ModelConfig cfg = io::parse_model_config(raw, cfg_file.string());
  std::string dtype = opt.dtype;
  if (dtype.empty()) dtype = cfg.torch_dtype == "bfloat16" ? "bf16" : cfg.torch_dtype == "float16" ? "f16" : "f32";
  const io::DType dt = synth::dtype_of(dtype);
  double std_dev = opt.std_dev;
  if (std_dev <= 0) std_dev = raw.value("initializer_range", 0.02);
  if (!(std_dev > 0 && std_dev < 10)) throw Error("synth-checkpoint: standard deviation must be in (0, 10)");

  io::StagedDir staged(opt.out, opt.overwrite);
  const std::vector<arch::TensorSpec> specs = arch::expected_tensors(cfg);
  std::vector<io::TensorToWrite> tensors;
  for (const auto& s : specs) tensors.push_back({s.name, dt, s.shape, nullptr});
  std::vector<float> f;
  io::write_safetensors_streaming(
      staged.path() / "model.safetensors", tensors, {{"format", "pt"}, {"producer", "kvrun synth-checkpoint"}}, 8,
      [&](size_t i, std::vector<uint8_t>& buf) {
        synth::fill_tensor(specs[i], specs[i].name, dt, opt.seed, std_dev, f, buf);
        if (opt.progress) opt.progress("weights", static_cast<int64_t>(i + 1), static_cast<int64_t>(specs.size()));
      });
  raw["torch_dtype"] = dtype == "f32" ? "float32" : dtype == "f16" ? "float16" : "bfloat16";
  raw.erase("dtype");
  io::write_text_file_atomic(staged.path() / "config.json", raw.dump(2) + "\n");
  json gen = {{"_from_model_config", true}};
  if (cfg.bos_token_id) gen["bos_token_id"] = *cfg.bos_token_id;
  if (!cfg.eos_token_ids.empty())
    gen["eos_token_id"] = cfg.eos_token_ids.size() == 1 ? json(cfg.eos_token_ids[0]) : json(cfg.eos_token_ids);
  io::write_text_file_atomic(staged.path() / "generation_config.json", gen.dump(2) + "\n");
  staged.commit();
}

}  // namespace kvrun
