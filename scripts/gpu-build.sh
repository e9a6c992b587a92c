#!/usr/bin/env bash
# Builds, on a machine without a GPU, what `scripts/gpu-check.sh` runs on one that has no Rust
# toolchain, with `--features cuda,nccl`: `mmcl`, the `gpu_check` example and the test
# executables that matter on a GPU (parity tests, mmcl-nn's NCCL and CUDA-kernel tests),
# stripped and compressed into gpu-bundle/ (ignored by git), with the parity fixtures that fit
# beside them in gpu-bundle/parity/.
#
#   scripts/gpu-build.sh            # then carry gpu-bundle/ and run scripts/gpu-check.sh there
#
# The CUDA 13.0 toolchain and the libraries to link against come from the Python package
# registry (scripts/cuda-toolkit.sh --link); the target directory is target/cuda-build unless
# CARGO_TARGET_DIR says otherwise. The binaries need, on the GPU machine, the NVIDIA driver and
# the CUDA 13 runtime libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC, NCCL), which a CUDA install
# or PyTorch's CUDA 13 wheels provide; gpu-check.sh finds them.
#
# The device tool carries at most 64 MiB with the working tree: the executables go into one
# solid archive (binaries.tar.xz, ~12 MB), the test executables being those in
# GPU_BUNDLE_TESTS (default: the parity tests of mmcl-ecg, mmcl-cmr and mmcl-train, mmcl-nn's
# NCCL and CUDA-kernel tests), beside the parity fixtures in GPU_BUNDLE_FIXTURES (default: the
# small ECG ViT and the MMCL step, ~23 MB compressed; resnet18_64px adds 21 MB, resnet50_64px
# is too large); the tests of fixtures left out skip, as they do wherever a fixture is missing.
# MMCL_GPU_BUNDLE names another folder for the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."

features="${GPU_BUILD_FEATURES-cuda,nccl}"
if [ -n "$features" ]; then
  target="${CARGO_TARGET_DIR:-target/cuda-build}"
  build() { CARGO_TARGET_DIR="$target" scripts/cuda-toolkit.sh --link cargo "$@"; }
else
  # A bundle without CUDA (GPU_BUILD_FEATURES=), for a dry run of gpu-check.sh's plumbing on a
  # CPU machine (GPU_CHECK_DEVICE=cpu MMCL_GPU_BUNDLE=...).
  target="${CARGO_TARGET_DIR:-target}"
  build() { CARGO_TARGET_DIR="$target" cargo "$@"; }
fi
feature_args=()
[ -n "$features" ] && feature_args=(--features "$features")
build build --release --locked --workspace "${feature_args[@]}" --bin mmcl --example gpu_check
# The test executables' paths, from cargo's messages (their names carry a hash).
tests="$(build test --release --locked --workspace "${feature_args[@]}" --no-run \
  --test parity --test nccl --test cuda_kernels --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["package_id"].split("#")[0].rsplit("/", 1)[-1].split("@")[0], m["target"]["name"], m["executable"])
')"

bundle="${MMCL_GPU_BUNDLE:-gpu-bundle}"
rm -rf "$bundle.tmp"
stage="$bundle.tmp/stage"
mkdir -p "$stage/tests" "$bundle.tmp/parity"
for exe in "$target/release/mmcl" "$target/release/examples/gpu_check"; do
  strip -o "$stage/$(basename "$exe")" "$exe"
done
# tests/<package>-<test>: the test's executable, run from the package's directory.
wanted=" ${GPU_BUNDLE_TESTS:-mmcl-ecg-parity mmcl-cmr-parity mmcl-train-parity mmcl-nn-nccl mmcl-nn-cuda_kernels} "
while read -r package test exe; do
  if [[ -n "$exe" && "$wanted" == *" $package-$test "* ]]; then
    strip -o "$stage/tests/$package-$test" "$exe"
  fi
done <<<"$tests"
# One solid archive: the executables share most of their bytes (candle's kernels, the
# crates), which a dictionary larger than one of them (50–70 MB stripped) finds across files:
# 11 MB for six executables against 38 MB compressed one by one. Decompressing needs 256 MiB.
tar -C "$stage" -cf - . | xz -T1 --lzma2=preset=6,dict=256MiB >"$bundle.tmp/binaries.tar.xz"
rm -rf "$stage"
parity="$(python3 -c 'import sys; print(sys.argv[1])' "${MMCL_PARITY_DIR:-../shared/parity}")"
for fixture in ${GPU_BUNDLE_FIXTURES:-ecg_vit_small mmcl_step_small}; do
  for part in io weights; do
    file="$parity/$fixture.$part.safetensors"
    [ -f "$file" ] && xz -T0 -1 -c "$file" >"$bundle.tmp/parity/$fixture.$part.safetensors.xz"
  done
done
git rev-parse HEAD >"$bundle.tmp/commit"
# Test executables find their packages' files through paths fixed at compile time.
pwd >"$bundle.tmp/workspace"
rm -rf "$bundle"
mv "$bundle.tmp" "$bundle"
ls -lR "$bundle"
du -sh "$bundle"
xz -lv "$bundle/binaries.tar.xz" | grep -E "Uncompressed|Memory needed" || true
