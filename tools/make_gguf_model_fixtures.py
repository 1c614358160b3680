#!/usr/bin/env python3
"""Converts the tiny trained Qwen3 fixture to GGUF with llama.cpp's own converter.

  /root/.cache/kvrun/venv-tools/bin/python tools/make_gguf_model_fixtures.py [--f32] [--out DIR]

Writes into tests/fixtures/gguf-models/ (or --out):
  qwen3-trained-q8_0.gguf  tests/fixtures/qwen3-trained (Qwen3ForCausalLM, 853k parameters,
                           tests/fixtures/tiny-tokenizer) as `convert_hf_to_gguf.py --outtype q8_0`
                           writes it: Q8_0 matrices, F32 norms; about 1 MB. Committed; read by
                           tests/gguf_cache_test.cpp (`kvrun run <file.gguf>` and the package cache).
  qwen3-trained-f32.gguf   with --f32: the same model in F32 (3.5 MB; not committed).

The tiny tokenizer's pre-tokenizer (byte-level BPE with GPT-2's regex) has no entry in the
converter's table of known tokenizer hashes, so get_vocab_base_pre is told it is "gpt-2".

Converter: llama.cpp as vendored by llama-cpp-python 0.3.36 (--converter to use another);
it needs torch, numpy, transformers and gguf (the venv above has them).
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "tests" / "fixtures" / "qwen3-trained"
DEFAULT_CONVERTER = Path(
    "/root/.cache/kvrun/bench/src/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "gguf-models")
    ap.add_argument("--converter", type=Path, default=DEFAULT_CONVERTER)
    ap.add_argument("--f32", action="store_true", help="also write the F32 variant")
    args = ap.parse_args()

    sys.path.insert(0, str(args.converter.parent))
    sys.path.insert(1, str(args.converter.parent / "gguf-py"))
    import conversion.base as base  # noqa: E402  (the converter's package, next to the script)
    import runpy  # noqa: E402

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [("q8_0", "qwen3-trained-q8_0.gguf")] + ([("f32", "qwen3-trained-f32.gguf")] if args.f32 else [])
    for outtype, name in variants:
        out = args.out / name
        sys.argv = [str(args.converter), str(SRC), "--outtype", outtype, "--outfile", str(out)]
        runpy.run_path(str(args.converter), run_name="__main__")
        print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
