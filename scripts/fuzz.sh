#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang 14, ASan + UBSan, parsing code only: no libtorch) into
# build-fuzz/ and runs each on a fresh copy of its seed corpus (fuzz/corpus/<target>/). Prints one line per
# target (executions, libFuzzer's coverage `cov:`, result) and exits non-zero on any finding: a crash, a
# sanitizer report, a leak, a broken invariant, a timeout (-timeout=10) or running out of memory
# (-rss_limit_mb=2048). The input that did it is in build-fuzz/work/<target>/artifacts/.
#
# Usage: scripts/fuzz.sh [--runs N | --seconds S] [TARGET...]
#   scripts/fuzz.sh --runs 20000       smoke: 20000 executions per target (the default)
#   scripts/fuzz.sh --seconds 600      long: 10 minutes per target
#   TARGET: openai_request safetensors gguf tokenizer_json tokenizer_encode chat_template adapter_config dataset
#           (default: all)
# Environment: BUILD_DIR (build-fuzz), CXX (clang++-14), JOBS (1), FUZZ_ARGS (extra libFuzzer flags).
# Compiler missing: apt-get install -y clang-14 libclang-rt-14-dev
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-fuzz}
JOBS=${JOBS:-1}
ALL_TARGETS=(openai_request safetensors gguf tokenizer_json tokenizer_encode chat_template adapter_config dataset)

limit=(-runs=20000)
limit_text="20000 runs"
targets=()
while (($#)); do
  case "$1" in
    --runs) limit=(-runs="$2"); limit_text="$2 runs"; shift 2 ;;
    --seconds) limit=(-max_total_time="$2"); limit_text="$2 s"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")

CXX=${CXX:-clang++-14}
if ! command -v "$CXX" >/dev/null; then
  echo "fuzz.sh: $CXX not found; install it with: apt-get install -y clang-14 libclang-rt-14-dev" >&2
  exit 2
fi

# --- build -------------------------------------------------------------------------------------------
build_start=$SECONDS
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  CXX="$CXX" nice -n 19 cmake -S fuzz -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE= >/dev/null
fi
build_targets=()
for target in "${targets[@]}"; do build_targets+=("${target}_fuzz"); done
nice -n 19 cmake --build "$BUILD_DIR" -j"$JOBS" --target "${build_targets[@]}"
echo "fuzz.sh: build took $((SECONDS - build_start)) s"

# --- run ---------------------------------------------------------------------------------------------
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
read -r -a extra_args <<<"${FUZZ_ARGS:-}"
findings=0
results=()
for target in "${targets[@]}"; do
  work="$BUILD_DIR/work/$target"
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp -r "fuzz/corpus/$target/." "$work/corpus/"
  log="$work/fuzz.log"
  start=$SECONDS
  status=0
  nice -n 19 "$BUILD_DIR/${target}_fuzz" "${limit[@]}" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/" "${extra_args[@]}" "$work/corpus" >"$log" 2>&1 ||
    status=$?
  seconds=$((SECONDS - start))
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ -z "$executions" ]; then  # no final stats after a crash: the last status line's #N
    executions=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  fi
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  if ((status == 0)); then
    result="ok"
  else
    findings=$((findings + 1))
    kind=$(grep -m1 -oE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer): [a-zA-Z_ -]+|runtime error: .*|invariant broken: .*|SUMMARY: UndefinedBehaviorSanitizer: [a-z-]+' "$log" |
      head -1 || true)
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    result="FINDING (exit $status): ${kind:-see $log}${artifact:+; input $artifact}"
  fi
  results+=("$(printf '%-17s %10s %7s %6ss  %s' "$target" "${executions:-?}" "${cov:-?}" "$seconds" "$result")")
  echo "${results[-1]}"
done

echo
echo "fuzz.sh: $limit_text per target; logs in $BUILD_DIR/work/<target>/fuzz.log"
printf '%-17s %10s %7s %7s  %s\n' target executions cov time result
printf '%s\n' "${results[@]}"
if ((findings)); then
  echo "fuzz.sh: $findings target(s) with findings" >&2
  exit 1
fi
