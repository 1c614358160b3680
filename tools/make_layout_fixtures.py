#!/usr/bin/env python3
"""Make ONNX decoder exports of qwen3-tiny in the conventions of OTHER tools (test fixtures).

TOOLING ONLY: CI never runs this script. Its results are committed under tests/fixtures/layouts/
and the C++ tests read them to check that kvrun's runtime detects and runs third-party layouts.
Never downloads a model: everything is made from tests/fixtures/qwen3-tiny.

What it makes (tests/fixtures/layouts/<folder>/, fp32; see tests/fixtures/layouts/README.md):
  optimum-merged/          decoder_model_merged.onnx: HF optimum's merged decoder (one top-level If
                           switched by use_cache_branch), made by optimum-onnx's exporter (real tool).
  optimum-plain/           model.onnx: optimum decoder-with-past WITHOUT position_ids, made by
                           optimum-onnx's exporter with a custom OnnxConfig (real tool).
  split/                   embedding.onnx + llm_prefill.onnx + llm_decode.onnx, the FunASR-nano style
                           split layout, KV [batch, seq, kv_heads, head_dim] (sequence on axis 1).
                           Hand-built: a hand-written Qwen3 forward exported with torch.onnx.export
                           (legacy TorchScript exporter, dynamo=False, opset 17).
  genai/                   ONNX Runtime GenAI model folder made by the real GenAI model builder
                           (genai_config.json, model.onnx + model.onnx.data, tokenizer files).
  broken-extra-input/      optimum-plain plus a required float input speaker_embedding [1, 192].
  broken-missing-present/  optimum-plain with the output present.1.value removed.
Every folder also holds config.json and generation_config.json (written by the exporter where it
writes them, copied from the checkpoint otherwise).

Tool versions used for the committed fixtures:
  python 3.11.7, torch 2.15.0 (CPU), onnx 1.23.2, onnxruntime 1.32.0, onnxruntime-genai 0.18.0,
  transformers 5.23.0 (main env: split, genai, checks),
  optimum-onnx 0.1.0 + optimum 2.1.0 + transformers 4.57.6 + accelerate 1.15.0 (optimum env:
  optimum-onnx 0.1.0 requires transformers < 4.58 and fails to import with transformers 5.23:
  "cannot import name 'get_parameter_dtype' from 'transformers.modeling_utils'").

Exact commands (from the repository root):
  python -m venv --system-site-packages /tmp/lyv          # main env: system torch 2.15 + transformers 5.23
  /tmp/lyv/bin/pip install onnx==1.23.2 onnxruntime==1.32.0 onnxruntime-genai==0.18.0 onnxscript
  python -m venv --system-site-packages /tmp/optv         # optimum env: shadows transformers with 4.57
  /tmp/optv/bin/pip install "transformers>=4.57,<4.58" "optimum~=2.1.0" optimum-onnx==0.1.0 \
      accelerate onnx==1.23.2 onnxruntime==1.32.0
  /tmp/lyv/bin/python tools/make_layout_fixtures.py --optimum-python /tmp/optv/bin/python
  /tmp/lyv/bin/python tools/make_layout_fixtures.py --check      # ORT greedy loop vs golden.json

What the real tools were asked to do:
  optimum-merged: optimum-onnx 0.1.0 exports decoder-only models as ONE model.onnx (the merged
    decoder is no longer produced for decoder-only models; `optimum-cli export onnx --task
    text-generation-with-past` gives what optimum-plain has, plus position_ids). The script calls
    optimum.exporters.onnx.main_export(ckpt, out, task="text-generation-with-past") with
    optimum.exporters.utils.get_decoder_models_for_export replaced by the optimum 1.x "legacy"
    behaviour (decoder_model without past inputs + decoder_with_past_model), so that optimum's own
    TextDecoderOnnxConfig.post_process_exported_models merges them with optimum.onnx.merge_decoders
    into decoder_model_merged.onnx. Only that file is kept.
  optimum-plain: main_export(..., task="text-generation-with-past", custom_onnx_configs={"model":
    cfg}) where cfg is a TextDecoderOnnxConfig (no position_ids input; the Qwen3 config optimum
    registers derives from TextDecoderWithPositionIdsOnnxConfig) with Qwen3's normalized config and
    dummy generators. Inside the graph positions then come from the past length (cache_position).
  genai: python -m onnxruntime_genai.models.builder -i <ckpt copy> -o <out> -p fp32 -e cpu -c <cache>
    The builder insists on AutoTokenizer.from_pretrained(<ckpt>) and qwen3-tiny has no tokenizer,
    so the checkpoint copy gets a dummy WordLevel tokenizer (token "t<i>" = id i, whitespace split,
    bos t1, eos t2); the builder copies it into its output, as it does with real tokenizers.

--check runs, for every working layout and every prompt of qwen3-tiny/golden.json, a plain
onnxruntime loop (batch 1, prefill of the whole prompt with a zero-length or no past, then one
token at a time with the present outputs fed back as past) and asserts:
  - prefill logits == golden_logits prompt{k}.logits within 1e-4 (max abs diff),
  - greedy tokens == golden greedy (32 tokens), and every decode step's logits equal
    prompt{k}.continuation_logits within 1e-4,
  - for genai/ also onnxruntime_genai's own Generator reproduces the greedy tokens,
  - broken-*: the graph signature is as described and ORT refuses to run without speaker_embedding.
Checked with onnxruntime 1.32.0 and 1.30.0 (the version kvrun links); decoder_model_merged.onnx is
not byte-reproducible between exporter runs, every other file is.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CKPT = os.path.join(ROOT, "tests", "fixtures", "qwen3-tiny")
OUT = os.path.join(ROOT, "tests", "fixtures", "layouts")
SIDE_FILES = ("config.json", "generation_config.json")
TOL = 1e-4


# ----------------------------------------------------------------------------------------------
# optimum stages (run in the optimum env, via --stage)
# ----------------------------------------------------------------------------------------------

def stage_optimum_merged(ckpt, out):
    import optimum.exporters.utils as eu
    from optimum.exporters.onnx import main_export
    from optimum.exporters.onnx.constants import ONNX_DECODER_NAME, ONNX_DECODER_WITH_PAST_NAME

    def legacy_decoder_models(model, config):
        # optimum 1.x (legacy=True): decoder_model without past inputs + decoder_with_past_model;
        # with two submodels post_process_exported_models() calls merge_decoders().
        def mk(past_in):
            return config.__class__(model.config, task=config.task, int_dtype=config.int_dtype,
                                    float_dtype=config.float_dtype, use_past=True, use_past_in_inputs=past_in)
        return {ONNX_DECODER_NAME: (model, mk(False)), ONNX_DECODER_WITH_PAST_NAME: (model, mk(True))}

    eu.get_decoder_models_for_export = legacy_decoder_models
    main_export(ckpt, out, task="text-generation-with-past")


def stage_optimum_plain(ckpt, out):
    from optimum.exporters.onnx import main_export
    from optimum.exporters.onnx.config import TextDecoderOnnxConfig
    from optimum.exporters.onnx.model_configs import Qwen3OnnxConfig
    from transformers import AutoConfig

    class Qwen3NoPositionIdsOnnxConfig(TextDecoderOnnxConfig):
        DUMMY_INPUT_GENERATOR_CLASSES = Qwen3OnnxConfig.DUMMY_INPUT_GENERATOR_CLASSES
        DUMMY_PKV_GENERATOR_CLASS = Qwen3OnnxConfig.DUMMY_PKV_GENERATOR_CLASS
        NORMALIZED_CONFIG_CLASS = Qwen3OnnxConfig.NORMALIZED_CONFIG_CLASS
        MIN_TRANSFORMERS_VERSION = Qwen3OnnxConfig.MIN_TRANSFORMERS_VERSION

    cfg = Qwen3NoPositionIdsOnnxConfig(AutoConfig.from_pretrained(ckpt), task="text-generation",
                                       use_past=True, use_past_in_inputs=True)
    main_export(ckpt, out, task="text-generation-with-past", custom_onnx_configs={"model": cfg})


def run_stage(python, stage, ckpt, out):
    cmd = [python, os.path.abspath(__file__), "--stage", stage, "--ckpt", ckpt, "--stage-out", out]
    print("+", " ".join(cmd), flush=True)
    log = out + ".log"
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.stdout.write(open(log).read()[-4000:])
        raise SystemExit(f"stage {stage} failed")
    for line in open(log):
        if "max diff" in line or "succeeded" in line or "raised" in line:
            print("   optimum:", line.rstrip())


# ----------------------------------------------------------------------------------------------
# split layout (hand-written Qwen3 forward, torch.onnx.export legacy exporter)
# ----------------------------------------------------------------------------------------------

def make_split(ckpt, out):
    import torch
    from safetensors.torch import load_file

    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    W = load_file(os.path.join(ckpt, "model.safetensors"))
    L = cfg["num_hidden_layers"]
    nh, kvh, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    assert cfg["tie_word_embeddings"] and (cfg.get("rope_scaling") or {}).get("rope_type", "default") == "default"

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rot_half(x):
        return torch.cat((-x[..., hd // 2:], x[..., : hd // 2]), dim=-1)

    class Embedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(W["model.embed_tokens.weight"].clone())

        def forward(self, input_ids):
            return torch.nn.functional.embedding(input_ids, self.weight)

    class LLM(torch.nn.Module):
        """Qwen3 body + tied head. KV cache per layer: [batch, seq, kv_heads, head_dim]."""

        def __init__(self, with_past):
            super().__init__()
            self.with_past = with_past
            self.p = torch.nn.ParameterDict({k.replace(".", "_"): torch.nn.Parameter(v.clone())
                                             for k, v in W.items()})
            inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
            self.register_buffer("inv_freq", inv)

        def w(self, name):
            return self.p[name.replace(".", "_")]

        def forward(self, inputs_embeds, attention_mask, *past):
            b, s = inputs_embeds.shape[0], inputs_embeds.shape[1]
            total = attention_mask.shape[1]
            # positions of the new tokens: number of attended tokens before them (left padding safe)
            pos = (torch.cumsum(attention_mask, dim=1) - 1).clamp(min=0)[:, total - s:]
            freqs = pos.unsqueeze(-1).float() * self.inv_freq  # [b, s, hd/2]
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos().unsqueeze(2), emb.sin().unsqueeze(2)  # [b, s, 1, hd]
            qi = torch.arange(s).unsqueeze(1) + (total - s)
            kj = torch.arange(total).unsqueeze(0)
            allowed = (kj <= qi).unsqueeze(0).unsqueeze(0) & attention_mask.bool()[:, None, None, :]
            bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
            x = inputs_embeds
            presents = []
            for i in range(L):
                pre = f"model.layers.{i}."
                h = rms(x, self.w(pre + "input_layernorm.weight"))
                q = (h @ self.w(pre + "self_attn.q_proj.weight").t()).view(b, s, nh, hd)
                k = (h @ self.w(pre + "self_attn.k_proj.weight").t()).view(b, s, kvh, hd)
                v = (h @ self.w(pre + "self_attn.v_proj.weight").t()).view(b, s, kvh, hd)
                q = rms(q, self.w(pre + "self_attn.q_norm.weight"))
                k = rms(k, self.w(pre + "self_attn.k_norm.weight"))
                q = q * cos + rot_half(q) * sin
                k = k * cos + rot_half(k) * sin
                if self.with_past:
                    k = torch.cat((past[2 * i], k), dim=1)
                    v = torch.cat((past[2 * i + 1], v), dim=1)
                presents += [k, v]
                qh = q.transpose(1, 2)  # [b, nh, s, hd]
                kh = k.transpose(1, 2).repeat_interleave(nh // kvh, dim=1)  # [b, nh, total, hd]
                vh = v.transpose(1, 2).repeat_interleave(nh // kvh, dim=1)
                att = torch.softmax((qh @ kh.transpose(2, 3)) * (hd ** -0.5) + bias, dim=-1)
                o = (att @ vh).transpose(1, 2).reshape(b, s, nh * hd)
                x = x + o @ self.w(pre + "self_attn.o_proj.weight").t()
                h = rms(x, self.w(pre + "post_attention_layernorm.weight"))
                g = h @ self.w(pre + "mlp.gate_proj.weight").t()
                u = h @ self.w(pre + "mlp.up_proj.weight").t()
                x = x + (torch.nn.functional.silu(g) * u) @ self.w(pre + "mlp.down_proj.weight").t()
            x = rms(x, self.w("model.norm.weight"))
            logits = x @ self.w("model.embed_tokens.weight").t()
            return (logits, *presents)

    os.makedirs(out, exist_ok=True)
    kv_names = [n for i in range(L) for n in (f"key_{i}", f"value_{i}")]
    common = dict(opset_version=17, do_constant_folding=True, dynamo=False)
    b, s, past_len = 1, 5, 5
    hidden = cfg["hidden_size"]
    with torch.no_grad():
        torch.onnx.export(Embedding().eval(), (torch.zeros(b, s, dtype=torch.int64),),
                          os.path.join(out, "embedding.onnx"), input_names=["input_ids"],
                          output_names=["inputs_embeds"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "inputs_embeds": {0: "batch", 1: "seq"}},
                          **common)
        present_axes = {f"present_{n}": {0: "batch", 1: "total_seq"} for n in kv_names}
        torch.onnx.export(LLM(False).eval(), (torch.randn(b, s, hidden), torch.ones(b, s, dtype=torch.int64)),
                          os.path.join(out, "llm_prefill.onnx"),
                          input_names=["inputs_embeds", "attention_mask"],
                          output_names=["logits"] + [f"present_{n}" for n in kv_names],
                          dynamic_axes={"inputs_embeds": {0: "batch", 1: "seq"},
                                        "attention_mask": {0: "batch", 1: "total_seq"},
                                        "logits": {0: "batch", 1: "seq"}, **present_axes},
                          **common)
        pasts = tuple(torch.randn(b, past_len, kvh, hd) for _ in kv_names)
        torch.onnx.export(LLM(True).eval(),
                          (torch.randn(b, 1, hidden), torch.ones(b, past_len + 1, dtype=torch.int64), *pasts),
                          os.path.join(out, "llm_decode.onnx"),
                          input_names=["inputs_embeds", "attention_mask"] + [f"past_{n}" for n in kv_names],
                          output_names=["logits"] + [f"present_{n}" for n in kv_names],
                          dynamic_axes={"inputs_embeds": {0: "batch"},
                                        "attention_mask": {0: "batch", 1: "total_seq"},
                                        "logits": {0: "batch"},
                                        **{f"past_{n}": {0: "batch", 1: "past_seq"} for n in kv_names},
                                        **present_axes},
                          **common)
    import onnx
    for f in ("embedding.onnx", "llm_prefill.onnx", "llm_decode.onnx"):
        p = os.path.join(out, f)
        m = onnx.load(p)
        onnx.checker.check_model(m)
        print(f"   split/{f}: opset {m.opset_import[0].version}, IR {m.ir_version}, {os.path.getsize(p)} bytes")


# ----------------------------------------------------------------------------------------------
# GenAI model builder
# ----------------------------------------------------------------------------------------------

def write_dummy_tokenizer(d, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "t1", "eos_token": "t2",
                   "unk_token": "t0", "model_max_length": 256}, f, indent=1)


def make_genai(ckpt, out, tmp):
    src = os.path.join(tmp, "genai-ckpt")
    os.makedirs(src)
    for f in SIDE_FILES + ("model.safetensors",):
        shutil.copy(os.path.join(ckpt, f), src)
    write_dummy_tokenizer(src, json.load(open(os.path.join(ckpt, "config.json")))["vocab_size"])
    build = os.path.join(tmp, "genai-out")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", src, "-o", build,
           "-p", "fp32", "-e", "cpu", "-c", os.path.join(tmp, "genai-cache")]
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stdout.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit("GenAI model builder failed")
    os.makedirs(out)
    for f in sorted(os.listdir(build)):
        shutil.copy(os.path.join(build, f), out)
    for f in SIDE_FILES:  # the builder does not write them; the task's folders all carry them
        shutil.copy(os.path.join(ckpt, f), out)


# ----------------------------------------------------------------------------------------------
# broken variants
# ----------------------------------------------------------------------------------------------

def make_broken(plain_dir, out_root):
    import onnx
    from onnx import TensorProto, helper

    # 1. extra required input speaker_embedding [1, 192], really used: logits = raw + 0 * sum(spk)
    m = onnx.load(os.path.join(plain_dir, "model.onnx"))
    g = m.graph
    for n in g.node:
        for j, o in enumerate(n.output):
            if o == "logits":
                n.output[j] = "logits_before_speaker"
    g.input.append(helper.make_tensor_value_info("speaker_embedding", TensorProto.FLOAT, [1, 192]))
    g.initializer.append(helper.make_tensor("speaker_zero", TensorProto.FLOAT, [], [0.0]))
    g.node.extend([
        helper.make_node("ReduceSum", ["speaker_embedding"], ["speaker_sum"], keepdims=0, name="speaker_sum"),
        helper.make_node("Mul", ["speaker_sum", "speaker_zero"], ["speaker_term"], name="speaker_term"),
        helper.make_node("Add", ["logits_before_speaker", "speaker_term"], ["logits"], name="speaker_add"),
    ])
    onnx.checker.check_model(m)
    d = os.path.join(out_root, "broken-extra-input")
    os.makedirs(d)
    onnx.save(m, os.path.join(d, "model.onnx"))

    # 2. output present.1.value removed
    m = onnx.load(os.path.join(plain_dir, "model.onnx"))
    keep = [o for o in m.graph.output if o.name != "present.1.value"]
    assert len(keep) == len(m.graph.output) - 1
    del m.graph.output[:]
    m.graph.output.extend(keep)
    onnx.checker.check_model(m)
    d2 = os.path.join(out_root, "broken-missing-present")
    os.makedirs(d2)
    onnx.save(m, os.path.join(d2, "model.onnx"))
    for d_ in (d, d2):
        for f in SIDE_FILES:
            shutil.copy(os.path.join(plain_dir, f), d_)


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------

def load_golden():
    import numpy as np
    from safetensors.numpy import load_file
    golden = json.load(open(os.path.join(CKPT, "golden.json")))
    logits = load_file(os.path.join(CKPT, golden["logits_file"]))
    return golden, {k: v.astype(np.float32) for k, v in logits.items()}


def session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def greedy_check(name, step_fn, golden, ref, n_layers):
    """step_fn(ids, mask, past or None) -> (logits [1, s, V], present list). Asserts and reports."""
    import numpy as np
    worst_prefill = worst_step = 0.0
    for k, prompt in enumerate(golden["prompts"]):
        ids = np.array([prompt], dtype=np.int64)
        mask = np.ones_like(ids)
        logits, past = step_fn(ids, mask, None)
        assert logits.shape == (1, len(prompt), ref[f"prompt{k}.logits"].shape[1]), logits.shape
        d = float(np.abs(logits[0] - ref[f"prompt{k}.logits"]).max())
        worst_prefill = max(worst_prefill, d)
        assert d <= TOL, f"{name}: prompt {k} prefill logits differ by {d}"
        cont = ref[f"prompt{k}.continuation_logits"]
        out = []
        tok = int(logits[0, -1].argmax())
        for i in range(len(golden["greedy"][k])):
            out.append(tok)
            if i == len(golden["greedy"][k]) - 1:
                break
            mask = np.ones((1, len(prompt) + len(out)), dtype=np.int64)
            logits, past = step_fn(np.array([[tok]], dtype=np.int64), mask, past)
            d = float(np.abs(logits[0, -1] - cont[len(prompt) + i]).max())
            worst_step = max(worst_step, d)
            assert d <= TOL, f"{name}: prompt {k} decode step {i} logits differ by {d}"
            tok = int(logits[0, -1].argmax())
        assert out == golden["greedy"][k], f"{name}: prompt {k} greedy {out} != golden {golden['greedy'][k]}"
        assert len(past) == 2 * n_layers
    print(f"   OK {name}: {len(golden['prompts'])} prompts, greedy == golden ({sum(map(len, golden['greedy']))} tokens); "
          f"max |logit diff| prefill {worst_prefill:.2e}, decode steps {worst_step:.2e}")


def check_optimum_like(name, path, golden, ref, L, kvh, hd, merged=False, position_ids=False, extra=None):
    import numpy as np
    sess = session(path)
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    kv_out = [f"present.{i}.{t}" for i in range(L) for t in ("key", "value")]

    def step(ids, mask, past):
        feed = {"input_ids": ids, "attention_mask": mask}
        n_past = 0 if past is None else past[0].shape[2]
        if position_ids:
            feed["position_ids"] = np.arange(n_past, n_past + ids.shape[1], dtype=np.int64)[None]
        if merged:
            feed["use_cache_branch"] = np.array([past is not None])
        for j, n in enumerate(kv_out):
            feed[n.replace("present", "past_key_values")] = (
                past[j] if past is not None else np.zeros((1, kvh, 0, hd), np.float32))
        if extra:
            feed.update(extra)
        assert set(feed) == set(in_names), (sorted(feed), in_names)
        res = dict(zip(out_names, sess.run(out_names, feed)))
        return res["logits"], [res[n] for n in kv_out]

    greedy_check(name, step, golden, ref, L)


def check_split(path, golden, ref, L):
    import numpy as np
    emb = session(os.path.join(path, "embedding.onnx"))
    pre = session(os.path.join(path, "llm_prefill.onnx"))
    dec = session(os.path.join(path, "llm_decode.onnx"))
    kv = [f"{t}_{i}" for i in range(L) for t in ("key", "value")]

    def step(ids, mask, past):
        e = emb.run(["inputs_embeds"], {"input_ids": ids})[0]
        if past is None:
            res = pre.run(["logits"] + [f"present_{n}" for n in kv], {"inputs_embeds": e, "attention_mask": mask})
        else:
            feed = {"inputs_embeds": e, "attention_mask": mask}
            feed.update({f"past_{n}": p for n, p in zip(kv, past)})
            res = dec.run(["logits"] + [f"present_{n}" for n in kv], feed)
        assert res[1].shape[1] == mask.shape[1], res[1].shape  # sequence on axis 1
        return res[0], res[1:]

    greedy_check("split", step, golden, ref, L)


def check_genai_runtime(path, golden):
    try:
        import onnxruntime_genai as og
    except ImportError:
        print("   (onnxruntime_genai not importable: GenAI runtime check skipped)")
        return
    model = og.Model(path)
    for k, prompt in enumerate(golden["prompts"]):
        params = og.GeneratorParams(model)
        n_new = len(golden["greedy"][k])
        params.set_search_options(do_sample=False, max_length=len(prompt) + n_new, min_length=len(prompt) + n_new)
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        while not gen.is_done():
            gen.generate_next_token()
        seq = list(gen.get_sequence(0))
        assert seq[len(prompt):] == golden["greedy"][k], (k, seq[len(prompt):], golden["greedy"][k])
    print(f"   OK genai (onnxruntime_genai {og.__version__} Generator, past_present_share_buffer as configured): "
          f"greedy == golden for {len(golden['prompts'])} prompts")


def check_all(out):
    import numpy as np
    import onnx
    golden, ref = load_golden()
    cfg = json.load(open(os.path.join(CKPT, "config.json")))
    L, kvh, hd = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_dim"]

    p = os.path.join(out, "optimum-merged", "decoder_model_merged.onnx")
    m = onnx.load(p)
    assert [n.op_type for n in m.graph.node] == ["If"], "merged: expected exactly one top-level If node"
    check_optimum_like("optimum-merged", p, golden, ref, L, kvh, hd, merged=True, position_ids=True)
    check_optimum_like("optimum-plain", os.path.join(out, "optimum-plain", "model.onnx"), golden, ref, L, kvh, hd)
    check_split(os.path.join(out, "split"), golden, ref, L)
    check_optimum_like("genai (plain ORT loop)", os.path.join(out, "genai", "model.onnx"), golden, ref, L, kvh, hd)
    check_genai_runtime(os.path.join(out, "genai"), golden)

    # broken variants
    p = os.path.join(out, "broken-extra-input", "model.onnx")
    sess = session(p)
    assert "speaker_embedding" in [i.name for i in sess.get_inputs()]
    feed = {"input_ids": np.array([[5]], np.int64), "attention_mask": np.array([[1]], np.int64)}
    feed.update({f"past_key_values.{i}.{t}": np.zeros((1, kvh, 0, hd), np.float32)
                 for i in range(L) for t in ("key", "value")})
    try:
        sess.run(None, feed)
        raise AssertionError("broken-extra-input ran without speaker_embedding")
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        print(f"   OK broken-extra-input: ORT refuses without speaker_embedding: {str(e).splitlines()[0][:110]}")
    check_optimum_like("broken-extra-input (speaker_embedding = zeros)", p, golden, ref, L, kvh, hd,
                       extra={"speaker_embedding": np.zeros((1, 192), np.float32)})
    p = os.path.join(out, "broken-missing-present", "model.onnx")
    outs = [o.name for o in session(p).get_outputs()]
    assert "present.1.value" not in outs and "present.1.key" in outs and "present.0.value" in outs, outs
    print(f"   OK broken-missing-present: outputs {outs}")


# ----------------------------------------------------------------------------------------------
# signatures (for the README)
# ----------------------------------------------------------------------------------------------

def print_signatures(out):
    import onnx
    for folder in sorted(os.listdir(out)):
        d = os.path.join(out, folder)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            if not f.endswith(".onnx"):
                continue
            m = onnx.load(os.path.join(d, f), load_external_data=False)
            ops = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in m.opset_import)
            print(f"{folder}/{f}  (IR {m.ir_version}, opsets: {ops}, producer {m.producer_name} {m.producer_version})")
            for kind, vs in (("in ", m.graph.input), ("out", m.graph.output)):
                for v in vs:
                    t = v.type.tensor_type
                    dims = ", ".join(str(x.dim_param or x.dim_value) for x in t.shape.dim)
                    print(f"  {kind} {v.name:32s} {onnx.TensorProto.DataType.Name(t.elem_type):6s} [{dims}]")


# ----------------------------------------------------------------------------------------------

def make_all(args):
    out = args.out
    if os.path.isdir(out):
        for f in os.listdir(out):  # keep README.md
            if os.path.isdir(os.path.join(out, f)):
                shutil.rmtree(os.path.join(out, f))
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print("== optimum-merged")
        run_stage(args.optimum_python, "optimum-merged", CKPT, os.path.join(tmp, "optm"))
        d = os.path.join(out, "optimum-merged")
        os.makedirs(d)
        for f in ("decoder_model_merged.onnx",) + SIDE_FILES:
            shutil.copy(os.path.join(tmp, "optm", f), d)
        print("== optimum-plain")
        run_stage(args.optimum_python, "optimum-plain", CKPT, os.path.join(tmp, "optp"))
        d = os.path.join(out, "optimum-plain")
        os.makedirs(d)
        for f in ("model.onnx",) + SIDE_FILES:
            shutil.copy(os.path.join(tmp, "optp", f), d)
        print("== split")
        make_split(CKPT, os.path.join(out, "split"))
        for f in SIDE_FILES:
            shutil.copy(os.path.join(CKPT, f), os.path.join(out, "split"))
        print("== genai")
        make_genai(CKPT, os.path.join(out, "genai"), tmp)
        print("== broken variants")
        make_broken(os.path.join(out, "optimum-plain"), out)
    total = 0
    for dp, _, fs in os.walk(out):
        for f in fs:
            total += os.path.getsize(os.path.join(dp, f))
    print(f"== total size of {out}: {total / 1e6:.2f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--optimum-python", default=None,
                    help="python of the env with optimum-onnx 0.1.0 + transformers 4.57 (see the top of this file)")
    ap.add_argument("--check", action="store_true", help="only run the ORT greedy checks on --out")
    ap.add_argument("--signatures", action="store_true", help="print every graph's inputs/outputs")
    ap.add_argument("--stage", choices=["optimum-merged", "optimum-plain"], help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--stage-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        {"optimum-merged": stage_optimum_merged, "optimum-plain": stage_optimum_plain}[args.stage](
            args.ckpt, args.stage_out)
        return 0
    if args.signatures:
        print_signatures(args.out)
        return 0
    if not args.check:
        if not args.optimum_python:
            ap.error("--optimum-python is required to make the fixtures")
        make_all(args)
    print("== check")
    check_all(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
