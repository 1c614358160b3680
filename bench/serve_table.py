"""Table of bench/run-serve.sh results (RESULTS/*.jsonl) for docs/PERFORMANCE.md."""
import glob
import json
import os
import platform
import sys

rows = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.jsonl"))):
    rows += [json.loads(line) for line in open(f) if line.strip()]
if not rows:
    sys.exit("no results")
by = {(r["model"], r["engine"], r["clients"]): r for r in rows}
models = sorted({r["model"] for r in rows})
print(f"{rows[0]['prompt_len']}-token prompts, {rows[0]['gen']} generated tokens per request (ignore_eos, greedy), "
      f"{rows[0]['slots']} slots per server\n")
print("| model | clients | kvrun tok/s | llama-server tok/s | kvrun / llama | kvrun TTFT p50 / p90 s | llama TTFT p50 / p90 s |")
print("|---|---|---|---|---|---|---|")
fmt = lambda x: "-" if x is None else f"{x:.2f}"
for m in models:
    for c in sorted({r["clients"] for r in rows if r["model"] == m}):
        k, l = by.get((m, "kvrun", c)), by.get((m, "llamacpp", c))
        ratio = f"{k['tokens_per_second'] / l['tokens_per_second']:.2f}x" if k and l else "-"
        print(f"| {m} | {c} | {k['tokens_per_second'] if k else '-'} | {l['tokens_per_second'] if l else '-'} | {ratio} | "
              f"{fmt(k and k['ttft_p50'])} / {fmt(k and k['ttft_p90'])} | {fmt(l and l['ttft_p50'])} / {fmt(l and l['ttft_p90'])} |")
print()
print("| issue 14 target (16 clients) | value | met |")
print("|---|---|---|")
for m in models:
    k1, k16, l16 = by.get((m, "kvrun", 1)), by.get((m, "kvrun", 16)), by.get((m, "llamacpp", 16))
    if k1 and k16:
        r = k16["tokens_per_second"] / k1["tokens_per_second"]
        print(f"| {m}: kvrun 16 clients >= 3x kvrun 1 client | {r:.2f}x | {'met' if r >= 3 else 'not met'} |")
    if k16 and l16:
        r = k16["tokens_per_second"] / l16["tokens_per_second"]
        print(f"| {m}: kvrun >= llama-server at 16 clients | {r:.2f}x | {'met' if r >= 1 else 'not met'} |")
print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores.")
