#!/usr/bin/env bash
# Serving (issue 14): aggregate generated tokens/s and time to first token at 1, 4, 16 and 64
# concurrent streaming clients, kvrun serve beside llama.cpp's llama-server on the same GGUF
# files with the same number of slots (bench/serve_load.py: token-id prompts of PROMPT_LEN,
# GEN tokens each with ignore_eos, greedy; every request has its own prompt).
#   bash bench/run-serve.sh                  # both models, both engines, then the table
#   ONLY="kvrun" MODELS="gemma3-270m" bash bench/run-serve.sh
# llama-server is built once from llama-cpp-python's vendored llama.cpp (the sdist that
# bench/setup-peers.sh downloads into $CACHE/src) into $CACHE/llama-server-build.
# Env: CACHE (~/.cache/kvrun/bench), KVRUN (./build/kvrun), PY ($CACHE/venv/bin/python: requests),
#      SLOTS (16), CTX (256 positions per slot), THREADS (2), CLIENTS ("1 4 16 64"), PROMPT_LEN (128),
#      GEN (64), RESULTS (bench/results/serve), MODELS ("gemma3-270m q06-q4km"), ONLY ("kvrun llamacpp").
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${CACHE:-$HOME/.cache/kvrun/bench}
KVRUN=${KVRUN:-./build/kvrun}
PY=${PY:-$CACHE/venv/bin/python}
SLOTS=${SLOTS:-16} CTX=${CTX:-256} THREADS=${THREADS:-2} CLIENTS=${CLIENTS:-"1 4 16 64"}
PROMPT_LEN=${PROMPT_LEN:-128} GEN=${GEN:-64}
RESULTS=${RESULTS:-bench/results/serve}
MODELS=${MODELS:-"gemma3-270m q06-q4km"}
ONLY=${ONLY:-"kvrun llamacpp"}
LLAMA_SRC=$(ls -d "$CACHE"/src/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | tail -1 || true)
LLAMA_SERVER=${LLAMA_SERVER:-$CACHE/llama-server-build/bin/llama-server}
declare -A GGUF=([gemma3-270m]=$HOME/.cache/kvrun/models/gemma-3-270m-q4_k_m.gguf
                 [q06-q4km]=$CACHE/models/gguf/q06-Q4_K_M.gguf)
mkdir -p "$RESULTS"
log() { echo "run-serve: $*" >&2; }

if [[ " $ONLY " == *" llamacpp "* && ! -x $LLAMA_SERVER ]]; then
  [[ -n $LLAMA_SRC ]] || { log "no llama.cpp source: run bench/setup-peers.sh first"; exit 1; }
  log "building llama-server from $LLAMA_SRC (log: $CACHE/llama-server-build.log)"
  { cmake -S "$LLAMA_SRC" -B "$CACHE/llama-server-build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON &&
    cmake --build "$CACHE/llama-server-build" --target llama-server -j "$(nproc)"; } >"$CACHE/llama-server-build.log" 2>&1
fi

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() {  # URL PID
  for _ in $(seq 1 600); do
    curl -sf "$1/health" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}

for label in $MODELS; do
  gguf=${GGUF[$label]}
  [[ -f $gguf ]] || { log "skip $label: $gguf missing (scripts/fetch-gemma3.sh, bench/make-models.sh)"; continue; }
  for engine in $ONLY; do
    port=$(free_port)
    if [[ $engine == kvrun ]]; then
      "$KVRUN" serve "$label=$gguf" --port "$port" --parallel "$SLOTS" --ctx "$CTX" --threads "$THREADS" \
        --max-queue 256 >"$RESULTS/$label-$engine.log" 2>&1 &
    else
      "$LLAMA_SERVER" -m "$gguf" --host 127.0.0.1 --port "$port" -np "$SLOTS" -c $((CTX * SLOTS)) \
        -t "$THREADS" -tb "$THREADS" --no-webui >"$RESULTS/$label-$engine.log" 2>&1 &
    fi
    pid=$!
    if ! wait_ready "http://127.0.0.1:$port" "$pid"; then
      log "$engine $label did not start; last lines:"; tail -n 5 "$RESULTS/$label-$engine.log" >&2
      kill "$pid" 2>/dev/null || true; continue
    fi
    log "$engine $label on port $port (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    "$PY" bench/serve_load.py --url "http://127.0.0.1:$port" --model "$label" --engine "$engine" --label "$label" \
      --clients $CLIENTS --prompt-len "$PROMPT_LEN" --gen "$GEN" --slots "$SLOTS" >"$RESULTS/$label-$engine.jsonl" ||
      log "$engine $label: load failed"
    grep -E "^kvrun_kv_cache|^kvrun_num" <(curl -s "http://127.0.0.1:$port/metrics") >/dev/null 2>&1 || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
"$PY" bench/serve_table.py "$RESULTS"
