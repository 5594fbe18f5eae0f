#!/usr/bin/env bash
# Installs the Debian packages that building and testing snapinst need, unless they are all present already.
# Shared by scripts/demo.sh, scripts/test.sh and bench/run.sh. Needs root when something is missing.
set -euo pipefail

packages=(btrfs-progs libbtrfsutil-dev libclang-dev busybox-static e2fsprogs pkg-config)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "deps: all packages present (${packages[*]})" >&2
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages: ${missing[*]}; run as root (sudo) to install them" >&2
  exit 1
fi

echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"
