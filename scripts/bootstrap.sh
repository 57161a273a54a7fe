#!/usr/bin/env bash
# Installs what metalhorn needs on a fresh Debian/Ubuntu machine, only what is missing:
#   - Debian packages for the data path and its third-party test peers (needs root for apt-get)
#   - a virtual environment in .venv with metalhorn and its development tools
# Sourced by scripts/up and scripts/test; safe to run again.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

# command:package pairs
DEB_NEEDS=(
  python3:python3 nbdkit:nbdkit nbdinfo:libnbd-bin nbdcopy:libnbd-bin nbdfuse:nbdfuse fusermount3:fuse3
  qemu-io:qemu-utils fio:fio nbdsh:python3-libnbd mkfs.ext4:e2fsprogs fsck.ext4:e2fsprogs losetup:mount
  arping:arping ndisc6:ndisc6 tcpdump:tcpdump nft:nftables keepalived:keepalived
  vtysh:frr bird:bird2 birdc:bird2 gobgpd:gobgpd gobgp:gobgpd curl:curl ip:iproute2 ss:iproute2
)

missing=()
for pair in "${DEB_NEEDS[@]}"; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]} -- run as root or: sudo apt-get install ${missing[*]}" >&2
  else
    echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

PY=${METALHORN_PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: metalhorn needs Python >= 3.11; set METALHORN_PYTHON to one" >&2
  exit 1
fi
stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: preparing $VENV" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
