#!/usr/bin/env python3
"""CTranslate2 runner for bench/run-translate.sh: ctranslate2.Translator on a converted model folder
(ct2-transformers-converter), translate_batch over all sentences at once.

    python bench/run_ct2_translate.py CT2_DIR --sentences FILE --compute-type int8 [--threads 2] ...

Source tokens: the model folder's source.spm pieces + "</s>" (what MarianTokenizer produces; CT2's
docs ask for the explicit </s> on converted Transformers models). translate_batch(beam_size, max_batch_size,
min_decoding_length = max_decoding_length = gen_len): CT2 sorts the sentences by length and cuts
batches of max_batch_size itself. Timed: that one call (tokenization and model load excluded, as
in CTranslate2's benchmark). Target tokens: the pieces of each best hypothesis (CT2 strips </s>).
Translator(intra_threads=threads, inter_threads=1), default length_penalty (1), like HF.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import translate_common as tc  # noqa: E402


def main():
    p = tc.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--compute-type", default="float32")
    a = p.parse_args()
    try:
        import ctranslate2
        import sentencepiece as spm
    except ImportError as e:
        print(f"skip: {e}", file=sys.stderr)
        return 3
    busy = tc.busy_cores()
    src = tc.read_sentences(a.sentences)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.model, "source.spm"))
    tokens = [sp.encode(s, out_type=str) + ["</s>"] for s in src]
    t0 = time.perf_counter()
    tr = ctranslate2.Translator(a.model, device="cpu", compute_type=a.compute_type,
                                intra_threads=a.threads, inter_threads=1)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = tr.translate_batch(tokens, beam_size=a.beams, max_batch_size=a.batch_size, batch_type="examples",
                             min_decoding_length=a.gen_len, max_decoding_length=a.gen_len)
    secs = time.perf_counter() - t0
    lens = [len(r.hypotheses[0]) for r in res]
    if a.outputs:
        with open(a.outputs, "w", encoding="utf-8") as f:
            for r in res:
                f.write(" ".join(r.hypotheses[0]) + "\n")
    tc.write_result({
        "engine": "CTranslate2", "engine_version": f"ctranslate2 {ctranslate2.__version__}",
        "variant": a.variant, "compute_type": a.compute_type, "model": os.path.abspath(a.model),
        "threads": a.threads, "beams": a.beams, "batch_size": a.batch_size, "sentences": len(src),
        "gen_len": a.gen_len, "source_tokens": sum(len(t) for t in tokens), "target_tokens": sum(lens),
        "target_tokens_min": min(lens), "target_tokens_max": max(lens), "translate_seconds": round(secs, 4),
        "load_seconds": round(load, 3), "peak_rss_bytes": tc.peak_rss_self(), "model_bytes": tc.dir_bytes(a.model),
        "busy_cores_at_start": busy})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
