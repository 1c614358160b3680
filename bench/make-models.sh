#!/usr/bin/env bash
# Builds every engine's model from ONE checkpoint (Qwen3-0.6B shape, random weights):
#   kvrun packages fp32/int8/int4 (ort target) + fp32 portable (for the naive loop),
#   ONNX Runtime GenAI fp32/int4 (its own builder), GGUF F16/Q8_0 (convert_hf_to_gguf.py
#   from llama-cpp-python's vendored llama.cpp) and Q4_0 (llama_model_quantize).
# Anything already built is kept; a peer that is not installed is skipped.
#   bash bench/make-models.sh [CHECKPOINT]
# Env: KVRUN (./build/kvrun), CKPT (.bench/q06/ckpt; made by synth-checkpoint when
# missing), MODELS (.bench/models), BENCH_DIR (.bench), TOKENIZER (.deps/tokenizers/qwen3),
# ONLY ("kvrun genai gguf": which families to build)
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-.bench}
KVRUN=${KVRUN:-./build/kvrun}
CKPT=${1:-${CKPT:-$BENCH_DIR/q06/ckpt}}
MODELS=${MODELS:-$BENCH_DIR/models}
TOKENIZER=${TOKENIZER:-.deps/tokenizers/qwen3}
ONLY=${ONLY:-"kvrun genai gguf"}
PY=$BENCH_DIR/venv/bin/python
[[ -x $PY ]] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

log() { echo "make-models: $*"; }
have() { [[ " $ONLY " == *" $1 "* ]]; }
mkdir -p "$MODELS" "$BENCH_DIR/logs"

# --- the checkpoint -----------------------------------------------------------------
if [[ ! -f $CKPT/config.json ]]; then
  command -v "$KVRUN" >/dev/null || { log "no checkpoint at $CKPT and no kvrun at $KVRUN (set KVRUN=...)"; exit 1; }
  log "synthesizing $CKPT (Qwen3-0.6B shape, random bf16 weights)"
  "$KVRUN" synth-checkpoint --config configs/qwen3-0.6b.json -o "$CKPT"
fi

# The peers' converters want a tokenizer beside the weights: a folder of links to the
# checkpoint plus the Qwen3 tokenizer files.
HF=$MODELS/hf-ckpt
if [[ ! -f $HF/tokenizer.json ]]; then
  log "preparing $HF (checkpoint links + tokenizer from $TOKENIZER)"
  mkdir -p "$HF"
  for f in "$CKPT"/*; do ln -sfn "$(realpath "$f")" "$HF/$(basename "$f")"; done
  cp "$TOKENIZER"/tokenizer.json "$TOKENIZER"/tokenizer_config.json "$HF"/
fi

# --- kvrun ----------------------------------------------------------------------------
kvrun_build() {  # kvrun_build NAME ARGS...
  local out=$MODELS/$1; shift
  if [[ -f $out/kvrun.json ]]; then log "have $out"; return; fi
  log "kvrun build -> $out ($*)"
  "$KVRUN" build "$CKPT" -o "$out" --max-length 4096 -q "$@"
}
if have kvrun; then
  if command -v "$KVRUN" >/dev/null; then
    kvrun_build kvrun-fp32
    kvrun_build kvrun-int8 --precision int8
    kvrun_build kvrun-int4 --precision int4
    kvrun_build kvrun-portable-fp32 --target portable
  else
    log "skip kvrun packages: no kvrun binary at $KVRUN (set KVRUN=...)"
  fi
fi

# --- ONNX Runtime GenAI -----------------------------------------------------------------
if have genai; then
  if "$PY" -c 'import onnxruntime_genai' 2>/dev/null; then
    for prec in ${GENAI_PRECISIONS:-fp32 int4}; do
      out=$MODELS/genai-$prec
      if [[ -f $out/genai_config.json ]]; then log "have $out"; continue; fi
      log "onnxruntime_genai builder -> $out (log: $BENCH_DIR/logs/genai-$prec.log)"
      if "$PY" -m onnxruntime_genai.models.builder -i "$HF" -o "$out.tmp" -p "$prec" -e cpu \
           -c "$BENCH_DIR/genai-cache" >"$BENCH_DIR/logs/genai-$prec.log" 2>&1; then
        rm -rf "$out" && mv "$out.tmp" "$out"
      else
        log "GenAI builder failed for $prec (skipped); last lines:"; tail -n 8 "$BENCH_DIR/logs/genai-$prec.log" | cut -c1-300
      fi
    done
    rm -rf "$BENCH_DIR/genai-cache"
  else
    log "skip GenAI models: onnxruntime-genai not installed (bench/setup-peers.sh)"
  fi
fi

# --- GGUF (llama.cpp) -------------------------------------------------------------------
quantize_q4_0() {  # llama.cpp's llama-quantize, through the Python binding
  "$PY" - "$1" "$2" <<'PYEOF'
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
p.nthread = 2
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
PYEOF
}
if have gguf; then
  CONVERT=$(ls -d "$BENCH_DIR"/src/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py 2>/dev/null | tail -n 1 || true)
  G=$MODELS/gguf
  mkdir -p "$G"
  if [[ -z $CONVERT ]]; then
    log "skip GGUF: no convert_hf_to_gguf.py under $BENCH_DIR/src (bench/setup-peers.sh unpacks it)"
  else
    for t in F16 Q8_0; do
      out=$G/q06-$t.gguf
      if [[ -f $out ]]; then log "have $out"; continue; fi
      log "convert_hf_to_gguf.py --outtype ${t,,} -> $out"
      "$PY" "$CONVERT" "$HF" --outtype "${t,,}" --outfile "$out.tmp" >"$BENCH_DIR/logs/gguf-$t.log" 2>&1 &&
        mv "$out.tmp" "$out" ||
        { log "conversion to $t failed (skipped); last lines:"; tail -n 8 "$BENCH_DIR/logs/gguf-$t.log" | cut -c1-300; }
    done
  fi
  out=$G/q06-Q4_0.gguf
  if [[ -f $out ]]; then
    log "have $out"
  elif [[ ! -f $G/q06-F16.gguf ]]; then
    log "skip Q4_0: no F16 GGUF to quantize"
  elif ! "$PY" -c 'import llama_cpp' 2>/dev/null; then
    log "skip Q4_0: llama-cpp-python not installed (bench/setup-peers.sh)"
  else
    log "llama_model_quantize F16 -> $out"
    if quantize_q4_0 "$G/q06-F16.gguf" "$out.tmp" >"$BENCH_DIR/logs/gguf-Q4_0.log" 2>&1; then
      mv "$out.tmp" "$out"
    else
      log "Q4_0 quantization failed (skipped; log: $BENCH_DIR/logs/gguf-Q4_0.log)"
    fi
  fi
fi

log "models in $MODELS:"
du -shL "$MODELS"/* "$MODELS"/gguf/* 2>/dev/null | grep -v '/hf-ckpt$' || true
