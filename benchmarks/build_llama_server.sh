#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (the peer bench_serve.py measures against) from the llama.cpp tree
# vendored in the llama-cpp-python sdist the Makefile installs: nothing else is downloaded. Idempotent.
# Usage: benchmarks/build_llama_server.sh [PIP] ; the binary lands in ~/.cache/alambic/llama-server/.
set -euo pipefail
PIP=${1:-pip}
VERSION=0.3.36
DEST=${ALAMBIC_CACHE:-$HOME/.cache/alambic}/llama-server
[ -x "$DEST/llama-server" ] && { echo "$DEST/llama-server"; exit 0; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PIP" download -q --no-binary :all: --no-deps -d "$WORK" "llama-cpp-python==$VERSION"
tar -xzf "$WORK"/llama_cpp_python-$VERSION.tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
cmake --build "$WORK/build" --target llama-server llama-quantize -j "$(nproc)"
mkdir -p "$DEST"
cp "$WORK/build/bin/llama-server" "$WORK/build/bin/llama-quantize" "$DEST/"
echo "$DEST/llama-server"
