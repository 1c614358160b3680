#!/usr/bin/env python3
"""ONNX Runtime GenAI: a model folder made by onnxruntime_genai.models.builder.
Prefill = append_tokens(prompt ids); then generate_next_token() picks the first
token from those logits (time to first token) and every later call runs one decode
step. Greedy, exactly gen_len new tokens (min_length = max_length keeps EOS out)."""
import json
import os
import time

import common


def main():
    args = common.parse_args(__doc__, "GenAI model folder (genai_config.json)")
    try:
        import onnxruntime_genai as og
    except ImportError as e:
        common.skip(f"onnxruntime-genai not installed ({e}); run bench/setup-peers.sh")
    if not os.path.isfile(os.path.join(args.model, "genai_config.json")):
        common.skip(f"no GenAI model at {args.model}; run bench/make-models.sh")

    config = og.Config(args.model)
    config.clear_providers()  # CPU
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": args.threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    total = args.prompt_len + args.gen_len

    def one_run(ids):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        t1 = time.perf_counter()
        gen.generate_next_token()
        gen.get_next_tokens()
        t2 = time.perf_counter()
        for _ in range(args.gen_len - 1):
            gen.generate_next_token()
            gen.get_next_tokens()
        t3 = time.perf_counter()
        n = gen.token_count() - args.prompt_len
        if n != args.gen_len:
            raise SystemExit(f"run_genai: generated {n} tokens, expected {args.gen_len}")
        return t1 - t0, t2 - t0, t3 - t2

    with open(os.path.join(args.model, "genai_config.json")) as f:
        cfg = json.load(f)
    variant = os.path.basename(os.path.normpath(args.model)).removeprefix("genai-")
    pre, ttft, dec = common.run_loop(args, one_run)
    try:  # GenAI runs on the onnxruntime package's library
        from importlib.metadata import version
        ort = f" (onnxruntime {version('onnxruntime')})"
    except Exception:
        ort = ""
    common.emit(common.result(args, "onnxruntime-genai", og.__version__ + ort, variant, pre, ttft, dec,
                              {"context_length": cfg["model"].get("context_length")}))


if __name__ == "__main__":
    main()
