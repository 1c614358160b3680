#!/usr/bin/env python3
"""FunASR's own PyTorch CPU inference of a FunASR-nano folder (bench/run-asr.sh).

  python bench/asr_runner_funasr.py <folder> clip.wav... [--runs 3 --warmup 1 --threads 2 --max-new-tokens 64]

funasr.AutoModel(model=<folder>, device="cpu", ncpu=T, disable_update=True, frontend_conf={"dither": 0.0})
loaded from inside the folder (llm_conf.init_param_path "Qwen3-0.6B" is relative, as published),
torch.set_num_threads(T), the LLM in fp32 (funasr's default llm_dtype). Each run is
am.generate(input=[wav], cache={}, batch_size=1, max_length=G, llm_kwargs={"min_new_tokens": G}):
min_new_tokens keeps <|im_end|> out, so every run generates exactly G tokens (random weights).
Stage times from hooks: the WavFrontend forward (fbank + LFR), audio_encoder + audio_adaptor
forwards, llm.generate split at the first logits processor call (prefill | decode).
--check-load: after loading, compare every tensor of the model with model.pt (the strict
equivalent of funasr's "all keys matched") and print the result on stderr.
"""
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import asr_common as C  # noqa: E402


def main():
    a = C.parse_args("FunASR PyTorch CPU runner", "FunASR-nano folder (model.pt, config.yaml, Qwen3-0.6B/)")
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # funasr prints notices on stdout
        return measure(a, out)


def measure(a, out):
    try:
        import torch
        import funasr
        from funasr import AutoModel
        from transformers import LogitsProcessor, LogitsProcessorList
    except ImportError as e:
        print(f"skip: {e}", file=sys.stderr)
        return C.SKIP
    torch.set_num_threads(a.threads)
    folder = os.path.abspath(a.model)
    clips = [os.path.abspath(c) for c in a.clips]
    a.clips = clips
    t0 = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        am = AutoModel(model=folder, device="cpu", ncpu=a.threads, disable_update=True, disable_pbar=True,
                       log_level="ERROR", frontend_conf={"dither": 0.0})
    finally:
        os.chdir(cwd)
    load_s = time.perf_counter() - t0
    m = am.model
    print(f"loaded {type(m).__name__} in {load_s:.1f} s", file=sys.stderr)

    if a.check_load:
        sd = torch.load(os.path.join(folder, "model.pt"), map_location="cpu", weights_only=True, mmap=True)
        sd = sd.get("state_dict", sd)
        loaded = m.state_dict()
        missing = sorted(set(sd) - set(loaded))
        unexpected = sorted(k for k in set(loaded) - set(sd) if not k.endswith("inv_freq"))
        differ = [k for k in sd if k in loaded and not torch.equal(loaded[k].float(), sd[k].float())]
        print(f"check-load: {len(sd)} tensors in model.pt, {len(loaded)} in the model; missing in the model "
              f"{missing[:5]} ({len(missing)}), not in model.pt {unexpected[:5]} ({len(unexpected)}), "
              f"values differ {differ[:5]} ({len(differ)}); dtypes {sorted({str(v.dtype) for v in loaded.values()})}",
              file=sys.stderr)
        print("check-load: " + ("ALL KEYS MATCHED, values equal" if not (missing or unexpected or differ)
                                else "MISMATCH"), file=sys.stderr)
        del sd

    t = {}

    def pre(name):
        def f(*_):
            t[name + "_start"] = time.perf_counter()
        return f

    def post(name):
        def f(*_):
            t[name] = t.get(name, 0.0) + time.perf_counter() - t[name + "_start"]
        return f

    for name, mod in (("encoder", m.audio_encoder), ("encoder", m.audio_adaptor)):
        mod.register_forward_pre_hook(pre(name))
        mod.register_forward_hook(post(name))
    # front end = audio file loading + fbank/LFR: the two functions model.py imported by name
    import funasr.models.fun_asr_nano.model as nano_mod

    def timed(fn):
        def g(*args, **kw):
            s = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                t["frontend"] = t.get("frontend", 0.0) + time.perf_counter() - s
        return g

    for fn in ("load_audio_text_image_video", "extract_fbank"):
        setattr(nano_mod, fn, timed(getattr(nano_mod, fn)))

    class FirstStep(LogitsProcessor):
        def __call__(self, input_ids, scores):
            t.setdefault("first_step", time.perf_counter())
            return scores

    gen = m.llm.generate

    def timed_generate(*args, **kw):
        t["gen_start"] = time.perf_counter()
        out = gen(*args, **kw)
        t["gen_end"] = time.perf_counter()
        t["generated"] = int(out.shape[1])
        emb = kw.get("inputs_embeds")
        t["prompt"] = int(emb.shape[1]) if emb is not None else None
        return out

    m.llm.generate = timed_generate

    def one(path):
        t.clear()
        s = time.perf_counter()
        with torch.no_grad():
            res = am.generate(input=[path], cache={}, batch_size=1, max_length=a.max_new_tokens,
                              llm_kwargs={"min_new_tokens": a.max_new_tokens,
                                          "logits_processor": LogitsProcessorList([FirstStep()])})
        wall = time.perf_counter() - s
        return {"wall_s": wall, "frontend_s": t.get("frontend"), "encoder_s": t.get("encoder"),
                "prefill_s": t["first_step"] - t["gen_start"], "decode_s": t["gen_end"] - t["first_step"],
                "prompt_tokens": t.get("prompt"), "generated_tokens": t.get("generated"),
                "text": res[0].get("text", "")[:80]}

    clips_out = C.run_clips(a, one)
    with contextlib.redirect_stdout(out):
        C.emit(a, "funasr (PyTorch)", f"funasr {funasr.__version__}, torch {torch.__version__}", a.variant or "fp32",
               C.dir_bytes(os.path.join(folder, "model.pt")), load_s, clips_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
