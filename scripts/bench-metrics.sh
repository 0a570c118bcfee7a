#!/usr/bin/env bash
# /metrics at a country's size (issue #21): ~75 000 state series (618 sites x 20 networks x 6
# methods) with 1 and 10 million measurements in the window, SQLite then PostgreSQL. See
# collector/examples/metrics_bench.rs and the numbers in docs/scaling.md.
#
#   scripts/bench-metrics.sh                         # 1M and 10M, both stores
#   LEVELS=1000000 scripts/bench-metrics.sh          # 1M only
#   STORES=postgres scripts/bench-metrics.sh --probes-per-network 20
#                                                    # one store; extra flags go to every run
#
# The store is filled by bulk SQL (tiny bodies, the read model upserted as ingest would): about
# 1 GB of disk per million measurements on SQLite. PostgreSQL runs in a temporary server the
# benchmark starts (initdb as the `postgres` user when run as root; postgresql-15). Results:
# one `RESULT {json}` line per store and level, also collected in target/bench-metrics.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench-metrics.jsonl
cargo build --release --locked -p witness-collector --example metrics_bench
bench=target/release/examples/metrics_bench
: > "$out"

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -sr)"
for store in ${STORES:-sqlite postgres}; do
  "$bench" --store "$store" --levels "${LEVELS:-1000000,10000000}" "$@" \
    | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$out"
done
echo "== results in $out"
