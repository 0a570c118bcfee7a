#!/usr/bin/env bash
# Collector ingest benchmark, SQLite then PostgreSQL, with the same workload (see
# collector/examples/ingest_bench.rs and the numbers in docs/scaling.md).
#
#   scripts/bench-collector.sh                      # 100 000 measurements per store
#   MEASUREMENTS=300000 CLIENTS=64 scripts/bench-collector.sh
#   scripts/bench-collector.sh --batch 200          # extra flags go to both runs
#   scripts/bench-collector.sh --preload 1000000    # ingest with a full window
#   RENDER_LEVELS=100000,1000000,10000000 MEASUREMENTS=2000 scripts/bench-collector.sh
#                                                   # /metrics render time at each level
#   RENDER_LEVELS=100000,1000000,10000000 MEASUREMENTS=30000 \
#     scripts/bench-collector.sh --full-window 1000000
#                                                   # the numbers of docs/scaling.md: fresh
#                                                   # ingest, store bulk rate, ingest with a
#                                                   # full window (ratio), render at each level
#   STORES=postgres scripts/bench-collector.sh ...  # one store only
#
# Every run also bulk-loads 20 000 measurements through the store alone after the HTTP ingest
# and prints the HTTP rate as a share of that ("store bulk load"). The render levels are filled
# with a bulk SQL insert (benchmark only: tiny bodies, the read model upserted by the same SQL
# as ingest), so 10 million rows take minutes, not hours, and ~3 GB of disk per store.
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
for store in ${STORES:-sqlite postgres}; do
  echo
  echo "== $store"
  args=(--store "$store" --measurements "$measurements" --clients "$clients" "$@")
  if [ -n "${RENDER_LEVELS:-}" ]; then
    args+=(--render-levels "$RENDER_LEVELS")
  fi
  if [ "$store" = postgres ] && [ -n "${PG_URL:-}" ]; then
    args+=(--url "$PG_URL")
  fi
  "$bench" "${args[@]}" | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$out"
done
echo
echo "== results in $out"
