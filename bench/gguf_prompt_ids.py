#!/usr/bin/env python3
"""Writes the prompt of a GGUF bench job: a real English text (written for bench/,
repeated as needed) tokenized by the GGUF's own tokenizer (llama.cpp through
llama-cpp-python, vocab only: no weights loaded), <bos> first when the model adds one,
cut to exactly N ids. Every engine of the job then reads the same ids
(--prompt-ids-file / $BENCH_PROMPT_IDS), so kvrun and llama.cpp do identical work.
    python bench/gguf_prompt_ids.py MODEL.gguf OUT.ids [--n 512]
Exit 3 (skip) when llama-cpp-python is not installed."""
import argparse
import sys

import common

TEXT = (
    "The lighthouse on the northern cape was built of grey stone in the spring of a wet year. "
    "Its keeper climbed the spiral stairs every evening at dusk, trimmed the wick, polished the "
    "great lens with a soft cloth, and wrote the weather in a thick ledger: the direction of the "
    "wind, the height of the waves, the ships that passed and the ones that did not. In winter the "
    "storms came from the west and shook the windows until the glass sang; in summer the fog "
    "rolled in from the sea so thickly that the bell was rung by hand for hours. At the harbour "
    "below, the fishermen mended their nets on the quay and argued about the price of herring, "
    "the new harbour master, and whether the old boat would survive another winter.\n\n"
)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="GGUF file (its tokenizer is used)")
    p.add_argument("out", help="output: the ids, comma-separated")
    p.add_argument("--n", type=int, default=512)
    a = p.parse_args()
    try:
        import llama_cpp
    except ImportError as e:
        common.skip(f"llama-cpp-python not installed ({e}); run bench/setup-peers.sh")
    llm = llama_cpp.Llama(model_path=a.model, vocab_only=True, verbose=False)
    one = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    bos = llm.tokenize(b"", add_bos=True, special=False)  # [bos] when the model adds one, else []
    ids = list(bos)
    while len(ids) < a.n:
        ids += one
    ids = ids[:a.n]
    with open(a.out, "w") as f:
        f.write(",".join(map(str, ids)) + "\n")
    common.log(f"gguf_prompt_ids: {a.out}: {len(ids)} ids ({len(one)} per repetition of the text, "
               f"bos {bos or 'none'})")


if __name__ == "__main__":
    sys.exit(main())
