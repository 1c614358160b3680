#!/usr/bin/env python3
"""Build kvrun's Marian tokenizer fixture and record Hugging Face MarianTokenizer goldens.

TOOLING ONLY: CI never runs this script. Its results are committed under
tests/fixtures/marian-tok/ and tests/marian_tokenizer_test.cpp compares kvrun's
MarianTokenizer (src/text/marian_tokenizer.cpp) against them. Needs transformers
(5.23, the reference) and sentencepiece, plus the `sentencepiece` sdist for its real
test models:

    pip download --no-binary :all: --no-deps sentencepiece   # sentencepiece-0.2.3.tar.gz
    python3 tools/make_marian_tokenizer_goldens.py --sdist sentencepiece-0.2.3.tar.gz

Writes tests/fixtures/marian-tok/ (deterministic: fixed seed):
  source.spm   the sdist's test/botchan_en_unigram_1000.model (a real unigram model)
  target.spm   the sdist's test/botchan_en_bpe_1000.model (a real BPE model, so that decoding
               with the source vs the target model gives different text)
  vocab.json   as the Marian converter writes it: </s>=0, <unk>=1, then Marian's vocabulary
               (language codes >>fr<< ... and the pieces of both models, a few left out so
               that some pieces map to <unk>), <pad> last
  tokenizer_config.json
  separate/    separate_vocabs=true: vocab.json (source pieces), target_vocab.json (target
               pieces, a few left out: their ids fall back to target.spm when decoding);
               source.spm/target.spm are symlinks to the parent's
  specials/    the parent's vocab with a tokenizer_config.json using added_tokens_decoder
               (lstrip/rstrip on </s>), additional_special_tokens (>>fr<<, >>de<<) and
               clean_up_tokenization_spaces=true
  goldens.json {"variants": {name: {"encode": [{"text", "source", "target"}],
                                    "decode": [{"ids", "text", "skip"} | {"ids", "error"}]}}}
               source = tok(text).input_ids, target = tok(text_target=text).input_ids,
               text/skip = tok.decode(ids, skip_special_tokens=False/True).
"""
import argparse
import json
import os
import random
import shutil
import tarfile
import tempfile

SEED = 20260707
LANG_CODES = [">>fr<<", ">>de<<", ">>es<<", ">>zh_Hans<<", ">>pt_BR<<"]
DROP_SOURCE = ["▁house", "ed", "▁quick"]  # left out of vocab.json: these pieces encode to <unk>
DROP_TARGET = ["▁house", "ing", "▁said"]  # left out of separate/target_vocab.json

WORDS = ["hello", "world", "Hello", "WORLD", "the", "The", "young", "house", "quick", "brown", "fox", "jumps",
         "over", "lazy", "dog", "translation", "Marian", "naïve", "café", "résumé", "Zürich", "straße", "Ærøskøbing",
         "Ελλάδα", "Москва", "привет", "日本語", "中文", "你好", "こんにちは", "한국어", "مرحبا", "नमस्ते", "שלום",
         "don't", "I'm", "you're", "it's", "e.g.", "U.S.A.", "$100", "3.14159", "1,000,000", "2024-06-07", "12:30",
         "50%", "#tag", "@user", "a@b.com", "https://example.com/a?b=c", "C++", "->", "||", "::", "...", "—", "«q»",
         "“smart”", "(parens)", "[x]", "{y}", "<angle>", "snake_case", "x86_64", "½", "²", "①", "Ⅻ", "ＡＢＣ", "ｶﾀｶﾅ",
         "ℕ", "∑", "π", "°C", "µs", "Ω", "™", "\u00a0", "\u3000", "\u200b", "\ufeff", "e\u0301", "ﬁ", "Ⅷ",
         "😀", "👍🏽", "🧑‍💻", "🇯🇵", "❤️", "1️⃣", "\x01", "\x7f", "\u2028", "\ufffd", "\U0001F600x"]
SEPS = [" ", " ", " ", "  ", "   ", "\t", "\n", "\r\n", "", ",", ", ", ". ", "!", "?", "\u00a0", "\u3000"]
FIXED = ["", " ", "  ", "\t", "\n", " \n ", "I am a small frog", "I am a small frog.", "||", "|| ||", "Hello world",
         "  leading spaces", "trailing spaces   ", "  both  ", "multiple   inner    spaces", "tab\tseparated\tvalues",
         "line\nbreaks\n\nhere", "windows\r\nline", "ALL CAPS SENTENCE", "MiXeD cAsE", "numbers 0123456789",
         "3.14 2.71 1e10 -5 +7", "punctuation!?.,;:'\"()[]{}", "émigré déjà vu", "日本語のテキスト", "中文文本测试",
         "emoji 😀🎉🤖", "👩‍👩‍👧‍👦 family", "\u00a0nbsp\u00a0", "\u3000ideographic\u3000", "zero\u200bwidth",
         "fullwidth ＡＢＣ１２３", "ligature ﬁle", "combining e\u0301", "\x00nul", "\x1bescape", "￿", "a" * 300,
         "word " * 60,
         # language codes (split off only at the start of a chunk)
         ">>fr<<", ">>fr<< Hello world", ">>fr<<Hello", ">>de<< I am a small frog.", ">>es<<  spaces after",
         ">>zh_Hans<< 你好", ">>pt_BR<< Olá", ">>xx<< unknown code", ">><< empty code", ">>fr no end", ">>fr< half",
         "<<fr>> reversed", " >>fr<< leading space", "text >>fr<< in the middle", ">>fr<<>>de<< two codes",
         ">>>fr<< three", ">>fr<<<< extra", ">>fr<<\n", ">>FR<< upper", ">>fr<<😀",
         # special tokens written in the text
         "</s>", "<unk>", "<pad>", "a</s>b", "hello </s> world", "</s></s>", "<pad> padded <pad>", "x<unk>y",
         "</s>>>fr<< after eos", "</s> >>fr<< spaced", "<s> not special", "</ s> broken", "<unk >", "<eop> <eod>",
         "</s>\n", " </s> ", "\t</s>\t", "text</s>", "</s>text"]


def make_strings(rng):
    out = list(FIXED)
    while len(out) < 340:
        n = rng.randint(1, 8)
        parts = []
        for _ in range(n):
            parts.append(rng.choice(WORDS))
            parts.append(rng.choice(SEPS))
        s = "".join(parts)
        r = rng.random()
        if r < 0.12:
            s = rng.choice(LANG_CODES) + rng.choice(["", " ", "  "]) + s
        elif r < 0.18:
            s = " " + s + " "
        elif r < 0.24:
            pos = rng.randint(0, len(s))
            s = s[:pos] + rng.choice(["</s>", "<unk>", "<pad>", ">>fr<<"]) + s[pos:]
        out.append(s)
    return out


def spm_pieces(path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i))]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def marian_vocab(pieces, codes, drop):
    vocab = {"</s>": 0, "<unk>": 1}
    for p in codes + pieces:
        if p not in vocab and p not in drop:
            vocab[p] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return vocab


def build_fixture(out, sdist):
    os.makedirs(out, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for member, name in [("test/botchan_en_unigram_1000.model", "source.spm"),
                             ("test/botchan_en_bpe_1000.model", "target.spm")]:
            m = next(x for x in tar.getmembers() if x.name.endswith(member))
            with tar.extractfile(m) as src, open(os.path.join(out, name), "wb") as dst:
                shutil.copyfileobj(src, dst)
    src_pieces = spm_pieces(os.path.join(out, "source.spm"))
    tgt_pieces = spm_pieces(os.path.join(out, "target.spm"))
    union = src_pieces + [p for p in tgt_pieces if p not in set(src_pieces)]
    write_json(os.path.join(out, "vocab.json"), marian_vocab(union, LANG_CODES, DROP_SOURCE))
    write_json(os.path.join(out, "tokenizer_config.json"),
               {"source_lang": "en", "target_lang": "fr", "separate_vocabs": False, "model_max_length": 512,
                "tokenizer_class": "MarianTokenizer"})

    sep = os.path.join(out, "separate")
    os.makedirs(sep, exist_ok=True)
    write_json(os.path.join(sep, "vocab.json"), marian_vocab(src_pieces, LANG_CODES, DROP_SOURCE))
    write_json(os.path.join(sep, "target_vocab.json"), marian_vocab(tgt_pieces, [], DROP_TARGET))
    write_json(os.path.join(sep, "tokenizer_config.json"),
               {"source_lang": "en", "target_lang": "fr", "separate_vocabs": True, "model_max_length": 512,
                "tokenizer_class": "MarianTokenizer"})

    spc = os.path.join(out, "specials")
    os.makedirs(spc, exist_ok=True)
    vocab = json.load(open(os.path.join(out, "vocab.json"), encoding="utf-8"))
    flag = dict(normalized=False, single_word=False, special=True)
    write_json(os.path.join(spc, "tokenizer_config.json"),
               {"separate_vocabs": False, "model_max_length": 512, "clean_up_tokenization_spaces": True,
                "additional_special_tokens": [">>fr<<", ">>de<<"],
                "added_tokens_decoder": {
                    "0": dict(content="</s>", lstrip=True, rstrip=True, **flag),
                    "1": dict(content="<unk>", lstrip=False, rstrip=True, **flag),
                    str(vocab["<pad>"]): dict(content="<pad>", lstrip=True, rstrip=False, **flag)},
                "tokenizer_class": "MarianTokenizer"})
    for d in (sep, spc):
        for name in ("source.spm", "target.spm"):
            link = os.path.join(d, name)
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.join("..", name), link)
    if not os.path.exists(os.path.join(spc, "vocab.json")):
        os.symlink(os.path.join("..", "vocab.json"), os.path.join(spc, "vocab.json"))


def decode_cases(tok, rng, encodes):
    n = len(tok.encoder) if not tok.separate_vocabs else len(tok.target_encoder)
    specials = [tok.eos_token_id, tok.unk_token_id, tok.pad_token_id]
    codes = [tok.encoder[c] for c in LANG_CODES if c in tok.encoder]
    lists = [e["source"] for e in encodes[:150]] + [e["target"] for e in encodes[:40]]
    lists += [[], [tok.eos_token_id], [tok.pad_token_id], [tok.unk_token_id], specials, specials[::-1]]
    for _ in range(150):
        k = rng.randint(1, 14)
        ids = []
        for _ in range(k):
            r = rng.random()
            if r < 0.15:
                ids.append(rng.choice(specials))
            elif r < 0.22 and codes:
                ids.append(rng.choice(codes))
            else:
                ids.append(rng.randrange(n))
        lists.append(ids)
    if tok.separate_vocabs:  # ids missing from target_vocab.json (< target.spm size): spm fallback
        spm_n = tok.spm_target.get_piece_size()
        lists += [[i] for i in range(n, spm_n)] + [[5, n, 6, spm_n - 1, 0]]
    bad = [[-1], [n + 5000], [7, 10**6]]
    cases = []
    for ids in lists:
        try:
            cases.append({"ids": ids, "text": tok.decode(ids), "skip": tok.decode(ids, skip_special_tokens=True)})
        except Exception:  # noqa: BLE001 - recorded as "kvrun must refuse these"
            cases.append({"ids": ids, "error": True})
    for ids in bad:
        try:
            tok.decode(ids)
            cases.append({"ids": ids, "text": tok.decode(ids), "skip": tok.decode(ids, skip_special_tokens=True)})
        except Exception:  # noqa: BLE001
            cases.append({"ids": ids, "error": True})
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdist", required=True, help="sentencepiece-*.tar.gz (pip download --no-binary :all:)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                                                  "marian-tok"))
    args = ap.parse_args()
    import transformers
    import sentencepiece
    from transformers import MarianTokenizer

    out = os.path.abspath(args.out)
    build_fixture(out, args.sdist)
    rng = random.Random(SEED)
    strings = make_strings(rng)
    goldens = {"transformers": transformers.__version__, "sentencepiece": sentencepiece.__version__,
               "variants": {}}
    for name, folder in [("shared", out), ("separate", os.path.join(out, "separate")),
                         ("specials", os.path.join(out, "specials"))]:
        with tempfile.TemporaryDirectory() as tmp:  # from_pretrained may write nothing, but be safe
            shutil.copytree(folder, os.path.join(tmp, "t"), symlinks=False)
            tok = MarianTokenizer.from_pretrained(os.path.join(tmp, "t"))
        encodes = []
        for s in strings:
            encodes.append({"text": s, "source": tok(s)["input_ids"], "target": tok(text_target=s)["input_ids"]})
        goldens["variants"][name] = {"encode": encodes, "decode": decode_cases(tok, random.Random(SEED + 1), encodes)}
        print(name, len(encodes), "encodes,", len(goldens["variants"][name]["decode"]), "decodes")
    with open(os.path.join(out, "goldens.json"), "w", encoding="utf-8") as f:
        json.dump(goldens, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
