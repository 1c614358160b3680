#!/usr/bin/env python3
"""optimum runner for bench/run-translate.sh: ORTModelForSeq2SeqLM (optimum-onnx) on an
`optimum-cli export onnx --task text2text-generation-with-past` folder, transformers' generate().

    python bench/run_optimum_translate.py EXPORT_DIR --sentences FILE [--threads 2] ...

The loop people write: MarianTokenizer, batches of --batch-size sentences in input order (no
length sorting; padded to the longest in the batch), model.generate(**batch, num_beams=beams,
min_new_tokens=gen_len, max_new_tokens=gen_len); the rest from the export's generation_config
(OPUS-MT's: pad banned, forced </s> at the last step, renormalize_logits). ONNX Runtime sessions
with intra_op_num_threads = threads, inter_op 1; torch (beam search bookkeeping, logits processors)
with torch.set_num_threads(threads). Timed: tokenization excluded, every generate() call included.
Target tokens: generated ids per sentence (start token excluded, right padding excluded, the forced
final </s> counted).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import translate_common as tc  # noqa: E402


def model_bytes(d):
    """Bytes of the ONNX files ORTModelForSeq2SeqLM loads (the merged decoder when there is one)."""
    names = ["encoder_model.onnx"]
    names += (["decoder_model_merged.onnx"] if os.path.exists(os.path.join(d, "decoder_model_merged.onnx"))
              else ["decoder_model.onnx", "decoder_with_past_model.onnx"])
    return sum(os.path.getsize(os.path.join(d, n)) + (os.path.getsize(os.path.join(d, n + "_data"))
               if os.path.exists(os.path.join(d, n + "_data")) else 0) for n in names)


def main():
    p = tc.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    a = p.parse_args()
    try:
        import onnxruntime as ort
        import optimum.onnxruntime  # noqa: F401
        import torch
        import transformers
        from optimum.onnxruntime import ORTModelForSeq2SeqLM
        from transformers import MarianTokenizer
    except ImportError as e:
        print(f"skip: {e}", file=sys.stderr)
        return 3
    import importlib.metadata as md

    busy = tc.busy_cores()
    torch.set_num_threads(a.threads)
    src = tc.read_sentences(a.sentences)
    tok = MarianTokenizer.from_pretrained(a.model)
    batches = [tok(src[i:i + a.batch_size], return_tensors="pt", padding=True)
               for i in range(0, len(src), a.batch_size)]
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    t0 = time.perf_counter()
    model = ORTModelForSeq2SeqLM.from_pretrained(a.model, session_options=so, provider="CPUExecutionProvider")
    load = time.perf_counter() - t0
    pad = model.generation_config.pad_token_id
    merged = os.path.exists(os.path.join(a.model, "decoder_model_merged.onnx"))  # what from_pretrained prefers
    decoder_file = "decoder_model_merged.onnx" if merged else "decoder_model.onnx + decoder_with_past_model.onnx"
    lens, outs = [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            seqs = model.generate(**b, num_beams=a.beams, min_new_tokens=a.gen_len, max_new_tokens=a.gen_len)
            outs.append(seqs)
    secs = time.perf_counter() - t0
    out_lines = []
    for seqs in outs:
        for s in seqs.tolist():
            gen = s[1:]
            while gen and gen[-1] == pad:
                gen.pop()
            lens.append(len(gen))
            out_lines.append(" ".join(map(str, gen)))
    if a.outputs:
        with open(a.outputs, "w", encoding="utf-8") as f:
            f.write("\n".join(out_lines) + "\n")
    tc.write_result({
        "engine": "optimum", "engine_version": f"optimum-onnx {md.version('optimum-onnx')}, transformers "
        f"{transformers.__version__}, onnxruntime {ort.__version__}, torch {torch.__version__}",
        "variant": a.variant, "model": os.path.abspath(a.model),
        "threads": a.threads, "beams": a.beams, "batch_size": a.batch_size, "sentences": len(src),
        "gen_len": a.gen_len, "source_tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)),
        "target_tokens": sum(lens), "target_tokens_min": min(lens), "target_tokens_max": max(lens),
        "translate_seconds": round(secs, 4), "load_seconds": round(load, 3), "peak_rss_bytes": tc.peak_rss_self(),
        "model_bytes": model_bytes(a.model), "decoder_file": decoder_file, "busy_cores_at_start": busy})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
