#!/usr/bin/env bash
# Cross-builds the probe (`witness`) for Raspberry Pi and PC, in release mode:
#   aarch64-unknown-linux-gnu       Raspberry Pi 3/4/5 with a 64-bit OS
#   armv7-unknown-linux-gnueabihf   Raspberry Pi 2/3/4 with a 32-bit OS (Raspberry Pi OS armhf)
#   x86_64-unknown-linux-gnu        PCs and servers
#
# Needs, on Debian/Ubuntu:
#   apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
#                   gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
#   (and gcc-x86-64-linux-gnu when the build machine is not x86_64)
# and rustup, which adds each target's standard library.
#
# Usage: deploy/cross-build.sh [--dry-run] [TARGET...]
#   With no TARGET, builds all three. --dry-run prints the commands without running them.
#   Binaries and their SHA-256 sums go to target/dist/ (or $WITNESS_DIST_DIR).
#   Honours CARGO_TARGET_DIR. A built ARM binary can be smoke-tested on a PC with
#   qemu-user-static:  qemu-aarch64-static -L /usr/aarch64-linux-gnu target/dist/witness-aarch64-unknown-linux-gnu --version
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "cross-build: unknown option $arg" >&2; exit 2 ;;
    *) targets+=("$arg") ;;
  esac
done
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf x86_64-unknown-linux-gnu)
fi

host=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${CARGO_TARGET_DIR:-target}
dist=${WITNESS_DIST_DIR:-$target_dir/dist}

# Prints a command, then runs it unless --dry-run.
run() {
  printf '+ %s\n' "$*"
  if [ "$dry_run" -eq 0 ]; then
    "$@"
  fi
}

# The Debian cross gcc for a target (its linker, and the C compiler for crates with C parts
# such as ring and SQLite).
cross_gcc() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo aarch64-linux-gnu-gcc ;;
    armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf-gcc ;;
    x86_64-unknown-linux-gnu) echo x86_64-linux-gnu-gcc ;;
    *) echo "cross-build: unsupported target $1" >&2; return 1 ;;
  esac
}

for target in "${targets[@]}"; do
  gcc=$(cross_gcc "$target")
  run rustup target add "$target"
  # CARGO_TARGET_<TRIPLE>_LINKER and CC_<triple>: upper-case and lower-case with underscores.
  triple_upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
  triple_lower=$(echo "$target" | tr '-' '_')
  env_vars=()
  if [ "$target" != "$host" ]; then
    if [ "$dry_run" -eq 0 ] && ! command -v "$gcc" >/dev/null; then
      echo "cross-build: $gcc not found; install the Debian package that provides it (see the top of this script)" >&2
      exit 1
    fi
    env_vars=(
      "CARGO_TARGET_${triple_upper}_LINKER=$gcc"
      "CC_${triple_lower}=$gcc"
      "AR_${triple_lower}=${gcc%-gcc}-ar"
    )
  fi
  run env "${env_vars[@]}" cargo build --release --locked -p witness --bin witness --target "$target"
  run mkdir -p "$dist"
  run cp "$target_dir/$target/release/witness" "$dist/witness-$target"
done

if [ "$dry_run" -eq 0 ]; then
  (cd "$dist" && sha256sum witness-* > SHA256SUMS)
  echo "cross-build: binaries and SHA256SUMS in $dist/"
  if command -v file >/dev/null; then
    file "$dist"/witness-*
  fi
fi
