#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the loopback integration suites (real probe and
# collector binaries against real DNS, TLS and HTTP servers on 127.0.0.0/8), and, as root, the
# censorship lab in network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"
