#!/usr/bin/env bash
# The random-weight demo (was scripts/demo.sh): no model download,
# a checkpoint with Qwen3-0.6B's exact shapes (random weights) -> ONNX package for
# ONNX Runtime and a portable opset-17 package -> each verified against the C++
# reference forward pass -> a short generation with the real Qwen3 tokenizer and
# chat template (the weights are random, so the text is noise; the speed is real).
# Needs about 8 GB of disk under $KVRUN_DEMO_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${KVRUN_DEMO_DIR:-$ROOT/out/demo}"
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target kvrun
K=build/kvrun
$K synth-checkpoint --config configs/qwen3-0.6b.json -o "$OUT/qwen3-0.6b-random" --overwrite
cp .deps/tokenizers/qwen3/tokenizer.json .deps/tokenizers/qwen3/tokenizer_config.json "$OUT/qwen3-0.6b-random/"
for target in ort portable; do
  $K build "$OUT/qwen3-0.6b-random" -o "$OUT/qwen3-0.6b-$target" --target "$target" --max-length 4096 --overwrite
  $K verify "$OUT/qwen3-0.6b-$target"
  $K run "$OUT/qwen3-0.6b-$target" --prompt "Why is the sky blue?" --max-new-tokens 16 --ignore-eos --stats --info
done
echo "demo: packages in $OUT"
