#!/usr/bin/env python3
"""The usual hand-written loop around an exported decoder, in onnxruntime + numpy:
kvrun's portable fp32 package (prefill.onnx, decode.onnx, embedding.onnx; names in its
kvrun.json). Every step feeds the presents that session.run returned back in as the
next past (new numpy arrays each step: the graph concatenates, ORT copies out), grows
the attention mask by one, and takes the argmax of the logits in numpy."""
import json
import os
import time

import common


def main():
    args = common.parse_args(__doc__, "kvrun portable package folder (prefill.onnx + decode.onnx)")
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        common.skip(f"onnxruntime/numpy not installed ({e}); run bench/setup-peers.sh")
    meta_path = os.path.join(args.model, "kvrun.json")
    if not os.path.isfile(meta_path):
        common.skip(f"no kvrun package at {args.model}; run bench/make-models.sh")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("target") != "portable":
        common.skip(f"{args.model} is a '{meta.get('target')}' package; the naive loop needs "
                    "--target portable (prefill.onnx + decode.onnx)")

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    cpu = ["CPUExecutionProvider"]
    load = lambda name: ort.InferenceSession(os.path.join(args.model, name), so, providers=cpu)
    embed = load(meta["embedding"]["graph"])
    prefill = load(meta["graphs"]["prefill"]["file"])
    decode = load(meta["graphs"]["decode"]["file"])
    kv = meta["kv_cache"]
    past_names = [kv[k] % i for i in range(kv["layers"]) for k in ("past_key", "past_value")]
    present_names = [kv[k] % i for i in range(kv["layers"]) for k in ("present_key", "present_value")]
    out_names = [meta["logits"]["name"]] + present_names
    emb_in, mask_in = meta["inputs_embeds"]["name"], meta["attention_mask"]["name"]

    def one_run(ids):
        t0 = time.perf_counter()
        x = embed.run(None, {"input_ids": np.array([ids], dtype=np.int64)})[0]
        mask = np.ones((1, len(ids)), dtype=np.int64)
        logits, *presents = prefill.run(out_names, {emb_in: x, mask_in: mask})
        t1 = time.perf_counter()
        tok = int(np.argmax(logits[0, -1]))
        t2 = time.perf_counter()
        for _ in range(args.gen_len - 1):
            x = embed.run(None, {"input_ids": np.array([[tok]], dtype=np.int64)})[0]
            mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
            feed = {emb_in: x, mask_in: mask}
            feed.update(zip(past_names, presents))  # present -> next past
            logits, *presents = decode.run(out_names, feed)
            tok = int(np.argmax(logits[0, -1]))
        t3 = time.perf_counter()
        if presents[0].shape[2] != args.prompt_len + args.gen_len - 1:
            raise SystemExit(f"run_naive: cache holds {presents[0].shape[2]} positions")
        return t1 - t0, t2 - t0, t3 - t2

    pre, ttft, dec = common.run_loop(args, one_run)
    common.emit(common.result(args, "naive-ort-loop", f"onnxruntime {ort.__version__}",
                              meta.get("precision", "fp32"), pre, ttft, dec))


if __name__ == "__main__":
    main()
