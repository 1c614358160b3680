#!/usr/bin/env python3
"""Create a tiny random Gemma 3 text checkpoint and record its transformers goldens.

TOOLING ONLY: CI never runs this script. Its result is committed as tests/fixtures/gemma3-tiny/
and the golden tests compare kvrun's reference forward pass and both build targets against it.
Needs torch, transformers and safetensors; downloads nothing.

Usage:
    python3 tools/make_gemma3_fixture.py [--out tests/fixtures]

Format: tools/make_goldens.py (its record_goldens(): prompt logits, 32 greedy tokens with EOS
disabled, teacher-forced continuation logits, all from the checkpoint re-loaded from disk in
float32 with eager attention).

The configuration is chosen so that each Gemma 3 rule is checked by the goldens:
  - sliding_window 8 and prompts of 1, 12 and 26 tokens followed by 32 generated ones: prefill and
    decode both run past the window; layer_types mixes sliding (local) and full (global) layers in
    an order no period reproduces (0, 1, 3 local; 2 global).
  - query_pre_attn_scalar 24 != head_dim 32: a head_dim^-0.5 attention scale is caught.
  - global layers rope_theta 1e6 with linear rope scaling (factor 4), local layers 10000 without:
    each layer type needs its own cos/sin tables.
  - RMSNorm weights w = 0.3 * randn (input, pre-feedforward, final, q_norm/k_norm) and 8 + 0.3 * randn
    (post-attention, post-feedforward): HF multiplies by (1 + w), so both w alone and a doubled offset
    are far off. The large post norms let the blocks' outputs outweigh the sqrt(hidden)-scaled tied
    embedding in the residual stream; with post norms near 1 every greedy continuation collapses into
    repeating one token (swept: post mean 1-8 x embedding std 0.25-0.6).
  - 2 query heads x head_dim 32 = 64 > hidden 48 (q_dim exceeds hidden, like the 270M model).
  - embeddings scaled by sqrt(48) inside embed_tokens; tied LM head; final_logit_softcapping 12
    (Gemma 3 itself has none; the tiny model's logits reach ~15-20, so the cap is active).
  - hidden_activation gelu_pytorch_tanh.
config.json is written by transformers 5 (rope_parameters per layer type, layer_types).
"""

import argparse
import os
import shutil
import sys

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens  # noqa: E402  (record_goldens)

NAME = "gemma3-tiny"
SEED = 1007
PROMPT_LENGTHS = (1, 12, 26)
BODY_STD = 0.25
HEAD_STD = 0.5
NORM_STD = 0.3
POST_NORM_MEAN = 8.0

CFG = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    vocab_size=256,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    sliding_window=8,
    layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
    query_pre_attn_scalar=24,
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    },
    hidden_activation="gelu_pytorch_tanh",
    final_logit_softcapping=12.0,
    attn_logit_softcapping=None,
    tie_word_embeddings=True,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
)


def randomize_(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embed_tokens.weight"):  # tied: also the LM head
                p.normal_(0.0, HEAD_STD)
            elif name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
                p.copy_(POST_NORM_MEAN + NORM_STD * torch.randn_like(p))
            elif name.endswith("norm.weight"):
                p.copy_(NORM_STD * torch.randn_like(p))
            elif name.endswith(".weight") and p.dim() == 2:
                p.normal_(0.0, BODY_STD)
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = os.path.join(args.out, NAME)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    torch.manual_seed(SEED)
    config = Gemma3TextConfig(**CFG)
    assert config.layer_types == CFG["layer_types"], config.layer_types
    model = Gemma3ForCausalLM(config).eval()
    randomize_(model)
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(make_goldens.PROMPT_SEED)
    prompts = [torch.randint(0, CFG["vocab_size"], (n,), generator=g).tolist() for n in PROMPT_LENGTHS]
    print(f"== {NAME}: seed {SEED}, std {BODY_STD}, head std {HEAD_STD}, norm std {NORM_STD}")
    make_goldens.record_goldens(d, NAME, prompts, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
