#!/usr/bin/env python3
"""Export a tiny FunASR-nano folder in the layouts OTHER tools use for it (test fixtures).

TOOLING ONLY: CI never runs this script (it needs torch, funasr and onnx). Its outputs are
committed under tests/fixtures/funasr-export/ and tests/sherpa_layout_test.cpp checks that
kvrun::Model::load runs the LLM part of both folders and reproduces the torch model's tokens.
Never downloads anything: the model is the tiny FunASR-nano folder the goldens script writes
(tests/fixtures/funasr-nano-tiny: model.pt, config.yaml, Qwen3-0.6B/config.json), built with
pip funasr's FunASRNano class from its config.yaml and loaded from its model.pt.

What it writes (tests/fixtures/funasr-export/, everything fp32):
  sherpa/   the sherpa-onnx layout (k2-fsa/sherpa-onnx offline FunASR-nano; export scripts of
            Wasser1462/FunASR-nano-onnx, scripts/export_{encoder_adaptor,embedding,llm}_onnx.py):
              encoder_adaptor.onnx  x [1, T, 560] -> encoder_out [1, T_out, llm_dim] (all frames)
              embedding.onnx        input_ids [batch_size, sequence_length] int64
                                    -> embeddings [batch_size, sequence_length, hidden]
              llm.onnx              the "KV-delta" graph: inputs_embeds [batch, seq, hidden],
                                    attention_mask [batch, total_seq] int64, cache_position [seq]
                                    int64, cache_key_i / cache_value_i [batch, max_total_len,
                                    kv_heads, head_dim]; outputs logits [batch, seq, vocab],
                                    key_delta_i / value_delta_i [batch, seq, kv_heads, head_dim].
            with the metadata_props of the export scripts (see METADATA below).
  split/    the older layout of the same scripts (git history of Wasser1462/FunASR-nano-onnx,
            export_kv_cache_model/export_llm_onnx.py): encoder_adaptor.onnx + embedding.onnx +
              llm_prefill.onnx  inputs_embeds [batch, seq, hidden], attention_mask [batch, seq]
                                -> logits [batch, seq, vocab], present_key_i / present_value_i
                                [batch, kv_heads, seq, head_dim] (HF cache layout: axis 2)
              llm_decode.onnx   inputs_embeds [batch, 1, hidden], attention_mask [batch, total_seq],
                                past_key_i / past_value_i [batch, kv_heads, past_seq, head_dim]
                                -> logits [batch, 1, vocab], present_* [batch, kv_heads, total_seq,
                                head_dim]
  expected.json  for every run of the goldens (tests/fixtures/funasr-nano-tiny/goldens.json): the
            prompt ids around the first N adaptor rows (<clip>.adaptor_out in goldens.safetensors)
            and the reference's greedy ids (stop id removed): the ids kvrun must produce. The
            script asserts that the exported torch modules reproduce the goldens' adaptor rows
            (1e-4 relative) and generated ids, and --check runs both folders in onnxruntime.
  Each folder also gets Qwen3-0.6B/config.json + generation_config.json (copied from the model
  folder; the published sherpa-onnx folder ships the tokenizer files there instead, which are
  too big for a fixture).

Semantics followed (own implementation, same graph signatures and numerics as the scripts):
  KV-delta: past = cache_position[0]; the graph reads cache[:, :max(past, 1)], attends over
  [cache rows | new rows] with an additive -1e4 causal mask by absolute position and -1e4 for
  padding (the cache rows count as valid when past > 0, the new rows follow attention_mask's
  last seq columns), and returns only the new rows: K after k_norm and RoPE, V raw. The host
  copies them into rows [past, past + seq) of its fixed buffers.
  Split: positions are past .. past + seq - 1 (HF's default cache_position), the causal mask is
  built from attention_mask's length (finfo.min for masked keys, as the scripts' patched
  create_causal_mask); KV concatenated on axis 2.

Size: the embedding table (= the tied LM head, 151936 x hidden floats) is the only big tensor.
To keep the fixtures small it is stored ONCE per folder in an external-data file
(`weights.data`) that embedding.onnx and the LLM graphs all reference (the published exports
store it inside each graph); the LM head is Transpose(table). The graphs' signatures are those of
the scripts. Everything else is inline. sherpa/weights.data and split/weights.data (and the two
encoder_adaptor.onnx) are byte-identical, so git stores each once.

Usage (from the repository root; tool versions: torch 2.11, transformers 5.23, funasr 1.4.16,
onnx 1.23.2, onnxruntime 1.32.0):
  python tools/make_funasr_export_fixtures.py [--model tests/fixtures/funasr-nano-tiny]
      [--out tests/fixtures/funasr-export] [--max-total-len 128]
  python tools/make_funasr_export_fixtures.py --check   # ORT loops on the written folders

Real-size exports for bench/run-asr.sh (not fixtures; written outside the repository):
  python tools/make_funasr_export_fixtures.py --model <FunASR-nano folder> --out <dir> --no-goldens \
      --layouts sherpa --own-tables --int8 --max-total-len 640
  --no-goldens  the folder has no goldens.json (e.g. `kvrun synth-checkpoint --funasr-nano`): no
                comparison with the reference, no expected.json, no --check
  --layouts     which folders to write (default sherpa,split)
  --own-tables  every graph keeps its own copy of the embedding table, as the published exports do
                (no shared weights.data); a graph over 2 GB (the fp32 llm.onnx) is saved with its
                tensors in one external file <name>.onnx.data next to it. The whole Qwen3-0.6B/
                folder is copied (sherpa-onnx reads the tokenizer from it)
  --int8        also write encoder_adaptor.int8.onnx, embedding.int8.onnx (onnxruntime quantize_dynamic,
                MatMul only, QUInt8, as export_{encoder_adaptor,embedding}_onnx.py) and llm.int8.onnx
                (quantize_dynamic QInt8, per channel, symmetric, no reduce_range, as export_llm_onnx.py)
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PREFIX = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 105761, 46670,
          61443, 5122]
SUFFIX = [151645, 198, 151644, 77091, 198]
EOS = 151645
DATA = "weights.data"
ENCODER_META = {
    "lfr_window_size": 7,
    "lfr_window_shift": 6,
    "normalize_samples": 0,
    "model_type": "sense_voice_encoder_adaptor",
    "version": "1",
    "model_author": "FunAudioLLM",
    # encoder_output_size, llm_dim added from the model
    "comment": "kvrun test fixture (tiny random FunASR-nano)",
    "url": "https://huggingface.co/FunAudioLLM/Fun-ASR-Nano-2512",
}


def placeholder_count(frames):
    """The reference's number of audio placeholders for `frames` LFR rows (FunASRNano.data_load)."""
    olens = 1 + (frames - 3 + 2 * 1) // 2
    olens = 1 + (olens - 3 + 2 * 1) // 2
    return (olens - 1) // 2 + 1


def load_funasr(folder):
    import torch
    import yaml

    import funasr  # noqa: F401  (registers the encoder/adaptor classes)
    from funasr.models.fun_asr_nano.model import FunASRNano

    conf = yaml.safe_load(open(os.path.join(folder, "config.yaml")))
    kwargs = {k: v for k, v in conf.items() if k not in ("model", "model_conf")}
    kwargs.update(conf.get("model_conf") or {})
    fe = conf.get("frontend_conf") or {}
    kwargs.setdefault("input_size", int(fe.get("n_mels", 80)) * int(fe.get("lfr_m", 7)))
    cwd = os.getcwd()
    os.chdir(folder)  # llm_conf.init_param_path is relative to the folder
    try:
        m = FunASRNano(**kwargs)
    finally:
        os.chdir(cwd)
    sd = torch.load(os.path.join(folder, "model.pt"), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise SystemExit(f"model.pt does not match config.yaml: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return m.float().eval(), conf


# ---------------------------------------------------------------------------------------------
# torch modules that are exported


def make_modules(m):
    import torch
    import torch.nn as nn

    llm = m.llm
    cfg = llm.config
    core = llm.model
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    rope = core.rotary_emb
    inv_freq = rope.inv_freq.detach().float().clone()  # the model's own buffer (bf16-rounded if it was)
    rope_scale = float(getattr(rope, "attention_scaling", 1.0))

    def rot_half(x):
        return torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], dim=-1)

    def cos_sin(pos):  # pos [S] -> [S, hd]
        f = pos.float().unsqueeze(-1) * inv_freq.unsqueeze(0)
        e = torch.cat([f, f], dim=-1)
        return e.cos() * rope_scale, e.sin() * rope_scale

    def qkv(layer, x, pos):
        """x [B, S, H] (normed) -> q [B, nh, S, hd], k, v [B, nkv, S, hd]; q, k normed and rotated."""
        B, S = x.shape[0], x.shape[1]
        a = layer.self_attn
        q = a.q_norm(a.q_proj(x).view(B, S, nh, hd)).transpose(1, 2)
        k = a.k_norm(a.k_proj(x).view(B, S, nkv, hd)).transpose(1, 2)
        v = a.v_proj(x).view(B, S, nkv, hd).transpose(1, 2)
        c, s = cos_sin(pos)
        return q * c + rot_half(q) * s, k * c + rot_half(k) * s, v

    def attend(layer, q, k, v, bias):
        """q [B, nh, S, hd], k/v [B, nkv, K, hd], bias broadcastable to [B, nh, S, K]."""
        B, S = q.shape[0], q.shape[2]
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        sc = torch.matmul(q, k.transpose(-1, -2)) * (hd ** -0.5) + bias
        o = torch.matmul(torch.softmax(sc, dim=-1), v)
        return layer.self_attn.o_proj(o.transpose(1, 2).reshape(B, S, nh * hd))

    def mlp(layer, x):
        p = layer.mlp
        return p.down_proj(torch.nn.functional.silu(p.gate_proj(x)) * p.up_proj(x))

    def head(x):
        return llm.lm_head(core.norm(x))

    class KvDelta(nn.Module):
        def __init__(self):
            super().__init__()
            self.llm = llm

        def forward(self, inputs_embeds, attention_mask, cache_position, *caches):
            B, S = inputs_embeds.shape[0], inputs_embeds.shape[1]
            past = cache_position[0]
            pc = torch.clamp(past, min=1)
            new_mask = (attention_mask[:, -S:] > 0).float()
            cache_valid = (past > 0).float()  # the cache rows count only when there is a past
            k_pos = torch.cat([torch.arange(pc), cache_position])
            causal = torch.where(k_pos.view(1, -1) <= cache_position.view(-1, 1), 0.0, -1e4)
            x = inputs_embeds
            deltas = []
            for i, layer in enumerate(core.layers):
                ck = caches[2 * i][:, :pc].transpose(1, 2)
                cv = caches[2 * i + 1][:, :pc].transpose(1, 2)
                key_mask = torch.cat([torch.ones_like(ck[:, 0, :, 0]) * cache_valid, new_mask], dim=1)
                bias = causal.view(1, 1, S, -1) - (1.0 - key_mask).view(B, 1, 1, -1) * 1e4
                h = layer.input_layernorm(x)
                q, k, v = qkv(layer, h, cache_position)
                x = x + attend(layer, q, torch.cat([ck, k], 2), torch.cat([cv, v], 2), bias)
                x = x + mlp(layer, layer.post_attention_layernorm(x))
                deltas += [k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()]
            return (head(x), *deltas)

    class Split(nn.Module):
        def __init__(self, with_past):
            super().__init__()
            self.llm = llm
            self.with_past = with_past

        def forward(self, inputs_embeds, attention_mask, *past):
            S = inputs_embeds.shape[1]
            L = attention_mask.shape[1]
            past_len = past[0].shape[2] if self.with_past else 0
            pos = torch.arange(S) + past_len
            # the scripts' patched create_causal_mask: src = mask length, past = src - tgt
            q_pos = torch.arange(S).view(-1, 1)
            k_pos = torch.arange(L).view(1, -1)
            low = torch.finfo(torch.float32).min
            causal = torch.where(k_pos <= (L - S) + q_pos, 0.0, low).view(1, 1, S, L)
            bias = causal + ((1.0 - (attention_mask > 0).float()) * low).view(-1, 1, 1, L)
            x = inputs_embeds
            present = []
            for i, layer in enumerate(core.layers):
                h = layer.input_layernorm(x)
                q, k, v = qkv(layer, h, pos)
                if self.with_past:
                    k = torch.cat([past[2 * i], k], 2)
                    v = torch.cat([past[2 * i + 1], v], 2)
                x = x + attend(layer, q, k, v, bias)
                x = x + mlp(layer, layer.post_attention_layernorm(x))
                present += [k, v]
            return (head(x), *present)

    class EncoderAdaptor(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = m.audio_encoder
            self.adp = m.audio_adaptor

        def forward(self, x):
            # one clip, no padding: the adaptor's blocks run without a mask (FunASR's Transformer
            # adaptor builds its mask with make_pad_mask, whose length would be traced as a constant)
            lens = (x[:, :, 0] * 0 + 1).sum(1).long()
            e, lens = self.enc(x.clone(), lens)
            if self.adp.k != 1:
                raise SystemExit("audio_adaptor_conf.downsample_rate != 1 is not supported by this script")
            a = self.adp.linear2(self.adp.relu(self.adp.linear1(e)))
            for block in self.adp.blocks or []:
                a, _ = block(a, None)
            return a

    class Embedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = core.embed_tokens

        def forward(self, input_ids):
            return self.emb(input_ids)

    dims = dict(hidden=cfg.hidden_size, vocab=cfg.vocab_size, layers=cfg.num_hidden_layers, kv_heads=nkv, head_dim=hd)
    return KvDelta, Split, EncoderAdaptor, Embedding, dims


# ---------------------------------------------------------------------------------------------
# onnx post-processing: metadata, one shared external copy of the table


def set_meta(path, meta):
    import onnx

    mp = onnx.load(path, load_external_data=False)
    del mp.metadata_props[:]
    for k, v in meta.items():
        p = mp.metadata_props.add()
        p.key, p.value = str(k), str(v)
    onnx.save(mp, path)


def share_table(path, table, data_file):
    """Replaces the initializer equal to `table` ([V, H]) or to its transpose by a reference to the
    external copy in `data_file` (the LM head becomes Transpose(table))."""
    import onnx
    from onnx import helper, numpy_helper

    mp = onnx.load(path)
    g = mp.graph
    name = "shared_embedding_table"
    found = False
    for init in list(g.initializer):
        if len(init.dims) != 2 or sorted(init.dims) != sorted(table.shape):
            continue
        arr = numpy_helper.to_array(init)
        if arr.shape == table.shape and np.array_equal(arr, table):
            transpose = False
        elif arr.shape == table.T.shape and np.array_equal(arr, table.T):
            transpose = True
        else:
            continue
        old = init.name
        g.initializer.remove(init)
        if transpose:
            g.node.insert(0, helper.make_node("Transpose", [name], [old], perm=[1, 0], name="lm_head_from_table"))
        else:
            for n in g.node:
                for i, x in enumerate(n.input):
                    if x == old:
                        n.input[i] = name
        found = True
    if not found:
        raise SystemExit(f"{path}: no initializer equals the embedding table")
    t = onnx.TensorProto()
    t.name = name
    t.data_type = onnx.TensorProto.FLOAT
    t.dims.extend(table.shape)
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", data_file), ("offset", "0"), ("length", str(table.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    g.initializer.append(t)
    onnx.save(mp, path)


# ---------------------------------------------------------------------------------------------


def load_goldens(model_dir):
    from safetensors.numpy import load_file

    g = json.load(open(os.path.join(model_dir, "goldens.json")))
    t = load_file(os.path.join(model_dir, "goldens.safetensors"))
    return g, t


def export_all(model_dir, out, max_total_len, goldens_check=True, layouts=("sherpa", "split"), own_tables=False,
               int8=False):
    import torch

    m, conf = load_funasr(model_dir)
    KvDelta, Split, EncoderAdaptor, Embedding, d = make_modules(m)
    H, V, L, KV, D = d["hidden"], d["vocab"], d["layers"], d["kv_heads"], d["head_dim"]
    table = m.llm.model.embed_tokens.weight.detach().float().numpy().copy()
    if not np.array_equal(table, m.llm.lm_head.weight.detach().float().numpy()):
        raise SystemExit("the fixture relies on tied embeddings (Qwen3-0.6B: tie_word_embeddings true)")
    enc_out = m.audio_encoder.output_size()
    goldens, tensors = load_goldens(model_dir) if goldens_check else ({"runs": []}, {})

    # The torch model, as exported, against the reference's goldens: adaptor rows and greedy ids.
    runs = []
    with torch.no_grad():
        emb = m.llm.model.embed_tokens
        for r in goldens["runs"]:
            clip, n = r["clip"], r["N"]
            feats = torch.from_numpy(tensors[clip + ".features"].copy())
            ref = tensors[clip + ".adaptor_out"]
            got = EncoderAdaptor()(feats[None])[0].numpy()
            err = float(np.abs(got - ref).max()) / float(np.abs(ref).max())
            if err > 1e-4:
                raise SystemExit(f"{clip}: the exported encoder+adaptor differs from the goldens (rel {err:.2e})")
            rows = torch.from_numpy(ref[:n].copy())
            ctx = torch.cat([emb(torch.tensor(r["prefix_ids"])), rows, emb(torch.tensor(r["suffix_ids"]))])[None]
            gen = m.llm.generate(inputs_embeds=ctx, attention_mask=torch.ones(1, ctx.shape[1], dtype=torch.long),
                                 max_new_tokens=goldens["max_new_tokens"], do_sample=False, eos_token_id=EOS,
                                 pad_token_id=EOS)
            ids = [int(t) for t in gen[0].tolist()]
            if ids != r["generated_ids"]:
                raise SystemExit(f"{clip}/{r['variant']}: llm.generate gives {ids}, the goldens {r['generated_ids']}")
            greedy = ids[:-1] if r["stopped_on_eos"] else ids
            runs.append({"clip": clip, "variant": r["variant"], "N": n, "prefix_ids": r["prefix_ids"],
                         "suffix_ids": r["suffix_ids"], "context_len": len(r["prefix_ids"]) + n + len(r["suffix_ids"]),
                         "greedy_ids": greedy, "stopped_on_eos": r["stopped_on_eos"]})
            print(f"{clip}/{r['variant']}: N {n}, context {runs[-1]['context_len']}, {len(greedy)} ids = goldens")

    llm_meta = {
        "model_type": "qwen3_causallm_unified_prefill_decode_kv_delta",
        "version": "1",
        "hidden_size": H,
        "vocab_size": V,
        "num_layers": L,
        "max_total_len": max_total_len,
        "io_dtype": "float32",
        "num_kv_heads": KV,
        "head_dim": D,
        "quantization_type": "fp32",
    }
    enc_meta = dict(ENCODER_META, encoder_output_size=enc_out, llm_dim=H)
    emb_meta = {"model_type": "embedding_layer", "version": "1", "model_author": "FunAudioLLM", "vocab_size": V,
                "hidden_size": H, "comment": ENCODER_META["comment"], "url": ENCODER_META["url"]}
    split_meta = {"model_type": "qwen3_causallm", "version": "1", "hidden_size": H, "vocab_size": V,
                  "num_layers": L, "kv_seq_axis": 2}

    def export(mod, args, path, ins, outs, axes, opset):
        if not own_tables:
            torch.onnx.export(mod, args, path, input_names=ins, output_names=outs, dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
            return
        # a graph over 2 GB comes out of the exporter as one file per tensor: export into a temp
        # folder, then save it as <name>.onnx (+ <name>.onnx.data when it is too big for one file)
        import tempfile

        import onnx

        with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
            t = os.path.join(tmp, os.path.basename(path))
            torch.onnx.export(mod, args, t, input_names=ins, output_names=outs, dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
            size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
            mp = onnx.load(t, load_external_data=True)
            data = os.path.basename(path) + ".data"
            if os.path.exists(path + ".data"):
                os.remove(path + ".data")
            onnx.save(mp, path, save_as_external_data=size > 1_900_000_000, all_tensors_to_one_file=True,
                      location=data, size_threshold=1024)
            del mp
        print(f"  {path}: {os.path.getsize(path)} bytes" +
              (f" + {os.path.getsize(path + '.data')} in {data}" if os.path.exists(path + ".data") else ""))

    def table_of(p):
        if not own_tables:
            share_table(p, table, DATA)

    for layout in layouts:
        d_out = os.path.join(out, layout)
        shutil.rmtree(d_out, ignore_errors=True)
        os.makedirs(os.path.join(d_out, "Qwen3-0.6B"))
        names = sorted(os.listdir(os.path.join(model_dir, "Qwen3-0.6B"))) if own_tables else \
            ("config.json", "generation_config.json")
        for f in names:
            if os.path.exists(os.path.join(model_dir, "Qwen3-0.6B", f)):
                shutil.copy(os.path.join(model_dir, "Qwen3-0.6B", f), os.path.join(d_out, "Qwen3-0.6B"))
        if own_tables:
            write_vocab_merges(os.path.join(d_out, "Qwen3-0.6B"))
        with torch.no_grad():
            p = os.path.join(d_out, "encoder_adaptor.onnx")
            export(EncoderAdaptor(), (torch.randn(1, 30, 560),), p, ["x"], ["encoder_out"],
                   {"x": {1: "T"}, "encoder_out": {1: "T_out"}}, 18)
            set_meta(p, enc_meta)
            p = os.path.join(d_out, "embedding.onnx")
            export(Embedding(), (torch.randint(0, V, (1, 7)),), p, ["input_ids"], ["embeddings"],
                   {"input_ids": {0: "batch_size", 1: "sequence_length"},
                    "embeddings": {0: "batch_size", 1: "sequence_length"}}, 17)
            set_meta(p, emb_meta)
            table_of(p)
            if layout == "sherpa":
                S, past = 5, 3
                caches = [torch.zeros(1, max_total_len, KV, D) for _ in range(2 * L)]
                ins = ["inputs_embeds", "attention_mask", "cache_position"]
                outs = ["logits"]
                axes = {"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total_seq"},
                        "cache_position": {0: "seq"}, "logits": {0: "batch", 1: "seq"}}
                for i in range(L):
                    ins += [f"cache_key_{i}", f"cache_value_{i}"]
                    outs += [f"key_delta_{i}", f"value_delta_{i}"]
                    for nm in (f"cache_key_{i}", f"cache_value_{i}"):
                        axes[nm] = {0: "batch"}
                    for nm in (f"key_delta_{i}", f"value_delta_{i}"):
                        axes[nm] = {0: "batch", 1: "seq"}
                p = os.path.join(d_out, "llm.onnx")
                export(KvDelta(), (torch.randn(1, S, H), torch.ones(1, past + S, dtype=torch.long),
                                   torch.arange(past, past + S), *caches), p, ins, outs, axes, 17)
                set_meta(p, llm_meta)
                table_of(p)
            else:
                S = 5
                outs = ["logits"] + [f"present_{kv}_{i}" for i in range(L) for kv in ("key", "value")]
                axes = {"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                        "logits": {0: "batch", 1: "seq"}}
                for nm in outs[1:]:
                    axes[nm] = {0: "batch", 2: "seq"}
                p = os.path.join(d_out, "llm_prefill.onnx")
                export(Split(False), (torch.randn(1, S, H), torch.ones(1, S, dtype=torch.long)), p,
                       ["inputs_embeds", "attention_mask"], outs, axes, 17)
                set_meta(p, split_meta)
                table_of(p)
                past = [torch.randn(1, KV, 4, D) for _ in range(2 * L)]
                pins = [f"past_{kv}_{i}" for i in range(L) for kv in ("key", "value")]
                axes = {"inputs_embeds": {0: "batch"}, "attention_mask": {0: "batch", 1: "total_seq"},
                        "logits": {0: "batch"}}
                for nm in pins:
                    axes[nm] = {0: "batch", 2: "past_seq"}
                for nm in outs[1:]:
                    axes[nm] = {0: "batch", 2: "total_seq"}
                p = os.path.join(d_out, "llm_decode.onnx")
                export(Split(True), (torch.randn(1, 1, H), torch.ones(1, 5, dtype=torch.long), *past), p,
                       ["inputs_embeds", "attention_mask"] + pins, outs, axes, 17)
                set_meta(p, split_meta)
                table_of(p)
        if int8:
            quantize_int8(d_out, layout)
    if own_tables or not goldens_check:
        return None
    # The same bytes in both folders (git stores one blob; ONNX Runtime refuses external data
    # reached through a link that leaves the model's folder).
    for layout in layouts:
        with open(os.path.join(out, layout, DATA), "wb") as f:
            f.write(table.tobytes())

    expected = {
        "about": "tools/make_funasr_export_fixtures.py: for every run of the goldens, the prompt ids around the "
                 "first N adaptor rows (<clip>.adaptor_out in the goldens' safetensors) and the greedy ids of "
                 "the reference (goldens generated_ids, stop id removed), which the exported torch model and both "
                 "exported layouts reproduce; kvrun must too",
        "goldens": os.path.relpath(os.path.join(os.path.abspath(model_dir), "goldens.safetensors"),
                                   os.path.abspath(out)),
        "hidden_size": H,
        "max_total_len": max_total_len,
        "eos_id": EOS,
        "max_new_tokens": goldens["max_new_tokens"],
        "runs": runs,
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    return expected


def write_vocab_merges(qdir):
    """vocab.json + merges.txt from tokenizer.json when the folder has only the latter: sherpa-onnx's
    FunASR-nano tokenizer reads those two (the published Qwen3-0.6B folder ships all three)."""
    tj = os.path.join(qdir, "tokenizer.json")
    if os.path.exists(os.path.join(qdir, "vocab.json")) or not os.path.exists(tj):
        return
    model = json.load(open(tj, encoding="utf-8"))["model"]
    with open(os.path.join(qdir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(model["vocab"], f, ensure_ascii=False)
    with open(os.path.join(qdir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in model["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")


def quantize_int8(d_out, layout):
    """*.int8.onnx next to the fp32 graphs, with the published export scripts' quantize_dynamic settings."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in ("encoder_adaptor", "embedding"):  # export_{encoder_adaptor,embedding}_onnx.py
        quantize_dynamic(model_input=os.path.join(d_out, name + ".onnx"),
                         model_output=os.path.join(d_out, name + ".int8.onnx"),
                         op_types_to_quantize=["MatMul"], weight_type=QuantType.QUInt8)
    llms = ["llm"] if layout == "sherpa" else ["llm_prefill", "llm_decode"]
    for name in llms:  # export_llm_onnx.py quantize_int8_dynamic_no_data
        quantize_dynamic(model_input=os.path.join(d_out, name + ".onnx"),
                         model_output=os.path.join(d_out, name + ".int8.onnx"),
                         weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
                         extra_options={"WeightSymmetric": True}, use_external_data_format=False)
    for f in sorted(os.listdir(d_out)):
        if ".int8." in f:
            print(f"  {os.path.join(d_out, f)}: {os.path.getsize(os.path.join(d_out, f))} bytes")


# ---------------------------------------------------------------------------------------------
# --check: plain onnxruntime loops over the written folders


def check(out, model_dir):
    import onnxruntime as ort

    exp = json.load(open(os.path.join(out, "expected.json")))
    _, tensors = load_goldens(model_dir)
    so = ort.SessionOptions()
    so.log_severity_level = 3

    def sess(layout, f):
        return ort.InferenceSession(os.path.join(out, layout, f), so, providers=["CPUExecutionProvider"])

    llm = sess("sherpa", "llm.onnx")
    meta = llm.get_modelmeta().custom_metadata_map
    M, L = int(meta["max_total_len"]), int(meta["num_layers"])
    KV, D = int(meta["num_kv_heads"]), int(meta["head_dim"])
    pre, dec = sess("split", "llm_prefill.onnx"), sess("split", "llm_decode.onnx")
    for layout in ("sherpa", "split"):
        enc, emb = sess(layout, "encoder_adaptor.onnx"), sess(layout, "embedding.onnx")
        e = lambda ids: emb.run(None, {"input_ids": np.asarray([ids], dtype=np.int64)})[0][0]  # noqa
        worst = 0.0
        for run in exp["runs"]:
            clip = run["clip"]
            a = enc.run(None, {"x": tensors[clip + ".features"][None]})[0][0]
            ref = tensors[clip + ".adaptor_out"]
            worst = max(worst, float(np.abs(a - ref).max()) / float(np.abs(ref).max()))
            rows = ref[: run["N"]]
            x = np.concatenate([e(run["prefix_ids"]), rows, e(run["suffix_ids"])])[None]
            out_ids = []
            if layout == "sherpa":  # fixed cache, deltas copied into rows [past, past + seq)
                cache = [np.zeros((1, M, KV, D), np.float32) for _ in range(2 * L)]
                past = 0
                while len(out_ids) < exp["max_new_tokens"]:
                    S = x.shape[1]
                    feed = {"inputs_embeds": x, "attention_mask": np.ones((1, past + S), np.int64),
                            "cache_position": np.arange(past, past + S, dtype=np.int64)}
                    for i in range(L):
                        feed[f"cache_key_{i}"], feed[f"cache_value_{i}"] = cache[2 * i], cache[2 * i + 1]
                    r = llm.run(None, feed)
                    for j in range(2 * L):
                        cache[j][:, past: past + S] = r[1 + j]
                    past += S
                    t = int(r[0][0, -1].argmax())
                    if t == exp["eos_id"]:
                        break
                    out_ids.append(t)
                    x = e([t])[None]
            else:  # prefill, then decode with the presents as pasts
                r = pre.run(None, {"inputs_embeds": x, "attention_mask": np.ones((1, x.shape[1]), np.int64)})
                n = x.shape[1]
                while True:
                    t = int(r[0][0, -1].argmax())
                    if t == exp["eos_id"] or len(out_ids) == exp["max_new_tokens"]:
                        break
                    out_ids.append(t)
                    n += 1
                    feed = {"inputs_embeds": e([t])[None], "attention_mask": np.ones((1, n), np.int64)}
                    for i in range(L):
                        feed[f"past_key_{i}"], feed[f"past_value_{i}"] = r[1 + 2 * i], r[2 + 2 * i]
                    r = dec.run(None, feed)
            ok = out_ids == run["greedy_ids"]
            print(f"{layout} {clip}/{run['variant']}: greedy {'OK' if ok else 'MISMATCH'} ({len(out_ids)} ids)")
            assert ok, (out_ids, run["greedy_ids"])
        print(f"{layout} encoder_adaptor.onnx vs goldens adaptor_out: max rel diff {worst:.2e}")
        assert worst < 1e-4


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "tests", "fixtures", "funasr-nano-tiny"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "funasr-export"))
    ap.add_argument("--max-total-len", type=int, default=128)
    ap.add_argument("--check", action="store_true", help="only run the onnxruntime checks on --out")
    ap.add_argument("--no-goldens", action="store_true",
                    help="the model folder has no goldens (real-size random checkpoint): export only")
    ap.add_argument("--layouts", default="sherpa,split", help="comma-separated: sherpa, split")
    ap.add_argument("--own-tables", action="store_true",
                    help="each graph keeps its own embedding table, as published (no shared weights.data)")
    ap.add_argument("--int8", action="store_true", help="also write the *.int8.onnx graphs (quantize_dynamic)")
    a = ap.parse_args()
    layouts = [x for x in a.layouts.split(",") if x]
    if any(x not in ("sherpa", "split") for x in layouts):
        ap.error("--layouts takes sherpa and/or split")
    if not a.check:
        export_all(a.model, a.out, a.max_total_len, goldens_check=not a.no_goldens, layouts=layouts,
                   own_tables=a.own_tables, int8=a.int8)
    if not a.no_goldens:
        check(a.out, a.model)
    for layout in layouts:
        for f in sorted(os.listdir(os.path.join(a.out, layout))):
            p = os.path.join(a.out, layout, f)
            if os.path.islink(p):
                print(f"  {layout}/{f} -> {os.readlink(p)}")
            elif os.path.isfile(p):
                print(f"  {layout}/{f}: {os.path.getsize(p)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
