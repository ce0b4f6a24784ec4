#!/usr/bin/env bash
# Install (or --uninstall) wsn-gateway as a systemd service. Idempotent.
#   sudo systemd/install.sh                 user, venv in /opt/wsn-gateway, /etc/wsn-gateway, unit, enable
#   systemd/install.sh --root DIR --no-venv into a throwaway root (tests); no systemctl
#   sudo systemd/install.sh --uninstall [--purge]   keeps /var/lib/wsn-gateway unless --purge
# Key files found in the current directory (private.pem.key, device.pem.crt,
# AmazonRootCA1.pem) are copied into /etc/wsn-gateway; the key with mode 0600.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="" VENV=1 UNINSTALL=0 PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$(realpath -m "$2")"; shift 2 ;;
    --no-venv) VENV=0; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
NAME=wsn-gateway
ETC="$ROOT/etc/$NAME" OPT="$ROOT/opt/$NAME" STATE="$ROOT/var/lib/$NAME"
UNIT="$ROOT/etc/systemd/system/$NAME.service"

ensure_entry() { # file name line: append the line unless an entry named so exists
  mkdir -p "$(dirname "$1")"; touch "$1"
  grep -q "^$2:" "$1" || echo "$3" >>"$1"
}
remove_entry() { [ -f "$1" ] && sed -i "/^$2:/d" "$1" || true; }

if [ "$UNINSTALL" = 1 ]; then
  if [ -z "$ROOT" ]; then systemctl disable --now "$NAME" 2>/dev/null || true; fi
  rm -f "$UNIT"; rm -rf "$OPT"
  if [ "$PURGE" = 1 ]; then
    rm -rf "$ETC" "$STATE" "$ROOT/var/log/$NAME"
    if [ -z "$ROOT" ]; then userdel "$NAME" 2>/dev/null || true
    else remove_entry "$ROOT/etc/passwd" "$NAME"; remove_entry "$ROOT/etc/group" "$NAME"; fi
  fi
  if [ -z "$ROOT" ]; then systemctl daemon-reload; fi
  echo "uninstalled$([ "$PURGE" = 1 ] || echo "; kept $ETC and $STATE (--purge removes them)")"
  exit 0
fi

# The user and its groups (i2c, dialout, gpio own the device nodes on Raspberry Pi OS).
if [ -z "$ROOT" ]; then
  for g in i2c dialout gpio; do getent group "$g" >/dev/null || groupadd --system "$g"; done
  id "$NAME" >/dev/null 2>&1 || useradd --system --home-dir "/var/lib/$NAME" \
    --shell /usr/sbin/nologin --user-group "$NAME"
  usermod -a -G i2c,dialout,gpio "$NAME"
else
  ensure_entry "$ROOT/etc/group" "$NAME" "$NAME:x:998:"
  for g in i2c dialout gpio; do ensure_entry "$ROOT/etc/group" "$g" "$g:x:$((990 + ${#g})):$NAME"; done
  ensure_entry "$ROOT/etc/passwd" "$NAME" "$NAME:x:998:998::/var/lib/$NAME:/usr/sbin/nologin"
fi
OWNER=() ; [ -z "$ROOT" ] && OWNER=(-o root -g "$NAME")

if [ "$VENV" = 1 ]; then
  [ -x "$OPT/bin/python" ] || python3 -m venv "$OPT"
  "$OPT/bin/pip" install -q --upgrade "$SRC[gpio,aws]"
else
  mkdir -p "$OPT/bin"
fi

install -d -m 0750 "${OWNER[@]}" "$ETC"
[ -e "$ETC/gateway.yaml" ] || install -m 0640 "${OWNER[@]}" "$SRC/config/gateway.example.yaml" "$ETC/gateway.yaml"
for f in device.pem.crt AmazonRootCA1.pem; do
  [ -f "$f" ] && install -m 0644 "$f" "$ETC/"
done
if [ -f private.pem.key ]; then
  install -m 0600 "$([ -z "$ROOT" ] && echo "-o$NAME")" private.pem.key "$ETC/" 2>/dev/null \
    || install -m 0600 private.pem.key "$ETC/"
fi
[ -f "$ETC/private.pem.key" ] && chmod 0600 "$ETC/private.pem.key"
install -d -m 0700 "$STATE"
install -D -m 0644 "$SRC/systemd/$NAME.service" "$UNIT"

if [ -z "$ROOT" ]; then
  chown "$NAME:$NAME" "$STATE"
  systemctl daemon-reload
  systemctl enable "$NAME"
  echo "installed: edit $ETC/gateway.yaml, then: systemctl start $NAME"
else
  echo "installed into $ROOT (no systemctl)"
fi
