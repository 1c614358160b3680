#!/usr/bin/env bash
# The Python package: `pip install .` into a fresh venv (outside the checkout), then its pytest
# suite (python/tests) on the committed fixtures. scripts/test.sh's build/kvrun, when present, is
# the CLI the tests compare with. ccache (when installed) shares the C++ objects with build/.
#   KVRUN_PY_VENV: the venv (~/.cache/kvrun/venv-py, recreated each run)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${KVRUN_PY_VENV:-$HOME/.cache/kvrun/venv-py}"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet pytest==9.2.0 numpy
if command -v ccache >/dev/null; then  # the same compiler name as CMake's default: ccache hashes it
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1 CXX="${CXX:-c++}"
fi
# build-py/ (pyproject.toml) is kept: a later `pip install .` (deploy/ray/check.sh) only relinks.
start=$SECONDS
"$VENV/bin/pip" install --quiet .
echo "pip install . took $((SECONDS - start)) s"
cd "$ROOT/python/tests"  # not the checkout root: `import kvrun` must find the installed package
"$VENV/bin/python" -c "import kvrun; print('kvrun', kvrun.__version__, 'with', kvrun.ORT_LIBRARY)"
KVRUN="${KVRUN:-$ROOT/build/kvrun}" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/python/tests"
