#!/usr/bin/env bash
# QEMU crash-consistency tests of snapinst: power cuts at random instants and at every named crash point, on a real
# Debian kernel, with the boot-time `snapinst recover --all` checked against whole-tree manifests.
#
#   vm-tests/run.sh [--full] [--cuts N] [--cuts-with-parts N] [--soak N] [--seed S] [--backend btrfs|overlay]
#                   [--layout btrfs|overlay|ext4-top|btrfs-live|journal] [--writer-cuts N] [--no-failpoints] [--late F]
#                   [--no-logwrites | --logwrites-only] [--logwrites-every]
#
#   --full       the whole campaign (scripts/test.sh --full): 8 cuts per layout without parts, 4 with parts, 2
#                writer cuts, on the layouts with parts also the apply's crash points before its steps end (by
#                default those run on the layouts without parts only: until then an apply touches only its stages)
#                and the rollback's (by default crashed at with parts by the cargo matrix only), and the journal
#                backend's crash-state log (by default only btrfs's and overlay's)
#   --cuts N     power cuts per layout without filesystems mounted inside the root (default 3; --full 8)
#   --cuts-with-parts N  power cuts per layout with an ext4 /boot and an xfs /srv inside the root (default 1; --full 4)
#   --soak N     a long run: N power cuts per layout (same as --cuts N, for soak runs)
#   --seed S     seed of the random cut delays (default: random; always printed, so a run can be repeated)
#   --backend B  only the layouts of this backend (repeatable)
#   --layout L   only this layout (repeatable)
#   --writer-cuts N  power cuts per layout of an apply while a writer in the guest appends fsynced records, aimed
#                at the commit phase (default 1; --full 2; after one uncut writer run; 0: neither)
#   --no-failpoints  only the power cuts
#   --late F     aim a fraction F of the cuts at the commit phase (the end of the apply) instead of [0, T]
#   --no-logwrites   skip the crash-state logs: every block write of an apply, a rollback and a recover logged by
#                dm-log-writes on the btrfs, overlay and journal layouts, and every FLUSH/FUA state recovered
#   --logwrites-only only the crash-state logs
#   --logwrites-every  check a state after every entry of the logs, not only after each FLUSH/FUA (long)
#
# Environment: SNAPINST_VM_CACHE (default /var/cache/snapinst-vm: kernel, initramfs, images, logs),
# SNAPINST_VM_LOGS (default $SNAPINST_VM_CACHE/logs), SNAPINST_VM_SEED, SNAPINST_VM_KVM=1 (use /dev/kvm when it
# works; default TCG). Needs root. Installs its own dependencies (Debian 12) and builds
# `cargo build --release --features failpoints` first. Ends with "vm-tests: N passed, M failed"; exits non-zero
# when anything failed or a prerequisite is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${SNAPINST_VM_CACHE:-/var/cache/snapinst-vm}"

die() {
    echo "vm-tests: $*" >&2
    echo "vm-tests: 0 passed, 1 failed"
    exit 1
}

for a in "$@"; do
    case "$a" in
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
done

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, loop mounts, image building)"

# ---- dependencies (Debian 12 package names); apt-get only when something is missing
deps=(qemu-system-x86 busybox-static btrfs-progs e2fsprogs xfsprogs dosfstools mtools cpio kmod python3 util-linux coreutils gzip dpkg apt dmsetup)
bash "$repo/scripts/deps.sh" "${deps[@]}" || die "installing the dependencies failed"
for t in qemu-system-x86_64 busybox mkfs.btrfs mkfs.ext4 btrfs cpio depmod /usr/bin/python3; do
    command -v "$t" >/dev/null || die "required tool $t is missing after installing the dependencies"
done
grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null || true
grep -qw btrfs /proc/filesystems || die "the host kernel cannot mount btrfs (needed to build and check images)"
grep -qw ext4 /proc/filesystems || modprobe ext4 2>/dev/null || true
grep -qw ext4 /proc/filesystems || die "the host kernel cannot mount ext4"

# ---- the engine, with crash points
command -v cargo >/dev/null || { [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"; } ||
    die "cargo is not installed"
echo "vm-tests: cargo build --release --features failpoints"
(cd "$repo" && cargo build --release --features failpoints --quiet) || die "cargo build failed"
bin="$repo/target/release/snapinst"
[ -x "$bin" ] || die "$bin was not built"

mkdir -p "$cache"
# One run per cache at a time (the work images and the logs live there; and one QEMU at a time on this machine).
exec 9>"$cache/.lock"
flock -n 9 || die "another vm-tests run holds $cache/.lock"
# The Debian python3, whatever python3 is first in PATH: the harness needs nothing beyond its standard library.
exec /usr/bin/python3 -B -u "$here/harness.py" --snapinst "$bin" --cache "$cache" "$@"
