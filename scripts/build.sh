#!/usr/bin/env bash
# Configures and builds cartridge.cpp in build/ (Release, Ninja, ccache, 2 jobs) against the libtorch of
# the torch==2.13.0 wheel in .venv. Run scripts/setup.sh first (the README commands do).
# Usage: scripts/build.sh [TARGET...]   (BUILD_DIR=build JOBS=2 BUILD_TYPE=Release by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-2}
TORCH_PREFIX=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
# ggml's quantised kernels (built once into .cache/ggml/; a no-op afterwards).
GGML_DIR=$(bash scripts/build_ggml.sh)
if [ ! -f "$BUILD_DIR/build.ninja" ] || ! grep -q "^CARTRIDGE_GGML_DIR:PATH=$GGML_DIR\$" "$BUILD_DIR/CMakeCache.txt"; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DPython3_EXECUTABLE="$PWD/.venv/bin/python" \
    -DCARTRIDGE_GGML_DIR="$GGML_DIR" >/dev/null
fi
# Optional arguments are target names (default: everything).
targets=()
(($#)) && targets=(--target "$@")
cmake --build "$BUILD_DIR" -j"$JOBS" "${targets[@]}"
