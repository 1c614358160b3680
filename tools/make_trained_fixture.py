#!/usr/bin/env python3
"""Train a small Qwen3 model on English text and record its Hugging Face goldens.

TOOLING ONLY: CI never runs this script. Its result is committed as
tests/fixtures/qwen3-trained/ and the quantization tests use it: the outputs of the random tiny
fixtures (tools/make_goldens.py) are chaotic in the weights, so int8/int4 weight noise flips many
of their next tokens and they cannot check the accuracy gates of `kvrun verify` (int8 >= 98%,
int4 >= 90% argmax agreement). A trained model, even a small one, responds smoothly to weight
noise like real checkpoints do.

Needs torch, transformers, safetensors and tokenizers; downloads nothing.

Usage:
    python3 tools/make_trained_fixture.py [--out tests/fixtures] [--steps 1500] [--threads 1]

With the defaults, training takes 13-16 minutes on one core of the (shared, busy) development
machine; one thread is also the fastest setting there and keeps the run reproducible. --layers and
--hidden (intermediate = 3 * hidden) change the shape for experiments.

Tokenizer: tests/fixtures/tiny-tokenizer/tokenizer.json (byte-level BPE, 512 ids, made by
tools/make_tiny_tokenizer.py); it is copied into the fixture, so text prompts work on it.
Its merges come from a small odd corpus, so English text averages ~1.25 characters per token:
the model is close to a character-level language model.

Corpus: the docstrings of the Python standard library installed with the interpreter that runs
this script (parsed with `ast`, nothing imported; test packages, idlelib, tkinter, lib2to3 left
out; ASCII only, duplicates dropped), in sorted file order. Every HOLDOUT_EVERY-th docstring is
held out of training; the golden prompts are the beginnings of held-out docstrings, so they are
in-distribution text the model has not seen. The result depends on the Python version
(golden.json's "generator" names it).

Model: Qwen3ForCausalLM (MODEL_CFG: hidden 128, 4 layers, 4 heads / 2 KV heads, head_dim 32,
intermediate 384, vocab 512, tied embeddings), transformers' default initialisation (seed SEED),
AdamW with warmup and cosine decay on random 128-token windows of the token stream (documents
separated by <|endoftext|>, id 0), float32 throughout, on CPU.

Output tests/fixtures/qwen3-trained/: config.json, generation_config.json, model.safetensors
(fp32), tokenizer.json, README.md (shape, training, prompts and continuations as text), and golden.json + golden_logits.safetensors in exactly the format of
tools/make_goldens.py (recorded by its record_goldens(): prompt logits, 32 greedy tokens with
EOS disabled, teacher-forced continuation logits).
"""

import argparse
import ast
import json
import math
import os
import platform
import shutil
import sys
import sysconfig
import time

import torch
from tokenizers import Tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens  # noqa: E402  (record_goldens, NEW_TOKENS)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tiny-tokenizer", "tokenizer.json")
NAME = "qwen3-trained"

SEED = 20240
EOS = 0  # <|endoftext|> in the tiny tokenizer
HOLDOUT_EVERY = 25
# Prompt lengths in tokens (the beginnings of distinct held-out docstrings). With 32 greedy tokens
# each, the teacher-forced comparison covers sum(len) + 8 * 31 positions.
PROMPT_LENGTHS = (1, 7, 19, 12, 24, 33, 45, 60)
SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
             "dist-packages", "__pycache__", "pydoc_data"}

MODEL_CFG = dict(
    hidden_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=384,
    num_hidden_layers=4,
    vocab_size=512,
    max_position_embeddings=512,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=EOS,
    eos_token_id=EOS,
)


def docstrings():
    """ASCII docstrings of the standard library, in a fixed order, without duplicates."""
    lib = sysconfig.get_paths()["stdlib"]
    seen, out = set(), []
    for root, dirs, files in os.walk(lib):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            try:
                with open(os.path.join(root, f), encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    d = ast.get_docstring(node)
                    if d and d.isascii() and len(d) >= 40 and d not in seen:
                        seen.add(d)
                        out.append(d)
    return out


def lr_at(step, steps, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def eval_loss(model, stream, seq, n_windows):
    losses = []
    for i in range(n_windows):
        x = stream[i * seq : (i + 1) * seq]
        if len(x) < seq:
            break
        x = x.unsqueeze(0)  # labels are shifted inside the model
        losses.append(model(input_ids=x, labels=x, use_cache=False).loss.item())
    return sum(losses) / len(losses)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=MODEL_CFG["num_hidden_layers"])
    ap.add_argument("--hidden", type=int, default=MODEL_CFG["hidden_size"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()

    tok = Tokenizer.from_file(TOKENIZER)
    assert tok.get_vocab_size() == MODEL_CFG["vocab_size"] and tok.token_to_id("<|endoftext|>") == EOS
    docs = docstrings()
    train_docs = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY != 0]
    held_docs = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY == 0]

    def stream_of(ds):
        ids = []
        for enc in tok.encode_batch(ds):
            ids.extend(enc.ids)
            ids.append(EOS)
        return torch.tensor(ids, dtype=torch.long)

    train, held = stream_of(train_docs), stream_of(held_docs)
    chars = sum(len(d) for d in train_docs)
    print(f"corpus: {len(docs)} docstrings, train {len(train_docs)} ({chars} chars, {len(train)} tokens, "
          f"{chars / len(train):.2f} chars/token), held out {len(held_docs)} ({len(held)} tokens)")

    torch.manual_seed(SEED)
    cfg = dict(MODEL_CFG, num_hidden_layers=args.layers, hidden_size=args.hidden,
               intermediate_size=3 * args.hidden)
    config = Qwen3Config(**cfg)
    model = Qwen3ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters")
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(SEED + 1)
    warmup = max(1, args.steps // 20)
    model.train()
    t_train = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup)
        starts = torch.randint(0, len(train) - args.seq, (args.batch,), generator=g)
        x = torch.stack([train[s : s + args.seq] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x, use_cache=False).loss  # labels are shifted inside the model
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step + 1 == args.steps:
            print(f"step {step:5d}  lr {opt.param_groups[0]['lr']:.2e}  train loss {loss.item():.3f}  "
                  f"{time.time() - t_train:.0f} s", flush=True)
    train_s = time.time() - t_train
    model.eval()
    held_loss = eval_loss(model, held, args.seq, 64)
    print(f"trained {args.steps} steps x {args.batch} x {args.seq} tokens in {train_s:.0f} s; "
          f"held-out loss {held_loss:.3f} nats/token ({held_loss / math.log(2) * len(held) / len(''.join(held_docs)):.2f} bits/char)")

    d = os.path.join(args.out, NAME)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    model.save_pretrained(d, safe_serialization=True)
    shutil.copyfile(TOKENIZER, os.path.join(d, "tokenizer.json"))

    prompts, candidates = [], iter(held_docs)
    for n in PROMPT_LENGTHS:  # the next held-out docstring that is long enough
        ids = next(ids for ids in (tok.encode(doc).ids for doc in candidates) if len(ids) >= n)
        prompts.append(ids[:n])
        print(f"prompt {len(prompts) - 1} ({n} tokens): {tok.decode(ids[:n])!r}")
    print(f"== {NAME}: seed {SEED}, {args.steps} steps")
    make_goldens.record_goldens(d, NAME, prompts, model)
    with open(os.path.join(d, "golden.json")) as f:
        golden = json.load(f)
    for k, ids in enumerate(golden["greedy"]):
        print(f"greedy {k}: {tok.decode(ids)!r}")
    golden["generator"] += (f"; trained by tools/make_trained_fixture.py on the Python {platform.python_version()}"
                            f" stdlib docstrings, {args.steps} steps")
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(
            f"# {NAME}\n\n"
            "Made by `tools/make_trained_fixture.py` (tooling, not run by CI); regenerate with\n"
            f"`python3 tools/make_trained_fixture.py --steps {args.steps}`.\n\n"
            f"Qwen3ForCausalLM, {n_params} parameters: hidden {config.hidden_size}, "
            f"{config.num_hidden_layers} layers, {config.num_attention_heads} heads / "
            f"{config.num_key_value_heads} KV heads, head_dim {config.head_dim}, intermediate "
            f"{config.intermediate_size}, vocab {config.vocab_size} (tests/fixtures/tiny-tokenizer, copied here), "
            "tied embeddings, float32.\n\n"
            f"Trained from seed {SEED} for {args.steps} steps of {args.batch} x {args.seq} tokens "
            f"(AdamW, peak lr {args.lr}, cosine) on {len(train_docs)} docstrings of the Python "
            f"{platform.python_version()} standard library ({len(train)} tokens), on CPU with "
            f"{args.threads} thread(s) in {train_s:.0f} s. Held-out loss {held_loss:.3f} nats/token "
            f"({len(held_docs)} held-out docstrings).\n\n"
            "golden.json / golden_logits.safetensors: transformers' outputs for 8 prompts, the beginnings of\n"
            "held-out docstrings, and their 32-token greedy continuations (format: tools/make_goldens.py):\n\n"
        )
        for k, (p_ids, g_ids) in enumerate(zip(golden["prompts"], golden["greedy"])):
            f.write(f"- prompt {k}: {tok.decode(p_ids)!r} -> {tok.decode(g_ids)!r}\n")
    print(f"total {time.time() - t_start:.0f} s; files: "
          + ", ".join(f"{f} {os.path.getsize(os.path.join(d, f)) / 1e3:.0f} KB" for f in sorted(os.listdir(d))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
