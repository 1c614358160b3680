#!/usr/bin/env python3
"""Makes tests/fixtures/tiny-tokenizer/tokenizer.json: a byte-level BPE tokenizer with
exactly 512 ids (the vocabulary of the tiny test checkpoints), trained with the
Hugging Face `tokenizers` library (pip, tooling only) on a fixed multilingual text.
It lets runtime tests exercise text prompts, streaming and stop strings on the
tiny fixture models; random weights produce arbitrary ids, so the decoded bytes
are often not valid UTF-8, which is what the streaming test needs.

    python tools/make_tiny_tokenizer.py     # tokenizers 0.23.3
"""
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tiny-tokenizer")
TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "你好，世界！今天天气很好。我们一起去公园吧。" * 20,
    "こんにちは世界。日本語のテキストです。" * 20,
    "Emoji: 😀🎉👍🏽 and more 🚀🌍 " * 20,
    "def main():\n    return 42  # code\n" * 20,
]
# Deterministic pseudo-words so the trainer finds enough merges to fill 512 ids.
_x = 12345
for _ in range(3000):
    _x = (_x * 1103515245 + 12345) % (1 << 31)
    TEXT.append("".join("etaoinshrdlucmfwyp"[(_x >> (3 * k)) % 18] for k in range(2 + _x % 6)))

tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=511, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              special_tokens=["<|endoftext|>", "<|im_start|>"], show_progress=False)
tok.train_from_iterator(TEXT, trainer)
tok.add_special_tokens(["<|im_end|>"])  # id 510 or below: keep vocab <= 512
assert tok.get_vocab_size() == 512, tok.get_vocab_size()
os.makedirs(OUT, exist_ok=True)
tok.save(os.path.join(OUT, "tokenizer.json"))
print("vocab", tok.get_vocab_size(), "ids:", tok.encode("Hello 你好 😀").ids)
