#!/usr/bin/env bash
# Probe benchmark: `witness run` over hundreds of local targets, a share of them stalling until
# the handshake timeout, at the default concurrency; wall time and peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
for args in "300 0.2" "300 0" "600 0.2"; do
  # shellcheck disable=SC2086
  cargo run --release -q -p witness-tests --example bench_probe -- $args
done
