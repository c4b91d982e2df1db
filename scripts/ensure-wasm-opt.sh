#!/usr/bin/env bash
# Makes sure binaryen's wasm-opt is on PATH (Debian package `binaryen`):
# the shipped module is the wasm-opt'd one.
set -euo pipefail
command -v wasm-opt >/dev/null && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing binaryen (wasm-opt) from Debian packages..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen >/dev/null
else
    echo "wasm-opt is missing: install binaryen (sudo apt-get install binaryen)" >&2
    exit 1
fi
command -v wasm-opt >/dev/null
