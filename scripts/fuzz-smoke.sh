#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a short fixed time, starting from the
# committed seed corpus (fuzz/corpus/<target>); fails loudly on the first crash, panic, timeout
# or out-of-memory, naming the reproducer. CI runs it (.ci/run); developers can too.
# See docs/fuzzing.md.
#
#   scripts/fuzz-smoke.sh                 every target, FUZZ_SECONDS (15) each
#   scripts/fuzz-smoke.sh path_router     only the named targets
#
# FUZZ_SECONDS   time per target (default 15)
# FUZZ_RUNS      run this many executions per target instead (long runs; FUZZ_SECONDS then caps)
# FUZZ_SANITIZER none (default) or address; see docs/fuzzing.md for why none is the default
# FUZZ_KEEP      keep the corpus the run grows, and its log, in fuzz/runs/ (default: a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-15}"
sanitizer="${FUZZ_SANITIZER:-none}"

# Nightly when installed. Without a sanitizer cargo-fuzz passes rustc only stable flags
# (coverage instrumentation by -C options), so the default toolchain builds the targets too:
# CI then still runs on a machine that has no nightly.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
elif [ "$sanitizer" = none ]; then
  toolchain=()
  echo "fuzz-smoke: no nightly toolchain; building with the default one (no sanitizer)"
else
  echo "fuzz-smoke: FUZZ_SANITIZER=$sanitizer needs the nightly toolchain" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "::: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
# cargo fuzz runs the target from the repo root: hand it absolute paths.
here="$PWD"
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

echo "::: cargo fuzz build (sanitizer: $sanitizer)"
start=$(date +%s)
cargo "${toolchain[@]}" fuzz build -s "$sanitizer"
echo "fuzz targets built in $(( $(date +%s) - start )) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  seeds="$here/corpus/$t"
  if [ ! -d "$seeds" ]; then
    echo "fuzz-smoke: no seed corpus $seeds for target $t" >&2
    exit 1
  fi
  # New inputs go to the first folder; the committed seeds are only read.
  if [ -n "${FUZZ_KEEP:-}" ]; then
    work="$here/runs/$t"
  else
    work="$scratch/$t"
  fi
  mkdir -p "$work"
  args=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  case "$t" in
    path_*) dict="$here/dict/path.dict" ;;
    *) dict="$here/dict/$t.dict" ;;
  esac
  [ -f "$dict" ] && args+=("-dict=$dict")
  if [ -n "${FUZZ_RUNS:-}" ]; then
    args+=("-runs=$FUZZ_RUNS")
    what="$FUZZ_RUNS runs"
    # With a run count, FUZZ_SECONDS (when given) is only a cap.
    if [ -n "${FUZZ_SECONDS:-}" ]; then
      args+=("-max_total_time=$FUZZ_SECONDS")
      what="$what, at most $FUZZ_SECONDS s"
    fi
  else
    args+=("-max_total_time=$seconds")
    what="$seconds s"
  fi
  if [ -n "${FUZZ_KEEP:-}" ]; then
    log="$here/runs/$t.log"
  else
    log="$scratch/$t.log"
  fi
  began=$(date +%s)
  echo "::: fuzz $t ($what)"
  if cargo "${toolchain[@]}" fuzz run -s "$sanitizer" "$t" "$work" "$seeds" -- "${args[@]}" >"$log" 2>&1; then
    # The last status line and the final statistics: executions, speed, coverage, corpus.
    grep -E '^#[0-9]+\s+(DONE|pulse|NEW|REDUCE)' "$log" | tail -n 1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    echo "wall time: $(( $(date +%s) - began )) s"
  else
    echo "!!! fuzz target $t FAILED:" >&2
    # The panic (or libFuzzer's own verdict: timeout, out of memory) and the input that caused it.
    grep -m 1 -A 3 -E "panicked at|ERROR: libFuzzer" "$log" >&2 || tail -n 40 "$log" >&2
    grep -E "^(SUMMARY|MS:|Base64:)|Test unit written" "$log" >&2 || true
    ls "$here/artifacts/$t"/ 2>/dev/null | sed 's|^|!!! reproducer: fuzz/artifacts/'"$t"'/|' >&2 || true
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke: FAILED: ${failed[*]} (reproduce: cd fuzz && cargo ${toolchain[*]} fuzz run -s $sanitizer TARGET artifacts/TARGET/FILE)" >&2
  exit 1
fi
echo "fuzz-smoke: ${#targets[@]} targets ran clean"
