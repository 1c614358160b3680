"""Shared pieces of the speech-recognition runners (bench/asr_runner_*.py, bench/run-asr.sh):
arguments, timing statistics, the result JSON (schema kvrun-bench-asr/1). Standard library only.

Every runner loads its engine once, transcribes each clip `--warmup` times (not counted), then
`--runs` times, and prints one JSON object:
  {"schema", "engine", "engine_version", "variant", "model", "model_bytes", "threads",
   "max_new_tokens", "load_s", "peak_rss_bytes", "busy_cores_at_start", "loadavg_start", "loadavg_end",
   "clips": {"<name>": {"audio_seconds", "runs": [{"wall_s", "frontend_s", "encoder_s", "prefill_s",
                         "decode_s", "prompt_tokens", "generated_tokens", "text"}, ...]}}}
Stage fields are null where the engine does not expose them. `wall_s` is the end-to-end time of
one clip with the model already loaded: audio file in, text out.
"""
import argparse
import json
import os
import platform
import resource
import sys

from common import busy_cores  # the decoder benches' /proc/stat probe, shared

SCHEMA = "kvrun-bench-asr/1"
SKIP = 3  # exit code of a runner whose engine is not installed / cannot run


def parse_args(description, model_help):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("model", help=model_help)
    p.add_argument("clips", nargs="+", help="16 kHz mono WAV files")
    p.add_argument("--variant", default=None)
    p.add_argument("--runs", type=int, default=3, help="measured runs per clip, after the warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--check-load", action="store_true", help="funasr only: compare the loaded weights with model.pt")
    a = p.parse_args()
    a.busy_at_start = busy_cores()
    a.loadavg_start = os.getloadavg()[0]
    return a


def dir_bytes(path, suffixes=None):
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            if suffixes is None or f.endswith(suffixes):
                total += os.path.getsize(os.path.join(root, f))
    return total


def wav_seconds(path):
    import wave
    with wave.open(path) as w:
        return w.getnframes() / w.getframerate()


def self_peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_clips(a, transcribe_one):
    """transcribe_one(path) -> dict with wall_s and the other run fields."""
    clips = {}
    for path in a.clips:
        name = os.path.splitext(os.path.basename(path))[0]
        for _ in range(a.warmup):
            transcribe_one(path)
        runs = [transcribe_one(path) for _ in range(a.runs)]
        clips[name] = {"file": os.path.abspath(path), "audio_seconds": wav_seconds(path), "runs": runs}
        print(f"{name}: " + ", ".join(f"{r['wall_s']:.2f} s ({r.get('generated_tokens')} tok)" for r in runs),
              file=sys.stderr)
    return clips


def emit(a, engine, engine_version, variant, model_bytes, load_s, clips, peak_rss=None):
    out = {
        "schema": SCHEMA, "engine": engine, "engine_version": engine_version, "variant": variant,
        "model": os.path.abspath(a.model), "model_bytes": model_bytes, "threads": a.threads,
        "max_new_tokens": a.max_new_tokens, "runs": a.runs, "warmup": a.warmup, "load_s": load_s,
        "peak_rss_bytes": peak_rss if peak_rss is not None else self_peak_rss(),
        "busy_cores_at_start": a.busy_at_start, "loadavg_start": a.loadavg_start,
        "loadavg_end": os.getloadavg()[0], "python": platform.python_version(), "clips": clips,
    }
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
