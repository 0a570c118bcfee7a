#!/usr/bin/env bash
# Builds every release artifact of Witness into OUTDIR:
#
#   witness-VERSION-x86_64-unknown-linux-musl            static probe, PCs and servers
#   witness-VERSION-aarch64-unknown-linux-musl           static probe, Raspberry Pi 3/4/5, 64-bit OS
#   witness-VERSION-armv7-unknown-linux-gnueabihf-static static probe, Raspberry Pi 2/3/4, 32-bit OS
#   witness-VERSION-x86_64-pc-windows-gnu.exe            static probe, Windows 10/11 (64-bit)
#   witness-collector-VERSION-x86_64-unknown-linux-musl  static collector
#   witness-VERSION-TARGET.tar.gz   a probe binary with README, LICENSE, example config, systemd
#                                   units, man page and shell completions
#   witness-VERSION-x86_64-pc-windows-gnu.zip  witness.exe with README, LICENSE, example config
#                                   and the Windows guide (docs/windows.md)
#   witness_VERSION_{amd64,arm64,armhf}.deb   Debian/Ubuntu/Raspberry Pi OS packages
#   SHA256SUMS, SHA256SUMS.sig      checksums of all the above, signed with an SSH key
#
# Usage: deploy/release.sh OUTDIR
#
# Environment:
#   WITNESS_SIGNING_KEY   the release signing key: an SSH private key file (ed25519, no
#                         passphrase, or one held by ssh-agent). Required.
#   WITNESS_SIGNER        the signer identity in the allowed-signers file (default
#                         witness-release); install.sh verifies against deploy/allowed_signers.
#   CARGO_TARGET_DIR      honoured. The probes are built with the workspace's `dist` profile
#                         (size-optimised, fat LTO; Cargo.toml), the collector with `release`:
#                         CI runs this script unchanged, so it checks what a maintainer ships.
#   WITNESS_MAX_PROBE_BYTES  size limit of a probe binary (default 12 MB = 12582912).
#   WITNESS_RELEASE_TARGETS  a subset of the probe targets, space-separated (default: all
#                         four); the collector is built with x86_64-unknown-linux-musl. For
#                         trying the script; a release has all.
#
# Needs (Debian): musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf
# libc6-dev-armhf-cross gcc-mingw-w64-x86-64 zip dpkg-dev file openssh-client, and the rustup
# targets x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf
# x86_64-pc-windows-gnu.
#
# Why these toolchains: rustup's musl targets with Debian's musl-tools (x86_64) and cross gcc
# (aarch64; ring's C parts need no libc headers, and Rust's musl targets bring their own libc
# and start files) give fully static binaries with nothing to install. rustup has no
# armv7-unknown-linux-musleabihf standard library on this project's machines, so the 32-bit
# Pi binary is the glibc target linked statically (+crt-static) with Debian's armhf cross gcc:
# also a static binary, named -gnueabihf-static so that nobody mistakes it for musl. It resolves
# names with its own DNS client (hickory) for measurements; the upload client's getaddrinfo
# works in a static glibc binary for DNS and /etc/hosts (checked under qemu by the tests).
# Windows: rustup's x86_64-pc-windows-gnu with Debian's mingw-w64 gcc (ring's C and assembly),
# +crt-static so that witness.exe imports only Windows' own DLLs (checked below); tested under
# Wine by tests/tests/windows_wine.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 1 ]; then
  sed -n '2,44p' "$0" >&2
  exit 2
fi
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)

: "${WITNESS_SIGNING_KEY:?set WITNESS_SIGNING_KEY to the SSH private key that signs SHA256SUMS}"
signer=${WITNESS_SIGNER:-witness-release}
max_bytes=${WITNESS_MAX_PROBE_BYTES:-12582912}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
target_dir=${CARGO_TARGET_DIR:-target}
target_dir=$(mkdir -p "$target_dir" && cd "$target_dir" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say() { printf '== release: %s\n' "$*"; }
die() { printf 'release: %s\n' "$*" >&2; exit 1; }

read -r -a targets <<< "${WITNESS_RELEASE_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf x86_64-pc-windows-gnu}"
windows=x86_64-pc-windows-gnu
has_target() { printf '%s\n' "${targets[@]}" | grep -qx "$1"; }

tools=(musl-gcc aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc dpkg-deb file ssh-keygen sha256sum)
if has_target "$windows"; then
  tools+=(x86_64-w64-mingw32-gcc x86_64-w64-mingw32-objdump zip)
fi
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || die "$tool not found; see the top of $0 for the Debian packages"
done

# ---------------------------------------------------------------------------- static binaries

# The static-linking settings of each target, as environment variables for cargo.
target_env() {
  case "$1" in
    x86_64-unknown-linux-musl)
      echo "CC_x86_64_unknown_linux_musl=musl-gcc" ;;
    aarch64-unknown-linux-musl)
      echo "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc"
      echo "CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc"
      echo "AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar" ;;
    armv7-unknown-linux-gnueabihf)
      echo "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc"
      echo "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS=-C target-feature=+crt-static"
      echo "CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc"
      echo "AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar" ;;
    x86_64-pc-windows-gnu)
      echo "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc"
      echo "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUSTFLAGS=-C target-feature=+crt-static"
      echo "CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc"
      echo "AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar" ;;
    *) die "unknown target $1" ;;
  esac
}

# build TARGET PROFILE PACKAGE BIN... : cargo build with PROFILE for TARGET, timed.
build() {
  local target=$1 profile=$2; shift 2
  local envs=() start
  mapfile -t envs < <(target_env "$target")
  say "building $* for $target (profile $profile)"
  start=$(date +%s)
  env "${envs[@]}" cargo build --profile "$profile" --locked --target "$target" "$@"
  say "built $* for $target in $(( $(date +%s) - start )) s"
}

# The DLLs a Windows executable may import: Windows' own, present on every installation.
# Anything else (libgcc_s_seh-1.dll, libwinpthread-1.dll: mingw's runtime) would be missing on
# a volunteer's PC.
windows_system_dll() {
  case "${1,,}" in
    kernel32.dll | ntdll.dll | advapi32.dll | ws2_32.dll | userenv.dll | bcrypt.dll \
      | bcryptprimitives.dll | shell32.dll | ole32.dll | iphlpapi.dll | secur32.dll \
      | crypt32.dll | ncrypt.dll | user32.dll | msvcrt.dll | oleaut32.dll | combase.dll \
      | api-ms-win-*.dll) return 0 ;;
    *) return 1 ;;
  esac
}

# artifact SRC NAME: copy a built binary to OUTDIR/NAME after checking it is static (on
# Windows: that it imports only Windows' own DLLs).
artifact() {
  local src=$1 name=$2 desc dll
  desc=$(file -b "$src")
  case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *"for MS Windows"*)
      while read -r dll; do
        windows_system_dll "$dll" || die "$src needs $dll, which Windows does not ship"
      done < <(x86_64-w64-mingw32-objdump -p "$src" | sed -n 's/^[[:space:]]*DLL Name: //p') ;;
    *) die "$src is not statically linked: $desc" ;;
  esac
  install -m 0755 "$src" "$out/$name"
  printf '   %-58s %9d bytes  %s\n' "$name" "$(stat -c %s "$out/$name")" "${desc%%,*}"
}

for t in "${targets[@]}"; do
  build "$t" dist -p witness --bin witness
done
# The collector is a server: built for speed (`release`), with no size limit.
if has_target x86_64-unknown-linux-musl; then
  build x86_64-unknown-linux-musl release -p witness-collector --bin witness-collector
fi

declare -A probe_name=(
  [x86_64-unknown-linux-musl]="witness-$version-x86_64-unknown-linux-musl"
  [aarch64-unknown-linux-musl]="witness-$version-aarch64-unknown-linux-musl"
  [armv7-unknown-linux-gnueabihf]="witness-$version-armv7-unknown-linux-gnueabihf-static"
  [x86_64-pc-windows-gnu]="witness-$version-x86_64-pc-windows-gnu.exe"
)
declare -A deb_arch=(
  [x86_64-unknown-linux-musl]=amd64
  [aarch64-unknown-linux-musl]=arm64
  [armv7-unknown-linux-gnueabihf]=armhf
)

say "artifacts in $out"
for t in "${targets[@]}"; do
  exe=witness
  [ "$t" = "$windows" ] && exe=witness.exe
  artifact "$target_dir/$t/dist/$exe" "${probe_name[$t]}"
  size=$(stat -c %s "$out/${probe_name[$t]}")
  if [ "$size" -gt "$max_bytes" ]; then
    die "${probe_name[$t]} is $size bytes, over the limit of $max_bytes"
  fi
done
if has_target x86_64-unknown-linux-musl; then
  artifact "$target_dir/x86_64-unknown-linux-musl/release/witness-collector" \
    "witness-collector-$version-x86_64-unknown-linux-musl"
fi

# ---------------------------------------------------------------------------- docs from clap

# Generated by a built probe that runs here: natively, else under qemu-user (static binaries
# need nothing else).
probe_cmd=()
for t in x86_64-unknown-linux-musl "${targets[@]}"; do
  if ! has_target "$t" || [ "$t" = "$windows" ]; then continue; fi
  for runner in "" qemu-aarch64-static qemu-arm-static; do
    cmd=("$out/${probe_name[$t]}")
    if [ -n "$runner" ]; then
      command -v "$runner" >/dev/null || continue
      cmd=("$runner" "$out/${probe_name[$t]}")
    fi
    if "${cmd[@]}" --version >/dev/null 2>&1; then
      probe_cmd=("${cmd[@]}")
      break 2
    fi
  done
done
[ "${#probe_cmd[@]}" -gt 0 ] || die "no built probe runs on this machine to generate the man page"
gen="$work/generated"
mkdir -p "$gen/completions"
"${probe_cmd[@]}" man > "$gen/witness.1"
"${probe_cmd[@]}" completions bash > "$gen/completions/witness.bash"
"${probe_cmd[@]}" completions zsh > "$gen/completions/_witness"
"${probe_cmd[@]}" completions fish > "$gen/completions/witness.fish"
"${probe_cmd[@]}" example-config > "$gen/config.toml"
grep -q '^\.TH' "$gen/witness.1" || die "the man page does not look like roff"

# ---------------------------------------------------------------------------- tarballs

# The Linux targets: tarballs and Debian packages. Windows gets a zip, below.
linux_targets=()
for t in "${targets[@]}"; do
  [ "$t" = "$windows" ] || linux_targets+=("$t")
done

for t in "${linux_targets[@]}"; do
  name=${probe_name[$t]}
  dir="$work/$name"
  mkdir -p "$dir/systemd" "$dir/completions"
  install -m 0755 "$out/$name" "$dir/witness"
  install -m 0644 README.md LICENSE "$dir/"
  install -m 0644 probe/app/witness.example.toml "$dir/witness.example.toml"
  install -m 0644 deploy/systemd/witness.service deploy/systemd/witness-run.service \
    deploy/systemd/witness-run.timer "$dir/systemd/"
  install -m 0755 deploy/install.sh "$dir/install.sh"
  install -m 0644 "$gen/witness.1" "$dir/witness.1"
  install -m 0644 "$gen/completions/"* "$dir/completions/"
  # Reproducible: fixed owner, order and times.
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2000-01-01 00:00Z' \
    -C "$work" -cf - "$name" | gzip -n -9 > "$out/$name.tar.gz"
  printf '   %-58s %9d bytes\n' "$name.tar.gz" "$(stat -c %s "$out/$name.tar.gz")"
done

# ---------------------------------------------------------------------------- Windows zip

if has_target "$windows"; then
  name=${probe_name[$windows]%.exe}
  dir="$work/$name"
  mkdir -p "$dir"
  install -m 0644 "$out/${probe_name[$windows]}" "$dir/witness.exe"
  install -m 0644 README.md LICENSE "$dir/"
  install -m 0644 probe/app/witness.example.toml "$dir/witness.example.toml"
  install -m 0644 docs/windows.md "$dir/WINDOWS.md"
  # Reproducible: fixed times and order, no extra attributes (-X).
  find "$dir" -exec touch -h -d '2000-01-01 00:00Z' {} +
  rm -f "$out/$name.zip"
  (cd "$work" && find "$name" -type f | LC_ALL=C sort | zip -q -X -9 "$out/$name.zip" -@)
  printf '   %-58s %9d bytes\n' "$name.zip" "$(stat -c %s "$out/$name.zip")"
fi

# ---------------------------------------------------------------------------- Debian packages

for t in "${linux_targets[@]}"; do
  arch=${deb_arch[$t]}
  root="$work/deb-$arch"
  mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/witness" \
    "$root/usr/share/man/man1" "$root/usr/share/doc/witness" \
    "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"
  install -m 0755 "$out/${probe_name[$t]}" "$root/usr/bin/witness"
  install -m 0644 deploy/debian/witness.service deploy/debian/witness-run.service \
    deploy/systemd/witness-run.timer "$root/lib/systemd/system/"
  install -m 0640 "$gen/config.toml" "$root/etc/witness/config.toml"
  gzip -n -9 < "$gen/witness.1" > "$root/usr/share/man/man1/witness.1.gz"
  chmod 0644 "$root/usr/share/man/man1/witness.1.gz"
  install -m 0644 "$gen/completions/witness.bash" "$root/usr/share/bash-completion/completions/witness"
  install -m 0644 "$gen/completions/_witness" "$root/usr/share/zsh/vendor-completions/_witness"
  install -m 0644 "$gen/completions/witness.fish" "$root/usr/share/fish/vendor_completions.d/witness.fish"
  install -m 0644 deploy/debian/copyright "$root/usr/share/doc/witness/copyright"
  gzip -n -9 < README.md > "$root/usr/share/doc/witness/README.md.gz"
  for s in postinst prerm postrm; do
    install -m 0755 "deploy/debian/$s" "$root/DEBIAN/$s"
  done
  echo /etc/witness/config.toml > "$root/DEBIAN/conffiles"
  installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$installed_kb/" \
    deploy/debian/control > "$root/DEBIAN/control"
  deb="$out/witness_${version}_$arch.deb"
  dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
  printf '   %-58s %9d bytes\n' "$(basename "$deb")" "$(stat -c %s "$deb")"
done

# ---------------------------------------------------------------------------- checksums, signature

say "SHA256SUMS, signed by $signer"
(
  cd "$out"
  rm -f SHA256SUMS SHA256SUMS.sig
  sha256sum -- witness-* witness_*.deb > SHA256SUMS
)
ssh-keygen -Y sign -q -f "$WITNESS_SIGNING_KEY" -n file "$out/SHA256SUMS"
# Check the signature against the key's own public half before anyone downloads it.
pub=$(ssh-keygen -y -f "$WITNESS_SIGNING_KEY")
printf '%s namespaces="file" %s\n' "$signer" "$pub" > "$work/allowed_signers"
ssh-keygen -Y verify -q -f "$work/allowed_signers" -I "$signer" -n file \
  -s "$out/SHA256SUMS.sig" < "$out/SHA256SUMS" >/dev/null \
  || die "the fresh signature does not verify"
say "done: $(wc -l < "$out/SHA256SUMS") artifacts, SHA256SUMS and SHA256SUMS.sig in $out"
