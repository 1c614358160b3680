#!/usr/bin/env bash
# Everything bench/run-asr.sh needs, in $ASR_DIR (default .bench/asr, gitignored):
#   nano/               kvrun synth-checkpoint --funasr-nano (real dimensions, random bf16 weights, ~2 GB)
#   kvrun-{fp32,int8,int4}/   kvrun build nano (target ort, --max-length 4096)
#   sherpa/             the sherpa-onnx layout of the same weights, fp32 + *.int8.onnx
#                       (tools/make_funasr_export_fixtures.py --own-tables --int8; needs the tools venv:
#                       torch, funasr, onnx, onnxruntime)
#   clips/speech{10,30}.wav   bench/make-asr-clips.sh
# Keeps what exists; delete a folder to rebuild it. Logs in $ASR_DIR/logs/.
#   bash bench/make-asr-models.sh
# Env: KVRUN (./build/kvrun), PY (/root/.cache/kvrun/venv-tools/bin/python), ASR_DIR, TOKENIZER
#      (.deps/tokenizers/qwen3), MAX_TOTAL_LEN (sherpa llm.onnx cache, 640: a 30 s clip's 522-position
#      prompt + 64 new tokens fit), ONLY ("ckpt kvrun sherpa clips")
set -euo pipefail
cd "$(dirname "$0")/.."
ASR_DIR=${ASR_DIR:-.bench/asr}
KVRUN=${KVRUN:-./build/kvrun}
PY=${PY:-/root/.cache/kvrun/venv-tools/bin/python}
TOKENIZER=${TOKENIZER:-.deps/tokenizers/qwen3}
MAX_TOTAL_LEN=${MAX_TOTAL_LEN:-640}
ONLY=${ONLY:-ckpt kvrun sherpa clips}
mkdir -p "$ASR_DIR/logs"
want() { [[ " $ONLY " == *" $1 "* ]]; }
timed() { local log=$1; shift; echo "+ $*" >&2; /usr/bin/time -v "$@" >"$log" 2>&1 || { tail -20 "$log"; return 1; }
          grep -E "Elapsed|Maximum resident" "$log" >&2; }

if want ckpt && [[ ! -f $ASR_DIR/nano/model.pt ]]; then
  timed "$ASR_DIR/logs/synth.log" "$KVRUN" synth-checkpoint --funasr-nano -o "$ASR_DIR/nano" --tokenizer "$TOKENIZER" -q
fi
if want kvrun; then
  for p in fp32 int8 int4; do
    [[ -f $ASR_DIR/kvrun-$p/kvrun.json ]] && continue
    timed "$ASR_DIR/logs/build-$p.log" "$KVRUN" build "$ASR_DIR/nano" -o "$ASR_DIR/kvrun-$p" --precision $p --max-length 4096 -q
  done
fi
if want sherpa && [[ ! -f $ASR_DIR/sherpa/llm.int8.onnx ]]; then
  timed "$ASR_DIR/logs/sherpa-export.log" "$PY" tools/make_funasr_export_fixtures.py --model "$ASR_DIR/nano" \
    --out "$ASR_DIR" --no-goldens --layouts sherpa --own-tables --int8 --max-total-len "$MAX_TOTAL_LEN"
fi
if want clips && [[ ! -f $ASR_DIR/clips/speech30.wav ]]; then
  bash bench/make-asr-clips.sh "$ASR_DIR/clips"
fi
du -sh "$ASR_DIR"/* 2>/dev/null | grep -v logs >&2 || true
