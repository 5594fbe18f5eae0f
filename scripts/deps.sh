#!/usr/bin/env bash
# Installs Debian packages, unless they are all present already: the ones that building and testing snapinst need,
# plus any named on the command line (`scripts/deps.sh qemu-system-x86 cpio`).
# Shared by scripts/demo.sh, scripts/test.sh, bench/run.sh and the VM tests. Needs root when something is missing.
set -euo pipefail

# eatmydata, strace, debootstrap and time: the benchmark's package section (bench/packages.sh); man-db: the man
# pages' check (scripts/docs.sh).
packages=(btrfs-progs libbtrfsutil-dev libclang-dev busybox-static e2fsprogs xfsprogs pkg-config libseccomp-dev
  eatmydata strace debootstrap time man-db systemd "$@")

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
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
