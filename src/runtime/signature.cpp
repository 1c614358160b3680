#include "runtime/signature.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <set>

#include "kvrun/error.h"

namespace kvrun::runtime {

const std::vector<KvConvention>& kv_conventions() {
  static const std::vector<KvConvention> c = {
      {"past_key_values.%d.key -> present.%d.key (optimum / GenAI / kvrun ort)", "past_key_values.%d.key",
       "past_key_values.%d.value", "present.%d.key", "present.%d.value"},
      {"past_key_%d -> present_key_%d (split prefill/decode, kvrun portable)", "past_key_%d", "past_value_%d",
       "present_key_%d", "present_value_%d"},
      {"cache_key_%d -> key_delta_%d (sherpa-onnx KV delta: fixed cache, new rows returned)", "cache_key_%d",
       "cache_value_%d", "key_delta_%d", "value_delta_%d", true},
  };
  return c;
}

std::optional<int64_t> match_layer(const std::string& name, const std::string& pattern) {
  const auto p = pattern.find("%d");
  if (p == std::string::npos) return std::nullopt;
  const std::string pre = pattern.substr(0, p), post = pattern.substr(p + 2);
  if (name.size() <= pre.size() + post.size() || name.compare(0, pre.size(), pre) != 0 ||
      name.compare(name.size() - post.size(), post.size(), post) != 0)
    return std::nullopt;
  const std::string mid = name.substr(pre.size(), name.size() - pre.size() - post.size());
  if (mid.empty() || mid.size() > 6 ||
      !std::all_of(mid.begin(), mid.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(mid);
}

std::string io_str(const IoInfo& io) {
  std::string s = io::dtype_name(io.dtype) + " [";
  for (size_t i = 0; i < io.shape.size(); ++i) {
    if (i) s += ", ";
    s += io.shape[i] >= 0 ? std::to_string(io.shape[i]) : (io.symbolic[i].empty() ? "?" : io.symbolic[i]);
  }
  return s + "]";
}

namespace {

std::string fmt(const std::string& pattern, int64_t layer) {
  const auto p = pattern.find("%d");
  return pattern.substr(0, p) + std::to_string(layer) + pattern.substr(p + 2);
}

bool is_float(io::DType t) { return t == io::DType::F32 || t == io::DType::F16 || t == io::DType::BF16; }
bool is_index(io::DType t) { return t == io::DType::I64 || t == io::DType::I32; }

struct Expect {
  std::string name, spec;
};

std::string pad(const std::string& s, size_t w) { return s.size() >= w ? s + " " : s + std::string(w - s.size(), ' '); }

// The expected vs found table; rows are joined by name, expected order first.
std::string side_by_side(const Session& s, const std::vector<Expect>& exp_in, const std::vector<Expect>& exp_out) {
  auto section = [](const char* title, const std::vector<Expect>& exp, const std::vector<IoInfo>& got) {
    std::map<std::string, const IoInfo*> by_name;
    for (const auto& g : got) by_name[g.name] = &g;
    std::vector<std::pair<std::string, std::string>> rows;  // left, right
    std::set<std::string> seen;
    for (const auto& e : exp) {
      auto it = by_name.find(e.name);
      rows.emplace_back(e.name + "  " + e.spec,
                        it == by_name.end() ? "(missing)" : it->first + "  " + io_str(*it->second));
      seen.insert(e.name);
    }
    for (const auto& g : got)
      if (!seen.count(g.name)) rows.emplace_back("(not expected)", g.name + "  " + io_str(g));
    size_t w = 10;
    for (const auto& r : rows) w = std::max(w, r.first.size());
    std::string out = std::string("  ") + title + "\n    " + pad("expected", w + 2) + "found\n";
    for (const auto& r : rows) out += "    " + pad(r.first, w + 2) + r.second + "\n";
    return out;
  };
  return section("inputs", exp_in, s.inputs()) + section("outputs", exp_out, s.outputs());
}

// kvrun.local_layers ("0,1,2,3,4,6,...") and kvrun.sliding_window from the graph's metadata.
void read_local_layers(const Session& s, int64_t layers, DecoderSignature& sig, std::vector<std::string>& problems) {
  const auto& meta = s.metadata();
  const auto lw = meta.find("kvrun.local_layers"), sw = meta.find("kvrun.sliding_window");
  if (lw == meta.end() || sw == meta.end()) {
    problems.push_back(
        "local_attention_mask needs the metadata kvrun.local_layers and kvrun.sliding_window (which layers it "
        "serves, and their window)");
    return;
  }
  auto integer = [&](const std::string& text, const std::string& key, int64_t lo,
                     int64_t hi) -> std::optional<int64_t> {
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size() || text.empty() || v < lo || v > hi) {
      problems.push_back("metadata " + key + ": '" + text + "' is not an integer in [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "]");
      return std::nullopt;
    }
    return v;
  };
  const auto window = integer(sw->second, "kvrun.sliding_window", 1, int64_t{1} << 30);
  if (!window) return;
  sig.sliding_window = *window;
  sig.local_layer.assign(static_cast<size_t>(layers), false);
  size_t a = 0;
  const std::string& list = lw->second;
  while (a <= list.size()) {
    const size_t b = std::min(list.find(',', a), list.size());
    const auto l = integer(list.substr(a, b - a), "kvrun.local_layers", 0, layers - 1);
    if (!l) return;
    sig.local_layer[static_cast<size_t>(*l)] = true;
    a = b + 1;
  }
}

}  // namespace

DecoderSignature detect_signature(const Session& s, const SignatureHints& hints) {
  DecoderSignature sig;
  sig.file = s.path().string();
  const auto& ins = s.inputs();
  const auto& outs = s.outputs();

  for (const auto& i : ins)
    if (i.name.find(".decoder.") != std::string::npos || i.name.find(".encoder.") != std::string::npos ||
        i.name == "encoder_hidden_states")
      throw Error(sig.file + ": this is an encoder-decoder decoder (input '" + i.name +
                  "'); kvrun runs decoder-only models so far");

  // Which KV convention: the one whose present outputs appear.
  const KvConvention* conv = nullptr;
  size_t best = 0;
  for (const auto& c : kv_conventions()) {
    size_t n = 0;
    for (const auto& o : outs)
      n += (match_layer(o.name, c.present_key) || match_layer(o.name, c.present_value)) ? 1 : 0;
    for (const auto& i : ins) n += (match_layer(i.name, c.past_key) || match_layer(i.name, c.past_value)) ? 1 : 0;
    if (n > best) best = n, conv = &c;
  }
  std::vector<std::string> problems;
  if (!conv) {
    std::string names;
    for (const auto& o : outs) names += (names.empty() ? "" : ", ") + o.name;
    std::string known;
    for (const auto& c : kv_conventions()) known += "\n  " + c.label;
    throw Error(sig.file + ": no KV cache outputs found (outputs: " + names + "); expected one of:" + known);
  }
  sig.convention = conv->label;
  sig.kv_delta = conv->delta;

  // Layer count: the highest index seen among pasts and presents (+1); every layer needs all four.
  int64_t max_layer = -1;
  for (const auto& o : outs)
    for (const auto* p : {&conv->present_key, &conv->present_value})
      if (auto l = match_layer(o.name, *p)) max_layer = std::max(max_layer, *l);
  for (const auto& i : ins)
    for (const auto* p : {&conv->past_key, &conv->past_value})
      if (auto l = match_layer(i.name, *p)) max_layer = std::max(max_layer, *l), sig.has_past = true;
  int64_t layers = max_layer + 1;
  if (hints.num_layers && *hints.num_layers > layers) layers = *hints.num_layers;

  // Expected signature, built as we go (for the error table).
  std::vector<Expect> exp_in, exp_out;
  std::set<std::string> known_inputs;

  for (const auto& i : ins) {
    if (i.name == "input_ids") {
      sig.ids_input = i.name, sig.ids_dtype = i.dtype;
      exp_in.push_back({i.name, "int64 [batch, seq]"});
      if (!is_index(i.dtype) || i.shape.size() != 2)
        problems.push_back("input_ids must be int64 or int32 of rank 2, found " + io_str(i));
      if (!i.shape.empty() && i.shape[0] > 0) sig.fixed_batch = i.shape[0];
    } else if (i.name == "inputs_embeds") {
      sig.embeds_input = i.name, sig.embeds_dtype = i.dtype;
      exp_in.push_back({i.name, "float [batch, seq, hidden]"});
      if (!is_float(i.dtype) || i.shape.size() != 3)
        problems.push_back("inputs_embeds must be float of rank 3, found " + io_str(i));
      else {
        sig.hidden = i.shape[2];
        if (i.shape[0] > 0) sig.fixed_batch = i.shape[0];
        if (hints.hidden_size && sig.hidden > 0 && sig.hidden != *hints.hidden_size)
          problems.push_back("inputs_embeds has hidden size " + std::to_string(sig.hidden) + ", config.json says " +
                             std::to_string(*hints.hidden_size));
      }
    } else if (i.name == "attention_mask") {
      sig.mask_input = i.name, sig.mask_dtype = i.dtype;
      exp_in.push_back({i.name, "int64 [batch, total]"});
      if (!is_index(i.dtype) || i.shape.size() != 2)
        problems.push_back("attention_mask must be int64 or int32 of rank 2, found " + io_str(i));
    } else if (i.name == "position_ids") {
      sig.position_input = i.name, sig.position_dtype = i.dtype;
      exp_in.push_back({i.name, "int64 [batch, seq]"});
      if (!is_index(i.dtype) || i.shape.size() != 2)
        problems.push_back("position_ids must be int64 or int32 of rank 2, found " + io_str(i) +
                           (i.shape.size() == 3 ? " (multimodal 3-D rotary positions are not supported)" : ""));
    } else if (i.name == "local_attention_mask" && !conv->delta) {
      sig.local_mask_input = i.name, sig.local_mask_dtype = i.dtype;
      exp_in.push_back({i.name, "int64 [batch, local_total]"});
      if (!is_index(i.dtype) || i.shape.size() != 2)
        problems.push_back("local_attention_mask must be int64 or int32 of rank 2, found " + io_str(i));
    } else if (i.name == "use_cache_branch") {
      sig.cache_branch_input = i.name;
      exp_in.push_back({i.name, "bool [1]"});
      if (i.dtype != io::DType::BOOL || i.shape.size() != 1)
        problems.push_back("use_cache_branch must be bool [1], found " + io_str(i));
    } else if (i.name == "cache_position" && conv->delta) {
      sig.cache_position_input = i.name, sig.cache_position_dtype = i.dtype;
      exp_in.push_back({i.name, "int64 [seq]"});
      if (!is_index(i.dtype) || i.shape.size() != 1)
        problems.push_back("cache_position must be int64 or int32 of rank 1, found " + io_str(i));
    } else if (match_layer(i.name, conv->past_key) || match_layer(i.name, conv->past_value)) {
      // checked per layer below
    } else {
      problems.push_back("unexpected input '" + i.name + "' " + io_str(i) +
                         ": kvrun has no value for it (it provides input_ids or inputs_embeds, attention_mask, "
                         "position_ids, use_cache_branch" +
                         std::string(conv->delta ? ", cache_position" : "") + " and the past KV)");
      continue;
    }
    known_inputs.insert(i.name);
  }
  if (sig.ids_input.empty() == sig.embeds_input.empty()) {
    exp_in.insert(exp_in.begin(), {"input_ids | inputs_embeds", "int64 [batch, seq] | float [batch, seq, hidden]"});
    problems.push_back(sig.ids_input.empty() ? "the graph takes neither input_ids nor inputs_embeds"
                                             : "the graph takes both input_ids and inputs_embeds");
  }

  if (conv->delta) {
    // The KV-delta graph cannot run without the mask and the positions of the new rows.
    if (sig.mask_input.empty()) {
      exp_in.push_back({"attention_mask", "int64 [batch, past + seq]"});
      problems.push_back("missing input 'attention_mask' (a KV-delta graph needs it)");
    }
    if (sig.cache_position_input.empty()) {
      exp_in.push_back({"cache_position", "int64 [seq]"});
      problems.push_back("missing input 'cache_position' (a KV-delta graph takes the positions of the new rows)");
    }
  }

  exp_out.push_back({"logits", "float [batch, seq, vocab]"});
  if (const IoInfo* lo = s.find_output("logits")) {
    sig.logits_output = lo->name;
    sig.logits_rank = static_cast<int64_t>(lo->shape.size());
    if (!is_float(lo->dtype) || (lo->shape.size() != 3 && lo->shape.size() != 2))
      problems.push_back("logits must be float of rank 3 [batch, seq, vocab] or 2 [batch, vocab], found " +
                         io_str(*lo));
  } else {
    problems.push_back("missing output 'logits'");
  }

  // KV: pairs per layer, shapes agree, dtype shared.
  std::optional<io::DType> kv_dt;
  const IoInfo* kv_example = nullptr;
  bool kv_example_is_past = false;
  for (int64_t l = 0; l < layers; ++l) {
    KvLayer kl;
    const std::string pk = fmt(conv->past_key, l), pv = fmt(conv->past_value, l), ok = fmt(conv->present_key, l),
                      ov = fmt(conv->present_value, l);
    const char* past_spec =
        conv->delta ? "float [batch, max_total_len, kv_heads, head_dim]" : "float [batch, kv_heads, past, head_dim]";
    const char* present_spec =
        conv->delta ? "float [batch, seq, kv_heads, head_dim]" : "float [batch, kv_heads, total, head_dim]";
    if (sig.has_past) {
      exp_in.push_back({pk, past_spec});
      exp_in.push_back({pv, past_spec});
    }
    exp_out.push_back({ok, present_spec});
    exp_out.push_back({ov, present_spec});
    std::vector<std::pair<const IoInfo*, std::string>> parts;
    if (sig.has_past) {
      parts.emplace_back(s.find_input(pk), pk);
      parts.emplace_back(s.find_input(pv), pv);
    }
    parts.emplace_back(s.find_output(ok), ok);
    parts.emplace_back(s.find_output(ov), ov);
    for (const auto& [io, name] : parts) {
      if (!io) {
        const bool is_input = name == pk || name == pv;
        problems.push_back("missing " + std::string(is_input ? "input" : "output") + " '" + name + "' (layer " +
                           std::to_string(l) + " of " + std::to_string(layers) + ")");
        continue;
      }
      if (!is_float(io->dtype) || io->shape.size() != 4) {
        problems.push_back("'" + name + "' must be float of rank 4, found " + io_str(*io));
        continue;
      }
      if (kv_dt && *kv_dt != io->dtype)
        problems.push_back("'" + name + "' is " + io::dtype_name(io->dtype) + " but other KV tensors are " +
                           io::dtype_name(*kv_dt));
      kv_dt = io->dtype;
      const bool past_io = io->name == pk || io->name == pv;
      if (!kv_example || (past_io && !kv_example_is_past)) kv_example = io, kv_example_is_past = past_io;
    }
    if (sig.has_past) kl.past_key = pk, kl.past_value = pv;
    kl.present_key = ok, kl.present_value = ov;
    sig.layers.push_back(kl);
  }

  if (!sig.local_mask_input.empty()) read_local_layers(s, layers, sig, problems);

  if (!problems.empty()) {
    std::string msg = sig.file + ": the graph does not match the decoder signature kvrun expects (" + conv->label +
                      ", " + std::to_string(layers) + " layers)\n" + side_by_side(s, exp_in, exp_out) + "  problems:";
    for (const auto& p : problems) msg += "\n   - " + p;
    throw Error(msg);
  }
  sig.kv_dtype = *kv_dt;

  // KV layout [batch, a, b, head_dim]: which of axes 1 and 2 is the sequence?
  const auto& sh = kv_example->shape;
  const auto& sym = kv_example->symbolic;
  sig.head_dim = sh[3];
  if (sh[0] > 0) sig.fixed_batch = sh[0];
  auto looks_seq = [&](int a) {
    const std::string& n = sym[static_cast<size_t>(a)];
    return sh[static_cast<size_t>(a)] < 0 &&
           (n.find("seq") != std::string::npos || n.find("len") != std::string::npos ||
            n.find("past") != std::string::npos || n.find("total") != std::string::npos);
  };
  const bool dyn1 = sh[1] < 0, dyn2 = sh[2] < 0;
  if (sig.kv_delta) {
    sig.seq_axis = 1;  // [batch, max_total_len, kv_heads, head_dim], deltas [batch, seq, kv_heads, head_dim]
  } else if (dyn1 != dyn2) {
    sig.seq_axis = dyn1 ? 1 : 2;
  } else if (looks_seq(1) != looks_seq(2)) {
    sig.seq_axis = looks_seq(1) ? 1 : 2;
  } else if (hints.kv_heads && !dyn1 && sh[1] == *hints.kv_heads && sh[2] != *hints.kv_heads) {
    sig.seq_axis = 2;
  } else if (hints.kv_heads && !dyn2 && sh[2] == *hints.kv_heads && sh[1] != *hints.kv_heads) {
    sig.seq_axis = 1;
  }
  if (sig.seq_axis > 0) {
    const int64_t h = sh[static_cast<size_t>(sig.seq_axis == 1 ? 2 : 1)];
    if (h > 0) sig.kv_heads = h;
  }
  if (sig.kv_heads < 0 && hints.kv_heads) sig.kv_heads = *hints.kv_heads;
  if (sig.head_dim < 0 && hints.head_dim) sig.head_dim = *hints.head_dim;
  return sig;
}

}  // namespace kvrun::runtime
