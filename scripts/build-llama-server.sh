#!/usr/bin/env bash
# Builds llama.cpp's llama-server (MIT) from the sources inside llama-cpp-python's PyPI sdist.
# The binary is cached under $VRAMGATE_CACHE (default ~/.cache/vramgate) keyed by the sdist version,
# so only a fresh machine pays the ~4 minute build. Prints the binary's path on its last line.
# VRAMGATE_LLAMA_CUDA=on|off|auto picks CUDA; VRAMGATE_LLAMA_CMAKE_ARGS adds cmake flags (the
# Dockerfile builds for any x86-64 with AVX2 rather than for the build machine's CPU).
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${VRAMGATE_CACHE:-$HOME/.cache/vramgate}"
# Bump when the build flags change, so cached binaries built the old way are rebuilt.
build_rev=2
dest="$cache/llama.cpp-$version-r$build_rev"
bin="$dest/bin/llama-server"

if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

work="$cache/build-$version"
mkdir -p "$work"
if [ ! -d "$work/src/vendor/llama.cpp" ]; then
  python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" >&2
  rm -rf "$work/src"
  mkdir -p "$work/src"
  tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work/src" --strip-components=1
fi

# CUDA only where a GPU and a toolkit are both present (an nvcc alone, as on CI, builds a binary
# that cannot start without a driver); curl off: weights never come from a hub at run time here.
cuda=OFF
if [ "${VRAMGATE_LLAMA_CUDA:-auto}" = on ] || { [ "${VRAMGATE_LLAMA_CUDA:-auto}" = auto ] &&
  command -v nvcc >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then cuda=ON; fi
# Native CPU code, but no AMX: on Sapphire Rapids VMs (AMX in /proc/cpuinfo) ggml's AMX matmul
# crashes llama-server with SIGSEGV on its first batch (seen here: ggml_backend_amx_mul_mat).
# GCC honours an explicit -mno-* over what -march=native implies, whatever their order.
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$work/src/vendor/llama.cpp" -B "$work/build" \
  -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DGGML_CUDA="$cuda" -DBUILD_SHARED_LIBS=OFF \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" ${VRAMGATE_LLAMA_CMAKE_ARGS:-} >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$dest/bin"
cp "$work/build/bin/llama-server" "$bin.tmp"
mv "$bin.tmp" "$bin"
rm -rf "$work"
echo "$bin"
