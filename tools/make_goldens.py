#!/usr/bin/env python3
"""Create tiny random Hugging Face checkpoints and record transformers reference outputs.

TOOLING ONLY: CI never runs this script. Its results are committed under
tests/fixtures/ and the C++ tests compare kvrun's ONNX exports against them.
It needs torch, transformers and safetensors; it never downloads anything.

Usage:
    python3 tools/make_goldens.py --out tests/fixtures [--config-style mixed|native|legacy]

For every fixture it writes tests/fixtures/<name>/:
  config.json, generation_config.json     as written by save_pretrained (see --config-style)
  model.safetensors                       or, for llama-tiny, a sharded set:
                                          model.safetensors.index.json + model-0000i-of-0000n.safetensors
  golden_logits.safetensors               float32 tensors, per prompt k = 0, 1, 2:
      prompt{k}.logits                [len_k, vocab]      plain forward pass, no KV cache
      prompt{k}.continuation_logits   [len_k + 32, vocab] teacher-forced forward of prompt + greedy output
  golden.json                             {"generator": "transformers X, torch Y", "prompts": [[ids] x3],
                                           "greedy": [[32 new ids] x3], "logits_file": "golden_logits.safetensors"}

Fixtures:
  qwen3-tiny       Qwen3ForCausalLM, head_dim 32 != hidden/heads, q_norm/k_norm, tied embeddings, fp32
  qwen2-tiny       Qwen2ForCausalLM, q/k/v bias, untied lm_head, fp32
  llama-tiny       LlamaForCausalLM, 1 KV head, llama3 rope scaling, untied, fp32, sharded safetensors
  qwen3-hd40       Qwen3ForCausalLM, head_dim 40 (not a multiple of 16), tied, fp32, vocab 128
  llama-hd72       LlamaForCausalLM, head_dim 72 (not a multiple of 16), untied, fp32, vocab 96
  qwen3-tiny-bf16  same config as qwen3-tiny (other seed), stored in bfloat16; references are computed
                   from the bf16 weights upcast to float32

Weights are re-randomised after construction so that every parameter matters and logits are
peaked: Linear/Embedding weights ~ N(0, 0.25), lm_head (or the tied embedding) ~ N(0, 0.6), RMSNorm weights
(input/post-attention/final norm, Qwen3 q_norm/k_norm) = 1 + 0.2*randn, biases = 0.1*randn.

All references come from the checkpoint re-loaded from disk (float32, eager attention, CPU).
Greedy generation runs with EOS disabled so exactly 32 new tokens are produced; the saved
generation_config.json still carries bos/eos ids.

--config-style: transformers >= 5 writes "rope_parameters" (with rope_theta inside) and "dtype";
checkpoints on the Hub written by transformers 4.x use top-level "rope_theta", "rope_scaling" and
"torch_dtype". "legacy" rewrites config.json into the 4.x spelling, "native" keeps what
save_pretrained wrote, "mixed" (default) makes qwen3-tiny and llama-tiny legacy and qwen2-tiny and
qwen3-tiny-bf16 native, so that a converter is tested against both spellings.
"""

import argparse
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

NEW_TOKENS = 32
PROMPT_LENGTHS = (1, 7, 19)
PROMPT_SEED = 1234
NORM_JITTER = 0.2
BIAS_STD = 0.1
# Init std of Linear/Embedding weights and of the output projection (lm_head, or the tied embedding).
# Chosen by a sweep: with std 0.08-0.15 the tied Qwen3 models collapse into repeating one token
# (the tied embedding dominates the residual stream) and the logits are flat unless the head is
# large; 0.25 / 0.6 gives a median top-1/top-2 logit gap of ~1, median top-1 probability ~0.5 and
# greedy continuations with 13-32 distinct tokens. Removing any single norm weight or bias changes
# the logits by >= ~0.7.
BODY_STD = 0.25
HEAD_STD = 0.6

QWEN3_CFG = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,  # deliberately != hidden_size / num_attention_heads (= 16)
    intermediate_size=128,
    num_hidden_layers=2,
    vocab_size=512,
    max_position_embeddings=256,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)

QWEN2_CFG = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    num_hidden_layers=2,
    vocab_size=512,
    max_position_embeddings=256,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)

LLAMA_CFG = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=1,
    intermediate_size=96,
    num_hidden_layers=3,
    vocab_size=512,
    max_position_embeddings=512,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    # Small original_max_position_embeddings so that, with head_dim 16, the llama3 scaling hits all
    # three regimes (unchanged high-frequency, smoothed, divided by factor).
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
)

# head_dim not a multiple of 16 (target ort: rotary outside GroupQueryAttention), kept small
# (< 300 KB per fixture): hidden 32, 2 heads, 1 KV head, vocab 128/96.
QWEN3_HD40_CFG = dict(
    hidden_size=32,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=40,
    intermediate_size=64,
    num_hidden_layers=2,
    vocab_size=128,
    max_position_embeddings=128,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)

LLAMA_HD72_CFG = dict(
    hidden_size=32,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=72,
    intermediate_size=48,
    num_hidden_layers=2,
    vocab_size=96,
    max_position_embeddings=128,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)

# name, config class, model class, config kwargs, seed, weight std, lm_head std, save dtype, max_shard_size,
# config style under --config-style mixed
FIXTURES = [
    ("qwen3-tiny", Qwen3Config, Qwen3ForCausalLM, QWEN3_CFG, 1001, BODY_STD, HEAD_STD, torch.float32, None, "legacy"),
    ("qwen2-tiny", Qwen2Config, Qwen2ForCausalLM, QWEN2_CFG, 1006, BODY_STD, HEAD_STD, torch.float32, None, "native"),
    ("llama-tiny", LlamaConfig, LlamaForCausalLM, LLAMA_CFG, 1003, BODY_STD, HEAD_STD, torch.float32, "100KB", "legacy"),
    ("qwen3-tiny-bf16", Qwen3Config, Qwen3ForCausalLM, QWEN3_CFG, 1004, BODY_STD, HEAD_STD, torch.bfloat16, None, "native"),
    ("qwen3-hd40", Qwen3Config, Qwen3ForCausalLM, QWEN3_HD40_CFG, 1007, BODY_STD, HEAD_STD, torch.float32, None, "native"),
    ("llama-hd72", LlamaConfig, LlamaForCausalLM, LLAMA_HD72_CFG, 1008, BODY_STD, HEAD_STD, torch.float32, None, "legacy"),
]


def randomize_(model, std, head_std):
    """Re-initialise every parameter (tied parameters are visited once).

    The output projection (lm_head, or embed_tokens when tied) gets head_std: after the final RMSNorm
    the logit scale is ~ head_std * sqrt(hidden_size), so this alone sets how peaked the logits are.
    """
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "lm_head.weight" or (tied and name.endswith("embed_tokens.weight")):
                p.normal_(0.0, head_std)
            elif name.endswith("norm.weight"):  # input/post_attention/final norm, q_norm, k_norm
                p.copy_(1.0 + NORM_JITTER * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(BIAS_STD * torch.randn_like(p))
            elif name.endswith(".weight") and p.dim() == 2:  # Linear and Embedding
                p.normal_(0.0, std)
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def to_legacy_config(path):
    """Rewrite config.json in the transformers 4.x spelling used by Hub checkpoints."""
    with open(path) as f:
        cfg = json.load(f)
    if "rope_parameters" not in cfg:  # already written in the 4.x spelling (older transformers)
        return
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def make_prompts(vocab):
    g = torch.Generator().manual_seed(PROMPT_SEED)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def top2_gaps(logits):
    top = torch.topk(logits, 2, dim=-1).values
    return (top[..., 0] - top[..., 1]).flatten()


def build(name, cfg_cls, model_cls, cfg_kwargs, seed, std, head_std, save_dtype, shard, style, out_dir):
    d = os.path.join(out_dir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)

    torch.manual_seed(seed)
    config = cfg_cls(**cfg_kwargs)
    model = model_cls(config).eval()
    randomize_(model, std, head_std)
    if save_dtype != torch.float32:
        model = model.to(save_dtype)
        config.dtype = save_dtype
    kwargs = dict(safe_serialization=True)
    if shard:
        kwargs["max_shard_size"] = shard
    model.save_pretrained(d, **kwargs)
    if style == "legacy":
        to_legacy_config(os.path.join(d, "config.json"))

    files = sorted(os.listdir(d))
    if shard:
        assert "model.safetensors.index.json" in files and "model.safetensors" not in files, files
        shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
        assert len(shards) >= 2, files
    else:
        assert "model.safetensors" in files, files
    with open(os.path.join(d, "generation_config.json")) as f:
        gen_cfg = json.load(f)
    assert gen_cfg.get("bos_token_id") == 1 and gen_cfg.get("eos_token_id") == 2, gen_cfg

    prompts = make_prompts(config.vocab_size)
    print(f"== {name}: seed {seed}, std {std}, lm_head std {head_std}, saved {str(save_dtype).replace('torch.', '')}, config {style}")
    record_goldens(d, name, prompts, model)


def record_goldens(d, name, prompts, model=None):
    """Records golden.json and golden_logits.safetensors for the checkpoint saved in `d`.

    The references come from the checkpoint re-loaded from disk (float32, eager attention, CPU);
    `model`, when given, is the in-memory model that was saved: the reload must reproduce its
    weights exactly. Greedy generation runs with EOS disabled, NEW_TOKENS new ids per prompt.
    Prints the files, tensor shapes and top-1/top-2 statistics of the recorded logits.
    """
    # All references come from the on-disk checkpoint, in float32.
    ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    assert ref.dtype == torch.float32
    if model is not None:
        with torch.no_grad():  # the reload must reproduce the weights exactly (bf16 upcast for the bf16 fixture)
            src = dict(model.named_parameters())
            for n, p in ref.named_parameters():
                assert torch.equal(p, src[n].float()), n

    # Disable EOS for generate(): a GenerationConfig with eos_token_id=None passed to generate() does
    # not work in transformers 5 (qwen2-tiny stopped on token 2): generate() fills None fields from
    # model.generation_config (loaded from generation_config.json, eos 2). So clear it on the
    # in-memory model; the file keeps eos/bos.
    # No min_new_tokens: that would suppress EOS and change the greedy path.
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = None

    tensors, greedy, gaps, probs = {}, [], [], []
    with torch.no_grad():
        for k, ids in enumerate(prompts):
            x = torch.tensor([ids])
            logits = ref(input_ids=x, use_cache=False).logits[0].float()
            out = ref.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1
            )
            assert out.shape == (1, len(ids) + NEW_TOKENS), out.shape
            assert out[0, : len(ids)].tolist() == ids
            new = out[0, len(ids):].tolist()
            cont_logits = ref(input_ids=out, use_cache=False).logits[0].float()
            # Greedy (KV-cached) must agree with argmax of the teacher-forced logits.
            tf_argmax = cont_logits[len(ids) - 1 : -1].argmax(-1).tolist()
            assert tf_argmax == new, (name, k, new, tf_argmax)
            torch.testing.assert_close(cont_logits[: len(ids)], logits, rtol=1e-4, atol=1e-4)
            tensors[f"prompt{k}.logits"] = logits.contiguous()
            tensors[f"prompt{k}.continuation_logits"] = cont_logits.contiguous()
            greedy.append(new)
            gaps.append(top2_gaps(cont_logits))
            probs.append(torch.softmax(cont_logits, -1).max(-1).values)

    save_file(tensors, os.path.join(d, "golden_logits.safetensors"))
    golden = {
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "prompts": prompts,
        "greedy": greedy,
        "logits_file": "golden_logits.safetensors",
    }
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")

    gaps = torch.cat(gaps)
    probs = torch.cat(probs)
    print(f"   files: {sorted(os.listdir(d))}")
    for k in sorted(tensors):
        print(f"   {k}: {list(tensors[k].shape)}")
    print(f"   greedy[2]: {greedy[2]}")
    q = torch.quantile(gaps, torch.tensor([0.0, 0.05, 0.25, 0.5]))
    print(
        f"   top1-top2 logit gap over {gaps.numel()} positions: min {q[0]:.4f} p5 {q[1]:.4f} "
        f"p25 {q[2]:.4f} median {q[3]:.4f}; gaps < 0.01: {(gaps < 0.01).sum().item()}, "
        f"< 0.05: {(gaps < 0.05).sum().item()}"
    )
    print(
        f"   top1 prob: median {probs.median():.3f} min {probs.min():.3f}; "
        f"logit std {torch.cat([t.flatten() for t in tensors.values()]).std():.3f}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--config-style", choices=["mixed", "native", "legacy"], default="mixed")
    ap.add_argument("--only", nargs="*", help="build only these fixtures")
    args = ap.parse_args()
    torch.set_num_threads(1)  # reproducible CPU reductions
    os.makedirs(args.out, exist_ok=True)
    for fx in FIXTURES:
        if args.only and fx[0] not in args.only:
            continue
        style = fx[-1] if args.config_style == "mixed" else args.config_style
        build(*fx[:-1], style, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
