#!/usr/bin/env bash
# Build the llama.cpp tools `sft export` and `sft serve` run, into DEST (make setup: .venv/llama.cpp):
#   DEST/bin/llama-quantize   f16 GGUF -> q8_0, q4_K_M, ... (llama.cpp's own quantizer)
#   DEST/bin/llama-server     the OpenAI-compatible server `sft serve` starts and exports are evaluated through
#   DEST/convert/             llama.cpp's HF -> GGUF converter (convert_hf_to_gguf.py, conversion/, gguf-py/)
#   DEST/VERSION              where they came from
# The source is llama.cpp as vendored in the llama-cpp-python sdist on PyPI (the registry is the
# only source this machine can reach; the package itself is not built: its wheel takes ~9.5 min
# here and exports need only these two tools). Only the two targets are built, CPU backend,
# for this machine's instruction set (GGML_NATIVE): ~6-8 min on 2 cores.
# Usage: scripts/build_llama_cpp.sh DEST PIP   (PIP: a pip that can download from the registry)
set -euo pipefail
DEST=${1:?usage: build_llama_cpp.sh DEST PIP}
PIP=${2:?usage: build_llama_cpp.sh DEST PIP}
VERSION=0.3.36  # llama-cpp-python's sdist; its vendor/llama.cpp is the llama.cpp we build
JOBS=${JOBS:-$(nproc)}

for tool in cmake g++; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "build_llama_cpp: '$tool' not found; installing cmake and g++ (apt-get, as root)" >&2
    apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null || {
      echo "build_llama_cpp: could not install $tool; apt-get install -y cmake g++ ninja-build, then make setup" >&2; exit 1; }
  }
done
GENERATOR=()
if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/stillhouse-llama-cpp.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)
"$PIP" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK" "llama_cpp_python-$VERSION/vendor/llama.cpp"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF >"$WORK/cmake.log" 2>&1 || { cat "$WORK/cmake.log" >&2; exit 1; }
cmake --build "$WORK/build" -j "$JOBS" --target llama-server llama-quantize >"$WORK/build.log" 2>&1 || {
  tail -40 "$WORK/build.log" >&2; exit 1; }

# Into DEST only when complete: a half-built DEST never looks finished.
NEW="$DEST.new"
rm -rf "$NEW" && mkdir -p "$NEW/bin" "$NEW/convert"
cp "$WORK/build/bin/llama-server" "$WORK/build/bin/llama-quantize" "$NEW/bin/"
cp -r "$SRC/convert_hf_to_gguf.py" "$SRC/conversion" "$SRC/gguf-py" "$NEW/convert/"
cp "$SRC/LICENSE" "$NEW/LICENSE"
build=$("$NEW/bin/llama-server" --version 2>&1 | grep -m1 '^version: ' || true)
printf 'llama.cpp %s, from the llama-cpp-python %s sdist; built %s in %ss\n' \
  "${build#version: }" "$VERSION" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(( $(date +%s) - started ))" >"$NEW/VERSION"
rm -rf "$DEST" && mv "$NEW" "$DEST"
cat "$DEST/VERSION"
