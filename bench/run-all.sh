#!/usr/bin/env bash
# Runs every engine/variant that is available, one process each, one after the other,
# writes bench/results/<engine>-<variant>.json and prints the Markdown table.
#   bash bench/run-all.sh [--prompt-len 512] [--gen-len 128] [--runs 5] [--warmup 1] [--threads 2]
# Env: PASSES (1; >1 repeats the job list, interleaving engines), KVRUN (./build/kvrun), MODELS (.bench/models), RESULTS (bench/results),
#      ONLY (space-separated job names to run, e.g. "kvrun-int4 llama.cpp-Q4_0"),
#      KVRUN_BENCH_ARGS (extra `kvrun bench` options), KVRUN_VIA_RUN=1 (see run_kvrun.py)
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-.bench}
MODELS=${MODELS:-$BENCH_DIR/models}
RESULTS=${RESULTS:-bench/results}
export KVRUN=${KVRUN:-./build/kvrun}
PY=$BENCH_DIR/venv/bin/python
[[ -x $PY ]] || PY=python3
ARGS=(--prompt-len 512 --gen-len 128 --runs 5 --warmup 1 --threads 2 "$@")

# name | runner | model | environment (optional VAR=value,...)
JOBS="
kvrun-fp32          run_kvrun.py     $MODELS/kvrun-fp32
kvrun-int8          run_kvrun.py     $MODELS/kvrun-int8
kvrun-int4          run_kvrun.py     $MODELS/kvrun-int4
kvrun-int4-ort-attention run_kvrun.py $MODELS/kvrun-int4 KVRUN_ATTENTION=ort
onnxruntime-genai-fp32 run_genai.py  $MODELS/genai-fp32
onnxruntime-genai-int4 run_genai.py  $MODELS/genai-int4
llama.cpp-F16       run_llamacpp.py  $MODELS/gguf/q06-F16.gguf
llama.cpp-Q8_0      run_llamacpp.py  $MODELS/gguf/q06-Q8_0.gguf
llama.cpp-Q4_0      run_llamacpp.py  $MODELS/gguf/q06-Q4_0.gguf
naive-ort-loop-fp32 run_naive.py     $MODELS/kvrun-portable-fp32
node-llama-cpp-F16  run_node_llamacpp.py $MODELS/gguf/q06-F16.gguf
node-llama-cpp-Q8_0 run_node_llamacpp.py $MODELS/gguf/q06-Q8_0.gguf
node-llama-cpp-Q4_0 run_node_llamacpp.py $MODELS/gguf/q06-Q4_0.gguf
"

source bench/jobs.sh
run_jobs
finish_jobs  # exit 1 when a job failed (skips are fine)
