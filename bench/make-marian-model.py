#!/usr/bin/env python3
"""A random-initialised MarianMTModel with OPUS-MT's shape, for bench/run-translate.sh.

    python bench/make-marian-model.py --spm botchan_en_unigram_1000.model [--out DIR] [--seed 13]

Shape of Helsinki-NLP/opus-mt-en-de: d_model 512, 6 encoder + 6 decoder layers, 8 heads, FFN 2048,
vocab 58101, swish, scale_embedding, sinusoidal positions (max_position_embeddings 512), post-norm,
shared tied embeddings, pad = decoder start = the last id (58100), eos 0. Weights: transformers'
own random init (normal std 0.02, pad row zero), seed --seed; final_logits_bias zero.

Tokenizer: a real SentencePiece model as source.spm and target.spm (the sentencepiece 0.2.3 sdist's
test/botchan_en_unigram_1000.model, as tools/make_marian_fixtures.py uses), and a vocab.json of 58101
entries: "</s>" 0, "<unk>" 1, the spm's 997 other pieces in spm order, then filler pieces
"<fill_N>" (never produced by the spm, only by the decoder) so that the vocabulary matches the
embedding, and "<pad>" last. CTranslate2's converter checks len(vocab) == vocab_size.

generation_config.json is OPUS-MT's: num_beams 4, max_length 512, bad_words_ids [[pad]],
forced_eos_token_id 0, decoder_start_token_id pad, renormalize_logits true. Random weights rarely
emit EOS, so the bench fixes the output length per engine (run-translate.sh), not here.

Writes DIR (default ~/.cache/kvrun/bench/marian/ckpt): config.json, generation_config.json,
model.safetensors (fp32), source.spm, target.spm, vocab.json, tokenizer_config.json,
special_tokens_map.json. Runs with transformers 4.57 (venv-optimum) or 5.x (venv-tools) + torch +
sentencepiece.
"""

import argparse
import json
import os
import shutil

VOCAB_SIZE = 58101
CFG = dict(
    d_model=512,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
    activation_function="swish",
    scale_embedding=True,
    max_position_embeddings=512,
    dropout=0.1,
    attention_dropout=0.0,
    activation_dropout=0.0,
    init_std=0.02,
    eos_token_id=0,
    forced_eos_token_id=0,
    bos_token_id=0,
    share_encoder_decoder_embeddings=True,
    tie_word_embeddings=True,
    static_position_embeddings=True,
    normalize_embedding=False,
    normalize_before=False,
    add_final_layer_norm=False,
    num_beams=None,
)


def build_vocab(spm_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_path)
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i):
            continue
        piece = sp.id_to_piece(i)
        assert piece not in vocab, piece
        vocab[piece] = len(vocab)
    n = 0
    while len(vocab) < VOCAB_SIZE - 1:
        vocab[f"<fill_{n}>"] = len(vocab)
        n += 1
    vocab["<pad>"] = len(vocab)
    assert len(vocab) == VOCAB_SIZE
    return vocab


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spm", required=True, help="SentencePiece model (sentencepiece sdist test/botchan_en_unigram_1000.model)")
    p.add_argument("--out", default=os.path.expanduser("~/.cache/kvrun/bench/marian/ckpt"))
    p.add_argument("--seed", type=int, default=13)
    a = p.parse_args()

    import torch
    import transformers
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    os.makedirs(a.out, exist_ok=True)
    for f in ("source.spm", "target.spm"):
        shutil.copyfile(a.spm, os.path.join(a.out, f))
    vocab = build_vocab(a.spm)
    with open(os.path.join(a.out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=2)
    pad, eos = vocab["<pad>"], vocab["</s>"]
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump({"source_lang": "en", "target_lang": "de", "model_max_length": 512,
                   "separate_vocabs": False, "tokenizer_class": "MarianTokenizer"}, f, indent=2)
    with open(os.path.join(a.out, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, f, indent=2)

    torch.manual_seed(a.seed)
    cfg = {k: v for k, v in CFG.items() if v is not None}
    config = MarianConfig(vocab_size=VOCAB_SIZE, decoder_vocab_size=VOCAB_SIZE, pad_token_id=pad,
                          decoder_start_token_id=pad, **cfg)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        model.model.shared.weight[pad].zero_()
        model.final_logits_bias.zero_()
    gen = GenerationConfig(num_beams=4, max_length=512, bad_words_ids=[[pad]], forced_eos_token_id=eos,
                           renormalize_logits=True, decoder_start_token_id=pad, pad_token_id=pad,
                           eos_token_id=eos, bos_token_id=eos)
    model.generation_config = gen
    model.save_pretrained(a.out, safe_serialization=True)
    gen.save_pretrained(a.out)

    # sanity: the folder loads back with its tokenizer
    tok = MarianTokenizer.from_pretrained(a.out)
    ids = tok(["Hello world, I am a cat."])["input_ids"][0]
    assert ids[-1] == eos and all(i < 1000 for i in ids), ids
    n = sum(p.numel() for p in model.parameters())
    print(f"{a.out}: MarianMTModel {n / 1e6:.1f} M parameters, vocab {VOCAB_SIZE}, "
          f"transformers {transformers.__version__}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
