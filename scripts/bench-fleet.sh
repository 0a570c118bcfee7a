#!/usr/bin/env bash
# Control service fleet benchmark (tests/examples/bench_fleet.rs; numbers in docs/scaling.md):
# one collector with the shipped config, N simulated probes (own token, own client address)
# each asking the control for the default list's ~600 URLs in batches of 100, spread over a
# compressed hour (HOUR_SECS, default 120 s; cache_ttl compressed to a sixth of it).
#
#   scripts/bench-fleet.sh                    # N = 50, 200, 400
#   FLEET="50 200" HOUR_SECS=180 scripts/bench-fleet.sh
#   PROFILE=dev scripts/bench-fleet.sh        # debug build (a shared machine; slower CPU figures)
#
# Each run prints one `RESULT {json}` line, also collected in target/bench-fleet.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-release}"
hour="${HOUR_SECS:-120}"
urls="${URLS:-600}"
out=target/bench-fleet.jsonl
flag=(--release)
[ "$profile" = dev ] && flag=()

cargo build "${flag[@]}" --locked --workspace --bins
cargo build "${flag[@]}" --locked -p witness-tests --example bench_fleet
: > "$out"
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(uname -sr)"
for n in ${FLEET:-50 200 400}; do
  echo "== $n probes"
  cargo run "${flag[@]}" -q --locked -p witness-tests --example bench_fleet -- "$n" "$hour" "$urls" \
    | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$out"
done
