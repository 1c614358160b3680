#!/usr/bin/env python3
"""Sums an ONNX Runtime profile (KVRUN_ORT_PROFILE=<prefix> -> <prefix>_<date>.json, one file per
session) by operator type: kernel time, share, calls, and the run count of the session.
    python3 bench/ort_profile_summary.py <profile.json>... [--top 12]"""
import argparse
import collections
import json


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    for path in a.files:
        ev = json.load(open(path))
        ops = collections.defaultdict(lambda: [0, 0])
        runs = 0
        run_us = 0
        for e in ev:
            if e.get("cat") == "Session" and e.get("name") == "model_run":
                runs += 1
                run_us += e.get("dur", 0)
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            op = e.get("args", {}).get("op_name", "?")
            ops[op][0] += e.get("dur", 0)
            ops[op][1] += 1
        total = sum(v[0] for v in ops.values()) or 1
        print(f"{path}: {runs} runs, {run_us / 1e3:.1f} ms in model_run, {total / 1e3:.1f} ms in kernels")
        for op, (us, n) in sorted(ops.items(), key=lambda kv: -kv[1][0])[: a.top]:
            print(f"  {op:32s} {us / 1e3:10.1f} ms {100 * us / total:5.1f}%  {n} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
