#!/usr/bin/env bash
# Build one disk of the stock-layout test (called by run.sh; not meant to be run by hand).
#
#   build-image.sh LAYOUT ROOTFS_DIR OUT_DIR REPO BINARY KERNEL_DEB
#
# LAYOUT      ext4: GPT, p1 ESP (vfat, /boot/efi), p2 ext4 /
#             btrfs: GPT, p1 ESP (vfat, /boot/efi), p2 ext4 /boot, p3 btrfs / (subvolume @) and /home (@home)
# ROOTFS_DIR  the debootstrapped tree with the disk's kernel (copied, never changed)
# OUT_DIR     created here: disk.img (4 GiB sparse raw), vmlinuz, initrd.img and cmdline for the install boot,
#             layout.json (the partitions: place, fstype, number), build.log
# REPO        the snapinst repository: `make install DESTDIR=<root>` runs there
# BINARY      the binary run.sh built; the installed one must be identical
# KERNEL_DEB  the plan's kernel package, put at /root/debs/ with the plan /root/kernel-plan.json (and the
#             crash points' plan, /root/parts-plan.json)
#
# The host kernel may have no vfat: the ESP is made here (mkfs.vfat) but filled in the guest, where the install
# boot (run by scenario.py, from the kernel and initrd copied out) runs grub-install and update-grub.
set -euo pipefail

layout=$1 rootfs=$2 out=$3 repo=$4 bin=$5 kdeb=$6
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
guest="$here/guest"
. "$here/../debian/lib.sh"

work="$out.tmp"
for l in $(losetup -n -O NAME -j "$work/disk.img" 2>/dev/null); do losetup -d "$l" || true; done
safe_rm "$work"
mkdir -p "$work"
img="$work/disk.img" mnt="$work/mnt"
loop="" mounted=()
cleanup() {
    unmount_all
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
step() { echo "stock-boot: image: $*"; }

esp_type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
linux_type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
truncate -s 4G "$img"
case "$layout" in
    ext4) printf 'label: gpt\nsize=64MiB, type=%s, name=esp\ntype=%s, name=root\n' "$esp_type" "$linux_type" ;;
    btrfs) printf 'label: gpt\nsize=64MiB, type=%s, name=esp\nsize=512MiB, type=%s, name=boot\ntype=%s, name=root\n' \
        "$esp_type" "$linux_type" "$linux_type" ;;
esac | sfdisk -q "$img"
# One loop device per partition, at its offset (partition nodes of a loop device need udev, which a build
# container may not run).
loops=()
part() {
    local n=$1 start size
    read -r start size < <(partx -g -n "$n" -o START,SECTORS "$img")
    loops[$n]=$(losetup -f --show -o $((start * 512)) --sizelimit $((size * 512)) "$img")
}
cleanup_loops() { local l; for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done; }
trap 'cleanup; cleanup_loops' EXIT
nparts=$(partx -g -o NR "$img" | wc -l)
for ((n = 1; n <= nparts; n++)); do part "$n"; done
loop=""
p1=${loops[1]} p2=${loops[2]} p3=${loops[3]:-}
step "$layout: partitions on ${loops[*]}"
mkfs.vfat -n ESP "$p1" >/dev/null
mkdir -p "$mnt"
case "$layout" in
    ext4)
        mkfs.ext4 -q -L root "$p2"
        mnt_ "$p2" "$mnt"
        root_uuid=$(blkid -s UUID -o value "$p2")
        ;;
    btrfs)
        mkfs.ext4 -q -L boot "$p2"
        mkfs.btrfs -q -L root "$p3"
        top="$work/top"
        mkdir -p "$top"
        mnt_ -t btrfs -o subvolid=5 "$p3" "$top"
        btrfs -q subvolume create "$top/@"
        btrfs -q subvolume create "$top/@home"
        umount "$top"; unset 'mounted[${#mounted[@]}-1]'; rmdir "$top"
        mnt_ -t btrfs -o subvol=@ "$p3" "$mnt"
        mkdir -p "$mnt/boot" "$mnt/home"
        mnt_ "$p2" "$mnt/boot"
        mnt_ -t btrfs -o subvol=@home "$p3" "$mnt/home"
        root_uuid=$(blkid -s UUID -o value "$p3")
        boot_uuid=$(blkid -s UUID -o value "$p2")
        ;;
esac
esp_uuid=$(blkid -s UUID -o value "$p1")
step "copy the debootstrapped tree"
cp -a "$rootfs/." "$mnt/"
mkdir -p "$mnt/boot/efi"

step "make install DESTDIR=<root>"
make -C "$repo" --no-print-directory install DESTDIR="$mnt"
cmp -s "$bin" "$mnt/usr/sbin/snapinst" || { echo "make install did not install the binary that was built" >&2; exit 1; }
[ -f "$mnt/etc/default/grub.d/snapinst.cfg" ] || { echo "make install did not install the GRUB drop-in" >&2; exit 1; }

step "fstab, GRUB settings, the test's files"
case "$layout" in
    ext4)
        cat >"$mnt/etc/fstab" <<FSTAB
UUID=$root_uuid / ext4 errors=remount-ro 0 1
UUID=$esp_uuid /boot/efi vfat umask=0077 0 1
FSTAB
        cmdline="root=UUID=$root_uuid ro"
        printf '[{"place":"/","fstype":"ext4","partition":2},{"place":"/boot/efi","fstype":"vfat","partition":1}]\n' \
            >"$work/layout.json"
        ;;
    btrfs)
        cat >"$mnt/etc/fstab" <<FSTAB
UUID=$root_uuid / btrfs defaults,subvol=@ 0 0
UUID=$root_uuid /home btrfs defaults,subvol=@home 0 0
UUID=$boot_uuid /boot ext4 defaults 0 2
UUID=$esp_uuid /boot/efi vfat umask=0077 0 1
FSTAB
        cmdline="root=UUID=$root_uuid ro rootflags=subvol=@"
        printf '%s\n' '[{"place":"/","fstype":"btrfs","partition":3,"subvol":"@"},' \
            '{"place":"/home","fstype":"btrfs","partition":3,"subvol":"@home"},' \
            '{"place":"/boot","fstype":"ext4","partition":2},{"place":"/boot/efi","fstype":"vfat","partition":1}]' \
            >"$work/layout.json"
        ;;
esac
echo "$cmdline console=ttyS0 panic=-1" >"$work/cmdline"
echo snapinst-stock >"$mnt/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 snapinst-stock\n' >"$mnt/etc/hosts"
echo 6a2f1d4c8b9e4a7f9c0d1e2f3a4b5c6d >"$mnt/etc/machine-id"
mkdir -p "$mnt/etc/initramfs-tools/conf.d"
echo RESUME=none >"$mnt/etc/initramfs-tools/conf.d/resume"
cat >"$mnt/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0 panic=-1"
GRUB_CMDLINE_LINUX=""
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB_DISABLE_RECOVERY=true
GRUB
install -D -m 0755 "$guest/snapinst-stocktest" "$mnt/usr/local/sbin/snapinst-stocktest"
install -D -m 0644 "$guest/snapinst-stocktest.service" "$mnt/etc/systemd/system/snapinst-stocktest.service"
install -D -m 0644 "$kdeb" "$mnt/root/debs/$(basename "$kdeb")"
sed "s|@DEB@|/root/debs/$(basename "$kdeb")|" "$guest/kernel-plan.json" >"$mnt/root/kernel-plan.json"
install -m 0644 "$guest/parts-plan.json" "$mnt/root/parts-plan.json"
install -m 0644 "$guest/writer-plan.json" "$mnt/root/writer-plan.json"

step "chroot: systemctl enable, update-initramfs"
for d in proc sys dev; do mkdir -p "$mnt/$d"; done
mnt_ -t proc proc "$mnt/proc"
mnt_ -t sysfs sys "$mnt/sys"
mnt_ --bind /dev "$mnt/dev"
in_chroot() { chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "$@"; }
in_chroot systemctl enable snapinst-recover.service snapinst-bless.service snapinst-stocktest.service
in_chroot systemctl mask serial-getty@ttyS0.service
in_chroot update-initramfs -u -k all
kver=$(cd "$mnt/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
cp "$mnt/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$mnt/boot/initrd.img-$kver" "$work/initrd.img"
echo "$kver" >"$work/kernel-version"

unmount_all --strict
cleanup_loops
loops=()
rmdir "$mnt"
safe_rm "$out"
mv "$work" "$out"
step "done: $out (kernel $kver)"
