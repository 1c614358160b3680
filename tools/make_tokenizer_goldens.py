#!/usr/bin/env python3
"""Record Hugging Face `tokenizers` reference encodings for kvrun's tokenizer tests.

TOOLING ONLY: CI never runs this script. Its results are committed under
tests/fixtures/tokenizers/ and tests/tokenizer_test.cpp compares kvrun's tokenizers
against them. It needs the pip packages `tokenizers` (the reference; kvrun's own code
is never used here) and `sentencepiece` (to train and run the tiny SentencePiece model).

Usage:
    scripts/fetch-tokenizers.sh          # real tokenizer files into .deps/tokenizers/
    python3 tools/make_tokenizer_goldens.py [--deps .deps/tokenizers] [--out tests/fixtures/tokenizers]

Writes (deterministic: a fixed seed, no time or environment in the output):
  qwen3.jsonl, llama3.jsonl    >= 2,000 varied strings each (see make_strings)
  llama3_1.jsonl, gemma3.jsonl smaller sets (Llama-3.1 has a TemplateProcessing post-processor
                               that adds <|begin_of_text|>; Gemma 3 is SentencePiece-style BPE)
  tiny_bpe.json + tiny_bpe.jsonl  a tiny byte-level BPE trained here, with added tokens using
                               every lstrip/rstrip/single_word/normalized flag combination
  tiny_sp.model + tiny_sp.jsonl   a tiny SentencePiece unigram model trained here
                               (goldens from the sentencepiece library itself)

Each line: {"text": s, "ids": [...]} for encode(s, add_special_tokens=False). Optional keys:
  "add_special_tokens": true   ids were produced with add_special_tokens=True
  "decode": str                decode(ids, skip_special_tokens=False), when it differs from text
  "decode_skip": str           decode(ids, skip_special_tokens=True), when it differs from "decode"
"""
import argparse
import json
import os
import random
import unicodedata

SEED = 20240607

SPECIALS = {
    "qwen3": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "<|vision_pad|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               "<|reserved_special_token_5|>"],
    "gemma3": ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<pad>", "<start_of_image>"],
}
SPECIALS["llama3_1"] = SPECIALS["llama3"]

WORDS = ["hello", "world", "Hello", "WORLD", "the", "The", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
         "tokenizer", "Tokenization", "ONNX", "runtime", "kv-cache", "naïve", "café", "résumé", "Zürich", "straße",
         "Ærøskøbing", "Ελλάδα", "Москва", "привет", "мир", "日本語", "中文", "你好", "世界", "東京", "こんにちは",
         "カタカナ", "ひらがな", "한국어", "안녕하세요", "مرحبا", "العربية", "नमस्ते", "हिन्दी", "สวัสดี", "ภาษาไทย",
         "שלום", "Ελληνικά", "ქართული", "Հայերեն", "don't", "I'm", "you're", "we've", "she'll", "he'd", "it's",
         "DON'T", "I'M", "YOU'RE", "We'Ve", "IT'S", "x", "a", "I", "e.g.", "i.e.", "U.S.A.", "$100", "3.14159",
         "1,000,000", "2024-06-07", "12:30", "50%", "#hashtag", "@user", "user@example.com", "https://example.com/a?b=c",
         "C++", "C#", "->", "=>", "!=", "==", "&&", "||", "::", "...", "—", "–", "«quoted»", "“smart”", "‘single’",
         "(parens)", "[brackets]", "{braces}", "<angle>", "snake_case", "camelCase", "PascalCase", "SCREAMING_CASE",
         "x86_64", "fp16", "H100", "ℕ", "∑", "√2", "π", "∞", "°C", "µs", "Ω", "™", "©", "½", "²", "①", "Ⅻ", "٣", "४",
         "๕", "\u00a0", "\u3000", "\u200b", "\u2028", "\ufeff"]

EMOJI = ["😀", "😂", "🥲", "❤️", "👍", "👍🏽", "👋🏿", "🧑‍💻", "👩‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸", "✅", "⭐",
         "🎉", "🤖", "🦀", "🐍", "👨🏻‍🚀", "🫠", "☕", "1️⃣", "#️⃣", "©️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]

CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "#include <vector>\nint main() { return 0; }\n",
    "if x == 1:\n\tprint('one')\nelse:\n\tprint(\"other\")\n",
    "const y = (a, b) => a + b; // arrow\n",
    "SELECT * FROM users WHERE id = 42;",
    "    indented  code   with   gaps",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "fn main() {\r\n    println!(\"hi\");\r\n}\r\n",
    "<div class=\"x\">&nbsp;</div>",
    "x<<=2; y>>=3; z**=4; w//=5",
    "$ ls -la | grep '^d' > out.txt 2>&1",
    "   \n\n\t\t  \r\n  trailing   ",
    "a\tb\tc\nd\te\tf",
    "/* comment */\n// another\n# python\n-- sql",
]

SEPARATORS = [" ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t", "", "", ",", ", ", ". ", "!",
              "?", "\u3000", "\u00a0", "  \n"]

RANGES = [  # (lo, hi) inclusive code point ranges of assigned, long-standing characters
    (0x4E00, 0x9FA5),  # CJK unified ideographs
    (0x3041, 0x3096),  # hiragana
    (0x30A1, 0x30FA),  # katakana
    (0xAC00, 0xD7A3),  # hangul syllables
    (0x0621, 0x064A),  # arabic letters
    (0x0905, 0x0939),  # devanagari letters
    (0x0E01, 0x0E30),  # thai
    (0x0410, 0x044F),  # cyrillic
    (0x0391, 0x03C9),  # greek
    (0x00C0, 0x00FF),  # latin-1 letters
    (0x0100, 0x017F),  # latin extended-A
    (0x0021, 0x007E),  # ASCII printable
    (0x2010, 0x2027),  # general punctuation
    (0x2190, 0x21FF),  # arrows
    (0x2200, 0x22FF),  # math operators
    (0x1F300, 0x1F5FF),  # pictographs
    (0x1F600, 0x1F64F),  # emoticons
    (0xFF01, 0xFF5E),  # fullwidth forms
    (0x0300, 0x036F),  # combining marks (alone or after letters)
]


def rand_chars(rng, n):
    out = []
    for _ in range(n):
        lo, hi = rng.choice(RANGES)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def rand_number(rng):
    n = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 33])
    s = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))
    return rng.choice([s, s, "-" + s, s + ".5", "0x" + s, s + "th", "$" + s, s + "km", "v" + s + ".0"])


def nfd_mix(rng, s):
    return unicodedata.normalize(rng.choice(["NFD", "NFC", "NFKD"]), s)


def make_strings(specials, n_random):
    rng = random.Random(SEED)
    fixed = [
        "", " ", "  ", "\n", "\t", "\r\n", " \n", "\n ", "a", "A", "1", "!", "é", "中", "😀", "👍🏽", "\u0301",
        "Hello world", " Hello world", "Hello  world", "Hello\tworld", "Hello\nworld", "Hello\r\nworld",
        "Hello world ", "Hello world  ", "Hello world\n", "   leading spaces", "trailing spaces   ",
        "multiple    spaces    between", "tabs\t\t\tand\nnewlines\n\n\nand\r\n\r\ncrlf",
        "I'm sure you're right, they've said it's fine and we'll see; he'd know. I'D SAY IT'S OK. 'S 'T 'RE",
        "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'VE 'M 'LL 'D", "'ſ 'K 'ﬀ", "don’t won’t", "rock 'n' roll",
        "0", "12", "123", "1234", "12345", "123456", "1234567", "3.141592653589793", "1,234,567,890",
        "100000000000000000000000000000", "2024年6月7日", "第1章", "１２３", "٠١٢٣", "१२३",
        "你好，世界！", "我爱自然语言处理。", "日本語のテキストです。", "カタカナとひらがな", "한국어 텍스트입니다.",
        "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Привет, мир!", "Γειά σου Κόσμε",
        "e\u0301", "cafe\u0301", "A\u030a", "\u1100\u1161\u11a8", "n\u0303o", "Å", "ﬁ", "Ⅳ", "x\u0308\u0301",
        "👩‍👩‍👧‍👦", "🧑🏿‍🦰", "👍🏻👍🏼👍🏽👍🏾👍🏿", "🏳️‍🌈🇯🇵", "family: 👨‍👩‍👧 ok", "😀😀😀",
        "mixed 中文 and English and 日本語 and 한국어 😀", "αβγ abc абв 123 !!!",
        "\u180e", "a\u180eb", "a\u00a0b", "a\u3000b", "a\u2028b", "a\u200bb", "a\ufeffb", "a\u0085b", "a\x0bb\x0cc",
        "\x00", "a\x00b", "\x01\x02\x7f", "~!@#$%^&*()_+`-=[]\\{}|;':\",./<>?",
    ]
    for s in specials:
        fixed += [s, s + s, "a" + s + "b", " " + s + " ", s + "\n", "\n" + s, "x " + s + " y",
                  s[:-1], s[1:], s + "hello", "hello" + s, s + " hello"]
    a, b = specials[0], specials[1]
    fixed += [f"{a}user\nhi{b}", f"{a}system\nYou are helpful.{b}\n{a}user\nWhat is 2+2?{b}\n{a}assistant\n",
              f"{a}{b}{a}", f"<{a}>", f"<|{a}|>", f"{a[:3]}{b}", "<|not_a_special|>", "<|", "|>", "<>"]
    out = list(dict.fromkeys(fixed))
    pools = [
        lambda: rng.choice(WORDS),
        lambda: rng.choice(WORDS),
        lambda: rng.choice(EMOJI),
        lambda: rand_number(rng),
        lambda: rand_chars(rng, rng.randint(1, 12)),
        lambda: rng.choice(CODE),
        lambda: rng.choice(specials),
        lambda: nfd_mix(rng, rng.choice(WORDS)),
        lambda: "".join(rng.choice(" \t\n\r") for _ in range(rng.randint(1, 6))),
        lambda: "'" + rng.choice(["s", "t", "re", "ve", "m", "ll", "d", "S", "T", "RE", "Ve", "mM", "LL", "D", "x"]),
    ]
    seen = set(out)
    while len(out) < len(fixed) + n_random:
        k = rng.choice([1, 1, 2, 3, 4, 6, 10])
        parts = []
        for _ in range(k):
            parts.append(rng.choice(pools)())
            parts.append(rng.choice(SEPARATORS))
        s = "".join(parts)
        if rng.random() < 0.3:
            s = s.strip()
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def line(tok, text, add_special):
    ids = tok.encode(text, add_special_tokens=add_special).ids
    rec = {"text": text, "ids": ids}
    if add_special:
        rec["add_special_tokens"] = True
    dec = tok.decode(ids, skip_special_tokens=False)
    dec_skip = tok.decode(ids, skip_special_tokens=True)
    if dec != text:
        rec["decode"] = dec
    if dec_skip != dec:
        rec["decode_skip"] = dec_skip
    return rec


def write_jsonl(path, recs):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(recs)} lines, {os.path.getsize(path)} bytes")


def golden_set(tok, strings, n_add_special):
    recs = [line(tok, s, False) for s in strings]
    recs += [line(tok, s, True) for s in strings[:n_add_special]]
    return recs


def make_tiny_bpe(out_dir, strings):
    """A tiny byte-level BPE (Qwen-style pipeline) with added tokens using every flag."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    qwen_re = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen_re), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(strings, trainer=trainer)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, single_word=False, normalized=False),
                            AddedToken("<sep>", lstrip=False, rstrip=True, single_word=False, normalized=False),
                            AddedToken("[WORD]", single_word=True, normalized=False)])
    tok.add_tokens([AddedToken("hello world", normalized=True), AddedToken("café", normalized=True),
                    AddedToken("ﬁx", normalized=False), AddedToken(" spaced", lstrip=True, rstrip=True),
                    AddedToken("word", single_word=True, normalized=True)])
    path = os.path.join(out_dir, "tiny_bpe.json")
    tok.save(path)
    print(f"wrote {path}: {os.path.getsize(path)} bytes")
    rng = random.Random(SEED + 1)
    pieces = ["<mask>", "<sep>", "[WORD]", "hello world", "café", "cafe\u0301", "ﬁx", "fix", " spaced", "word",
              "words", "sword", "a word.", "<|endoftext|>", " ", "  ", "\n", "x", "中文", "😀"]
    texts = ["a_[WORD]", "a\u0301[WORD]", "\u2160[WORD]", "a\u200d[WORD]", "\u00b2[WORD]", "", "<mask>", " <mask>", "a   <mask>  b", "<sep>   x", "[WORD]", "a [WORD] b", "a[WORD]b", "word",
             "a word b", "swordfish", "word!", "hello world", "hello  world", "cafe\u0301 café", "ﬁx fix",
             "x spaced y", "x  spaced  y"]
    while len(texts) < 400:
        texts.append("".join(rng.choice(pieces) + rng.choice(["", " ", "  ", "\n", ",", "\t"])
                             for _ in range(rng.randint(1, 8))))
    texts = list(dict.fromkeys(texts))
    tok2 = Tokenizer.from_file(path)
    write_jsonl(os.path.join(out_dir, "tiny_bpe.jsonl"), golden_set(tok2, texts, 20))


def make_tiny_sp(out_dir, strings):
    """A tiny SentencePiece unigram model trained on the golden strings; goldens from sentencepiece."""
    import io
    import sentencepiece as spm
    model = io.BytesIO()
    corpus = [s for s in strings if s.strip()] * 3
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=3000, hard_vocab_limit=False,
                                   model_type="unigram", character_coverage=0.98, byte_fallback=True,
                                   num_threads=1, seed_sentencepiece_size=20000, shuffle_input_sentence=False,
                                   user_defined_symbols=["<|user|>"], minloglevel=2)
    path = os.path.join(out_dir, "tiny_sp.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    print(f"wrote {path}: {os.path.getsize(path)} bytes")
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    recs = []
    for s in strings[:600]:
        ids = sp.encode(s)
        rec = {"text": s, "ids": ids}
        dec = sp.decode(ids)
        if dec != s:
            rec["decode"] = dec
        recs.append(rec)
    for s in strings[:20]:
        # kvrun writes control tokens as their piece unless skip_special_tokens (as the
        # slow Hugging Face SentencePiece tokenizers do); sentencepiece itself drops them.
        ids = [sp.bos_id()] + sp.encode(s)
        recs.append({"text": s, "ids": ids, "add_special_tokens": True, "decode": sp.id_to_piece(sp.bos_id()) +
                     sp.decode(ids), "decode_skip": sp.decode(ids)})
    write_jsonl(os.path.join(out_dir, "tiny_sp.jsonl"), recs)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deps", default=os.path.join(root, ".deps", "tokenizers"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "tokenizers"))
    ap.add_argument("--count", type=int, default=2200, help="random strings per main set (plus fixed ones)")
    args = ap.parse_args()
    import tokenizers
    from tokenizers import Tokenizer
    os.makedirs(args.out, exist_ok=True)
    print(f"tokenizers {tokenizers.__version__}")
    sizes = {"qwen3": (args.count, 60), "llama3": (args.count, 60), "llama3_1": (300, 60), "gemma3": (600, 60)}
    for name, (count, n_add) in sizes.items():
        tok = Tokenizer.from_file(os.path.join(args.deps, name, "tokenizer.json"))
        strings = make_strings(SPECIALS[name], count)
        write_jsonl(os.path.join(args.out, name + ".jsonl"), golden_set(tok, strings, n_add))
    strings = make_strings(SPECIALS["qwen3"], 1500)
    make_tiny_bpe(args.out, strings)
    make_tiny_sp(args.out, strings)


if __name__ == "__main__":
    main()
