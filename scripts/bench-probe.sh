#!/usr/bin/env bash
# Probe benchmark: `witness run` over hundreds of local targets, a share of them stalling until
# the handshake timeout, at the default concurrency; wall time and peak memory. Each case runs
# twice (the machine is shared; report both). How the cost grows: list size (300, 600, 1200) and
# share of stalls (0, 20%, 40%).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
cargo build --release -q -p witness-tests --example bench_probe
for args in "300 0.2" "300 0" "300 0.4" "600 0.2" "1200 0.2"; do
  for _ in 1 2; do
    # shellcheck disable=SC2086
    cargo run --release -q -p witness-tests --example bench_probe -- $args
  done
done
