#!/bin/sh
# Installs the Witness probe as a systemd service (any Linux with systemd). On Debian, Ubuntu and
# Raspberry Pi OS the .deb is simpler: sudo apt install ./witness_VERSION_ARCH.deb
# It is short on purpose: read it before you run it.
#
#   sudo sh install.sh [--allowed-signers FILE] witness-VERSION-TARGET[.tar.gz]
#
# What it does, in order:
#   1. verifies the download: SHA256SUMS.sig (next to it) must be a valid signature of
#      SHA256SUMS by the Witness release key (ssh-keygen -Y verify, with the allowed-signers
#      file: --allowed-signers FILE, else allowed_signers beside this script), and the file's
#      SHA-256 must be listed in SHA256SUMS. Anything wrong: nothing is installed;
#   2. shows the informed-consent notice (`witness consent`) and asks you to accept it;
#   3. copies the binary to /usr/local/bin/witness;
#   4. creates the system user `witness` and its directory /var/lib/witness;
#   5. writes /etc/witness/config.toml with the defaults, unless it exists;
#   6. copies witness.service, witness-run.service and witness-run.timer to /etc/systemd/system.
# It enables and starts nothing: it prints the commands for that.
#
# --unsigned skips step 1, for a binary you built yourself from source.
# WITNESS_ACCEPT_CONSENT=yes accepts the notice without asking (you have read it already).
# DESTDIR=DIR installs under DIR instead (packaging, tests): no user, no chown, no systemctl.
set -eu

usage() {
  echo "usage: sudo sh $0 [--allowed-signers FILE | --unsigned] witness-VERSION-TARGET[.tar.gz]" >&2
  exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
signers="$here/allowed_signers"
verify=yes
while [ $# -gt 1 ]; do
  case "$1" in
    --allowed-signers) signers=$2; shift 2 ;;
    --unsigned) verify=no; shift ;;
    *) usage ;;
  esac
done
[ $# -eq 1 ] || usage
artifact=$1
dest=${DESTDIR:-}
identity=${WITNESS_SIGNER:-witness-release}

if [ ! -f "$artifact" ]; then
  echo "install: $artifact is not a file" >&2
  exit 1
fi

# 1. Verify: the signature over SHA256SUMS, then the artifact's checksum in it.
if [ "$verify" = yes ]; then
  dir=$(cd "$(dirname "$artifact")" && pwd)
  name=$(basename "$artifact")
  for f in "$dir/SHA256SUMS" "$dir/SHA256SUMS.sig"; do
    if [ ! -f "$f" ]; then
      echo "install: $f is missing: download it with $name (or pass --unsigned for a binary you built yourself)" >&2
      exit 1
    fi
  done
  if [ ! -f "$signers" ]; then
    echo "install: no allowed-signers file $signers: pass --allowed-signers FILE with the Witness release key, as published by the project" >&2
    exit 1
  fi
  if ! grep -v '^[[:space:]]*#' "$signers" | grep -q .; then
    echo "install: $signers holds no key: the project has not published its release key there yet; pass --allowed-signers FILE with the key it published" >&2
    exit 1
  fi
  if ! command -v ssh-keygen >/dev/null; then
    echo "install: ssh-keygen is needed to check the signature (Debian package openssh-client)" >&2
    exit 1
  fi
  if ! ssh-keygen -Y verify -f "$signers" -I "$identity" -n file \
      -s "$dir/SHA256SUMS.sig" < "$dir/SHA256SUMS" >/dev/null 2>&1; then
    echo "install: SHA256SUMS.sig is not a valid signature of SHA256SUMS by $identity ($signers): the download is damaged or not from the Witness project; nothing was installed" >&2
    exit 1
  fi
  want=$(awk -v n="$name" '$2 == n || $2 == "*" n { print $1 }' "$dir/SHA256SUMS")
  if [ -z "$want" ]; then
    echo "install: $name is not listed in SHA256SUMS; nothing was installed" >&2
    exit 1
  fi
  got=$(sha256sum "$artifact" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "install: $name does not match its SHA-256 in SHA256SUMS (damaged or altered); nothing was installed" >&2
    exit 1
  fi
  echo "install: signature and SHA-256 of $name verified."
fi

# A tarball: unpack it; the binary and units inside are covered by its checksum.
units="$here/systemd"
bin=$artifact
case "$artifact" in
  *.tar.gz)
    unpacked=$(mktemp -d)
    trap 'rm -rf "$unpacked"' EXIT
    tar -xzf "$artifact" -C "$unpacked"
    top=$(find "$unpacked" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    bin="$top/witness"
    units="$top/systemd"
    ;;
esac

if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
  echo "install: $bin is not an executable file" >&2
  exit 1
fi
if ! "$bin" --version >/dev/null 2>&1; then
  echo "install: $bin does not run here (a binary for another architecture?)" >&2
  exit 1
fi
if [ -z "$dest" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install: run it as root (sudo sh $0 $artifact)" >&2
  exit 1
fi

# 2. Informed consent: the service runs with --yes, which records that you accepted.
"$bin" consent
echo
if [ "${WITNESS_ACCEPT_CONSENT:-}" != yes ]; then
  printf 'Type "yes" if you have read this notice and accept it: '
  read -r answer || answer=
  if [ "$answer" != yes ]; then
    echo "install: consent not given; nothing was installed."
    exit 1
  fi
fi

# 3. The binary.
install -D -m 0755 "$bin" "$dest/usr/local/bin/witness"

# 4. The user, and its state directory (spool, registration). systemd keeps it afterwards.
if [ -z "$dest" ]; then
  if ! id -u witness >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/witness --no-create-home \
      --shell /usr/sbin/nologin --comment "Witness censorship probe" witness
  fi
  install -d -m 0750 -o witness -g witness /var/lib/witness
else
  install -d -m 0750 "$dest/var/lib/witness"
fi

# 5. The configuration (readable by the service, not by other users: it may hold a token).
config="$dest/etc/witness/config.toml"
if [ ! -e "$config" ]; then
  install -d -m 0755 "$dest/etc/witness"
  "$bin" example-config > "$config"
  chmod 0640 "$config"
  if [ -z "$dest" ]; then chown root:witness "$config"; fi
fi

# 6. The systemd units.
for unit in witness.service witness-run.service witness-run.timer; do
  install -D -m 0644 "$units/$unit" "$dest/etc/systemd/system/$unit"
done
if [ -z "$dest" ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
fi

cat <<EOF

Witness is installed. Next steps:

  1. Register with your collector (once; the token is saved in /var/lib/witness):
       sudo -u witness env XDG_DATA_HOME=/var/lib WITNESS_CONFIG=/etc/witness/config.toml \\
         /usr/local/bin/witness register --collector https://COLLECTOR/
     Other settings (categories to leave out, your resolver): /etc/witness/config.toml

  2. Start measuring, either continuously (recommended; survives outages and reboots):
       sudo systemctl enable --now witness.service
     or one run an hour from a timer instead (enable only one of the two):
       sudo systemctl enable --now witness-run.timer

  Logs:      journalctl -u witness -f      (timer: journalctl -u witness-run)
  Stop:      sudo systemctl disable --now witness.service witness-run.timer
  Uninstall: stop, then remove /usr/local/bin/witness, /etc/witness, /var/lib/witness,
             /etc/systemd/system/witness*.service, witness-run.timer; userdel witness
EOF
