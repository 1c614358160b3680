#!/usr/bin/env python3
"""Reference beam searches for kvrun's C++ beam search (tests/beam_search_test.cpp).

TOOLING ONLY: CI never runs this script; its outputs are committed under tests/fixtures/beam/.
Needs torch, transformers 5.23 and safetensors (the kvrun tools venv). kvrun's own code is never
used here. Usage, from the repository root:

    /root/.cache/kvrun/venv-tools/bin/python tools/make_beam_goldens.py

The "model" is synthetic and deterministic, so that the C++ test can implement it bit for bit:
an encoder-decoder `PreTrainedModel` + `GenerationMixin` (config.is_encoder_decoder, so HF's
`generate` runs `_beam_search` exactly as for Marian: decoder_prompt_len 1, encoder outputs
expanded x num_beams, decoder started from decoder_start_token_id). For a sentence with source
ids src[0..2] and a decoder prefix p[0..n-1] (p[0] = decoder start), the float32 logits of the
next token are

    enc    = (S[src0] + S[src1]) + S[src2]                  (the encoder output, one row)
    logits = ((T1[p[n-1]] + T2[n-1]) + T3[h(p)]) + enc      (float32 adds in this order)
    h(p)   = fold(h = 0; h = (h * 131 + t + 7) mod M for t in p)

so they depend on the whole prefix (h), which makes the C++ twin keep a per-row state that
reorder() must move. Every table is float32 from torch.Generator with a fixed seed; T2's EOS
column gets a ramp so beams end at different lengths. The model has no KV cache (use_cache=False:
HF feeds the whole prefix each step); the logits are the same either way.

Writes (deterministic: fixed seeds, no time or environment in the output):
  tables.safetensors  float32 tables "<model>.{t1,t2,t3,s}" for the models "small" (V=24,
                      topk(2K) over K*V takes std::nth_element's path in torch), "wide" (V=160:
                      the partial_sort path, and pad = 0, which HF's output padding replaces by
                      eos) and "ties" (V=24, tables rounded to multiples of 1/4 so equal logits,
                      hence topk ties, are common).
  goldens.json        {"versions", "models": {name: {vocab, eos, pad, start, hash_mod, ...}},
                       "cases": [{name, model, sources, options, sequences, scores, lengths}],
                       "topk": [{values, k, indices}]}: for each configuration the options given
                      to generate() and HF's output: sequences (padded rows, start token
                      included), sequences_scores and the generated length of each row (from
                      beam_indices, as HF crops its output). "topk" records torch.topk's index
                      order on arrays full of ties and -inf (its tie order is std::partial_sort's
                      or std::nth_element's, not the lowest index). "log_softmax" records
                      torch.log_softmax rows (x, y); non-finite floats are "inf", "-inf", "nan".
"""
import json
import math
import os
import sys

import numpy as np
import safetensors.torch
import torch
import transformers
from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "beam")

# name -> vocab, eos, pad, decoder start, source vocab, positions, hash modulus, seed, quantum
MODELS = {
    "small": dict(vocab=24, eos=0, pad=23, start=23, src_vocab=16, positions=40, hash_mod=61, seed=1, quantum=0.0),
    "wide": dict(vocab=160, eos=2, pad=0, start=0, src_vocab=16, positions=40, hash_mod=53, seed=2, quantum=0.0),
    "ties": dict(vocab=24, eos=0, pad=23, start=23, src_vocab=16, positions=40, hash_mod=61, seed=3, quantum=0.25),
}


def make_tables(m):
    g = torch.Generator().manual_seed(m["seed"])
    V = m["vocab"]
    t1 = torch.randn(V, V, generator=g) * 1.5
    t2 = torch.randn(m["positions"], V, generator=g) * 0.4
    t2[:, m["eos"]] += torch.arange(m["positions"], dtype=torch.float32) * 0.7 - 4.0
    t3 = torch.randn(m["hash_mod"], V, generator=g) * 1.0
    s = torch.randn(m["src_vocab"], V, generator=g) * 0.7
    tables = {"t1": t1, "t2": t2, "t3": t3, "s": s}
    if m["quantum"]:
        q = m["quantum"]
        tables = {k: torch.round(v / q) * q for k, v in tables.items()}
    return {k: v.to(torch.float32).contiguous() for k, v in tables.items()}


def prefix_hash(prefix, mod):
    h = 0
    for t in prefix:
        h = (h * 131 + int(t) + 7) % mod
    return h


class SynthConfig(PretrainedConfig):
    model_type = "kvrun_beam_synth"

    def __init__(self, vocab_size=24, hash_mod=61, **kwargs):
        self.vocab_size = vocab_size
        self.hash_mod = hash_mod
        super().__init__(**kwargs)


class SynthEncoder(torch.nn.Module):
    main_input_name = "input_ids"

    def __init__(self, s):
        super().__init__()
        self.register_buffer("s", s)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        enc = self.s[input_ids[:, 0]]
        for j in range(1, input_ids.shape[1]):
            enc = enc + self.s[input_ids[:, j]]
        return BaseModelOutput(last_hidden_state=enc[:, None, :])


class SynthModel(PreTrainedModel, GenerationMixin):
    config_class = SynthConfig
    main_input_name = "input_ids"

    def __init__(self, config, tables):
        super().__init__(config)
        self.encoder = SynthEncoder(tables["s"])
        self.register_buffer("t1", tables["t1"])
        self.register_buffer("t2", tables["t2"])
        self.register_buffer("t3", tables["t3"])
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # PreTrainedModel wants a parameter

    def get_encoder(self):
        return self.encoder

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None, **kwargs):
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids)
        enc = encoder_outputs[0][:, 0, :]
        n = decoder_input_ids.shape[1]
        last = decoder_input_ids[:, -1]
        h = torch.tensor([prefix_hash(row.tolist(), self.config.hash_mod) for row in decoder_input_ids])
        logits = ((self.t1[last] + self.t2[n - 1][None, :]) + self.t3[h]) + enc
        return Seq2SeqLMOutput(logits=logits[:, None, :], encoder_last_hidden_state=encoder_outputs[0])


SOURCES = [[3, 1, 4], [1, 5, 9], [2, 6, 5], [3, 5, 8], [9, 7, 9], [15, 0, 2], [11, 11, 11]]


def cases():
    """(name, model, sources, generate() options). Defaults: Marian's generation config shape."""
    out = []

    def add(name, model="small", sources=SOURCES[:3], **o):
        m = MODELS[model]
        opt = dict(
            num_beams=4,
            max_length=16,
            length_penalty=1.0,
            early_stopping=False,
            min_length=0,
            bad_words_ids=[[m["pad"]]],
            forced_eos_token_id=m["eos"],
            renormalize_logits=False,
            num_return_sequences=1,
            eos_token_id=[m["eos"]],
            pad_token_id=m["pad"],
        )
        opt.update(o)
        out.append((name, model, sources, opt))

    for k in (2, 4, 5):
        for es in (False, True, "never"):
            add(f"k{k}_es{es}", num_beams=k, early_stopping=es)
    for lp in (0.6, 2.0):
        for es in (False, True, "never"):
            add(f"lp{lp}_es{es}", length_penalty=lp, early_stopping=es)
    add("lp0_never", length_penalty=0.0, early_stopping="never")
    add("lp-0.5", length_penalty=-0.5)
    add("lp-0.5_never", length_penalty=-0.5, early_stopping="never", num_beams=3)
    add("renorm_k4", renormalize_logits=True)
    add("renorm_k5_never_lp0.6", renormalize_logits=True, num_beams=5, early_stopping="never", length_penalty=0.6)
    add("nrs3_k4", num_return_sequences=3)
    add("nrs5_k5_never", num_return_sequences=5, num_beams=5, early_stopping="never")
    add("nrs2_k2_true", num_return_sequences=2, num_beams=2, early_stopping=True)
    add("min_length8", min_length=8)
    add("min_length8_renorm_nrs2", min_length=8, renormalize_logits=True, num_return_sequences=2)
    # [23, 4]: the start token (pad) as prefix, so token 4 is banned at the first step only.
    add("bad_multi", bad_words_ids=[[23], [5, 7], [3, 3, 9], [23, 4], [0]], num_return_sequences=2)
    add("bad_multi_renorm", bad_words_ids=[[23], [7, 1], [1, 12]], renormalize_logits=True, num_beams=5)
    add("no_bad_no_forced", bad_words_ids=None, forced_eos_token_id=None)
    add("maxlen6_forced", max_length=6, num_return_sequences=2)
    add("maxlen6_unforced", max_length=6, forced_eos_token_id=None, num_return_sequences=2)
    add("maxlen2", max_length=2, num_return_sequences=4)
    add("maxlen4_never_lp2", max_length=4, early_stopping="never", length_penalty=2.0)
    add("two_eos", eos_token_id=[0, 5], num_beams=3, num_return_sequences=3)
    add("two_eos_forced_list", eos_token_id=[0, 5], forced_eos_token_id=[0, 5], max_length=8, num_beams=3)
    add("batch1", sources=SOURCES[4:5], num_beams=5, num_return_sequences=2)
    add("batch7", sources=SOURCES, num_beams=4, num_return_sequences=2)
    add("batch7_true_lp0.6", sources=SOURCES, early_stopping=True, length_penalty=0.6)
    add("wide_k4", model="wide", sources=SOURCES[:4])
    add("wide_k2_nrs2_lp0.6", model="wide", num_beams=2, num_return_sequences=2, length_penalty=0.6)
    add("wide_k5_true_renorm", model="wide", num_beams=5, early_stopping=True, renormalize_logits=True)
    add("wide_k4_never_maxlen10", model="wide", early_stopping="never", max_length=10, num_return_sequences=4)
    add("ties_k4", model="ties", sources=SOURCES[:4], num_return_sequences=4)
    add("ties_k5_never_lp2", model="ties", num_beams=5, early_stopping="never", length_penalty=2.0)
    add("ties_k3_renorm_true", model="ties", num_beams=3, renormalize_logits=True, early_stopping=True)
    return out


def num(x):
    """A float for JSON: non-finite values as the strings "inf", "-inf", "nan"."""
    x = float(x)
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def log_softmax_cases():
    """torch.log_softmax rows (the C++ one rounds log(sum) differently: within a few ulp)."""
    g = torch.Generator().manual_seed(11)
    out = []
    for n, scale in [(24, 3.0), (160, 3.0), (1000, 5.0), (4000, 4.0)]:
        x = torch.randn(n, generator=g) * scale
        x[torch.rand(n, generator=g) < 0.05] = -math.inf
        out.append({"x": [num(v) for v in x.tolist()], "y": [num(v) for v in torch.log_softmax(x, -1).tolist()]})
    return out


def topk_cases():
    """torch.topk index order on rows with many ties (and -inf), both of its CPU paths."""
    g = torch.Generator().manual_seed(7)
    out = []
    for n, k in [(10, 3), (12, 4), (24, 8), (40, 10), (48, 8), (96, 8), (120, 10), (320, 4), (512, 8), (800, 10),
                 (1000, 8), (640, 10), (15, 5), (9, 3), (30, 20)]:
        for levels in (2, 3, 7):
            v = torch.randint(0, levels, (n,), generator=g).to(torch.float32)
            v[torch.rand(n, generator=g) < 0.2] = -math.inf
            idx = torch.topk(v, k).indices
            out.append({"values": [num(x) for x in v.tolist()], "k": k, "indices": idx.tolist()})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    tables = {name: make_tables(m) for name, m in MODELS.items()}
    flat = {f"{name}.{k}": v for name, t in tables.items() for k, v in t.items()}
    safetensors.torch.save_file(flat, os.path.join(OUT, "tables.safetensors"), metadata={"format": "pt"})

    models = {}
    for name, m in MODELS.items():
        cfg = SynthConfig(
            vocab_size=m["vocab"],
            hash_mod=m["hash_mod"],
            is_encoder_decoder=True,
            pad_token_id=m["pad"],
            eos_token_id=m["eos"],
            decoder_start_token_id=m["start"],
        )
        models[name] = SynthModel(cfg, tables[name]).eval()

    results = []
    for name, model_name, sources, opt in cases():
        m = MODELS[model_name]
        gc = GenerationConfig(
            do_sample=False,
            use_cache=False,
            return_dict_in_generate=True,
            output_scores=True,
            decoder_start_token_id=m["start"],
            **opt,
        )
        with torch.no_grad():
            out = models[model_name].generate(input_ids=torch.tensor(sources), generation_config=gc)
        lengths = ((out.beam_indices + 1) != 0).sum(dim=1).tolist()
        results.append(
            {
                "name": name,
                "model": model_name,
                "sources": sources,
                "options": {k: v for k, v in opt.items()},
                "sequences": out.sequences.tolist(),
                "scores": [num(x) for x in out.sequences_scores.to(torch.float32).tolist()],
                "lengths": lengths,
            }
        )
        print(f"{name}: lengths {lengths}", file=sys.stderr)

    doc = {
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "models": MODELS,
        "cases": results,
        "topk": topk_cases(),
        "log_softmax": log_softmax_cases(),
    }
    with open(os.path.join(OUT, "goldens.json"), "w") as f:
        json.dump(doc, f, indent=None, separators=(",", ":"), allow_nan=False)
        f.write("\n")


if __name__ == "__main__":
    main()
