#!/usr/bin/env bash
# Build the Debian 12 test disk of the snapinst boot test (called by run.sh; not meant to be run by hand).
#
#   build-image.sh ROOTFS_DIR OUT_DIR REPO BINARY
#
# ROOTFS_DIR  a debootstrapped bookworm tree (minbase + systemd-sysv, udev, kmod, initramfs-tools,
#             linux-image-amd64, btrfs-progs, libbtrfsutil1); it is copied, never changed
# OUT_DIR     created here: disk.img (2 GiB sparse raw, btrfs on the whole disk, the root is subvolume @),
#             vmlinuz and initrd.img copied out of @/boot, initrd.list (lsinitramfs), build.log
# REPO        the snapinst repository: `make install DESTDIR=<@>` runs there (targets install-bin, install-hooks)
# BINARY      the snapinst binary run.sh built (target/release/snapinst); the installed one must be identical
#
# Into @ it installs snapinst as the README says (make install; systemctl enable snapinst-recover.service
# snapinst-bless.service; update-initramfs), plus the test's own files from guest/: the test units, the script
# they run, and the plans in /root. fstab: /dev/vda / btrfs subvol=@.
set -euo pipefail

rootfs=$1 out=$2 repo=$3 bin=$4
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
guest="$here/guest"

. "$here/lib.sh"

work="$out.tmp"
for l in $(losetup -n -O NAME -j "$work/disk.img" 2>/dev/null); do losetup -d "$l" || true; done
safe_rm "$work"
mkdir -p "$work"
img="$work/disk.img"
mnt="$work/mnt"
top="$work/top"
loop=""
mounted=()

cleanup() {
    unmount_all
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { echo "debian-boot: image: $*"; }

step "2 GiB sparse disk, btrfs on the whole disk, subvolume @"
truncate -s 2G "$img"
mkfs.btrfs -q -L snapinst-vm "$img"
loop=$(losetup -f --show "$img")
mkdir -p "$top" "$mnt"
mnt_ -t btrfs -o subvolid=5 "$loop" "$top"
btrfs -q subvolume create "$top/@"
step "copy the debootstrapped tree into @"
cp -a "$rootfs/." "$top/@/"
mnt_ -t btrfs -o subvol=@ "$loop" "$mnt"

step "make install DESTDIR=<@> (install-bin install-hooks)"
make -C "$repo" --no-print-directory install DESTDIR="$mnt"
cmp -s "$bin" "$mnt/usr/sbin/snapinst" ||
    { echo "debian-boot: image: make install did not install the binary that was built ($bin); a concurrent build?" >&2; exit 1; }
for f in lib/systemd/system/snapinst-recover.service lib/systemd/system/snapinst-bless.service \
    usr/share/initramfs-tools/hooks/snapinst usr/share/initramfs-tools/scripts/local-premount/snapinst; do
    [ -f "$mnt/$f" ] || { echo "debian-boot: image: make install did not install /$f" >&2; exit 1; }
done

step "system configuration and the test's own files"
cat >"$mnt/etc/fstab" <<'EOF'
/dev/vda / btrfs subvol=@ 0 0
EOF
echo snapinst-vm >"$mnt/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 snapinst-vm\n' >"$mnt/etc/hosts"
# A fixed machine id: no first-boot setup (systemd-firstboot would wait for answers on the console).
echo 5e1f0c3b9d8a4f2e8c7b6a5d4e3f2a1b >"$mnt/etc/machine-id"
mkdir -p "$mnt/etc/initramfs-tools/conf.d"
echo RESUME=none >"$mnt/etc/initramfs-tools/conf.d/resume"
install -D -m 0755 "$guest/snapinst-vmtest" "$mnt/usr/local/sbin/snapinst-vmtest"
install -D -m 0644 "$guest/snapinst-vmtest.service" "$mnt/etc/systemd/system/snapinst-vmtest.service"
install -D -m 0644 "$guest/snapinst-vmtest-early.service" "$mnt/etc/systemd/system/snapinst-vmtest-early.service"
install -D -m 0644 "$guest/plan.json" "$mnt/root/plan.json"
install -D -m 0644 "$guest/broken-health.service" "$mnt/root/broken-health.service"
install -D -m 0644 "$guest/plan2.json" "$mnt/root/plan2.json"
# Two boots for a pending generation instead of the default three: one boot fewer for the fallback, and the
# configuration key proven at boot (scenario.py's TRIES).
install -D -m 0644 "$guest/50-vmtest.toml" "$mnt/etc/snapinst/snapinst.d/50-vmtest.toml"

step "chroot: systemctl enable, update-initramfs"
for d in proc sys dev dev/pts; do mkdir -p "$mnt/$d"; done
mnt_ -t proc proc "$mnt/proc"
mnt_ -t sysfs sys "$mnt/sys"
mnt_ --bind /dev "$mnt/dev"
mnt_ -t devpts devpts "$mnt/dev/pts"
in_chroot() { chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "$@"; }
in_chroot systemctl enable snapinst-recover.service snapinst-bless.service
in_chroot systemctl enable snapinst-vmtest.service snapinst-vmtest-early.service
# The test unit owns the serial console; a getty there could hang it up.
in_chroot systemctl mask serial-getty@ttyS0.service
if ls "$mnt"/boot/initrd.img-* >/dev/null 2>&1; then
    in_chroot update-initramfs -u -k all
else
    in_chroot update-initramfs -c -k all
fi
kver=$(cd "$mnt/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
[ -n "$kver" ] || { echo "debian-boot: image: no kernel in /boot" >&2; exit 1; }
in_chroot lsinitramfs "/boot/initrd.img-$kver" >"$work/initrd.list"
for f in usr/sbin/snapinst sbin/snapinst scripts/local-premount/snapinst; do
    if grep -qx "$f" "$work/initrd.list"; then step "initramfs has /$f"; fi
done
grep -qE '^(usr/)?sbin/snapinst$' "$work/initrd.list" ||
    { echo "debian-boot: image: the initramfs has no snapinst binary (hooks/initramfs-tools/hooks/snapinst)" >&2; exit 1; }
grep -qx scripts/local-premount/snapinst "$work/initrd.list" ||
    { echo "debian-boot: image: the initramfs has no scripts/local-premount/snapinst" >&2; exit 1; }
for t in sed blkid busybox; do
    if grep -qE "^(usr/)?s?bin/$t$" "$work/initrd.list"; then step "initramfs has $t"; else step "initramfs has NO $t"; fi
done
cp "$mnt/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$mnt/boot/initrd.img-$kver" "$work/initrd.img"
echo "$kver" >"$work/kernel-version"

unmount_all --strict
losetup -d "$loop"
loop=""
rmdir "$mnt" "$top"
safe_rm "$out"
mv "$work" "$out"
step "done: $out (kernel $kver)"
