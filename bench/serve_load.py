"""Load generator for bench/run-serve.sh: C concurrent clients stream /v1/completions from an
OpenAI-compatible server (kvrun serve or llama.cpp's llama-server) with the same token-id
prompts, a fixed number of generated tokens (ignore_eos) and greedy decoding.

    python bench/serve_load.py --url http://127.0.0.1:8080 --model NAME --clients 1 4 16 64 \
        --prompt-len 128 --gen 64 --engine kvrun --label gemma3-270m

One JSON line per client count: aggregate generated tokens/s (all tokens / wall time from the
first request to the last response), time to first token p50/p90/p99, inter-token latency p50.
Each client sends requests back to back until REQUESTS_PER_CLIENT (2) are done (at least 8 in all).
"""
import argparse
import json
import random
import statistics
import sys
import threading
import time

import requests


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def one_request(url, model, prompt, gen):
    body = {"model": model, "prompt": prompt, "max_tokens": gen, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}, "cache_prompt": False}
    t0 = time.perf_counter()
    first, stamps, usage, chunks = None, [], None, 0
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            if ev.get("choices") and ev["choices"][0].get("text"):
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                stamps.append(now)
                chunks += 1
    tokens = usage["completion_tokens"] if usage else chunks
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return tokens, first, itl


def level(url, model, clients, prompts, gen, per_client):
    results, lock = [], threading.Lock()
    total = max(8, clients * per_client)
    counter = iter(range(total))

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            out = one_request(url, model, prompts[i % len(prompts)], gen)
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(r[0] for r in results)
    ttft = [r[1] for r in results if r[1] is not None]
    itl = [x for r in results for x in r[2]]
    return {"clients": clients, "requests": len(results), "generated_tokens": toks, "wall_seconds": round(wall, 3),
            "tokens_per_second": round(toks / wall, 2), "ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90),
            "ttft_p99": pct(ttft, 99), "itl_p50": pct(itl, 50),
            "tokens_per_request_min": min(r[0] for r in results), "tokens_per_request_max": max(r[0] for r in results)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--engine", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen", type=int, default=64)
    p.add_argument("--per-client", type=int, default=2)
    p.add_argument("--vocab-lo", type=int, default=1000)
    p.add_argument("--vocab-hi", type=int, default=20000)
    p.add_argument("--slots", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(1234)
    # distinct prompts (no prefix shared between requests: each is prefilled in full)
    prompts = [[rng.randrange(a.vocab_lo, a.vocab_hi) for _ in range(a.prompt_len)] for _ in range(256)]
    level(a.url, a.model, 1, prompts[-2:], 4, 1)  # warm-up
    for c in a.clients:
        r = level(a.url, a.model, c, prompts, a.gen, a.per_client)
        r.update({"engine": a.engine, "model": a.label, "prompt_len": a.prompt_len, "gen": a.gen, "slots": a.slots})
        print(json.dumps(r), flush=True)
        print(f"{a.engine} {a.label} clients {c}: {r['tokens_per_second']} tok/s, TTFT p50 {r['ttft_p50']:.3f} s",
              file=sys.stderr)


if __name__ == "__main__":
    main()
