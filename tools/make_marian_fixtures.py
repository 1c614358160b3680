#!/usr/bin/env python3
"""Create a tiny random Marian / OPUS-MT checkpoint, its transformers goldens and its ONNX exports.

TOOLING ONLY: CI never runs this script. Its result is committed as tests/fixtures/marian-tiny/
(see tests/fixtures/marian-tiny/README.md). Downloads nothing except the sentencepiece sdist,
which must be fetched beforehand (see --spm).

Stages (each needs its own Python environment, so the script is run three times, in this order;
stage model deletes the whole fixture folder, onnx/ included; stage verify rewrites golden.json):

  1. model    transformers 5.23 + torch (venv-tools). Writes the model folder and the goldens:
                 source.spm, target.spm      byte copies of sentencepiece-0.2.3.tar.gz
                                             test/botchan_en_unigram_1000.model (1000 pieces, sha256 below)
                 vocab.json                  Marian vocab (NOT sentencepiece ids, see VOCAB below)
                 tokenizer_config.json, special_tokens_map.json
                 config.json, generation_config.json, model.safetensors   (save_pretrained)
                 golden.json, golden_logits.safetensors
  2. export   transformers 4.57 + optimum-onnx 0.1.0 + torch (venv-optimum). Writes
                 onnx/merged/{encoder_model,decoder_model_merged}.onnx      (optimum default)
                 onnx/split/{encoder_model,decoder_model,decoder_with_past_model}.onnx
                                                                            (optimum --no-post-process)
                 onnx/recompute/{encoder_model,decoder_model}.onnx          (torch.onnx.export of
                     RecomputeDecoder below: the "15-input" decoder of seeds.md section 5)
              plus byte copies of the tokenizer/config files in each of the three folders
              and re-runs the generation goldens under transformers 4.57 into
                 onnx/_hf457.json (temporary; merged into golden.json by stage 3, then deleted).
  3. verify   venv-tools again (onnxruntime). Greedy-decodes every golden sentence with each ONNX
              export (numpy loop, same rules as HF greedy: start pad, pad banned, forced EOS at
              max_length-1), compares with the HF greedy ids and stores the result and the
              4.57-vs-5.23 comparison in golden.json["checks"].

Usage (from the repository root):
    pip download --no-binary :all: --no-deps sentencepiece==0.2.3 -d /tmp/spsdist
    tar xzf /tmp/spsdist/sentencepiece-0.2.3.tar.gz -C /tmp/spsdist
    ~/.cache/kvrun/venv-tools/bin/python    tools/make_marian_fixtures.py model \\
        --spm /tmp/spsdist/sentencepiece-0.2.3/test/botchan_en_unigram_1000.model
    ~/.cache/kvrun/venv-optimum/bin/python  tools/make_marian_fixtures.py export
    ~/.cache/kvrun/venv-tools/bin/python    tools/make_marian_fixtures.py verify

Versions used for the committed files: see golden.json["generator"], ["export_generator"].
venv-optimum = python -m venv + pip install "transformers==4.57.*" "optimum-onnx==0.1.0" torch
sentencepiece onnxruntime safetensors (optimum-onnx 0.1.0 requires transformers<4.58).

Model (MarianMTModel, random init, seed SEED; every choice differs from its default or from its twin
so that mix-ups show):
  d_model 64, 4 heads (head_dim 16) in encoder and decoder, 3 encoder layers != 2 decoder layers,
  encoder_ffn_dim 128 != decoder_ffn_dim 96, activation swish, scale_embedding True (x8),
  max_position_embeddings 128 (sinusoidal, not saved), shared tied embeddings (vocab 1005),
  final_logits_bias random (pad entry 0, EOS +EOS_BIAS), pad row of the embedding = 0,
  LayerNorm weights 1 + 0.2 randn and biases 0.1 randn, projections N(0, BODY_STD),
  embeddings N(0, EMB_STD), Linear biases 0.1 randn.

VOCAB (vocab.json): "</s>" 0, "<unk>" 1, ">>fr<<" 2, ">>de<<" 3, ">>es<<" 4, then the 997
sentencepiece pieces in spm order without <unk>, <s>, </s> (spm ids 3..999 -> vocab ids 5..1001),
then "<pad>" 1002 LAST (vocab_size 1003). vocab ids != spm ids, as in real OPUS-MT vocabs.

Random weights give either an immediate EOS or none (repetition loops) and near-ties. The constants
(EMB_STD 1.0 -> logits std ~8, EOS embedding row x EOS_ROW_SCALE 2.5, EOS bias +10, seed 23) were
picked by a sweep over seeds 0-31 (EOS bias 6-10, row scale 2-2.5) for: beams ending with EOS before max_length at several lengths,
greedy != beam for some sentences, and a minimum greedy top-2 margin > 0.01.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

NAME = "marian-tiny"
SEED = 23
SPM_SHA256 = "f8c7e5e0fa9e948783d20ea9dccf0e2611f567bc1a4e468a658becd5015f458e"
SPM_ORIGIN = "sentencepiece-0.2.3.tar.gz (PyPI sdist) test/botchan_en_unigram_1000.model"
LANG_CODES = [">>fr<<", ">>de<<", ">>es<<"]
EMB_STD = 1.0
BODY_STD = 0.3
BIAS_STD = 0.1
LOGIT_BIAS_STD = 0.5
EOS_BIAS = 10.0
EOS_ROW_SCALE = 2.5
MAX_LENGTH = 32

CFG = dict(
    d_model=64,
    encoder_layers=3,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=96,
    activation_function="swish",
    scale_embedding=True,
    max_position_embeddings=128,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    eos_token_id=0,
    forced_eos_token_id=0,
    bos_token_id=0,
    share_encoder_decoder_embeddings=True,
    tie_word_embeddings=True,
    static_position_embeddings=True,
    normalize_embedding=False,
    normalize_before=False,
)

SENTENCES = [
    "Hello",
    ">>fr<< How are you today?",
    "Café à la crème, naïve façade — déjà vu!",
    "",
    "I am a small frog.",
    "Because of an hereditary recklessness, I have been playing always a losing game since my "
    "childhood. I jumped from the window.",
    ">>de<< The weather is nice and the garden is green.",
    "Numbers 1234 and symbols: @#% ||",
]
NBEST_SENTENCES = [1, 5, 6]  # num_return_sequences=4
LOGITS_SENTENCES = [2, 6, 7]  # encoder states + teacher-forced logits in golden_logits.safetensors


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fixture_dir(args):
    return os.path.join(args.out, NAME)


# ----------------------------------------------------------------------------------------------
# stage 1: model + goldens (transformers 5.x)
# ----------------------------------------------------------------------------------------------


def build_vocab(spm_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_path)
    vocab = {"</s>": 0, "<unk>": 1}
    for code in LANG_CODES:
        vocab[code] = len(vocab)
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i):
            continue
        piece = sp.id_to_piece(i)
        assert piece not in vocab, piece
        vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return vocab


def randomize_(model, pad, eos):
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("shared.weight") or name.endswith("embed_tokens.weight"):
                if name == "model.shared.weight":
                    p.normal_(0.0, EMB_STD)
            elif name == "final_logits_bias":
                pass
            elif "layer_norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.normal_(0.0, BIAS_STD)
            elif name.endswith("embed_positions.weight"):
                pass  # sinusoidal, not saved, recomputed on load
            elif name.endswith(".weight") and p.dim() == 2:
                p.normal_(0.0, BODY_STD)
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")
        model.model.shared.weight[eos].mul_(EOS_ROW_SCALE)
        model.model.shared.weight[pad].zero_()
        b = torch.randn(model.final_logits_bias.shape) * LOGIT_BIAS_STD
        b[0, pad] = 0.0
        b[0, eos] += EOS_BIAS
        model.final_logits_bias.copy_(b)


def greedy_margins(logits, pad):
    """top-1 minus top-2 raw logit per row, pad excluded (HF bans it)."""
    import torch

    lg = logits.clone()
    lg[:, pad] = float("-inf")
    top = torch.topk(lg, 2, dim=-1).values
    return (top[:, 0] - top[:, 1]).tolist()


def stage_model(args):
    import torch
    import transformers
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    torch.set_num_threads(1)
    d = fixture_dir(args)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    got = sha256(args.spm)
    if got != SPM_SHA256:
        raise SystemExit(f"{args.spm}: sha256 {got} != {SPM_SHA256}")
    shutil.copyfile(args.spm, os.path.join(d, "source.spm"))
    shutil.copyfile(args.spm, os.path.join(d, "target.spm"))
    vocab = build_vocab(args.spm)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=2)
    V = len(vocab)
    pad, eos, unk = vocab["<pad>"], vocab["</s>"], vocab["<unk>"]
    # as a real OPUS-MT repo (opus-mt-en-de): tokenizer_config.json + special_tokens_map.json
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"source_lang": "en", "target_lang": "fr", "model_max_length": 512,
                   "separate_vocabs": False, "tokenizer_class": "MarianTokenizer"}, f, indent=2)
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, f, indent=2)

    torch.manual_seed(args.seed)
    config = MarianConfig(vocab_size=V, decoder_vocab_size=V, pad_token_id=pad,
                          decoder_start_token_id=pad, **CFG)
    model = MarianMTModel(config).eval()
    randomize_(model, pad, eos)
    gen = GenerationConfig(
        num_beams=4, max_length=MAX_LENGTH, bad_words_ids=[[pad]], forced_eos_token_id=eos,
        renormalize_logits=True, decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos,
        bos_token_id=eos)
    model.generation_config = gen
    model.save_pretrained(d, safe_serialization=True)
    gen.save_pretrained(d)

    # everything below from the folder re-loaded from disk
    tok = MarianTokenizer.from_pretrained(d)
    model = MarianMTModel.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        saved_keys = sorted(f.keys())
    assert model.model.shared.weight[pad].abs().max() == 0
    assert model.final_logits_bias[0, pad] == 0

    greedy_kw = dict(num_beams=1, do_sample=False, max_length=MAX_LENGTH)
    beam_kw = dict(num_beams=4, do_sample=False, max_length=MAX_LENGTH, return_dict_in_generate=True,
                   output_scores=True)
    nbest_kw = dict(beam_kw, num_return_sequences=4)

    def strip(seq):  # drop right padding after EOS (keep a leading pad = start token)
        seq = list(seq)
        out = [seq[0]]
        for t in seq[1:]:
            if t == pad:
                break
            out.append(t)
        return out

    sents, margins_all, tensors = [], [], {}
    with torch.no_grad():
        for k, text in enumerate(SENTENCES):
            enc = tok([text], return_tensors="pt")
            ids = enc["input_ids"]
            g = model.generate(**enc, **greedy_kw)[0].tolist()
            b = model.generate(**enc, **beam_kw)
            entry = {
                "text": text,
                "pieces": tok.convert_ids_to_tokens(ids[0].tolist()),
                "input_ids": ids[0].tolist(),
                "greedy": strip(g),
                "greedy_text": tok.decode(g, skip_special_tokens=True),
                "beam": strip(b.sequences[0].tolist()),
                "beam_score": b.sequences_scores[0].item(),
                "beam_text": tok.decode(b.sequences[0], skip_special_tokens=True),
            }
            entry["greedy_ends_with_eos"] = entry["greedy"][-1] == eos and len(entry["greedy"]) < MAX_LENGTH
            entry["beam_ends_with_eos_before_max_length"] = entry["beam"][-1] == eos and len(entry["beam"]) < MAX_LENGTH
            if k in NBEST_SENTENCES:
                n = model.generate(**enc, **nbest_kw)
                entry["nbest"] = [strip(s.tolist()) for s in n.sequences]
                entry["nbest_scores"] = n.sequences_scores.tolist()
                entry["nbest_text"] = tok.batch_decode(n.sequences, skip_special_tokens=True)
            # teacher-forced logits along the greedy output
            dec_in = torch.tensor([entry["greedy"]])
            out = model(**enc, decoder_input_ids=dec_in)
            logits = out.logits[0].float()
            m = greedy_margins(logits[:-1], pad)
            entry["greedy_top2_margins"] = [round(x, 6) for x in m]
            # forced EOS at the last step overrides the argmax there
            check = logits[:-1].clone()
            check[:, pad] = float("-inf")
            am = check.argmax(-1).tolist()
            want = entry["greedy"][1:]
            if len(entry["greedy"]) == MAX_LENGTH:
                am[-1] = eos
            assert am == want, (k, am, want)
            margins_all.extend(m[: len(want) - (1 if len(entry["greedy"]) == MAX_LENGTH else 0)])
            if k in LOGITS_SENTENCES:
                tensors[f"s{k}.input_ids"] = ids[0].to(torch.int64).contiguous()
                tensors[f"s{k}.encoder_last_hidden_state"] = out.encoder_last_hidden_state[0].float().contiguous()
                tensors[f"s{k}.decoder_input_ids"] = dec_in[0].contiguous()
                tensors[f"s{k}.logits"] = logits.contiguous()
                entry["logits_tensors"] = [f"s{k}.input_ids", f"s{k}.encoder_last_hidden_state",
                                           f"s{k}.decoder_input_ids", f"s{k}.logits"]
            sents.append(entry)
            print(f"[{k}] {len(ids[0])} in, greedy {len(entry['greedy'])} beam {len(entry['beam'])} "
                  f"eos={entry['beam_ends_with_eos_before_max_length']} min margin {min(m):.3f} "
                  f"score {entry['beam_score']:.4f}")

        # one padded batch of all sentences
        enc = tok(SENTENCES, return_tensors="pt", padding=True)
        gb = model.generate(**enc, **greedy_kw)
        bb = model.generate(**enc, **beam_kw)
        batched = {
            "input_ids": enc["input_ids"].tolist(),
            "attention_mask": enc["attention_mask"].tolist(),
            "greedy": [strip(s.tolist()) for s in gb],
            "beam": [strip(s.tolist()) for s in bb.sequences],
            "beam_scores": bb.sequences_scores.tolist(),
        }
        batched["greedy_equals_single"] = [a == s["greedy"] for a, s in zip(batched["greedy"], sents)]
        batched["beam_equals_single"] = [a == s["beam"] for a, s in zip(batched["beam"], sents)]
        batched["beam_score_max_abs_diff_vs_single"] = max(
            abs(a - s["beam_score"]) for a, s in zip(batched["beam_scores"], sents))

    save_file(tensors, os.path.join(d, "golden_logits.safetensors"))
    golden = {
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "reference": "transformers 5.x outputs in this file are the reference",
        "model": "MarianMTModel random init, see tools/make_marian_fixtures.py",
        "seed": args.seed,
        "spm": {"origin": SPM_ORIGIN, "sha256": SPM_SHA256},
        "special_ids": {"eos": eos, "unk": unk, "pad": pad, "decoder_start": pad,
                        **{c: vocab[c] for c in LANG_CODES}, "vocab_size": V},
        "saved_tensor_keys": saved_keys,
        "generation_kwargs": {
            "greedy": greedy_kw,
            "beam": {k: v for k, v in beam_kw.items()},
            "nbest": nbest_kw,
            "from_generation_config": gen.to_diff_dict(),
            "note": "generate(**tokenizer([text], return_tensors='pt'), **kwargs) on top of "
                    "generation_config.json; defaults length_penalty 1.0, early_stopping False",
        },
        "sequence_format": "token ids as returned by generate(): start token pad first, EOS last "
                           "if reached; right padding removed",
        "greedy_top2_margin_note": "raw logit top1-top2 with pad excluded, per greedy step "
                                   "(forced last step included in the list but not in the minimum)",
        "greedy_top2_margin_min": min(margins_all),
        "sentences": sents,
        "batched": batched,
        "logits_file": "golden_logits.safetensors",
        "logits_note": "s{k}.logits[t] = decoder logits (float32, final_logits_bias included) at "
                       "step t for decoder_input_ids = greedy sequence (starts with pad); "
                       "s{k}.encoder_last_hidden_state [src_len, d_model]",
    }
    with open(os.path.join(d, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
    n_eos = sum(s["beam_ends_with_eos_before_max_length"] for s in sents)
    print(f"== {NAME}: V {V} pad {pad}; beam EOS before max_length: {n_eos}/{len(sents)}; "
          f"min greedy margin {min(margins_all):.4f}; batched greedy eq {batched['greedy_equals_single']} "
          f"beam eq {batched['beam_equals_single']}")
    print("saved keys:", [k for k in saved_keys if "layers" not in k])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["model", "export", "verify"])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--spm", default="/tmp/spsdist/sentencepiece-0.2.3/test/botchan_en_unigram_1000.model")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    {"model": stage_model, "export": stage_export, "verify": stage_verify}[args.stage](args)
    return 0


TOKENIZER_FILES = ["source.spm", "target.spm", "vocab.json", "tokenizer_config.json",
                   "special_tokens_map.json", "config.json", "generation_config.json"]
OPSET = 18  # what optimum-onnx 0.1.0 picks for Marian with torch 2.x


def copy_side_files(d, out):
    """The original tokenizer/config files beside each export (identical bytes: git stores them once)."""
    for f in os.listdir(out):
        if not f.endswith(".onnx"):
            os.remove(os.path.join(out, f))
    for f in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(d, f), os.path.join(out, f))


def make_recompute_decoder(model):
    """The "15-input" decoder of seeds.md section 5 (15 inputs for 6 layers; 3 + 2 * layers).

    inputs : encoder_attention_mask int64 [batch, encoder_sequence_length]
             input_ids              int64 [batch, decoder_sequence_length]
             encoder_hidden_states  float [batch, encoder_sequence_length, d_model]
             past_key_values.{i}.decoder.key / .value  float [batch, heads, past_decoder_sequence_length, head_dim]
    outputs: logits float [batch, decoder_sequence_length, vocab]
             present.{i}.decoder.key / .value  float [batch, heads, past + decoder_sequence_length, head_dim]
    No encoder KV inputs/outputs, no use_cache_branch: cross-attention K/V are recomputed from
    encoder_hidden_states at every step. First step: past tensors with 0 rows. Positions start at
    past_decoder_sequence_length. Causal self-attention inside input_ids (decoder_sequence_length >= 1).
    """
    import torch

    dec = model.model.decoder
    cfg = model.config
    H = cfg.decoder_attention_heads
    hd = cfg.d_model // H

    class RecomputeDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dec = dec
            self.lm_head = model.lm_head
            self.register_buffer("bias", model.final_logits_bias.detach().clone())
            self.register_buffer("positions", dec.embed_positions.weight.detach().clone())

        @staticmethod
        def heads(x):
            b, t, _ = x.shape
            return x.view(b, t, H, hd).transpose(1, 2)

        def attend(self, q, k, v, add_mask):
            w = torch.matmul(q, k.transpose(2, 3)) * (hd ** -0.5) + add_mask
            o = torch.matmul(torch.softmax(w, dim=-1), v)
            b, _, t, _ = o.shape
            return o.transpose(1, 2).reshape(b, t, H * hd)

        def forward(self, encoder_attention_mask, input_ids, encoder_hidden_states, *past):
            T = input_ids.shape[1]
            P = past[0].shape[2]
            pos_ids = torch.arange(T, device=input_ids.device) + P
            h = self.dec.embed_tokens(input_ids) * dec.embed_scale + self.positions[pos_ids].unsqueeze(0)
            neg = torch.finfo(h.dtype).min
            kpos = torch.arange(T, device=input_ids.device) + P
            kall = torch.arange(P + T, device=input_ids.device)
            causal = torch.where(kall[None, :] <= kpos[:, None], 0.0, neg)[None, None]
            cross = ((1.0 - encoder_attention_mask[:, None, None, :].to(h.dtype)) * neg)
            presents = []
            for i, layer in enumerate(self.dec.layers):
                sa = layer.self_attn
                k = torch.cat([past[2 * i], self.heads(sa.k_proj(h))], dim=2)
                v = torch.cat([past[2 * i + 1], self.heads(sa.v_proj(h))], dim=2)
                presents += [k, v]
                a = sa.out_proj(self.attend(self.heads(sa.q_proj(h)), k, v, causal))
                h = layer.self_attn_layer_norm(h + a)
                ca = layer.encoder_attn
                ck = self.heads(ca.k_proj(encoder_hidden_states))
                cv = self.heads(ca.v_proj(encoder_hidden_states))
                a = ca.out_proj(self.attend(self.heads(ca.q_proj(h)), ck, cv, cross))
                h = layer.encoder_attn_layer_norm(h + a)
                f = layer.fc2(layer.activation_fn(layer.fc1(h)))
                h = layer.final_layer_norm(h + f)
            logits = self.lm_head(h) + self.bias
            return (logits, *presents)

    return RecomputeDecoder().eval(), H, hd


def hf_generation_goldens(model, tok):
    """The same generate() calls as stage model (for the 4.57 vs 5.x comparison)."""
    import torch

    res = {"sentences": []}
    with torch.no_grad():
        for k, text in enumerate(SENTENCES):
            enc = tok([text], return_tensors="pt")
            g = model.generate(**enc, num_beams=1, do_sample=False, max_length=MAX_LENGTH)
            b = model.generate(**enc, num_beams=4, do_sample=False, max_length=MAX_LENGTH,
                               return_dict_in_generate=True, output_scores=True)
            e = {"input_ids": enc["input_ids"][0].tolist(), "greedy": g[0].tolist(),
                 "beam": b.sequences[0].tolist(), "beam_score": b.sequences_scores[0].item()}
            if k in NBEST_SENTENCES:
                n = model.generate(**enc, num_beams=4, do_sample=False, max_length=MAX_LENGTH,
                                   return_dict_in_generate=True, output_scores=True, num_return_sequences=4)
                e["nbest"] = n.sequences.tolist()
                e["nbest_scores"] = n.sequences_scores.tolist()
            res["sentences"].append(e)
        enc = tok(SENTENCES, return_tensors="pt", padding=True)
        res["batched_greedy"] = model.generate(**enc, num_beams=1, do_sample=False, max_length=MAX_LENGTH).tolist()
        b = model.generate(**enc, num_beams=4, do_sample=False, max_length=MAX_LENGTH,
                           return_dict_in_generate=True, output_scores=True)
        res["batched_beam"] = b.sequences.tolist()
        res["batched_beam_scores"] = b.sequences_scores.tolist()
    return res


def stage_export(args):
    import importlib.metadata as md

    import torch
    import transformers
    from optimum.exporters.onnx import main_export
    from transformers import MarianMTModel, MarianTokenizer

    torch.set_num_threads(1)
    d = fixture_dir(args)
    od = os.path.join(d, "onnx")
    if os.path.isdir(od):
        shutil.rmtree(od)
    # (a) optimum default: post-processing merges decoder + decoder_with_past into one If graph
    tmp = os.path.join(od, "_tmp_merged")
    main_export(d, output=tmp, task="text2text-generation-with-past", opset=OPSET)
    os.makedirs(os.path.join(od, "merged"))
    for f in ["encoder_model.onnx", "decoder_model_merged.onnx"]:
        shutil.move(os.path.join(tmp, f), os.path.join(od, "merged", f))
    shutil.rmtree(tmp)
    copy_side_files(d, os.path.join(od, "merged"))
    # (b) --no-post-process: separate first-step and with-past decoders
    main_export(d, output=os.path.join(od, "split"), task="text2text-generation-with-past", opset=OPSET,
                no_post_process=True)
    copy_side_files(d, os.path.join(od, "split"))
    # (c) recompute-cross-attention decoder, torch.onnx.export of RecomputeDecoder
    rd = os.path.join(od, "recompute")
    os.makedirs(rd)
    shutil.copyfile(os.path.join(od, "merged", "encoder_model.onnx"), os.path.join(rd, "encoder_model.onnx"))
    model = MarianMTModel.from_pretrained(d, attn_implementation="eager").eval()
    wrapper, H, hd = make_recompute_decoder(model)
    L = model.config.decoder_layers
    past_names = [f"past_key_values.{i}.decoder.{kv}" for i in range(L) for kv in ("key", "value")]
    present_names = [f"present.{i}.decoder.{kv}" for i in range(L) for kv in ("key", "value")]
    B, S, T, P = 2, 5, 1, 3
    dummy = (torch.ones(B, S, dtype=torch.int64), torch.full((B, T), 7, dtype=torch.int64),
             torch.randn(B, S, model.config.d_model), *[torch.randn(B, H, P, hd) for _ in past_names])
    dyn = {"encoder_attention_mask": {0: "batch_size", 1: "encoder_sequence_length"},
           "input_ids": {0: "batch_size", 1: "decoder_sequence_length"},
           "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
           "logits": {0: "batch_size", 1: "decoder_sequence_length"}}
    for n in past_names:
        dyn[n] = {0: "batch_size", 2: "past_decoder_sequence_length"}
    for n in present_names:
        dyn[n] = {0: "batch_size", 2: "past_decoder_sequence_length + decoder_sequence_length"}
    with torch.no_grad():
        torch.onnx.export(wrapper, dummy, os.path.join(rd, "decoder_model.onnx"),
                          input_names=["encoder_attention_mask", "input_ids", "encoder_hidden_states", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=dyn, opset_version=OPSET,
                          dynamo=False)
    copy_side_files(d, rd)
    # transformers 4.57 generation goldens (compared with the 5.x ones by stage verify)
    tok = MarianTokenizer.from_pretrained(d)
    res = hf_generation_goldens(model, tok)
    res["generator"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
    res["export_generator"] = (f"optimum-onnx {md.version('optimum-onnx')}, optimum {md.version('optimum')}, "
                               f"transformers {transformers.__version__}, torch {torch.__version__}, "
                               f"onnx {md.version('onnx')}, opset {OPSET}")
    with open(os.path.join(od, "_hf457.json"), "w") as f:
        json.dump(res, f)
    print("exported:", res["export_generator"])


# ----------------------------------------------------------------------------------------------
# stage 3: onnxruntime greedy parity + 4.57 comparison (venv-tools)
# ----------------------------------------------------------------------------------------------


def ort_greedy(folder, input_ids, pad, eos, max_length, want_logits=None):
    """Greedy decode with the ONNX files in folder; protocol chosen from the decoder's inputs."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    enc = ort.InferenceSession(os.path.join(folder, "encoder_model.onnx"), so)
    names = sorted(f for f in os.listdir(folder) if f.startswith("decoder") and f.endswith(".onnx"))
    sess = {n: ort.InferenceSession(os.path.join(folder, n), so) for n in names}
    ids = np.array([input_ids], dtype=np.int64)
    mask = np.ones_like(ids)
    hidden = enc.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    seq = [pad]
    past = {}
    max_diff = 0.0
    while True:
        step = len(seq) - 1
        if "decoder_model_merged.onnx" in sess:
            s = sess["decoder_model_merged.onnx"]
        elif "decoder_with_past_model.onnx" in sess:
            s = sess["decoder_with_past_model.onnx" if step else "decoder_model.onnx"]
        else:
            s = sess["decoder_model.onnx"]
        feed = {}
        for i in s.get_inputs():
            n = i.name
            if n == "encoder_attention_mask":
                feed[n] = mask
            elif n == "input_ids":
                feed[n] = np.array([[seq[-1]]], dtype=np.int64)
            elif n == "encoder_hidden_states":
                feed[n] = hidden
            elif n == "use_cache_branch":
                feed[n] = np.array([step > 0])
            elif n.startswith("past_key_values."):
                pn = "present." + n[len("past_key_values."):]
                if pn in past:
                    feed[n] = past[pn]
                else:  # first step of merged / recompute: zero-length past
                    heads, hd = i.shape[1], i.shape[3]
                    feed[n] = np.zeros((1, heads, 0, hd), dtype=np.float32)
            else:
                raise RuntimeError(f"unexpected input {n}")
        outs = s.run(None, feed)
        for o, v in zip(s.get_outputs(), outs):
            if o.name.startswith("present."):
                if ".encoder." in o.name and step > 0:
                    continue  # merged cache branch: empty placeholders, keep the first step's
                past[o.name] = v
        logits = outs[0][0, -1].astype(np.float64)
        if want_logits is not None and step < want_logits.shape[0]:
            max_diff = max(max_diff, float(np.abs(logits - want_logits[step]).max()))
        logits[pad] = -np.inf
        nxt = int(np.argmax(logits))
        if len(seq) == max_length - 1:
            nxt = eos
        seq.append(nxt)
        if nxt == eos or len(seq) >= max_length:
            return seq, max_diff


def onnx_signature(path):
    import onnx

    m = onnx.load(path, load_external_data=False)

    def desc(v):
        t = v.type.tensor_type
        dims = [x.dim_param or x.dim_value for x in t.shape.dim]
        return {"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims}

    return {"inputs": [desc(v) for v in m.graph.input], "outputs": [desc(v) for v in m.graph.output],
            "opset": m.opset_import[0].version, "bytes": os.path.getsize(path)}


def stage_verify(args):
    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file

    d = fixture_dir(args)
    od = os.path.join(d, "onnx")
    with open(os.path.join(d, "golden.json"), encoding="utf-8") as f:
        golden = json.load(f)
    pad, eos = golden["special_ids"]["pad"], golden["special_ids"]["eos"]
    gl = load_file(os.path.join(d, "golden_logits.safetensors"))
    checks = {"onnxruntime": ort.__version__}
    onnx_info = {}
    for variant in ["merged", "split", "recompute"]:
        folder = os.path.join(od, variant)
        onnx_info[variant] = {f: onnx_signature(os.path.join(folder, f))
                              for f in sorted(os.listdir(folder)) if f.endswith(".onnx")}
        ok, diffs = [], {}
        for k, s in enumerate(golden["sentences"]):
            want = gl.get(f"s{k}.logits")
            seq, md = ort_greedy(folder, s["input_ids"], pad, eos, MAX_LENGTH, want)
            ok.append(seq == s["greedy"])
            if want is not None:
                diffs[f"s{k}"] = md
        checks[f"onnx_{variant}_greedy_equals_hf"] = ok
        checks[f"onnx_{variant}_max_abs_logit_diff_vs_golden_logits"] = diffs
        print(variant, ok, diffs)
    # transformers 4.57 vs 5.x
    hpath = os.path.join(od, "_hf457.json")
    with open(hpath) as f:
        h = json.load(f)

    def strip(seq):
        out = [seq[0]]
        for t in seq[1:]:
            if t == pad:
                break
            out.append(t)
        return out

    cmp = {"generator": h["generator"]}
    ss = golden["sentences"]
    cmp["input_ids_equal"] = [a["input_ids"] == b["input_ids"] for a, b in zip(h["sentences"], ss)]
    cmp["greedy_equal"] = [strip(a["greedy"]) == b["greedy"] for a, b in zip(h["sentences"], ss)]
    cmp["beam_equal"] = [strip(a["beam"]) == b["beam"] for a, b in zip(h["sentences"], ss)]
    cmp["beam_score_max_abs_diff"] = max(abs(a["beam_score"] - b["beam_score"]) for a, b in zip(h["sentences"], ss))
    cmp["nbest_equal"] = {str(k): [strip(x) for x in h["sentences"][k]["nbest"]] == ss[k]["nbest"]
                          for k in NBEST_SENTENCES}
    cmp["nbest_score_max_abs_diff"] = max(abs(x - y) for k in NBEST_SENTENCES
                                          for x, y in zip(h["sentences"][k]["nbest_scores"], ss[k]["nbest_scores"]))
    cmp["batched_greedy_equal"] = [strip(a) for a in h["batched_greedy"]] == golden["batched"]["greedy"]
    cmp["batched_beam_equal"] = [strip(a) for a in h["batched_beam"]] == golden["batched"]["beam"]
    cmp["note"] = "transformers 5.x (golden.json generator) is the reference"
    mism = {}
    for key in ["greedy_equal", "beam_equal"]:
        for k, eq in enumerate(cmp[key]):
            if not eq:
                src = "greedy" if key == "greedy_equal" else "beam"
                mism[f"{src}_s{k}_457"] = strip(h["sentences"][k][src])
    if mism:
        cmp["outputs_457_where_different"] = mism
    checks["transformers_4_57_vs_5"] = cmp
    golden["checks"] = checks
    golden["export_generator"] = h["export_generator"]
    golden["onnx"] = onnx_info
    with open(os.path.join(d, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
    os.remove(hpath)
    print(json.dumps(cmp, indent=1))


if __name__ == "__main__":
    sys.exit(main())
