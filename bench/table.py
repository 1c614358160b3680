#!/usr/bin/env python3
"""Prints a Markdown table of bench/results/*.json (schema kvrun-bench/1) for
docs/PERFORMANCE.md, with the machine and the engines' versions.
    python3 bench/table.py [RESULTS_DIR]"""
import glob
import json
import os
import platform
import sys

ORDER = ["kvrun", "onnxruntime-genai", "llama.cpp", "node-llama-cpp", "naive-ort-loop"]
REFERENCE = ("llama.cpp", "Q4_0")


SIMD = ["avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8"]


def cpu_model():
    """'model name' of /proc/cpuinfo plus the SIMD flags the engines' kernels pick from."""
    name, flags = None, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    simd = [f for f in SIMD if f in flags]
    return (name or platform.processor() or "unknown CPU") + (f" ({', '.join(simd)})" if simd else "")


def mem_total():
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"


def size(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def stat(s, fmt):
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def combine_passes(rows):
    """Results of one engine/variant from several passes (run-all.sh PASSES > 1) -> one row:
    median of the per-pass medians, min of the mins, max of the maxes, largest peak RSS."""
    groups = {}
    for r in rows:
        groups.setdefault((r["engine"], r["variant"], r["prompt_len"], r["gen_len"]), []).append(r)
    out = []
    for group in groups.values():
        r = dict(group[0])
        if len(group) > 1:
            for key in ("prefill_tokens_per_second", "decode_tokens_per_second", "time_to_first_token_s"):
                meds = sorted(g[key]["median"] for g in group)
                n = len(meds)
                r[key] = {"median": meds[n // 2] if n % 2 else (meds[n // 2 - 1] + meds[n // 2]) / 2,
                          "min": min(g[key]["min"] for g in group), "max": max(g[key]["max"] for g in group)}
            r["peak_rss_bytes"] = max(g["peak_rss_bytes"] for g in group)
            r["runs"] = sum(g["runs"] for g in group)
            r["passes"] = len(group)
        out.append(r)
    return out


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        if r.get("schema") == "kvrun-bench/1":
            rows.append(r)
    if not rows:
        print(f"table: no results in {folder}", file=sys.stderr)
        return 1
    rows = combine_passes(rows)
    disk = lambda r: r.get("model_bytes", r["weights_bytes"])
    rank = lambda r: (ORDER.index(r["engine"]) if r["engine"] in ORDER else len(ORDER), -disk(r))
    rows.sort(key=rank)
    ref = next((r for r in rows if (r["engine"], r["variant"]) == REFERENCE), None)
    # Without llama.cpp Q4_0 (run-gguf.sh: both engines on the same files), each row is
    # compared with llama.cpp on its own variant, i.e. the same GGUF file.
    same_file = {r["variant"]: r for r in rows if r["engine"] == "llama.cpp"} if ref is None else {}
    ref_name = "llama.cpp Q4_0" if ref or not same_file else "llama.cpp (same file)"

    r0 = rows[0]
    passes = f" in {r0['passes']} interleaved passes (median of the pass medians)" if r0.get("passes") else ""
    print(f"Prompt {r0['prompt_len']} tokens, {r0['gen_len']} new tokens (greedy, EOS ignored), "
          f"{r0['threads']} threads, median (min–max) over {r0['runs']} runs after "
          f"{r0['warmup']} warm-up{passes}.\n")
    print("| engine | variant | model size | prefill tok/s | decode tok/s | TTFT s | peak RSS "
          f"| decode vs {ref_name} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        dec = r["decode_tokens_per_second"]
        base = ref or same_file.get(r["variant"])
        ratio = f"{dec['median'] / base['decode_tokens_per_second']['median']:.2f}x" if base else "–"
        print(f"| {r['engine']} | {r['variant']} | {size(disk(r))} "
              f"| {stat(r['prefill_tokens_per_second'], lambda v: f'{v:.1f}')} "
              f"| {stat(dec, lambda v: f'{v:.2f}')} "
              f"| {stat(r['time_to_first_token_s'], lambda v: f'{v:.2f}')} "
              f"| {size(r['peak_rss_bytes'])} | {ratio} |")
    odd = [f"{r['engine']} {r['variant']}" for r in rows
           if (r["prompt_len"], r["gen_len"], r["threads"], r["runs"]) !=
              (r0["prompt_len"], r0["gen_len"], r0["threads"], r0["runs"])]
    if odd:
        print(f"\nNot measured with the same settings as the first row: {', '.join(odd)}.")
    busy = [r["busy_cores_at_start"] for r in rows if r.get("busy_cores_at_start") is not None]
    if busy and max(busy) > 0.2:
        print(f"\nWarning: other work kept up to {max(busy):.1f} cores busy when a runner started; "
              "take the numbers again on an idle machine.")
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores, {mem_total()} RAM, "
          f"{platform.system()} {platform.release()}.")
    versions = sorted({f"{r['engine']}: {r.get('engine_version', '?')}" for r in rows})
    print("Versions: " + "; ".join(versions) + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
