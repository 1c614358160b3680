#!/usr/bin/env python3
"""sherpa-onnx's offline FunASR-nano recognizer on its own export of the weights (bench/run-asr.sh).

  python bench/asr_runner_sherpa.py <sherpa folder> clip.wav... --variant fp32|int8 [--runs 3 --warmup 1 --threads 2]

The folder is what tools/make_funasr_export_fixtures.py --own-tables [--int8] writes (the layout of
the published sherpa-onnx-funasr-nano models: encoder_adaptor[.int8].onnx, embedding[.int8].onnx,
llm[.int8].onnx, Qwen3-0.6B/ with the tokenizer). --variant int8 takes the *.int8.onnx files.
sherpa_onnx.OfflineRecognizer.from_funasr_nano(..., num_threads=T, max_new_tokens=G), its other
settings at their defaults (greedy, itn=True). One run: read the WAV, create a stream,
accept_waveform, decode_stream, read the text: the same work as `sherpa-onnx-offline` per file.
sherpa-onnx has no minimum length: it stops on <|im_end|> / <|endoftext|> (random weights rarely
produce them); the token count of every run is recorded (result.tokens). sherpa-onnx exposes no
per-stage times. It feeds ALL encoder frames to the LLM (no low-frame-rate truncation, about 8x
the reference's audio rows), so its prefill is longer than kvrun's or funasr's by design.
"""
import os
import sys
import time
import wave

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import asr_common as C  # noqa: E402


def main():
    a = C.parse_args("sherpa-onnx FunASR-nano runner", "sherpa-onnx FunASR-nano folder")
    try:
        import numpy as np
        import sherpa_onnx
    except ImportError as e:
        print(f"skip: {e}", file=sys.stderr)
        return C.SKIP
    variant = a.variant or "fp32"
    suffix = ".int8.onnx" if variant == "int8" else ".onnx"
    files = {k: os.path.join(a.model, k + suffix) for k in ("encoder_adaptor", "embedding", "llm")}
    missing = [f for f in files.values() if not os.path.exists(f)]
    if missing:
        print(f"skip: {missing} not exported (tools/make_funasr_export_fixtures.py)", file=sys.stderr)
        return C.SKIP
    model_bytes = sum(C.dir_bytes(f) + (C.dir_bytes(f + ".data") if os.path.exists(f + ".data") else 0)
                      for f in files.values())
    t0 = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(a.model)  # an external-data file is looked up relative to the working directory
    try:
        rec = sherpa_onnx.OfflineRecognizer.from_funasr_nano(
            encoder_adaptor=files["encoder_adaptor"], llm=files["llm"], embedding=files["embedding"],
            tokenizer=os.path.join(a.model, "Qwen3-0.6B"), num_threads=a.threads, max_new_tokens=a.max_new_tokens)
    finally:
        os.chdir(cwd)
    load_s = time.perf_counter() - t0

    def one(path):
        s = time.perf_counter()
        with wave.open(path) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
        st = rec.create_stream()
        st.accept_waveform(rate, x)
        rec.decode_stream(st)
        text = st.result.text
        wall = time.perf_counter() - s
        toks = getattr(st.result, "tokens", None)
        return {"wall_s": wall, "frontend_s": None, "encoder_s": None, "prefill_s": None, "decode_s": None,
                "prompt_tokens": None, "generated_tokens": len(toks) if toks is not None else None,
                "text": text[:80]}

    clips = C.run_clips(a, one)
    C.emit(a, "sherpa-onnx", f"sherpa-onnx {sherpa_onnx.__version__}", variant, model_bytes, load_s, clips)
    return 0


if __name__ == "__main__":
    sys.exit(main())
