#!/usr/bin/env python3
"""Reference ids for kvrun's GGUF tokenizers (tests/gguf_tokenizer_test.cpp).

TOOLING ONLY: CI never runs this script; its outputs are committed under
tests/fixtures/gguf-tokenizer/. Needs pip `tokenizers` (the reference) and `gguf` (gguf-py,
to write the tiny .gguf). kvrun's own code is never used here. Usage, from the repository root:

    /root/.cache/kvrun/venv-tools/bin/python tools/make_gguf_tokenizer_goldens.py

Writes (deterministic: fixed seeds, no time or environment in the output):
  goldens.json  {"strings": [...], "ids": {"gemma3": [[...], ...], "qwen3": ..., "llama3": ...}}:
                >= 2,000 varied strings (tools/make_tokenizer_goldens.py's generator with the
                special tokens of all three models, plus fixed cases below) and the ids Hugging
                Face `tokenizers` gives them with add_special_tokens=True, from
                .deps/tokenizers/{gemma3,qwen3,llama3}/tokenizer.json. The C++ test encodes the
                same strings with tokenizers built from GGUF vocabularies (the real Gemma 3 GGUF;
                Qwen3 / Llama 3 vocabularies converted as convert_hf_to_gguf.py does).
  tiny.gguf     a tokenizer-only GGUF (no tensors) with a few hundred SentencePiece-style
                ("llama") tokens, add_space_prefix=true, and Gemma 3's chat template.
  bad_lengths.gguf, bad_type.gguf  malformed tokenizer keys (scores shorter than tokens; a
                string bos_token_id) for read_gguf_vocab's error messages.
  tiny.json     strings and their ids for tiny.gguf, from the llama.cpp SPM algorithm
                re-implemented below (spm_encode), independently of kvrun.
"""
import heapq
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_tokenizer_goldens as mtg  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "gguf-tokenizer")
NAMES = ["gemma3", "qwen3", "llama3"]
# <image_soft_token> (262144) is only in Gemma 3's tokenizer.json, not in its GGUF: left out.
SPECIALS = mtg.SPECIALS["gemma3"] + mtg.SPECIALS["qwen3"] + mtg.SPECIALS["llama3"] + ["<mask>", "<unused5>", "<unk>"]

EXTRA = [
    "<start_of_turn>user\nWrite a poem.<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", "<think>\nhmm\n</think>\n\nok",
    "👨‍👩‍👧‍👦👩🏽‍💻🧑🏿‍🤝‍🧑🏻🏳️‍⚧️", "\u200d", "a\u200d\u200db", "\ufffd", "\U0010fffd", "\U0001f9ff\U0001fae0",
    "\U00020000\U0002a6d6", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\u0000\u0001\u001f", "\x7f\u0080\u009f", "\ue000\uf8ff",
    " " * 40, "\n" * 12, "\t" * 9, " \t \n \r\n ", "a" + " " * 33 + "b", "▁", "▁▁ ▁", "<0x41>", "<0xFF>",
    "    def f(self):\n        return {'a': [1, 2]}\n\n\n", "\tif (x) {\n\t\treturn;\n\t}\n",
    "1234567890123456789", "3.14e-10", "١٢٣٤٥", "٣.١٤", "अनुच्छेद १२", "ผมรักภาษาไทย",
    "Le cœur a ses raisons que la raison ne connaît point.", "Ça va? Très bien, merci — à bientôt!",
    "Größenordnung Äpfel Öl Übermut", "mañana, señor", "İstanbul ılık", "Ørsted Åland Æsir",
    "هذا نص عربي مع أرقام 123 و English", "עברית עם ניקוד: שָׁלוֹם", "中华人民共和国成立于1949年。",
    "東京都渋谷区で会いましょう。", "서울특별시 강남구", "Ἐν ἀρχῇ ἦν ὁ λόγος", "Съешь же ещё этих мягких булок",
]


def corpus():
    strings = mtg.make_strings(SPECIALS, 1900)
    strings += EXTRA
    rng = random.Random(7)
    prose = ("The quick brown fox jumps over the lazy dog while the tokenizer counts every byte it sees; "
             "numbers like 42, 3.5 and 1,000 appear, as do code snippets and names such as O'Neil.").split(" ")
    for _ in range(150):
        k = rng.randint(3, 30)
        s = " ".join(rng.choice(prose) for _ in range(k))
        strings.append(rng.choice(["", " ", "  ", "\n"]) + s + rng.choice(["", " ", "\n", "  \n"]))
    return list(dict.fromkeys(strings))


# ---- the tiny GGUF and an independent llama.cpp-SPM reference (llm_tokenizer_spm)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def tiny_vocab():
    toks = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN),
            ("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL), ("<mask>", CONTROL),
            ("\n", USER_DEFINED), ("\n\n", USER_DEFINED), ("<tag>", USER_DEFINED), ("[unused]", UNUSED)]
    toks += [("<0x%02X>" % b, BYTE) for b in range(256)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()é中文"
    pieces = ["▁", "▁t", "th", "he", "▁the", "▁The", "in", "▁in", "er", "▁a", "an", "▁an", "and", "▁and", "ll",
              "llo", "ello", "▁he", "▁hel", "▁hello", "▁Hello", "wor", "orld", "▁world", "▁wor", "ing", "▁is",
              "is", "on", "▁on", "at", "▁at", "re", "▁re", "ed", "es", "en", "▁to", "to", "of", "▁of", "it",
              "▁it", "wo", "or", "▁w", "ld", "rl", "rld", "▁wo", "▁▁", "▁▁▁▁", "12", "123", "▁1", "中文", "ab", "abc", "bc", "▁ab", "xyz", "yz", "xy"]
    for p in pieces + list(chars):
        toks.append((p, NORMAL))
    seen = set()
    out = []
    for t, ty in toks:
        if t not in seen:
            seen.add(t)
            out.append((t, ty))
    # Scores as SentencePiece BPE writes them (earlier merges score higher); a few ties on purpose.
    scores = []
    for i, (t, ty) in enumerate(out):
        scores.append(0.0 if ty != NORMAL else -float(i // 2))
    return out, scores


def spm_encode(vocab, scores, text, add_bos=True, add_space_prefix=True):
    tok_id = {t: i for i, (t, ty) in enumerate(vocab)}
    specials = sorted([i for i, (t, ty) in enumerate(vocab) if ty in (CONTROL, USER_DEFINED, UNKNOWN)],
                      key=lambda i: -len(vocab[i][0]))
    frags = [text]  # str = raw text, int = token
    for sid in specials:
        st = vocab[sid][0]
        nxt = []
        for f in frags:
            if isinstance(f, int):
                nxt.append(f)
                continue
            while True:
                p = f.find(st)
                if p < 0:
                    break
                if p > 0:
                    nxt.append(f[:p])
                nxt.append(sid)
                f = f[p + len(st):]
            if f:
                nxt.append(f)
        frags = nxt
    out = [2] if add_bos else []
    prev_special = True
    for f in frags:
        if isinstance(f, int):
            out.append(f)
            prev_special = True
            continue
        s = ((" " if add_space_prefix and prev_special else "") + f).replace(" ", "▁")
        prev_special = False
        syms = [c for c in s]  # code points (UTF-8 chars)
        text_of = {i: syms[i] for i in range(len(syms))}
        prev = [i - 1 for i in range(len(syms))]
        nxt_ = [i + 1 if i + 1 < len(syms) else -1 for i in range(len(syms))]
        heap = []

        def add(l, r):
            if l < 0 or r < 0:
                return
            t = text_of[l] + text_of[r]
            if t in tok_id:
                heapq.heappush(heap, (-scores[tok_id[t]], l, r, len(t.encode())))
        for i in range(1, len(syms)):
            add(i - 1, i)
        size = {i: len(syms[i].encode()) for i in range(len(syms))}
        while heap:
            _, l, r, n = heapq.heappop(heap)
            if size[l] == 0 or size[r] == 0 or size[l] + size[r] != n:
                continue
            text_of[l] += text_of[r]
            size[l] += size[r]
            size[r] = 0
            nxt_[l] = nxt_[r]
            if nxt_[r] >= 0:
                prev[nxt_[r]] = l
            add(prev[l], l)
            add(l, nxt_[l])

        # A merged symbol is always a token (a bigram is queued only when its text is one), so
        # llama.cpp's resegment() reduces to: the token, else one <0xXX> per UTF-8 byte.
        i = 0 if syms else -1
        while i >= 0:
            t = text_of[i]
            if t in tok_id:
                out.append(tok_id[t])
            else:
                out += [tok_id["<0x%02X>" % b] for b in t.encode()]
            i = nxt_[i]
    return out


TINY_TEXTS = ["", " ", "hello world", "Hello world", " the cat", "the  end", "abcxyz", "xyzabc", "12345",
              "中文 and 中国", "é è", "emoji 😀!", "<start_of_turn>user\nhello<end_of_turn>\n",
              "<bos>the", "a<tag>b", "<mask> in", "line\n\nline\n", "<unk>", "[unused]", "\t tab",
              "The theme is on it", "    four", "<0x41>", "<start_of_turn", "in and an at"]


def write_tiny(template):
    import gguf
    vocab, scores = tiny_vocab()
    path = os.path.join(OUT, "tiny.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_scores(scores)
    w.add_token_types([ty for _, ty in vocab])
    w.add_bos_token_id(2)
    w.add_eos_token_id(5)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    rng = random.Random(11)
    words = ["the", "The", "hello", "world", "in", "and", "an", "abc", "xyz", "中文", "é", "😀", "<tag>",
             "<end_of_turn>", "\n", "\n\n", " ", "  ", "12", "3", "!", "zzz"]
    texts = list(TINY_TEXTS)
    while len(texts) < 120:
        texts.append("".join(rng.choice(words) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(1, 8))))
    texts = list(dict.fromkeys(texts))
    cases = [{"text": t, "ids": spm_encode(vocab, scores, t)} for t in texts]
    with open(os.path.join(OUT, "tiny.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "tools/make_gguf_tokenizer_goldens.py", "add_special_tokens": True, "cases": cases},
                  f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {path}: {os.path.getsize(path)} bytes, {len(vocab)} tokens; tiny.json: {len(cases)} cases")


def write_bad():
    """Two small malformed tokenizer GGUFs for read_gguf_vocab's errors."""
    import gguf
    for name, fill in [("bad_lengths.gguf", lambda w: (w.add_token_list(["a", "b", "c"]), w.add_token_scores([0.0, 1.0]))),
                       ("bad_type.gguf", lambda w: (w.add_token_list(["a", "b", "c"]),
                                                     w.add_string("tokenizer.ggml.bos_token_id", "a")))]:
        path = os.path.join(OUT, name)
        w = gguf.GGUFWriter(path, arch="llama")
        w.add_tokenizer_model("llama")
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print(f"wrote {path}: {os.path.getsize(path)} bytes")


def main():
    from tokenizers import Tokenizer
    os.makedirs(OUT, exist_ok=True)
    strings = corpus()
    ids = {}
    for name in NAMES:
        tok = Tokenizer.from_file(os.path.join(ROOT, ".deps", "tokenizers", name, "tokenizer.json"))
        ids[name] = [e.ids for e in tok.encode_batch(strings, add_special_tokens=True)]
    path = os.path.join(OUT, "goldens.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"generator": "tools/make_gguf_tokenizer_goldens.py", "add_special_tokens": True,
                   "strings": strings, "ids": ids}, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {path}: {len(strings)} strings, {os.path.getsize(path)} bytes")
    cfg = json.load(open(os.path.join(ROOT, ".deps", "tokenizers", "gemma3", "tokenizer_config.json")))
    write_tiny(cfg["chat_template"])
    write_bad()


if __name__ == "__main__":
    main()
