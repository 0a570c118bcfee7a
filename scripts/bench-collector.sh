#!/usr/bin/env bash
# Collector ingest benchmark, SQLite then PostgreSQL, with the same workload (see
# collector/examples/ingest_bench.rs and the numbers in docs/scaling.md).
#
#   scripts/bench-collector.sh                      # 100 000 measurements per store
#   MEASUREMENTS=300000 CLIENTS=64 scripts/bench-collector.sh
#   scripts/bench-collector.sh --batch 200          # extra flags go to both runs
#
# PostgreSQL runs in a temporary server started by the benchmark itself (initdb as the
# `postgres` user when run as root; Debian package postgresql-15), or in the database named by
# PG_URL (it must be empty). Results: one `RESULT {json}` line per store, also collected in
# target/bench-collector.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

measurements="${MEASUREMENTS:-100000}"
clients="${CLIENTS:-32}"
out=target/bench-collector.jsonl

cargo build --release --locked -p witness-collector --example ingest_bench
bench=target/release/examples/ingest_bench
: > "$out"

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -sr)"
for store in sqlite postgres; do
  echo
  echo "== $store"
  args=(--store "$store" --measurements "$measurements" --clients "$clients" "$@")
  if [ "$store" = postgres ] && [ -n "${PG_URL:-}" ]; then
    args+=(--url "$PG_URL")
  fi
  "$bench" "${args[@]}" | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$out"
done
echo
echo "== results in $out"
