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
# The device tool carries at most 64 MiB with the working tree, so the bundle takes the test
# executables in GPU_BUNDLE_TESTS (default: mmcl-ecg-parity, mmcl-train-parity, mmcl-nn-nccl,
# mmcl-nn-cuda_kernels; mmcl-cmr-parity, 6 MB more, would find only its small in-repository
# fixture, and the MMCL step's parity already runs the ResNet forward and backward on the GPU)
# and the parity
# fixtures in GPU_BUNDLE_FIXTURES (default: the small ECG ViT and the MMCL step, ~23 MB
# compressed); the tests of fixtures left out skip, as they do wherever a fixture is missing.
# In all about 58 MB. MMCL_GPU_BUNDLE names another folder for the bundle.
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
mkdir -p "$bundle.tmp/tests" "$bundle.tmp/parity"
pack() {
  strip -o "$2" "$1"
  xz -T0 -9e "$2"
}
for exe in "$target/release/mmcl" "$target/release/examples/gpu_check"; do
  pack "$exe" "$bundle.tmp/$(basename "$exe")"
done
# tests/<package>-<test>: the test's executable, run from the package's directory.
wanted=" ${GPU_BUNDLE_TESTS:-mmcl-ecg-parity mmcl-train-parity mmcl-nn-nccl mmcl-nn-cuda_kernels} "
while read -r package test exe; do
  [[ -n "$exe" && "$wanted" == *" $package-$test "* ]] && pack "$exe" "$bundle.tmp/tests/$package-$test"
done <<<"$tests"
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
