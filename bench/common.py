"""Shared pieces of the bench/ runners: arguments, the prompt ids, statistics, the
result JSON (schema kvrun-bench/1). Standard library only."""
import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import time

SCHEMA = "kvrun-bench/1"
BUSY_AT_START = None
SKIP = 3  # exit code of a runner whose engine is not installed / cannot run
# Token ids are drawn below Qwen's special tokens (151643+) and above the byte range.
ID_LOW, ID_HIGH = 1000, 150000


def prompt_ids(n, seed=0):
    """The same n pseudo-random token ids for every engine (Python's own PRNG, so
    they do not depend on the numpy version)."""
    rng = random.Random(seed)
    return [rng.randrange(ID_LOW, ID_HIGH) for _ in range(n)]


def read_ids(path, n):
    """The first n ids of a file of integers (separated by commas and/or whitespace),
    e.g. a real text tokenized by bench/gguf_prompt_ids.py."""
    with open(path) as f:
        ids = [int(t) for t in f.read().replace(",", " ").split()]
    if len(ids) < n:
        raise SystemExit(f"{path}: {len(ids)} ids, need --prompt-len {n}")
    return ids[:n]


def prompt(args):
    """The prompt every engine of a job gets: --prompt-ids-file if given, else
    prompt_ids(--prompt-len, --seed)."""
    if args.prompt_ids_file:
        return read_ids(args.prompt_ids_file, args.prompt_len)
    return prompt_ids(args.prompt_len, args.seed)


def parse_args(description, model_help):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("model", help=model_help)
    # The environment defaults let a run-all.sh / run-gguf.sh job line set them per job.
    p.add_argument("--variant", default=os.environ.get("BENCH_VARIANT") or None,
                   help="label for the result (default: $BENCH_VARIANT, else from the model)")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--runs", type=int, default=5, help="measured runs, after the warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt ids")
    p.add_argument("--prompt-ids-file", default=os.environ.get("BENCH_PROMPT_IDS") or None,
                   help="take the prompt's ids from this file (integers; the first --prompt-len "
                        "of them) instead of --seed's random ids (default: $BENCH_PROMPT_IDS)")
    a = p.parse_args()
    if a.prompt_len < 1 or a.gen_len < 2 or a.runs < 1 or a.warmup < 0:
        p.error("need --prompt-len >= 1, --gen-len >= 2, --runs >= 1, --warmup >= 0")
    global BUSY_AT_START
    BUSY_AT_START = busy_cores()
    return a


def busy_cores(interval=0.5):
    """Cores kept busy by other work, measured from /proc/stat over `interval` seconds
    before the runner loads anything (None off Linux). Other load skews every engine;
    llama.cpp's spinning OpenMP threads collapse under it, so results record it."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round((1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1), 2)


def skip(msg):
    print(f"skip: {msg}", file=sys.stderr)
    sys.exit(SKIP)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def peak_rss_bytes():
    """Peak RSS of this process (Linux reports ru_maxrss in KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024 if platform.system() == "Linux" else kb


WEIGHT_SUFFIXES = (".onnx", ".data", ".onnx_data", ".safetensors", ".gguf", ".bin", ".pb")


def weights_bytes(path):
    """Bytes of the weight/graph files of a model file or folder (not configs,
    tokenizers). The peers report this as weights_bytes; every result also carries it
    as model_bytes (kvrun bench's own weights_bytes is what one decode step reads)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            if f.endswith(WEIGHT_SUFFIXES):
                total += os.path.getsize(os.path.join(root, f))
    return total


def run_loop(args, one_run):
    """Calls one_run(ids) -> (prefill_s, ttft_s, decode_s) warmup + runs times; returns
    the three lists over the measured runs. decode_s spans the gen_len - 1 steps after
    the first token, which comes out of the prefill."""
    ids = prompt(args)
    pre, ttft, dec = [], [], []
    for i in range(args.warmup + args.runs):
        p, t, d = one_run(ids)
        kind = "warm-up" if i < args.warmup else f"run {i - args.warmup + 1}/{args.runs}"
        log(f"  {kind}: prefill {args.prompt_len / p:.1f} tok/s, ttft {t:.3f} s, "
            f"decode {(args.gen_len - 1) / d:.2f} tok/s")
        if i >= args.warmup:
            pre.append(p), ttft.append(t), dec.append(d)
    return pre, ttft, dec


def result(args, engine, engine_version, variant, pre, ttft, dec, extra=None):
    r = {
        "schema": SCHEMA, "engine": engine, "engine_version": engine_version,
        "model": os.path.abspath(args.model), "variant": args.variant or variant,
        "threads": args.threads, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
        "runs": args.runs, "warmup": args.warmup,
        **prompt_source(args),
        "prefill_tokens_per_second": summary([args.prompt_len / s for s in pre]),
        "decode_tokens_per_second": summary([(args.gen_len - 1) / s for s in dec]),
        "time_to_first_token_s": summary(ttft),
        "peak_rss_bytes": peak_rss_bytes(),
        "weights_bytes": weights_bytes(args.model),
    }
    add_context(r, args.model)
    if extra:
        r.update(extra)
    return r


def prompt_source(args):
    """Where the prompt ids came from (only when not the default random ids)."""
    return {"prompt_ids_file": os.path.abspath(args.prompt_ids_file)} if args.prompt_ids_file else {}


def add_context(r, model):
    r["model_bytes"] = weights_bytes(model)
    r["busy_cores_at_start"] = BUSY_AT_START


def emit(r):
    print(json.dumps(r))
