#!/usr/bin/env bash
# Installs the peer engines for bench/ into .bench/ (gitignored). Each peer is
# optional: a failed install prints a message and the others go on.
#   bash bench/setup-peers.sh            # all peers
#   PEERS="genai naive" bash bench/setup-peers.sh
# Env: BENCH_DIR (.bench), PYTHON (python3), JOBS (2), NODE_FALLBACK (auto|yes|no)
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-.bench}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}
PEERS=${PEERS:-"base genai llamacpp"}
NODE_FALLBACK=${NODE_FALLBACK:-auto}

# Pinned versions: change them here, and note the change in bench/README.md.
NUMPY_VER=${NUMPY_VER:-2.4.6}
ORT_VER=${ORT_VER:-1.32.0}
GENAI_VER=${GENAI_VER:-0.18.0}
LLAMACPP_VER=${LLAMACPP_VER:-0.3.36}
GGUF_VER=${GGUF_VER:-0.19.0}
ONNX_VER=${ONNX_VER:-1.23.2}
ONNX_IR_VER=${ONNX_IR_VER:-1.1.0}
NODE_LLAMACPP_VER=${NODE_LLAMACPP_VER:-3.22.1}
# llama-cpp-python's prebuilt CPU wheels (not on PyPI, which has only the sdist): used
# when pip can reach the index, else the sdist is built. LLAMACPP_WHEEL_INDEX= skips it.
LLAMACPP_WHEEL_INDEX=${LLAMACPP_WHEEL_INDEX-https://abetlen.github.io/llama-cpp-python/whl/cpu}

VENV="$BENCH_DIR/venv"
PIP="$VENV/bin/pip"
mkdir -p "$BENCH_DIR/src" "$BENCH_DIR/logs"
failed=()

log() { echo "setup-peers: $*"; }
try() {  # try NAME CMD...: run CMD, log to .bench/logs/NAME.log, record failure
  local name=$1; shift
  log "installing $name (log: $BENCH_DIR/logs/$name.log)"
  if "$@" >"$BENCH_DIR/logs/$name.log" 2>&1; then
    log "$name: ok"
  else
    log "$name: FAILED, skipped (last lines of its log follow)"
    tail -n 15 "$BENCH_DIR/logs/$name.log" | sed 's/^/    /'
    failed+=("$name")
  fi
}

if [[ ! -x "$VENV/bin/python" ]]; then
  # System site packages: reuse torch/transformers/safetensors if present
  # (the GenAI builder imports them); the venv's own pins take precedence.
  log "creating $VENV"
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi

install_base() { "$PIP" install "numpy==$NUMPY_VER" "onnxruntime==$ORT_VER" "gguf==$GGUF_VER"; }

# (try runs these in an `if`, where set -e is off: each step ends in `|| return`.)
install_genai() {
  "$PIP" install "onnxruntime-genai==$GENAI_VER" "onnxruntime==$ORT_VER" "numpy==$NUMPY_VER" || return
  # The model builder imports torch, transformers, onnx and onnx_ir: add what is missing.
  "$VENV/bin/python" -c 'import torch, transformers' 2>/dev/null ||
    "$PIP" install torch transformers safetensors || return
  "$VENV/bin/python" -c 'import onnx, onnx_ir' 2>/dev/null || "$PIP" install "onnx==$ONNX_VER" "onnx-ir==$ONNX_IR_VER" || return
  "$VENV/bin/python" -c 'import onnxruntime_genai as og; print("onnxruntime-genai", og.__version__)'
}

wheel_index_reachable() {
  [[ -n $LLAMACPP_WHEEL_INDEX ]] &&
    "$VENV/bin/python" - "$LLAMACPP_WHEEL_INDEX/llama-cpp-python/" <<'PYEOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=10).close()
except Exception as e:
    sys.exit(f"wheel index not reachable ({e})")
PYEOF
}

install_llamacpp() {
  # The prebuilt CPU wheel if its index is reachable, else built from the source
  # distribution (CPU only, no tools/tests/examples/mtmd; ~20 min on 2 idle cores).
  # The unpacked source stays in .bench/src either way: make-models.sh uses its
  # vendor/llama.cpp/convert_hf_to_gguf.py.
  local src="$BENCH_DIR/src/llama_cpp_python-$LLAMACPP_VER"
  if [[ -d $src ]] && "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMACPP_VER')" 2>/dev/null; then
    echo "llama-cpp-python $LLAMACPP_VER already built"; return 0
  fi
  if [[ ! -d "$src" ]]; then
    "$PIP" download --no-binary :all: --no-deps "llama-cpp-python==$LLAMACPP_VER" -d "$BENCH_DIR/src" || return
    tar -xzf "$BENCH_DIR/src/llama_cpp_python-$LLAMACPP_VER.tar.gz" -C "$BENCH_DIR/src" || return
  fi
  if wheel_index_reachable &&
     "$PIP" install --only-binary llama-cpp-python --extra-index-url "$LLAMACPP_WHEEL_INDEX" \
       "llama-cpp-python==$LLAMACPP_VER" "gguf==$GGUF_VER" "numpy==$NUMPY_VER"; then
    echo "llama-cpp-python: prebuilt CPU wheel from $LLAMACPP_WHEEL_INDEX"
  else
    echo "llama-cpp-python: building the sdist"
    build_llamacpp "$src" || return
  fi
  # convert_hf_to_gguf.py imports torch (system site packages) and these
  "$PIP" install sentencepiece protobuf || return
  "$VENV/bin/python" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'
}

build_llamacpp() {
  local start=$SECONDS
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
-DLLAMA_OPENSSL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    "$PIP" install --no-cache-dir --no-binary llama-cpp-python "$1" "gguf==$GGUF_VER" "numpy==$NUMPY_VER" || return
  echo "llama-cpp-python: built from source in $((SECONDS - start)) s"
}

install_node() {  # fallback: prebuilt CPU binaries from npm
  mkdir -p "$BENCH_DIR/node"
  (cd "$BENCH_DIR/node" && npm init -y >/dev/null && npm install "node-llama-cpp@$NODE_LLAMACPP_VER")
}

for p in $PEERS; do
  case $p in
    base) try base install_base ;;
    genai) try onnxruntime-genai install_genai ;;
    llamacpp) try llama-cpp-python install_llamacpp ;;
    node) try node-llama-cpp install_node ;;
    *) log "unknown peer '$p' (known: base genai llamacpp node)"; exit 2 ;;
  esac
done

if [[ " ${failed[*]:-} " == *" llama-cpp-python "* && $NODE_FALLBACK != no ]] ||
   [[ $NODE_FALLBACK == yes ]]; then
  try node-llama-cpp install_node
fi

if ((${#failed[@]})); then
  log "done; not installed: ${failed[*]} (their runners will skip)"
else
  log "done; all requested peers installed"
fi
