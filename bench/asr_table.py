#!/usr/bin/env python3
"""Markdown tables of bench/results/asr/*.json (schema kvrun-bench-asr/1, bench/run-asr.sh) for
docs/PERFORMANCE.md: per job and clip the end-to-end time (median, min-max over every measured
run of every pass), RTF, stage medians, token counts, peak RSS, then the issue's targets.
    python3 bench/asr_table.py [RESULTS_DIR...] [--target-stat median|min]
Several directories are merged (a job's runs from all of them). --target-stat min judges the
targets on each job's fastest run (the least disturbed one on a shared machine)."""
import glob
import json
import os
import statistics
import sys

ORDER = ["kvrun-fp32", "kvrun-int8", "kvrun-int4", "funasr-torch-fp32", "sherpa-onnx-fp32", "sherpa-onnx-int8"]


def size(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f(x, fmt="{:.2f}"):
    return "–" if x is None else fmt.format(x)


def load(results):
    jobs = {}
    for p in sorted(glob.glob(os.path.join(results, "*.json"))):
        name = os.path.basename(p)[:-5].split(".pass")[0]
        with open(p) as fh:
            r = json.load(fh)
        j = jobs.setdefault(name, {"meta": r, "clips": {}, "peak": 0, "load": [], "loadavg": [], "busy": []})
        j["peak"] = max(j["peak"], r["peak_rss_bytes"] or 0)
        j["load"].append(r["load_s"])
        j["loadavg"] += [r["loadavg_start"], r["loadavg_end"]]
        j["busy"].append(r["busy_cores_at_start"])
        for clip, c in r["clips"].items():
            cc = j["clips"].setdefault(clip, {"audio_seconds": c["audio_seconds"], "runs": []})
            cc["runs"] += c["runs"]
    return jobs


def main():
    args = sys.argv[1:]
    stat = "median"
    if "--target-stat" in args:
        i = args.index("--target-stat")
        stat = args[i + 1]
        del args[i: i + 2]
    dirs = args or ["bench/results/asr"]
    jobs = {}
    for d in dirs:
        for n, j in load(d).items():
            if n not in jobs:
                jobs[n] = j
                continue
            o = jobs[n]
            o["peak"] = max(o["peak"], j["peak"])
            o["load"] += j["load"]
            o["loadavg"] += j["loadavg"]
            o["busy"] += j["busy"]
            for c, cc in j["clips"].items():
                o["clips"].setdefault(c, {"audio_seconds": cc["audio_seconds"], "runs": []})["runs"] += cc["runs"]
    results = ", ".join(dirs)
    if not jobs:
        print(f"no results in {results}")
        return 1
    names = [n for n in ORDER if n in jobs] + sorted(n for n in jobs if n not in ORDER)
    clips = sorted({c for j in jobs.values() for c in j["clips"]}, key=lambda c: (len(c), c))
    print("| engine | variant | weights on disk | clip | end to end s | RTF | front end s | encoder-adaptor s | "
          "prefill s (prompt tokens) | decode s (new tokens) | decode ms/token | peak RSS | load s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for n in names:
        j = jobs[n]
        m = j["meta"]
        for clip in clips:
            c = j["clips"].get(clip)
            if not c:
                continue
            rs = c["runs"]
            wall = [r["wall_s"] for r in rs]
            w = med(wall)
            gen = [r.get("generated_tokens") for r in rs]
            gen_s = f"{min(gen)}" if None not in gen and min(gen) == max(gen) else \
                (f"{min(gen)}–{max(gen)}" if None not in gen else "?")
            prompt = med([r.get("prompt_tokens") for r in rs])
            dec = med([r.get("decode_s") for r in rs])
            ms_tok = dec * 1000 / max(1, (med(gen) or 1) - 1) if dec is not None and None not in gen else None
            summary[(n, clip)] = {"wall": w if stat == "median" else min(wall), "rtf": w / c["audio_seconds"], "gen": gen}
            print(f"| {m['engine']} | {m['variant']} | {size(m['model_bytes'])} | {clip} ({c['audio_seconds']:.0f} s) | "
                  f"{w:.2f} ({min(wall):.2f}–{max(wall):.2f}) | {w / c['audio_seconds']:.3f} | "
                  f"{f(med([r.get('frontend_s') for r in rs]), '{:.3f}')} | {f(med([r.get('encoder_s') for r in rs]))} | "
                  f"{f(med([r.get('prefill_s') for r in rs]))} ({f(prompt, '{:.0f}')}) | {f(dec)} ({gen_s}) | "
                  f"{f(ms_tok, '{:.1f}')} | {size(j['peak'])} | {f(med(j['load']), '{:.1f}')} |")
    print()
    print("Runs per row: " + ", ".join(f"{n} {sum(len(c['runs']) for c in jobs[n]['clips'].values()) // max(1, len(jobs[n]['clips']))}"
                                      for n in names))
    la = [x for j in jobs.values() for x in j["loadavg"] if x is not None]
    busy = [x for j in jobs.values() for x in j["busy"] if x is not None]
    if la:
        print(f"Load average (1 min) at runner start/end: {min(la):.2f}–{max(la):.2f}; "
              f"cores busy before each load: {min(busy):.2f}–{max(busy):.2f}")
    print()
    print(f"Targets judged on the {stat} end-to-end time of each job and clip.")
    print()
    print("| target | clip | measured | met |")
    print("|---|---|---|---|")

    def ratio(a, b, clip):
        if (a, clip) in summary and (b, clip) in summary:
            return summary[(b, clip)]["wall"] / summary[(a, clip)]["wall"]
        return None

    for clip in clips:
        r = ratio("kvrun-int8", "funasr-torch-fp32", clip)
        if r is not None:
            print(f"| kvrun int8 end to end >= 3x PyTorch fp32 | {clip} | {r:.2f}x | {'yes' if r >= 3 else 'no'} |")
        for p in ("int8", "fp32"):
            r = ratio(f"kvrun-{p}", f"sherpa-onnx-{p}", clip)
            if r is not None:
                print(f"| kvrun {p} faster than sherpa-onnx {p} | {clip} | {r:.2f}x | {'yes' if r > 1 else 'no'} |")
    for n in names:
        if n.startswith("kvrun"):
            j = jobs[n]
            w = j["meta"]["model_bytes"]
            print(f"| {n}: peak RSS <= weights + 20% | all | {size(j['peak'])} vs {size(w)} x 1.2 = {size(w * 1.2)} "
                  f"({j['peak'] / w:.2f}x) | {'yes' if j['peak'] <= 1.2 * w else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
