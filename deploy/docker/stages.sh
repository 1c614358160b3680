#!/usr/bin/env bash
# The Dockerfile's stages as plain steps, for machines without a container daemon (CI runs it on
# the fresh checkout): `build OUT` does the build stage into OUT (bin/kvrun + the shim, lib/ ONNX
# Runtime); `check OUT` does what the runtime stage relies on: every shared library kvrun needs is
# one the runtime stage installs (or ONNX Runtime from OUT/lib), and `kvrun serve` answers /health
# from OUT alone, started as the image's ENTRYPOINT starts it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
stage=${1:?usage: stages.sh build|check OUT}
OUT=${2:?usage: stages.sh build|check OUT}
RUNTIME_PACKAGES="libbrotli1 libcpp-httplib0.11 libgomp1 libkissfft-float131 libonnx1 libpcre2-8-0 libprotobuf32
  libsentencepiece0 libsndfile1 libsoxr0 libssl3 libutf8proc2 libyaml-cpp0.7 libzip4"

case "$stage" in
build)
  bash scripts/install-deps.sh
  BUILD=${KVRUN_IMAGE_BUILD_DIR:-build-image}
  launcher=()
  if command -v ccache >/dev/null; then  # objects shared with scripts/test.sh's build/
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
  fi
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVRUN_BUILD_TESTS=OFF "${launcher[@]}" >/dev/null
  cmake --build "$BUILD" --target kvrun -j "$(nproc)"
  mkdir -p "$OUT/bin" "$OUT/lib"
  cp "$BUILD/kvrun" "$BUILD/libkvrun_sentencepiece.so" "$OUT/bin/"
  cp -a .deps/onnxruntime/lib/libonnxruntime.so* "$OUT/lib/"
  strip --strip-unneeded "$OUT/bin/kvrun" "$OUT/bin/libkvrun_sentencepiece.so" 2>/dev/null || true
  echo "build stage: $(du -sh "$OUT" | cut -f1) in $OUT"
  ;;
check)
  # 1. every library resolves, to a file of a runtime-stage package or to OUT/lib
  missing=0
  for f in "$OUT/bin/kvrun" "$OUT/bin/libkvrun_sentencepiece.so"; do
    while read -r lib _ path _; do
      [[ $path == not ]] && { echo "unresolved: $lib (from $f)"; missing=1; continue; }
      [[ $path == "$OUT"/lib/* ]] && continue
      real=$(readlink -f "$path")
      # usrmerge: dpkg may know the file under /lib rather than /usr/lib (or the other way round)
      pkg=$({ dpkg -S "$real" || dpkg -S "$path" || dpkg -S "${real#/usr}"; } 2>/dev/null | head -1 | cut -d: -f1 || true)
      case "$pkg" in
        libc6 | libgcc-s1 | libstdc++6 | zlib1g | libzstd1 | liblzma5 | libbz2-1.0 | libcrypt1 | libflac12 | libogg0 | \
          libvorbis0a | libvorbisenc2 | libopus0 | libmpg123-0 | libmp3lame0 | libabsl* ) ;;  # in bookworm-slim or pulled in
        *) [[ " $(echo $RUNTIME_PACKAGES) " == *" $pkg "* ]] || { echo "not in the runtime stage: $path ($pkg)"; missing=1; } ;;
      esac
    done < <(LD_LIBRARY_PATH="$OUT/lib" ldd "$f" | awk '/=>/{print $1, $2, $3, $4}')
  done
  ((missing == 0)) || exit 1
  # 2. the entry point serves from OUT alone
  model=${3:-$ROOT/tests/fixtures/qwen3-trained}
  pkg=$(mktemp -d)/model
  LD_LIBRARY_PATH="$OUT/lib" "$OUT/bin/kvrun" build "$model" -o "$pkg" >/dev/null 2>"$pkg.log" || { cat "$pkg.log"; exit 1; }
  log=$(mktemp)
  env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$OUT/lib" HOME="$(mktemp -d)" \
    "$OUT/bin/kvrun" serve --host 127.0.0.1 --port 0 "$pkg" >"$log" 2>&1 &
  pid=$!
  port=""
  for _ in $(seq 1 200); do
    port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    [[ -n $port ]] && curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  ok=0
  curl -fsS "http://127.0.0.1:$port/health" | grep -q '"ok"' && ok=1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  ((ok)) || { echo "the entry point did not become healthy:"; cat "$log"; exit 1; }
  echo "runtime stage: libraries resolve to the runtime packages; kvrun serve healthy on port $port"
  ;;
*) echo "usage: stages.sh build|check OUT" >&2; exit 2 ;;
esac
