#!/usr/bin/env bash
# Installs the CUDA 13.0 toolchain from the Python package registry into a local prefix (no
# system CUDA, no GPU needed) and runs a command with what candle's `cuda` build needs:
#
#   scripts/cuda-toolkit.sh cargo check --workspace --all-targets --features cuda
#   scripts/cuda-toolkit.sh --link cargo build --release --features cuda --bin mmcl
#
# The prefix is $MMCL_CUDA_PREFIX (default ~/.cache/mmcl/cuda-13.0) and is reused when present.
# Versions are pinned together: nvcc 13.0's ptxas reads PTX 9.0 only, so an `nvidia-nvvm` of a
# later 13.x (which writes newer PTX) makes every kernel fail with "Unsupported .version".
# CUDA_COMPUTE_CAP=90 (Hopper) is set because no GPU is there to ask; CUDARC_CUDA_VERSION pins
# cudarc's bindings to the toolkit.
#
# `--link` is for building binaries (checking links nothing): candle links cudarc's libraries
# dynamically, so the linker needs cuBLAS, cuBLASLt, cuRAND, NVRTC and, for the `nccl` feature,
# NCCL (about 1 GB more of wheels, hence opt-in) under their unversioned names, and the driver
# library `libcuda.so`,
# which only a GPU driver installs. For the driver a stub is built: every `cu*` function that
# cudarc declares, as an empty C function in a library whose soname is the driver's
# (`libcuda.so.1`), so the binary records the real library's name and runs against the driver
# of the machine it is carried to. The stub is never loaded at run time.
set -euo pipefail

link=0
if [ "${1:-}" = "--link" ]; then
  link=1
  shift
fi

prefix="${MMCL_CUDA_PREFIX:-$HOME/.cache/mmcl/cuda-13.0}"
cuda="$prefix/nvidia/cu13"
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$prefix" \
    --upgrade "$@"
}
if [ ! -x "$cuda/bin/nvcc" ]; then
  echo "installing the CUDA 13.0 toolchain into $prefix" >&2
  pip_install "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
fi

export PATH="$cuda/bin:$PATH"
export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export NVCC_APPEND_FLAGS="-I$cuda/include/cccl ${NVCC_APPEND_FLAGS:-}"

if [ "$link" = 1 ]; then
  lib="$cuda/lib"
  if [ ! -e "$lib/libcublasLt.so.13" ] || [ ! -e "$lib/libcurand.so.10" ] \
    || [ ! -e "$lib/libnvrtc.so.13" ] || [ ! -e "$lib/libnccl.so.2" ]; then
    echo "installing cuBLAS, cuRAND, NVRTC 13.0 and NCCL 2.28 into $prefix (for linking)" >&2
    # pip's --target replaces the shared nvidia/ folder of an earlier install unless told to
    # keep it, so these go to a side prefix and are moved in. NCCL 2.28 is the one PyTorch
    # 2.10/2.11 ship with for CUDA 13 (only its soname, libnccl.so.2, is recorded in a binary).
    side="$prefix.link"
    rm -rf "$side"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$side" \
      "nvidia-cublas==13.0.*" "nvidia-curand==10.*" "nvidia-cuda-nvrtc==13.0.*" \
      "nvidia-nccl-cu13==2.28.*"
    cp -a "$side"/nvidia/cu13/lib/. "$side"/nvidia/nccl/lib/. "$lib"/
    cp -a "$side"/nvidia/nccl/include/. "$cuda/include"/
    rm -rf "$side"
  fi
  # The linker looks for `lib<name>.so`; the wheels ship only the versioned files.
  for versioned in "$lib"/lib*.so.[0-9]*; do
    base="${versioned%%.so.*}.so"
    [ -e "$base" ] || ln -s "$(basename "$versioned")" "$base"
  done
  stub="$prefix/driver-stub"
  if [ ! -e "$stub/libcuda.so" ]; then
    sys="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-*/src/driver/sys/mod.rs' \
      | sort -V | tail -1)"
    if [ -z "$sys" ]; then
      echo "error: cudarc's sources are not in the cargo registry; run 'cargo fetch' first" >&2
      exit 1
    fi
    mkdir -p "$stub"
    grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$sys" | sed 's/pub unsafe fn //' | sort -u \
      | sed 's/.*/void &(void) {}/' >"$stub/stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
  fi
  export RUSTFLAGS="${RUSTFLAGS:-} -L native=$lib -L native=$stub"
  export LIBRARY_PATH="$lib:$stub${LIBRARY_PATH:+:$LIBRARY_PATH}"
fi
exec "$@"
