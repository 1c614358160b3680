#!/usr/bin/env python3
"""kvrun transcribe on a package built from a FunASR-nano folder (bench/run-asr.sh).

  python bench/asr_runner_kvrun.py <package> clip.wav... [--runs 3 --warmup 1 --threads 2 --max-new-tokens 64]

One process per clip, the model loaded once:
  $KVRUN transcribe <pkg> clip.wav x (warmup + runs) --batch-size 1 --max-new-tokens G --threads T --json --stats
kvrun transcribes the copies one after the other (batch 1) and prints one JSON object per copy
with its own stage times; the first `warmup` are dropped. wall_s = front end (file decode,
fbank, LFR) + encoder-adaptor + prefill + decode of that copy. kvrun stops on <|im_end|>:
random weights rarely produce it, the generated token count of every run is in the result.
Peak RSS: the largest of the transcribe processes (wait4). Env: KVRUN (default ./build/kvrun),
KVRUN_TRANSCRIBE_ARGS (extra options).
"""
import json
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import asr_common as C  # noqa: E402


def main():
    a = C.parse_args("kvrun transcribe runner", "kvrun package built from a FunASR-nano folder")
    kvrun = os.environ.get("KVRUN", "./build/kvrun")
    if not os.access(kvrun, os.X_OK):
        print(f"skip: {kvrun} not built", file=sys.stderr)
        return C.SKIP
    version = subprocess.run([kvrun, "--version"], capture_output=True, text=True).stdout.strip()
    peak = 0
    load = []
    clips = {}
    for path in a.clips:
        n = a.warmup + a.runs
        cmd = [kvrun, "transcribe", a.model] + [path] * n + [
            "--batch-size", "1", "--max-new-tokens", str(a.max_new_tokens), "--threads", str(a.threads),
            "--json", "--stats"] + shlex.split(os.environ.get("KVRUN_TRANSCRIBE_ARGS", ""))
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - t0
        if p.returncode != 0:
            print(f"FAILED: {' '.join(cmd)} (exit {p.returncode})", file=sys.stderr)
            return 1
        peak = max(peak, ru.ru_maxrss * 1024)
        objs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if len(objs) != n:
            print(f"FAILED: expected {n} JSON lines, found {len(objs)}", file=sys.stderr)
            return 1
        runs = []
        for o in objs:
            s = o["stats"]
            runs.append({"wall_s": s["frontend_seconds"] + s["encoder_seconds"] + s["prefill_seconds"] +
                         s["decode_seconds"], "total_s": s["total_seconds"], "frontend_s": s["frontend_seconds"],
                         "encoder_s": s["encoder_seconds"], "prefill_s": s["prefill_seconds"],
                         "decode_s": s["decode_seconds"], "prompt_tokens": s["prompt_tokens"],
                         "generated_tokens": s["generated_tokens"],
                         "audio_tokens": sum(g["audio_tokens"] for g in o["segments"]),
                         "segments": len(o["segments"]), "text": o["text"][:80]})
        # process time not spent on the copies: model load (+ exit)
        load.append(elapsed - sum(r["wall_s"] for r in runs))
        runs = runs[a.warmup:]
        name = os.path.splitext(os.path.basename(path))[0]
        clips[name] = {"file": os.path.abspath(path), "audio_seconds": C.wav_seconds(path), "runs": runs,
                       "command": " ".join(shlex.quote(x) for x in cmd[:4]) + f" (x{n}) " +
                       " ".join(shlex.quote(x) for x in cmd[3 + n:])}
        print(f"{name}: " + ", ".join(f"{r['wall_s']:.2f} s ({r['generated_tokens']} tok)" for r in runs),
              file=sys.stderr)
    variant = a.variant
    if variant is None:
        try:
            variant = json.load(open(os.path.join(a.model, "kvrun.json"))).get("precision")
        except (OSError, ValueError):
            pass
    C.emit(a, "kvrun", version, variant or os.path.basename(os.path.normpath(a.model)), C.dir_bytes(a.model),
           min(load) if load else None, clips, peak_rss=peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
