#!/usr/bin/env bash
# Test clients from PyPI (never torch): pytest, the openai SDK, requests and PyYAML, in a venv
# cached outside the checkout. Prints the venv's python. CTest runs tests/server with it.
#   KVRUN_TEST_VENV: where the venv lives (~/.cache/kvrun/venv-test)
set -euo pipefail
VENV="${KVRUN_TEST_VENV:-$HOME/.cache/kvrun/venv-test}"
PINS=(pytest==9.2.0 openai==3.63.0 requests==2.34.2 pyyaml==6.0.3)
if ! "$VENV/bin/python" -c "import pytest, openai, requests, yaml" >/dev/null 2>&1; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet "${PINS[@]}" >&2
fi
echo "$VENV/bin/python"
