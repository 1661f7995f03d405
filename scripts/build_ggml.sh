#!/usr/bin/env bash
# Builds ggml, llama.cpp's tensor library, as a dependency: the quantised matrix kernels that multiply GGUF
# weights in their stored block types (docs/quantized.md). The source is the vendor/llama.cpp of the
# llama-cpp-python source distribution on PyPI (pinned below); nothing of it is copied into this
# repository. Installed into .cache/ggml/<version>/ (ignored): include/, lib/libggml-base.so and one
# lib/libggml-cpu-<variant>.so per instruction-set level (x64, sse42, sandybridge, haswell, skylakex,
# icelake, alderlake, sapphirerapids on x86-64), of which the program loads the best this CPU runs.
# The same source distribution gives the server its HTTP library: cpp-httplib 0.20.1 as llama.cpp vendors
# it (header-only, MIT; include/httplib.h), which bounds the connections it holds open (Debian 12's 0.11
# queues them without limit; docs/reliability.md).
# Idempotent: does nothing when the stamp of this version is there. About 3 minutes on 2 cores.
# Usage: scripts/build_ggml.sh   (prints the install folder on its last line)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.16  # llama-cpp-python; the same pin as bench/decode_vs_llamacpp.py
PREFIX=$PWD/.cache/ggml/$VERSION
STAMP="$PREFIX/installed"
say() { printf '\033[1m[build_ggml]\033[0m %s\n' "$*" >&2; }

HTTPLIB=vendor/cpp-httplib/httplib.h  # inside vendor/llama.cpp
if [ -f "$STAMP" ] && [ -f "$PREFIX/include/httplib.h" ]; then
  echo "$PREFIX"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The bench may already hold the same source distribution.
archive=$(ls .cache/llama.cpp/$VERSION/llama_cpp_python-$VERSION.tar.gz 2>/dev/null || true)
if [ -z "$archive" ]; then
  say "downloading the llama-cpp-python==$VERSION source distribution"
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    "llama-cpp-python==$VERSION" -d "$work"
  archive=$(ls "$work"/llama_cpp_python-$VERSION.tar.gz)
fi
tar -xzf "$archive" -C "$work" "llama_cpp_python-$VERSION/vendor/llama.cpp"
source_dir="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ -f "$STAMP" ]; then  # ggml installed before the HTTP library came from here too: add just that
  cp "$source_dir/$HTTPLIB" "$PREFIX/include/httplib.h.part"
  mv "$PREFIX/include/httplib.h.part" "$PREFIX/include/httplib.h"
  say "added cpp-httplib to $PREFIX"
  echo "$PREFIX"
  exit 0
fi

# GGML_BACKEND_DL with every CPU variant: each instruction-set level is its own shared library exporting
# the same symbols, so one program can load the one it wants (CARTRIDGE_CPU_ISA caps it, and the tests
# run every level the CPU has). No OpenMP: we call single kernels from libtorch's thread pool.
variants=(x64 sse42 sandybridge haswell skylakex icelake alderlake sapphirerapids)
case "$(uname -m)" in
  x86_64) ;;
  *) say "ggml's CPU variants are only built for x86-64 here; found $(uname -m)"; exit 1 ;;
esac
say "building ggml (base + ${#variants[@]} CPU variants) from llama-cpp-python==$VERSION; about 3 minutes"
# CMAKE_BUILD_RPATH_USE_ORIGIN: the variants find libggml-base.so beside themselves, wherever the folder is.
cmake -S "$source_dir" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
targets=(ggml-base)
for variant in "${variants[@]}"; do targets+=("ggml-cpu-$variant"); done
cmake --build "$work/build" -j"${JOBS:-2}" --target "${targets[@]}" >/dev/null

rm -rf "$PREFIX.part"
mkdir -p "$PREFIX.part/lib" "$PREFIX.part/include"
cp "$work/build/bin"/libggml-base.so "$work/build/bin"/libggml-cpu-*.so "$PREFIX.part/lib/"
cp "$source_dir/ggml/include"/ggml.h "$source_dir/ggml/include"/ggml-cpu.h "$source_dir/ggml/include"/ggml-backend.h \
  "$source_dir/ggml/include"/ggml-alloc.h "$source_dir/$HTTPLIB" "$PREFIX.part/include/"
cp "$source_dir/LICENSE" "$PREFIX.part/LICENSE"
echo "llama-cpp-python==$VERSION ggml, variants: ${variants[*]}" >"$PREFIX.part/installed"
rm -rf "$PREFIX" && mv "$PREFIX.part" "$PREFIX"
say "installed into $PREFIX"
echo "$PREFIX"
