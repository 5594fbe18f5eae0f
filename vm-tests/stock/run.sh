#!/usr/bin/env bash
# snapinst on the stock Debian 12 layouts, booted the way a machine boots: OVMF (UEFI firmware), GRUB EFI installed
# by grub-install on a vfat ESP, GRUB's menu, the Debian kernel. Two debootstrapped disks:
#   ext4   GPT: ESP (vfat) at /boot/efi, ext4 /
#   btrfs  GPT: ESP (vfat) at /boot/efi, ext4 /boot, btrfs / (subvolume @) with @home at /home
# In each, snapinst is installed as the README says, and a plan whose package step installs a second Debian kernel
# (a newer linux-image-*-cloud-amd64 than the disk's, fetched with apt-get download; its hooks run update-initramfs and
# update-grub in the stage) is applied; the machine reboots into that kernel; `snapinst rollback`; it reboots into
# the old one, and every filesystem is as it was before the apply. Then power cuts during that apply (at the
# commit, and at random instants): every filesystem is before or after, and the machine boots.
#
#   sudo vm-tests/stock/run.sh [--layout ext4|btrfs]... [--cuts N] [--no-crash-points] [--only-writer] [--rebuild]
#                              [--rebuild-rootfs]
#
#   --layout L        only this layout (repeatable; default both)
#   --cuts N          power cuts at random instants of the apply, per layout (default 2)
#   --no-crash-points leave out the resets at the crash points (the kernel plan's at its commit record, and every
#                     crash point of an apply and a rollback with a plan that writes into every filesystem)
#   --only-writer     only the writer run (a writer through an apply and a rollback, each until a reboot: every
#                     record kept), none of the kernel plan's runs, crash points or power cuts
#   --rebuild         rebuild the disks even if the cached ones match their inputs
#   --rebuild-rootfs  debootstrap again (implies --rebuild)
#
# Environment: SNAPINST_VM_CACHE (default /var/cache/snapinst-vm; this test uses its subdirectory stock/),
# SNAPINST_VM_MIRROR (default: the Debian mirror named in /etc/apt/sources.list{,.d/*}),
# SNAPINST_VM_BOOT_TIMEOUT (seconds per boot, the apply included, default 2700). Needs root. Ends with "stock-boot: N passed, M failed".
set -euo pipefail

t_start=$(date +%s.%N)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache_base="${SNAPINST_VM_CACHE:-/var/cache/snapinst-vm}"
cache="$cache_base/stock"
timeout_s="${SNAPINST_VM_BOOT_TIMEOUT:-2700}"

die() {
    echo "stock-boot: FAILED: $*" >&2
    echo "stock-boot: 0 passed, 1 failed"
    exit 1
}

. "$here/../debian/lib.sh"

layouts=() cuts=2 crash_points=1 main=1 rebuild=0 rebuild_rootfs=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --layout) [ $# -ge 2 ] || die "--layout needs ext4 or btrfs"; layouts+=("$2"); shift ;;
        --cuts) [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || die "--cuts needs a number"; cuts=$2; shift ;;
        --no-crash-points) crash_points=0 ;;
        --only-writer) main=0 crash_points=0 cuts=0 ;;
        --rebuild) rebuild=1 ;;
        --rebuild-rootfs) rebuild=1 rebuild_rootfs=1 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[ ${#layouts[@]} -gt 0 ] || layouts=(ext4 btrfs)
for l in "${layouts[@]}"; do
    case "$l" in ext4 | btrfs) ;; *) die "unknown layout $l (ext4 or btrfs)" ;; esac
done

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, debootstrap, loop mounts, chroot)"

# ---- dependencies (Debian 12 package names); apt-get only when something is missing
deps=(debootstrap qemu-system-x86 ovmf btrfs-progs libbtrfsutil-dev libclang-dev pkg-config gcc libc6-dev make
    util-linux fdisk mount coreutils e2fsprogs dosfstools mtools python3 debian-archive-keyring ca-certificates)
bash "$repo/scripts/deps.sh" "${deps[@]}" || die "installing the dependencies failed"
for t in debootstrap qemu-system-x86_64 mkfs.btrfs mkfs.ext4 mkfs.vfat sfdisk mcopy losetup chroot make; do
    command -v "$t" >/dev/null || die "required tool $t is missing after installing the dependencies"
done
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
[ -f "$ovmf_code" ] && [ -f "$ovmf_vars" ] || die "the ovmf package has no $ovmf_code and $ovmf_vars"

mirror="${SNAPINST_VM_MIRROR:-}"
[ -n "$mirror" ] || mirror=$(mirror_from_sources | grep -v -e security -e '^cdrom:' | head -n 1 || true)
[ -n "$mirror" ] || die "no bookworm mirror found in the apt sources (set SNAPINST_VM_MIRROR)"

# ---- the two kernels: the disk's (the second newest linux-image-6.1.0-N-cloud-amd64) and the plan's (the newest).
# The cloud flavour: every driver and filesystem these disks need (virtio, ext4, btrfs, vfat, efivarfs, overlay,
# loop), a quarter of the files of the generic flavour, so an apply under emulation takes minutes, not an hour.
mapfile -t kernels < <(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-amd64$' | cut -d' ' -f1 |
    sort -V | tail -n 2)
[ ${#kernels[@]} = 2 ] || die "apt knows fewer than two linux-image-*-cloud-amd64 packages (apt-get update?)"
old_kernel=${kernels[0]} new_kernel=${kernels[1]}
echo "stock-boot: the disks boot $old_kernel; the plan installs $new_kernel"

# ---- the engine, with crash points
command -v cargo >/dev/null || { [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"; } ||
    die "cargo is not installed (rustup: https://rustup.rs)"
echo "stock-boot: cargo build --release --features failpoints (in $repo)"
(cd "$repo" && cargo build --release --features failpoints --quiet) || die "cargo build failed"
bin="$repo/target/release/snapinst"

mkdir -p "$cache"
exec 9>"$cache/lock"
flock -n 9 || { echo "stock-boot: waiting for another run of this test (lock $cache/lock)"; flock 9; }
bin_sha=$(sha256sum "$bin" | cut -d' ' -f1)
mkdir -p "$cache/bin"
bin_copy="$cache/bin/snapinst-$bin_sha"
[ -f "$bin_copy" ] || { cp "$bin" "$bin_copy.tmp" && mv "$bin_copy.tmp" "$bin_copy"; }
ls -1t "$cache/bin"/snapinst-* 2>/dev/null | tail -n +4 | xargs -r rm -f

# ---- both kernel packages (cached; from this machine's apt sources, security updates included)
debs="$cache/debs"
mkdir -p "$debs"
deb_of() {
    local d
    d=$(ls "$debs/${1}_"*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$d" ]; then
        (cd "$debs" && apt-get download -q "$1") >"$cache/download.log" 2>&1 ||
            { tail -n 20 "$cache/download.log" >&2; die "apt-get download $1 failed"; }
        d=$(ls "$debs/${1}_"*.deb | head -n 1)
    fi
    echo "$d"
}
old_deb=$(deb_of "$old_kernel")
new_deb=$(deb_of "$new_kernel")
find "$debs" -name '*.deb' ! -name "${new_kernel}_*" ! -name "${old_kernel}_*" -delete

# dpkg -i a .deb in a tree (its hooks, update-initramfs among them, need /proc, /sys and /dev).
install_deb_in() {
    local tree=$1 deb=$2 rc=0 d
    for d in proc sys dev; do mkdir -p "$tree/$d"; done
    mount -t proc proc "$tree/proc" && mount -t sysfs sys "$tree/sys" && mount --bind /dev "$tree/dev" &&
        cp "$deb" "$tree/tmp/" &&
        chroot "$tree" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
            dpkg -i "/tmp/$(basename "$deb")" || rc=1
    rm -f "$tree/tmp/$(basename "$deb")"
    umount_below "$(realpath "$tree")/proc"; umount_below "$(realpath "$tree")/sys"; umount_below "$(realpath "$tree")/dev"
    return $rc
}

# ---- the debootstrapped tree with the disk's kernel (cached; key: suite, packages, mirror, debootstrap, kernel)
suite=bookworm
includes="systemd-sysv,udev,kmod,procps,initramfs-tools,linux-base,grub-efi-amd64,dosfstools,e2fsprogs,btrfs-progs,libbtrfsutil1"
dbs_version=$(dpkg-query -W -f='${Version}' debootstrap)
rootfs_key=$(printf 'stock rootfs v1\n%s\nminbase\n%s\n%s\n%s\n' "$suite" "$includes $(basename "$old_deb")" "$mirror" "$dbs_version" |
    sha256sum | cut -c1-16)
rootfs="$cache/rootfs-$rootfs_key"
if [ "$rebuild_rootfs" = 1 ] || [ ! -f "$rootfs.done" ]; then
    safe_rm "$rootfs" "$rootfs.tmp" "$rootfs.done"
    echo "stock-boot: debootstrap --variant=minbase --include=$includes $suite <dir> $mirror"
    t0=$(date +%s)
    debootstrap --variant=minbase --include="$includes" "$suite" "$rootfs.tmp" "$mirror" \
        >"$cache/debootstrap.log" 2>&1 || { tail -n 30 "$cache/debootstrap.log" >&2; die "debootstrap failed"; }
    install_deb_in "$rootfs.tmp" "$old_deb" >>"$cache/debootstrap.log" 2>&1 ||
        { tail -n 30 "$cache/debootstrap.log" >&2; die "installing $old_kernel in the tree failed"; }
    mv "$rootfs.tmp" "$rootfs"
    echo "debootstrap_s=$(($(date +%s) - t0))" >"$rootfs.done"
    rebuild=1
    for old in "$cache"/rootfs-*.done; do
        [ "$old" = "$rootfs.done" ] || safe_rm "${old%.done}" "$old"
    done
fi
echo "stock-boot: debootstrap tree $rootfs ($(cat "$rootfs.done"))"
[ "${STOCK_ONLY_ROOTFS:-}" = 1 ] && exit 0

# ---- the disks (cached; key: the tree, the binary, hooks, Makefile, guest files, the builder, the plan's kernel)
inputs_hash() {
    (
        cd "$repo"
        echo "rootfs $rootfs_key bin $bin_sha deb $(basename "$new_deb") layout $1"
        find hooks -type f -print0 | sort -z | xargs -0 sha256sum
        sha256sum Makefile
        cd "$here"
        find guest -type f -print0 | sort -z | xargs -0 sha256sum
        sha256sum build-image.sh
    ) | sha256sum | cut -c1-16
}
images=()
for layout in "${layouts[@]}"; do
    image="$cache/image-$layout-$(inputs_hash "$layout")"
    if [ "$rebuild" = 1 ] || [ ! -f "$image/disk.img" ]; then
        echo "stock-boot: building the $layout disk $image"
        t0=$(date +%s)
        bash "$here/build-image.sh" "$layout" "$rootfs" "$image" "$repo" "$bin_copy" "$new_deb" \
            >"$cache/image-$layout.log" 2>&1 || { tail -n 40 "$cache/image-$layout.log" >&2; die "building the $layout disk failed"; }
        echo "image_build_s=$(($(date +%s) - t0))" >"$image/build-time"
        cp "$cache/image-$layout.log" "$image/build.log"
        for old in "$cache/image-$layout-"*; do [ "$old" = "$image" ] || safe_rm "$old"; done
    fi
    images+=("$layout=$image")
done

runs="$cache/runs"
run_dir="$runs/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
ls -1d "$runs"/*/ 2>/dev/null | sort | head -n -6 | xargs -r rm -rf
exec /usr/bin/python3 -u "$here/scenario.py" --run-dir "$run_dir" --timeout "$timeout_s" --t-start "$t_start" \
    --cuts "$cuts" --crash-points "$crash_points" --main "$main" --snapinst "$bin_copy" --ovmf-code "$ovmf_code" --ovmf-vars "$ovmf_vars" --old-kernel "$old_kernel" \
    --new-kernel "$new_kernel" "${images[@]}"
