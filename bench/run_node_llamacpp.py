#!/usr/bin/env python3
"""llama.cpp through node-llama-cpp (npm, prebuilt CPU binaries; the fallback when
llama-cpp-python does not build). bench/node_llamacpp.mjs loads the GGUF with
batchSize 512 and `threads` threads and times sequence.evaluate(ids, temperature 0):
time to first token, then gen_len - 1 greedy steps. The binding has no prefill-only
call, so prefill time is the time to first token. Peak RSS is node's."""
import json
import os
import resource
import shutil
import subprocess

import common


def main():
    args = common.parse_args(__doc__, "GGUF file")
    node = shutil.which("node")
    module = os.path.join(os.environ.get("NODE_LLAMA_DIR", ".bench/node"),
                          "node_modules/node-llama-cpp/dist/index.js")
    if not node or not os.path.isfile(module):
        common.skip(f"node-llama-cpp not installed ({module}); PEERS=node bash bench/setup-peers.sh")
    if not os.path.isfile(args.model):
        common.skip(f"no GGUF file at {args.model}; run bench/make-models.sh")
    with open(os.path.join(os.path.dirname(module), "..", "package.json")) as f:
        version = json.load(f)["version"]
    cfg = {"module": os.path.abspath(module), "model": os.path.abspath(args.model),
           "ids": common.prompt(args), "gen_len": args.gen_len,
           "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
           "n_ctx": max(640, args.prompt_len + args.gen_len)}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_llamacpp.mjs")
    out = subprocess.run([node, script], input=json.dumps(cfg), stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"run_node_llamacpp: node exited {out.returncode}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    pre, ttft, dec = zip(*res["timings"])
    name = os.path.basename(args.model)
    variant = name.rsplit("-", 1)[-1].removesuffix(".gguf") if "-" in name else name
    r = common.result(args, "node-llama-cpp", f"node-llama-cpp {version}, {res['llama_cpp']}",
                      variant, pre, ttft, dec)
    r["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    common.emit(r)


if __name__ == "__main__":
    main()
