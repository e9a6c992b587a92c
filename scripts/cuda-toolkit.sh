#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler toolchain from the Python package registry into a local prefix
# (no system CUDA, no GPU needed) and runs a command with what candle's `cuda` build needs:
#
#   scripts/cuda-toolkit.sh cargo check --workspace --all-targets --features cuda
#
# The prefix is $MMCL_CUDA_PREFIX (default ~/.cache/mmcl/cuda-13.0) and is reused when present.
# Versions are pinned together: nvcc 13.0's ptxas reads PTX 9.0 only, so an `nvidia-nvvm` of a
# later 13.x (which writes newer PTX) makes every kernel fail with "Unsupported .version".
# CUDA_COMPUTE_CAP=90 (Hopper) is set because no GPU is there to ask; CUDARC_CUDA_VERSION pins
# cudarc's bindings to the toolkit. Linking a binary also needs the runtime libraries and a
# libcuda stub (issue 14); `cargo check` does not.
set -euo pipefail

prefix="${MMCL_CUDA_PREFIX:-$HOME/.cache/mmcl/cuda-13.0}"
cuda="$prefix/nvidia/cu13"
if [ ! -x "$cuda/bin/nvcc" ]; then
  echo "installing the CUDA 13.0 toolchain into $prefix" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$prefix" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
fi

export PATH="$cuda/bin:$PATH"
export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export NVCC_APPEND_FLAGS="-I$cuda/include/cccl ${NVCC_APPEND_FLAGS:-}"
exec "$@"
