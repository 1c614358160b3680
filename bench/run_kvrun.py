#!/usr/bin/env python3
"""kvrun: runs `$KVRUN bench <package> ... --json` and passes its JSON through (it
emits the kvrun-bench/1 schema itself; docs/bench.md). KVRUN defaults to
./build/kvrun; KVRUN_BENCH_ARGS adds options (e.g. --no-bandwidth). kvrun bench
draws its own prompt ids from --seed (the peers use bench/common.py's).

If this kvrun has no `bench` subcommand the runner skips, unless KVRUN_VIA_RUN=1:
then it times `kvrun run --prompt-ids ... --ignore-eos --json` (one process per run,
stats from kvrun's own timers, peak RSS the largest of those processes)."""
import json
import os
import resource
import shutil
import subprocess
import sys

import common


def has_bench(kvrun):
    # CLI11 answers `kvrun bench --help` with the top-level help (exit 0) when there
    # is no such subcommand, so look for bench's own options.
    try:
        out = subprocess.run([kvrun, "bench", "--help"], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return out.stdout if out.returncode == 0 and "--prompt-len" in out.stdout else None


def kvrun_version(kvrun):
    out = subprocess.run([kvrun, "--version"], capture_output=True, text=True)
    return out.stdout.strip().removeprefix("kvrun ").strip() or "unknown"


def package_precision(path):
    try:
        with open(os.path.join(path, "kvrun.json")) as f:
            return json.load(f).get("precision", "fp32")
    except OSError:
        return os.path.basename(os.path.normpath(path))


def via_bench(args, kvrun, help_text):
    cmd = [kvrun, "bench", args.model, "--prompt-len", str(args.prompt_len),
           "--gen-len", str(args.gen_len), "--runs", str(args.runs),
           "--threads", str(args.threads), "--seed", str(args.seed), "--json"]
    cmd += os.environ.get("KVRUN_BENCH_ARGS", "").split()  # e.g. --no-bandwidth
    if "--warmup" in help_text:
        cmd += ["--warmup", str(args.warmup)]
    if "--prompt-ids" in help_text:  # same ids as the peers
        cmd += ["--prompt-ids", ",".join(map(str, common.prompt(args)))]
    elif args.prompt_ids_file:
        raise SystemExit("run_kvrun: this kvrun bench has no --prompt-ids, so it cannot "
                         f"take the ids of {args.prompt_ids_file}")
    common.log("  " + " ".join(cmd[:3] + ["..."]))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"run_kvrun: kvrun bench exited {out.returncode}")
    lines = [l for l in out.stdout.splitlines() if l.strip().startswith("{")]
    if not lines:
        raise SystemExit(f"run_kvrun: no JSON in kvrun bench output:\n{out.stdout}")
    r = json.loads(lines[-1])
    r.setdefault("engine", "kvrun")
    r.setdefault("engine_version", kvrun_version(kvrun))
    r["variant"] = args.variant or r.get("variant") or package_precision(args.model)
    if os.environ.get("KVRUN_ATTENTION") == "ort":  # kvrun's attention kernel off (run-all.sh job *-ort-attention)
        r["variant"] += ", ORT attention"
    r.setdefault("weights_bytes", common.weights_bytes(args.model))
    r.update(common.prompt_source(args))
    common.add_context(r, args.model)
    return r


def via_run(args, kvrun):
    ids = ",".join(map(str, common.prompt(args)))
    cmd = [kvrun, "run", args.model, "--prompt-ids", ids, "--max-new-tokens", str(args.gen_len),
           "--ignore-eos", "--threads", str(args.threads), "--json"]

    def one_run(_):
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            raise SystemExit(f"run_kvrun: kvrun run exited {out.returncode}")
        s = json.loads(out.stdout.strip().splitlines()[-1])["stats"]
        if s["generated_tokens"] != args.gen_len:
            raise SystemExit(f"run_kvrun: kvrun generated {s['generated_tokens']} tokens")
        return s["prefill_seconds"], s["time_to_first_token"], s["decode_seconds"]

    pre, ttft, dec = common.run_loop(args, one_run)
    r = common.result(args, "kvrun", kvrun_version(kvrun), package_precision(args.model),
                      pre, ttft, dec, {"method": "kvrun run --json (no kvrun bench)"})
    r["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return r


def main():
    args = common.parse_args(__doc__, "kvrun package folder")
    kvrun = shutil.which(os.environ.get("KVRUN", "./build/kvrun"))
    if not kvrun:
        common.skip(f"no kvrun binary at {os.environ.get('KVRUN', './build/kvrun')} "
                    "(set KVRUN=/path/to/kvrun)")
    if not os.path.isfile(os.path.join(args.model, "kvrun.json")):
        common.skip(f"no kvrun package at {args.model}; run bench/make-models.sh")
    help_text = has_bench(kvrun)
    if help_text is not None:
        r = via_bench(args, kvrun, help_text)
    elif os.environ.get("KVRUN_VIA_RUN") == "1":
        r = via_run(args, kvrun)
    else:
        common.skip(f"{kvrun} has no `bench` subcommand (`{kvrun} bench --help` shows no "
                    "--prompt-len); set KVRUN_VIA_RUN=1 to time `kvrun run` instead")
    common.emit(r)


if __name__ == "__main__":
    main()
