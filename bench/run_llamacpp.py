#!/usr/bin/env python3
"""llama.cpp through llama-cpp-python: Llama(n_threads, n_ctx >= prompt + gen,
n_batch 512). Prefill = eval(prompt ids) after a KV cache reset; then gen_len greedy
tokens (argmax of the last position's logits, read in place with
llama_get_logits_ith; the first comes from the prefill logits, each later one costs
one eval([token]))."""
import os
import time

import common


def main():
    args = common.parse_args(__doc__, "GGUF file")
    try:
        import numpy as np
        import llama_cpp
    except ImportError as e:
        common.skip(f"llama-cpp-python not installed ({e}); run bench/setup-peers.sh")
    if not os.path.isfile(args.model):
        common.skip(f"no GGUF file at {args.model}; run bench/make-models.sh")

    n_ctx = max(640, args.prompt_len + args.gen_len)
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                          n_threads=args.threads, n_threads_batch=args.threads,
                          seed=0, verbose=False)

    n_vocab = llm.n_vocab()

    def next_token():  # eval() keeps no logits unless logits_all: read llama.cpp's own
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    def one_run(ids):
        llm.reset()  # n_tokens = 0: eval() drops the whole KV cache
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        tok = next_token()
        t2 = time.perf_counter()
        for _ in range(args.gen_len - 1):
            llm.eval([tok])
            tok = next_token()
        t3 = time.perf_counter()
        if llm.n_tokens != args.prompt_len + args.gen_len - 1:
            raise SystemExit(f"run_llamacpp: {llm.n_tokens} tokens in context, "
                             f"expected {args.prompt_len + args.gen_len - 1}")
        return t1 - t0, t2 - t0, t3 - t2

    name = os.path.basename(args.model)
    variant = name.rsplit("-", 1)[-1].removesuffix(".gguf") if "-" in name else name
    pre, ttft, dec = common.run_loop(args, one_run)
    common.emit(common.result(args, "llama.cpp", f"llama-cpp-python {llama_cpp.__version__}",
                              variant, pre, ttft, dec))


if __name__ == "__main__":
    main()
