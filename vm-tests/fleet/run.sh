#!/usr/bin/env bash
# The rollout role over SSH to three QEMU VMs (scripts/test.sh --full): Debian 12 guests booted as vm-tests/debian
# boots them (its image builder, with openssh-server and python3 added), each with user-mode networking whose SSH
# port is forwarded on 127.0.0.1 only and a key made here. `ansible-playbook snapinst.snapinst.rollout` rolls a
# plan to `/` out over them: the canary, then one VM at a time. Each apply needs a reboot, checked by the generation
# the VM booted; the health check fails on the second VM, which is rolled back and rebooted into its previous
# generation, and the rollout stops before the third (fleet.py checks all of it over SSH and in the summary).
#
#   vm-tests/fleet/run.sh
#
# Needs root. Ends with "vm-fleet: passed" or "vm-fleet: FAILED: ...". Cached in SNAPINST_VM_CACHE/fleet.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${SNAPINST_VM_CACHE:-/var/cache/snapinst-vm}/fleet"
die() {
    echo "vm-fleet: FAILED: $*" >&2
    exit 1
}
. "$here/../debian/lib.sh"
cd "$repo"
. scripts/lib.sh
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, loop mounts, chroot)"
bash scripts/deps.sh debootstrap qemu-system-x86 openssh-client btrfs-progs python3 debian-archive-keyring ||
    die "installing the dependencies failed"
. scripts/ansible-env.sh

mirror="${SNAPINST_VM_MIRROR:-$(mirror_from_sources | grep -v -e security -e '^cdrom:' | head -n 1 || true)}"
[ -n "$mirror" ] || die "no bookworm mirror in the apt sources (set SNAPINST_VM_MIRROR)"
cargo build --release --features failpoints --quiet || die "cargo build failed"
bin="$repo/target/release/snapinst"
mkdir -p "$cache"

includes="systemd-sysv,udev,kmod,initramfs-tools,linux-image-amd64,btrfs-progs,libbtrfsutil1,openssh-server,python3"
key=$(printf 'fleet rootfs v1\n%s\n%s\n%s\n' "$includes" "$mirror" "$(dpkg-query -W -f='${Version}' debootstrap)" |
    sha256sum | cut -c1-16)
rootfs="$cache/rootfs-$key"
if [ ! -f "$rootfs.done" ]; then
    heading "vm-fleet: debootstrap --include=$includes"
    safe_rm "$rootfs" "$rootfs.tmp"
    debootstrap --variant=minbase --include="$includes" bookworm "$rootfs.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -n 30 "$cache/debootstrap.log" >&2; die "debootstrap failed"; }
    mv "$rootfs.tmp" "$rootfs"
    touch "$rootfs.done"
fi
image_key=$( (sha256sum "$bin" Makefile "$here/../debian/build-image.sh" "$here/../debian/lib.sh"
    find hooks "$here/../debian/guest" -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16)
image="$cache/image-$image_key-$key"
if [ ! -f "$image/disk.img" ]; then
    heading "vm-fleet: the disk image (vm-tests/debian/build-image.sh)"
    for old in "$cache"/image-*; do [ -e "$old" ] && safe_rm "$old"; done
    bash "$here/../debian/build-image.sh" "$rootfs" "$image" "$repo" "$bin" >"$cache/image.log" 2>&1 ||
        { tail -n 30 "$cache/image.log" >&2; die "building the image failed"; }
fi

work="$cache/run"
safe_rm "$work"
mkdir -p "$work/ac/ansible_collections/snapinst"
ln -s "$repo/ansible" "$work/ac/ansible_collections/snapinst/snapinst"
ssh-keygen -q -t ed25519 -N '' -f "$work/id"
heading "vm-fleet: three disks"
for n in 1 2 3; do
    disk="$work/vm$n.img"
    cp --sparse=always "$image/disk.img" "$disk"
    mnt="$work/mnt"
    mkdir -p "$mnt"
    mount -o loop,subvol=@ "$disk" "$mnt"
    install -d -m 0700 "$mnt/root/.ssh"
    install -m 0600 "$work/id.pub" "$mnt/root/.ssh/authorized_keys"
    echo "vm$n" >"$mnt/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 vm%s\n' "$n" >"$mnt/etc/hosts"
    # The boot test's own units would report and power off: not here.
    ln -sf /dev/null "$mnt/etc/systemd/system/snapinst-vmtest.service"
    ln -sf /dev/null "$mnt/etc/systemd/system/snapinst-vmtest-early.service"
    printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' >"$mnt/etc/systemd/network/50-dhcp.network"
    ln -sf /lib/systemd/system/systemd-networkd.service "$mnt/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    umount "$mnt"
done
export ANSIBLE_COLLECTIONS_PATH="$work/ac:$ANSIBLE_COLLECTIONS_PATH"
exec python3 -u "$here/fleet.py" --work "$work" --kernel "$image/vmlinuz" --initrd "$image/initrd.img" \
    --manifest "$repo/vm-tests/manifest.py"
