#!/usr/bin/env bash
# The GPU check (issue 14), on a CUDA machine with PyTorch and no Rust toolchain, in under
# 12 minutes; run from the repository root with gpu-bundle/ built by scripts/gpu-build.sh:
#
#   scripts/gpu-check.sh [OUT_DIR]        # default gpu-check-out/
#
# It writes seven files into OUT_DIR (gpu.txt, tests.json, rust.json, torch.jsonl,
# reproduce.json, reproduce-results.json, gpu-check.json) and its log to stdout; through the
# device tool, which returns at most 8 files:
# `scripts/gpu-check.sh $OUT/gc 2>&1 | tee $OUT/gpu-check-log.txt`.
#
# 0. the test executables of the bundle on the GPU: the parity tests of mmcl-ecg and mmcl-train
#    (CPU and CUDA, against the fixtures the bundle carries; the others skip), mmcl-nn's CUDA
#    kernels against its CPU kernels, and its NCCL group of one;
# 1. `gpu_check`: the four workloads (ECG embedding, MAE step, ResNet50 embedding, MMCL step) on
#    the GPU held against the CPU (f32 with TF32 off and on, bf16), their building blocks timed
#    alone (`ops`), then the workloads timed in f32 and bf16 at the paper's batches and at
#    batch 256; where Nsight Compute (`ncu`) is installed, the time of each kernel of the ECG
#    embedding (`ncu`, into the log);
# 2. the reference PyTorch code of the same workloads (benches/reference_*.py) on the same GPU,
#    eager f32 and autocast bf16, same batches;
# 3. `mmcl reproduce --device cuda` with the defaults, timed;
# 4. one JSON of figures (OUT_DIR/gpu-check.json) with our throughput over PyTorch's, and a
#    table on stdout.
#
# The whole check keeps within GPU_CHECK_BUDGET seconds (default 560: the device machine's tool
# stops a command at 600); each part gets at most its own limit and what the budget has left,
# writes its figures as it goes, and a failure in one does not stop the others; the exit
# status is non-zero if any part failed or was cut short. GPU_CHECK_SKIP (comma-separated:
# tests, rust — or its agreement, ops, throughput —, ncu, torch, reproduce) leaves parts out;
# GPU_CHECK_WORKLOADS (comma-separated) keeps some workloads only. For a dry run of the
# script's plumbing without a GPU: GPU_CHECK_DEVICE=cpu with a bundle built without the cuda
# feature (GPU_BUILD_FEATURES= MMCL_GPU_BUNDLE=gpu-bundle-cpu scripts/gpu-build.sh), and
# GPU_CHECK_BATCHES=paper and GPU_CHECK_ITERS=2 to keep it short.
set -uo pipefail
cd "$(dirname "$0")/.."

out="${1:-gpu-check-out}"
bundle="${MMCL_GPU_BUNDLE:-gpu-bundle}"
skip=",${GPU_CHECK_SKIP:-},"
device="${GPU_CHECK_DEVICE:-cuda}"
batches="${GPU_CHECK_BATCHES:-paper,256}"
workloads="${GPU_CHECK_WORKLOADS:-embed_ecg,mae_step,embed_cmr,mmcl_step}"
iters="${GPU_CHECK_ITERS:-10}"
mkdir -p "$out"
status=0
started=$(date +%s)
budget="${GPU_CHECK_BUDGET:-560}"
note() { printf '\n==== %s (%ss)\n' "$1" "$(($(date +%s) - started))"; }
# What the parts after a part need at least, in seconds, counting only those not skipped.
need() {
  local total=0 part seconds
  for part in "$@"; do
    case "$part" in
      rust) seconds=120 ;; ncu) seconds=60 ;; torch) seconds=150 ;; reproduce) seconds=120 ;;
      *) seconds=0 ;;
    esac
    skipped "$part" || total=$((total + seconds))
  done
  echo "$total"
}
# The time limit of a part: its own ($1) or what the budget has left after a reserve ($2 s,
# for the parts after it), whichever is smaller; 0 when nothing is left.
limit() {
  local left=$((budget - ($(date +%s) - started) - $2))
  if [ "$left" -lt 10 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
# Runs a command under `timeout $1`, or, when no time is left ($1 = 0), says so and fails.
limited() {
  local t="$1"
  shift
  if [ "$t" -eq 0 ]; then
    echo "budget spent, not run: $*" >&2
    return 124
  fi
  timeout "$t" "$@"
}
skipped() { [[ "$skip" == *",$1,"* ]]; }

note "binaries"
bin="$(mktemp -d)"
if [ ! -f "$bundle/binaries.tar.xz" ]; then
  echo "error: $bundle/binaries.tar.xz not found; build it with scripts/gpu-build.sh" >&2
  exit 1
fi
xz -dc "$bundle/binaries.tar.xz" | tar -C "$bin" -xf - || exit 1
for name in mmcl gpu_check; do
  [ -x "$bin/$name" ] || { echo "error: $name is not in $bundle/binaries.tar.xz" >&2; exit 1; }
done
[ -f "$bundle/commit" ] && echo "built from commit $(cat "$bundle/commit")"
mkdir -p "$bin/tests" "$bin/parity"
for packed in "$bundle"/parity/*.xz; do
  [ -f "$packed" ] && xz -dc "$packed" >"$bin/parity/$(basename "$packed" .xz)"
done
# The test executables read their packages' files (in-repository fixtures) through the
# workspace path they were compiled in; when this checkout lies elsewhere, a link stands in.
if [ -f "$bundle/workspace" ]; then
  built_in="$(cat "$bundle/workspace")"
  if [ "$built_in" != "$PWD" ] && [ ! -e "$built_in" ]; then
    mkdir -p "$(dirname "$built_in")" && ln -s "$PWD" "$built_in" \
      || echo "warning: cannot link $built_in to $PWD; in-repository fixtures will be missing" >&2
  fi
fi

# The CUDA 13 libraries the binaries were linked against: a CUDA install's, or those of
# PyTorch's CUDA 13 wheels (nvidia/cu13/lib, or one folder per library in older layouts).
libdirs=""
for candidate in /usr/local/nvidia/lib64 /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
for root in roots:
    for d in sorted(set(glob.glob(os.path.join(root, "nvidia", "*", "lib")))):
        print(d)
PY
); do
  if [ -d "$candidate" ] && ls "$candidate" | grep -qE "^lib(cuda|cudart|cublas|curand|nvrtc|nccl)\.so"; then
    libdirs="$libdirs:$candidate"
  fi
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing="$(ldd "$bin/mmcl" | grep 'not found' || true)"
if [ -n "$missing" ]; then
  echo "error: libraries the binaries need are missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH):" >&2
  echo "$missing" >&2
  exit 1
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    | tee "$out/gpu.txt"
else
  echo "no nvidia-smi: $(grep -m1 'model name' /proc/cpuinfo)" | tee "$out/gpu.txt"
fi
"$bin/mmcl" info 2>&1

if ! skipped tests; then
  note "tests on the GPU: parity (CPU and CUDA), CUDA kernels, the NCCL group of one"
  for exe in "$bin"/tests/*; do
    [ -x "$exe" ] || continue
    name="$(basename "$exe")"
    package="${name%-*}"
    echo "---- $name" | tee -a "$bin/tests.log"
    # Run from the package's folder, as cargo test does; the fixtures the bundle carries.
    (cd "crates/$package" && export MMCL_PARITY_DIR="$bin/parity" \
      && limited "$(limit 60 "$(need rust ncu torch reproduce)")" "$exe" --nocapture --test-threads 1 2>&1) | tee -a "$bin/tests.log"
    echo "exit status ${PIPESTATUS[0]} of $name" | tee -a "$bin/tests.log"
  done
  python3 - "$bin/tests.log" "$out/tests.json" <<'PY' || status=1
import json, re, sys
runs, current = [], None
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("---- "):
        current = {"test": line[5:].strip(), "notes": []}
        runs.append(current)
        continue
    if current is None:
        continue
    m = re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
    if m:
        current.update(result=m.group(1), passed=int(m.group(2)), failed=int(m.group(3)),
                       ignored=int(m.group(4)))
    m = re.match(r"exit status (\d+) of ", line)
    if m:
        current["exit_status"] = int(m.group(1))
    if re.search(r"skip|missing|not found|no CUDA|on cuda", line, re.I):
        current["notes"].append(line.strip())
json.dump(runs, open(sys.argv[2], "w"), indent=2)
sys.exit(0 if runs and all(r.get("exit_status") == 0 for r in runs) else 1)
PY
fi

if ! skipped rust; then
  note "ours: agreement with the CPU, building blocks, throughput (gpu_check)"
  parts=""
  for part in agreement ops throughput; do
    skipped "$part" || parts="$parts,$part"
  done
  limited "$(limit 220 "$(need ncu torch reproduce)")" "$bin/gpu_check" --device "$device" --out "$out/rust.json" --iters "$iters" \
    --batches "$batches" --workloads "$workloads" --parts "${parts#,}" 2>&1
  [ "$?" -eq 0 ] || status=1
fi

if ! skipped ncu && command -v ncu >/dev/null; then
  note "the kernels of the ECG embedding at batch 256 (Nsight Compute; first 600 launches)"
  limited "$(limit 90 "$(need torch reproduce)")" ncu --metrics gpu__time_duration.sum --print-summary per-kernel \
    --launch-count 600 "$bin/gpu_check" --device "$device" --parts throughput \
    --workloads embed_ecg --batches 256 --iters 1 --out "$bin/ncu.json" 2>&1 | tail -n 400
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if ! skipped torch; then
  note "PyTorch: the reference code on the same GPU"
  rm -f "$out/torch.jsonl"
  for workload in ${workloads//,/ }; do
    for batch in ${batches//,/ }; do
      # The scripts' default batch is the paper's.
      batch_args=()
      [ "$batch" = paper ] || batch_args=(--batch "$batch")
      for precision in f32 bf16; do
        limited "$(limit 45 "$(need reproduce)")" python3 "benches/reference_$workload.py" --device "$device" --threads 8 \
          --precision "$precision" "${batch_args[@]}" --iters "$iters" --json "$out/torch.jsonl" \
          2>&1 | tail -1
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      done
    done
  done
fi

if ! skipped reproduce; then
  note "mmcl reproduce --device $device (defaults)"
  run="$(mktemp -d)"
  t0=$(date +%s.%N)
  limited "$(limit 180 10)" "$bin/mmcl" reproduce --device "$device" --output "$run/reproduce" 2>&1 \
    | tail -40
  code="${PIPESTATUS[0]}"
  t1=$(date +%s.%N)
  python3 -c "import json,sys; json.dump({'seconds': $t1 - $t0, 'exit_status': $code}, open(sys.argv[1], 'w'))" \
    "$out/reproduce.json"
  [ "$code" -eq 0 ] || status=1
  [ -f "$run/reproduce/results.json" ] && cp "$run/reproduce/results.json" "$out/reproduce-results.json"
fi

note "figures"
python3 scripts/gpu_check_report.py "$out" || status=1
note "done (exit status $status)"
exit "$status"
