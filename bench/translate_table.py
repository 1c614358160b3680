#!/usr/bin/env python3
"""Markdown table of bench/run-translate.sh results (schema kvrun-translate-bench/1).

    python3 bench/translate_table.py [RESULTS_DIR ...]     (default bench/results/translate)

Per job (files <job>.json or <job>.pass<k>.json): target tokens/s = target tokens / translation wall
time (model load excluded), median over the passes with min-max; peak RSS (median over passes);
model files on disk; target tokens per sentence (min-max over every pass: equal on every engine when
the fixed output length held). Then kvrun's speed relative to each peer, the issue 13 targets with
met / not met, and the machine.
"""
import glob
import json
import os
import platform
import re
import statistics
import sys

ORDER = ["kvrun-fp32", "kvrun-int8", "ct2-fp32", "ct2-int8", "optimum-fp32"]
ABSENT = {"kvrun-int8": ("kvrun", "int8", "absent: kvrun has no int8 Marian build yet")}


def load(dirs):
    jobs = {}
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            m = re.match(r"(.+?)(?:\.pass\d+)?\.json$", os.path.basename(path))
            with open(path) as f:
                r = json.load(f)
            if r.get("schema") != "kvrun-translate-bench/1":
                continue
            jobs.setdefault(m.group(1), []).append(r)
    return jobs


def mib(b):
    return f"{b / 2**20:.0f} MiB"


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        mem = 0
    return f"{cpu}, {os.cpu_count()} cores, {mem / 2**30:.0f} GiB, Linux {platform.release()}"


def main():
    dirs = sys.argv[1:] or ["bench/results/translate"]
    jobs = load(dirs)
    if not jobs:
        print(f"no results in {', '.join(dirs)}")
        return 1
    rows, speed, rss, versions, busy = [], {}, {}, {}, []
    first = next(iter(jobs.values()))[0]
    for name in ORDER + sorted(set(jobs) - set(ORDER)):
        rs = jobs.get(name)
        if not rs:
            if name in ABSENT:
                e, v, why = ABSENT[name]
                rows.append(f"| {e} | {v} | {why} | | | | |")
            continue
        tps = [r["target_tokens_per_second"] for r in rs]
        med = statistics.median(tps)
        speed[name] = med
        rss[name] = statistics.median(r["peak_rss_bytes"] for r in rs)
        versions[rs[0]["engine"]] = rs[0]["engine_version"]
        busy += [r.get("busy_cores_at_start") or 0 for r in rs]
        tmin = min(r["target_tokens_min"] for r in rs)
        tmax = max(r["target_tokens_max"] for r in rs)
        secs = statistics.median(r["translate_seconds"] for r in rs)
        rows.append(f"| {rs[0]['engine']} | {rs[0]['variant']} | {med:.1f} ({min(tps):.1f}-{max(tps):.1f}) | "
                    f"{secs:.1f} | {mib(rss[name])} | {mib(rs[0]['model_bytes'])} | "
                    f"{tmin if tmin == tmax else f'{tmin}-{tmax}'} |")
    print(f"{first['sentences']} sentences ({first['source_tokens']} source tokens), beam {first['beams']}, "
          f"batch {first['batch_size']}, {first['threads']} threads, {first['gen_len']} target tokens per "
          f"sentence; passes per job: {', '.join(f'{k} {len(v)}' for k, v in jobs.items())}\n")
    print("| engine | variant | target tokens/s, median (min-max) | translate s | peak RSS | model files | "
          "target tokens / sentence |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    k = speed.get("kvrun-fp32")
    if k:
        print()
        targets = [("ct2-fp32", 1.0, "kvrun fp32 >= 1.0x CTranslate2 fp32"),
                   ("ct2-int8", 1.0, "kvrun int8 >= 1.0x CTranslate2 int8"),
                   ("optimum-fp32", 3.0, "kvrun >= 3x the optimum loop")]
        print("| issue 13 target | kvrun / peer | met |")
        print("|---|---|---|")
        for peer, want, what in targets:
            if peer not in speed:
                continue
            if peer == "ct2-int8" and "kvrun-int8" not in speed:
                print(f"| {what} | no kvrun int8 (fp32 / CT2 int8: {k / speed[peer]:.2f}x) | not met (absent) |")
                continue
            mine = speed["kvrun-int8"] if peer == "ct2-int8" else k
            x = mine / speed[peer]
            print(f"| {what} | {x:.2f}x | {'met' if x >= want else 'not met'} |")
        for peer in ("ct2-fp32", "ct2-int8"):
            if peer in rss:
                ok = rss["kvrun-fp32"] <= rss[peer]
                print(f"| kvrun peak RSS <= CTranslate2's ({peer}) | {mib(rss['kvrun-fp32'])} vs {mib(rss[peer])} | "
                      f"{'met' if ok else 'not met'} |")
    print()
    print(f"Machine: {machine()}. " + "; ".join(f"{e}: {v}" for e, v in versions.items()) + ".")
    if busy and max(busy) > 0.2:
        print(f"\nWarning: other work kept up to {max(busy):.1f} cores busy when runners started "
              f"(median {statistics.median(busy):.1f}); compare engines only within these passes.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
