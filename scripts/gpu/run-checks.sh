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
# Llama-3.1-8B-shaped model loading and generating (SKIP_8B=1 leaves it out); where the
# machine has compute-sanitizer, its racecheck and synccheck over the attention op cases. A
# summary table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/bundle.sh
bundle_open
bundle_wrappers

correctness_checks
# Races and barrier misuse in the attention kernels, which the CPU emulation cannot see
# (compute-sanitizer ships with the CUDA toolkit, not with torch: skipped when absent).
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
  for tool in racecheck synccheck; do
    step "compute-sanitizer $tool: attention" "sanitizer-$tool.log" timeout -k 5 240 \
      "$sanitizer" --tool "$tool" --target-processes all --error-exitcode 1 \
      "$work/run/backend_ops_cuda_test" \
      --gtest_filter='*PagedAttention*'
  done
else
  summary+=("$(printf '%-30s %-7s' "compute-sanitizer" "SKIPPED (not installed)")")
fi
if [ "${SKIP_8B:-0}" != 1 ]; then
  model=$(model_cache)/llama-3.1-8b  # Kept for run-perf.sh on the same machine.
  step "make Llama-3.1-8B (random)" make-8b.log make_llama_8b "$model"
  step "8B: load and generate" run-8b.log run_bundled inferbox-run --device cuda --model "$model" \
    --prompt-tokens 128 --max-tokens 64 --ignore-eos --floor
  step "8B: batched bench" bench-8b.log run_bundled inferbox-bench --device cuda --model "$model" \
    --num-requests 64 --input-len 128 --output-len 128 --concurrency 32
fi
echo
echo "== summary ($(head -2 "$out/gpu.txt" | tail -1))"
printf '%s\n' "${summary[@]}"
bundle_close
