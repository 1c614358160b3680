#!/usr/bin/env bash
# FunASR-nano speech recognition: kvrun (fp32, int8, int4) beside FunASR's own PyTorch CPU
# inference and sherpa-onnx (fp32, int8) on the same random real-dimension weights, the same
# clips, 2 threads, a fixed 64 new tokens. Models and clips from bench/make-asr-models.sh.
#   bash bench/run-asr.sh [--runs 3] [--warmup 1] [--threads 2] [--max-new-tokens 64]
# Each job is one process (its own peak RSS): load once, then per clip `warmup` + `runs`
# transcriptions. Results: $RESULTS/<job>.json (schema kvrun-bench-asr/1), then the table
# (bench/asr_table.py). Env: ASR_DIR (.bench/asr), RESULTS (bench/results/asr), KVRUN
# (./build/kvrun), PY (/root/.cache/kvrun/venv-tools/bin/python), ONLY (job names),
# PASSES (1; >1 repeats the job list, interleaving engines; the table takes the median of
# all runs of all passes).
set -euo pipefail
cd "$(dirname "$0")/.."
ASR_DIR=${ASR_DIR:-.bench/asr}
RESULTS=${RESULTS:-bench/results/asr}
export KVRUN=${KVRUN:-./build/kvrun}
PY=${PY:-/root/.cache/kvrun/venv-tools/bin/python}
ARGS=(--runs 3 --warmup 1 --threads 2 --max-new-tokens 64 "$@")
CLIPS=("$ASR_DIR/clips/speech10.wav" "$ASR_DIR/clips/speech30.wav")
mkdir -p "$RESULTS"

# name | runner | model | extra runner arguments
JOBS="
kvrun-fp32       asr_runner_kvrun.py  $ASR_DIR/kvrun-fp32
kvrun-int8       asr_runner_kvrun.py  $ASR_DIR/kvrun-int8
kvrun-int4       asr_runner_kvrun.py  $ASR_DIR/kvrun-int4
funasr-torch-fp32 asr_runner_funasr.py $ASR_DIR/nano
sherpa-onnx-fp32 asr_runner_sherpa.py $ASR_DIR/sherpa --variant fp32
sherpa-onnx-int8 asr_runner_sherpa.py $ASR_DIR/sherpa --variant int8
"
PRE_ARGS=("${CLIPS[@]}")
BUILD_HINT=bench/make-asr-models.sh
TABLE=bench/asr_table.py
source bench/jobs.sh
run_jobs
finish_jobs  # exit 1 when a job failed (skips are fine)
