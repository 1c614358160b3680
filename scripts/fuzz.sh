#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*_fuzz.cpp, clang + ASan + UBSan) in build-fuzz/ and
# runs each for KVRUN_FUZZ_SECONDS (default 60) seconds, seeded from fuzz/corpus/<target>/.
# Fails when any target finds a crash, a sanitizer report, a leak or a timeout; the input
# that did it is kept in build-fuzz/artifacts/.
#   scripts/fuzz.sh                          # every target
#   KVRUN_FUZZ_SECONDS=10 scripts/fuzz.sh pickle_fuzz
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${KVRUN_FUZZ_BUILD_DIR:-build-fuzz}"
SECONDS_EACH="${KVRUN_FUZZ_SECONDS:-60}"
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVRUN_FUZZ=ON \
  "${launcher[@]}" >/dev/null
cmake --build "$BUILD" -j "$(nproc)"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/*_fuzz.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
mkdir -p "$BUILD/artifacts"
failed=()
for t in "${targets[@]}"; do
  corpus="$BUILD/corpus/$t"  # new inputs go here; the committed seeds stay untouched
  mkdir -p "$corpus" "fuzz/corpus/$t"
  echo "-- $t: ${SECONDS_EACH}s"
  if ! "$BUILD/$t" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$BUILD/artifacts/$t-" "$corpus" "fuzz/corpus/$t" 2>"$BUILD/$t.log"; then
    tail -n 60 "$BUILD/$t.log"
    failed+=("$t")
  else
    grep -E "^stat::(number_of_executed_units|new_units_added)" "$BUILD/$t.log" | tr '\n' ' '
    echo
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in ${failed[*]} (inputs in $BUILD/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${SECONDS_EACH}s each without findings"
