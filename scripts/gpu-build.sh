#!/usr/bin/env bash
# Builds, on a machine without a GPU, what `scripts/gpu-check.sh` runs on one that has no Rust
# toolchain: `mmcl` and the `gpu_check` example with `--features cuda`, stripped and compressed
# into gpu-bundle/ (ignored by git; about 40 MB, small enough to travel with the working tree).
#
#   scripts/gpu-build.sh            # then carry gpu-bundle/ and run scripts/gpu-check.sh there
#
# The CUDA 13.0 toolchain and the libraries to link against come from the Python package
# registry (scripts/cuda-toolkit.sh --link); the target directory is target/cuda-build unless
# CARGO_TARGET_DIR says otherwise. The binaries need, on the GPU machine, the NVIDIA driver and
# the CUDA 13 runtime libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC), which a CUDA install or
# PyTorch's CUDA 13 wheels provide; gpu-check.sh finds them.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target/cuda-build}"
CARGO_TARGET_DIR="$target" scripts/cuda-toolkit.sh --link \
  cargo build --release --locked --workspace --features cuda --bin mmcl --example gpu_check

bundle=gpu-bundle
rm -rf "$bundle.tmp"
mkdir -p "$bundle.tmp"
for exe in "$target/release/mmcl" "$target/release/examples/gpu_check"; do
  name="$(basename "$exe")"
  strip -o "$bundle.tmp/$name" "$exe"
  xz -T0 -6 "$bundle.tmp/$name"
done
git rev-parse HEAD >"$bundle.tmp/commit"
rm -rf "$bundle"
mv "$bundle.tmp" "$bundle"
ls -l "$bundle"
