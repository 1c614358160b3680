"""Shared by bench/run-translate.sh's runners: the sentences, the result record, peak RSS.

Sentences (make_sentences): deterministic English-like lines built from the words of the bench
model's SentencePiece model (pieces that start a word, letters only), seed 7; each line's length in
source tokens (MarianTokenizer: spm pieces + </s>) is drawn uniformly from [min_tokens, max_tokens]
and reached by adding words, then the last word is dropped while the line is too long. Sentence
case, a comma now and then, a final full stop.

Result (write_result): one JSON object, schema kvrun-translate-bench/1:
  engine, engine_version, variant, model, threads, beams, batch_size, sentences, gen_len,
  source_tokens, target_tokens (generated target tokens, start token excluded, a final </s> counted
  when the engine emits it), translate_seconds (wall time of the translation call(s) on all sentences,
  model load excluded), target_tokens_per_second (= target_tokens / translate_seconds, what
  CTranslate2's benchmark reports), load_seconds, peak_rss_bytes, model_bytes, min/max target tokens per
  sentence, busy_cores_at_start.
"""

import json
import os
import random
import resource
import sys
import time

SCHEMA = "kvrun-translate-bench/1"


def make_sentences(spm_path, n=300, min_tokens=5, max_tokens=60, seed=7):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_path)
    words = []
    for i in range(sp.get_piece_size()):
        p = sp.id_to_piece(i)
        if p.startswith("\u2581") and p[1:].isalpha() and len(p) > 2:
            words.append(p[1:].lower())
    rng = random.Random(seed)

    def ntok(s):  # MarianTokenizer: the spm pieces plus </s>
        return len(sp.encode(s)) + 1

    out = []
    for _ in range(n):
        want = rng.randint(min_tokens, max_tokens)
        ws = []
        while True:
            w = rng.choice(words)
            if ws and rng.random() < 0.08:
                w += ","
            ws.append(w)
            if ntok(" ".join(ws) + ".") >= want:
                break
        while len(ws) > 1 and ntok(" ".join(ws) + ".") > want:
            ws.pop()
        s = " ".join(ws).rstrip(",") + "."
        out.append(s[0].upper() + s[1:])
    return out


def busy_cores(interval=0.5):
    """Cores kept busy by other work during `interval` seconds (/proc/stat)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v), idle

    try:
        t0, i0 = read()
        time.sleep(interval)
        t1, i1 = read()
        return round((1 - (i1 - i0) / max(1, t1 - t0)) * os.cpu_count(), 2)
    except OSError:
        return None


def peak_rss_self():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_children():
    """Largest peak RSS among the reaped child processes."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def dir_bytes(path, exts=(".onnx", ".data", ".bin", ".safetensors", ".onnx_data")):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            if f.endswith(exts) or f.endswith(".onnx.data"):
                total += os.path.getsize(os.path.join(root, f))
    return total


def write_result(r):
    r = dict(r)
    r["schema"] = SCHEMA
    if r.get("translate_seconds"):
        r["target_tokens_per_second"] = round(r["target_tokens"] / r["translate_seconds"], 2)
    json.dump(r, sys.stdout)
    sys.stdout.write("\n")


def common_args(p):
    p.add_argument("model")
    p.add_argument("--sentences", required=True, help="one source sentence per line")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gen-len", type=int, default=48, help="target tokens per sentence (min = max)")
    p.add_argument("--variant", default="fp32")
    p.add_argument("--outputs", help="write the outputs (target pieces or ids, one line per sentence) here")
    return p


def read_sentences(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


if __name__ == "__main__":  # python3 bench/translate_common.py SPM OUT [N]
    spm_path, out = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    lines = make_sentences(spm_path, n)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
