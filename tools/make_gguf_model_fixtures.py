#!/usr/bin/env python3
"""Converts the tiny trained Qwen3 fixture to GGUF with llama.cpp's own converter.

  /root/.cache/kvrun/venv-tools/bin/python tools/make_gguf_model_fixtures.py [--f32] [--out DIR]

Writes into tests/fixtures/gguf-models/ (or --out):
  qwen3-trained-q8_0.gguf  tests/fixtures/qwen3-trained (Qwen3ForCausalLM, 853k parameters,
                           tests/fixtures/tiny-tokenizer) as `convert_hf_to_gguf.py --outtype q8_0`
                           writes it: Q8_0 matrices, F32 norms; about 1 MB. Committed; read by
                           tests/gguf_cache_test.cpp (`kvrun run <file.gguf>` and the package cache).
  qwen3-trained-f32.gguf   with --f32: the same model in F32 (3.5 MB; not committed).
  {llama,qwen2,qwen3}-tiny-f32.gguf
                           tests/fixtures/{llama,qwen2,qwen3}-tiny in F32 (about 0.55 MB each;
                           committed; tests/gguf_model_test.cpp builds them and compares with
                           the HF goldens those folders hold). llama-tiny has no tokenizer, so its
                           vocabulary is a stand-in ("<t0>", "<t1>", ...): the test feeds ids.
                           These exercise llama.cpp's q/k row permutation for `llama` (undone by
                           kvrun), Qwen2's qkv biases and Qwen3's q/k norms.

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
    import gguf  # noqa: E402

    def stand_in_vocab(self):
        n = self.hparams["vocab_size"]
        self.gguf_writer.add_tokenizer_model("llama")
        self.gguf_writer.add_tokenizer_pre("default")
        self.gguf_writer.add_token_list([f"<t{i}>" for i in range(n)])
        self.gguf_writer.add_token_scores([0.0] * n)
        self.gguf_writer.add_token_types([gguf.TokenType.NORMAL] * n)

    fixtures = ROOT / "tests" / "fixtures"
    variants = [("q8_0", SRC, "qwen3-trained-q8_0.gguf")]
    if args.f32:
        variants.append(("f32", SRC, "qwen3-trained-f32.gguf"))
    variants += [("f32", fixtures / f"{m}-tiny", f"{m}-tiny-f32.gguf") for m in ("llama", "qwen2", "qwen3")]
    for outtype, src, name in variants:
        if not (src / "tokenizer.json").exists():
            import conversion.llama as llama  # noqa: E402
            llama.LlamaModel.set_vocab = stand_in_vocab
        out = args.out / name
        sys.argv = [str(args.converter), str(src), "--outtype", outtype, "--outfile", str(out)]
        runpy.run_path(str(args.converter), run_name="__main__")
        print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
