#!/usr/bin/env python3
"""kvrun runner for bench/run-translate.sh: `kvrun translate PKG --file SENTENCES --beams B
--batch-size N --threads T --json --stats` in a child process.

    python bench/run_kvrun_translate.py PKG --sentences FILE [--threads 2] ...   (KVRUN: the binary)

The output length is fixed by the package's generation settings (kvrun.json "generation":
min_length = max_length = 1 + gen_len, HF's lengths count the start token; run-translate.sh
writes them), checked here. Timed: kvrun's own --stats seconds (the translate() call: tokenization
of the sources, which is < 1 % here, and every batch; model load excluded). Target tokens:
generated ids of each best hypothesis from --json (start token excluded, the forced final </s>
counted). Peak RSS: the child's (wait4 rusage).
"""
import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import translate_common as tc  # noqa: E402


def main():
    p = tc.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    a = p.parse_args()
    kvrun = os.environ.get("KVRUN", "./build/kvrun")
    if not os.access(kvrun, os.X_OK):
        print(f"skip: no kvrun binary at {kvrun}", file=sys.stderr)
        return 3
    with open(os.path.join(a.model, "kvrun.json")) as f:
        gen = json.load(f)["generation"]
    want = a.gen_len + 1
    if gen.get("min_length") != want or gen.get("max_length") != want:
        print(f"{a.model}: generation min_length/max_length are {gen.get('min_length')}/{gen.get('max_length')}, "
              f"want {want} (run-translate.sh sets them)", file=sys.stderr)
        return 2
    busy = tc.busy_cores()
    cmd = [kvrun, "translate", a.model, "--file", a.sentences, "--beams", str(a.beams), "--batch-size",
           str(a.batch_size), "--threads", str(a.threads), "--json", "--stats"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    peak = tc.peak_rss_children()  # the kvrun child, reaped by communicate()
    if proc.returncode != 0:
        sys.stderr.write(err[-3000:])
        return 1
    m = re.search(r"translated (\d+) sentences: (\d+) source tokens, (\d+) target tokens in ([0-9.]+) s", err)
    if not m:
        sys.stderr.write(err[-3000:])
        return 1
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    lens = [len(r["hypotheses"][0]["tokens"]) for r in rows]
    if a.outputs:
        with open(a.outputs, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(" ".join(map(str, r["hypotheses"][0]["tokens"])) + "\n")
    ver = subprocess.run([kvrun, "--version"], capture_output=True, text=True).stdout.strip()
    tc.write_result({
        "engine": "kvrun", "engine_version": ver or "kvrun", "variant": a.variant, "model": os.path.abspath(a.model),
        "threads": a.threads, "beams": a.beams, "batch_size": a.batch_size, "sentences": len(rows),
        "gen_len": a.gen_len, "source_tokens": int(m.group(2)), "target_tokens": sum(lens),
        "target_tokens_stats": int(m.group(3)), "target_tokens_min": min(lens), "target_tokens_max": max(lens),
        "translate_seconds": float(m.group(4)), "peak_rss_bytes": peak,
        "model_bytes": tc.dir_bytes(a.model), "busy_cores_at_start": busy})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
