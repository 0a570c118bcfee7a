#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ (libFuzzer through libfuzzer-sys) and runs each for a bounded
# time: `scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]` (default 20 s, every target).
#
# The build uses the instrumentation flags of `cargo fuzz build -s none` directly, so neither
# cargo-fuzz nor a nightly toolchain is needed: -Cpasses and -Cllvm-args are stable options.
# No sanitizer: the code under test is safe Rust, so the fuzzers look for panics, hangs
# (-timeout) and unbounded memory (-rss_limit_mb, -malloc_limit_mb). With cargo-fuzz and a
# toolchain that allows -Z flags (nightly, or RUSTC_BOOTSTRAP=1 on stable), the same crate runs
# under AddressSanitizer with `cargo fuzz run TARGET`.
#
# Findings: a crashing input is written to fuzz/artifacts/TARGET/; make it a regression test
# next to the code it broke and add it to fuzz/corpus/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET="${1:-20}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(upload target_list dns_response http_response configs scrub)
fi

export RUSTFLAGS="-Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (as cargo-fuzz does).
HOST=$(rustc -vV | sed -n 's/^host: //p')
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
start=$(date +%s)
cargo build --release --locked --bins --target "$HOST"
echo "fuzz build: $(( $(date +%s) - start ))s"

for t in "${TARGETS[@]}"; do
  corpus="corpus/$t"
  work="$TARGET_DIR/corpus/$t"   # new inputs found this run: not committed
  mkdir -p "$work" "artifacts/$t"
  echo "== fuzzing $t for ${SECONDS_PER_TARGET}s"
  log="$TARGET_DIR/fuzz-$t.log"
  status=0
  "$TARGET_DIR/$HOST/release/$t" "$work" "$corpus" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=512 \
    -max_len=65536 -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^INFO: seed corpus" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz target $t failed (exit $status); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzzing done: $(( $(date +%s) - start ))s in all"
