#!/bin/sh
# Installs the Witness probe as a systemd service (Debian, Ubuntu, Raspberry Pi OS).
# It is short on purpose: read it before you run it.
#
#   sudo sh deploy/install.sh ./witness-aarch64-unknown-linux-gnu
#
# What it does, in order:
#   1. shows the informed-consent notice (`witness consent`) and asks you to accept it;
#   2. copies the binary to /usr/local/bin/witness;
#   3. creates the system user `witness` and its directory /var/lib/witness;
#   4. writes /etc/witness/config.toml with the defaults, unless it exists;
#   5. copies witness.service, witness-run.service and witness-run.timer to /etc/systemd/system.
# It enables and starts nothing: it prints the commands for that.
#
# WITNESS_ACCEPT_CONSENT=yes accepts the notice without asking (you have read it already).
# DESTDIR=DIR installs under DIR instead (packaging, tests): no user, no chown, no systemctl.
set -eu

if [ $# -ne 1 ]; then
  echo "usage: sudo sh $0 PATH/TO/witness" >&2
  exit 2
fi
bin=$1
units=$(cd "$(dirname "$0")/systemd" && pwd)
dest=${DESTDIR:-}

if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
  echo "install: $bin is not an executable file" >&2
  exit 1
fi
if ! "$bin" --version >/dev/null 2>&1; then
  echo "install: $bin does not run here (a binary for another architecture?)" >&2
  exit 1
fi
if [ -z "$dest" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install: run it as root (sudo sh $0 $bin)" >&2
  exit 1
fi

# 1. Informed consent: the service runs with --yes, which records that you accepted.
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

# 2. The binary.
install -D -m 0755 "$bin" "$dest/usr/local/bin/witness"

# 3. The user, and its state directory (spool, registration). systemd keeps it afterwards.
if [ -z "$dest" ]; then
  if ! id -u witness >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/witness --no-create-home \
      --shell /usr/sbin/nologin --comment "Witness censorship probe" witness
  fi
  install -d -m 0750 -o witness -g witness /var/lib/witness
else
  install -d -m 0750 "$dest/var/lib/witness"
fi

# 4. The configuration (readable by the service, not by other users: it may hold a token).
config="$dest/etc/witness/config.toml"
if [ ! -e "$config" ]; then
  install -d -m 0755 "$dest/etc/witness"
  "$bin" example-config > "$config"
  chmod 0640 "$config"
  if [ -z "$dest" ]; then chown root:witness "$config"; fi
fi

# 5. The systemd units.
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
