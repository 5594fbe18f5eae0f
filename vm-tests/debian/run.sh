#!/usr/bin/env bash
# snapinst boot test on a real Debian 12 userspace: QEMU (TCG) boots a debootstrapped bookworm with systemd from a
# btrfs disk whose root is subvolume @, with snapinst and its boot hooks installed the way the README says
# (make install; systemctl enable snapinst-recover.service snapinst-bless.service; update-initramfs), and checks
# that the hooks really run at boot: the initramfs hook, snapinst-recover.service, the failed-boot fallback after
# 2 boots that never reach boot-complete.target (boot_tries configured in /etc/snapinst/snapinst.d/), snapinst-bless.service, and the boot hook finishing a transaction
# that a machine reset interrupted after its commit point. First, on a copy of the same debootstrapped tree, the
# Debian package installed, removed and purged (package.sh).
#
#   sudo vm-tests/debian/run.sh [--rebuild] [--rebuild-rootfs] [--keep-disk] [--deb PATH]
#
#   --rebuild         rebuild the test disk even if the cached one matches its inputs
#   --rebuild-rootfs  debootstrap again (implies --rebuild)
#   --keep-disk       keep the run's disk image in the run directory (it is kept anyway when a check fails)
#   --deb PATH        the package to check (default: built here with scripts/deb.sh)
#
# Environment: SNAPINST_VM_CACHE (default /var/cache/snapinst-vm; this test uses its subdirectory debian/),
# SNAPINST_VM_MIRROR (default: the Debian mirror named in /etc/apt/sources.list{,.d/*}),
# SNAPINST_VM_BOOT_TIMEOUT (seconds per boot, default 300).
# Needs root. Installs its own dependencies on Debian 12, builds `cargo build --release --features failpoints` in
# the repository this script is in, and caches the debootstrapped tree and the disk image in the cache, keyed by a
# hash of their inputs. Ends with "debian-boot: N passed, M failed"; exits non-zero when a check failed or a
# prerequisite is missing.
set -euo pipefail

t_start=$(date +%s.%N)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache_base="${SNAPINST_VM_CACHE:-/var/cache/snapinst-vm}"
cache="$cache_base/debian"
timeout_s="${SNAPINST_VM_BOOT_TIMEOUT:-300}"

die() {
    echo "debian-boot: FAILED: $*" >&2
    echo "debian-boot: 0 passed, 1 failed"
    exit 1
}

. "$here/lib.sh"

rebuild=0 rebuild_rootfs=0 keep_disk=0 deb=
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --rebuild) rebuild=1 ;;
        --rebuild-rootfs) rebuild=1 rebuild_rootfs=1 ;;
        --keep-disk) keep_disk=1 ;;
        --deb)
            [ $# -ge 2 ] || die "--deb needs the path of a .deb"
            deb=$(realpath "$2") || die "--deb $2: no such file"
            shift
            ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, debootstrap, loop mounts, chroot)"
[ -f "$repo/Cargo.toml" ] && [ -f "$repo/Makefile" ] && [ -d "$repo/hooks" ] ||
    die "$repo does not look like the snapinst repository (no Cargo.toml, Makefile or hooks/)"

# ---- dependencies (Debian 12 package names); apt-get only when something is missing
deps=(debootstrap qemu-system-x86 btrfs-progs libbtrfsutil-dev libclang-dev pkg-config gcc libc6-dev make
    util-linux mount coreutils python3 debian-archive-keyring ca-certificates)
bash "$repo/scripts/deps.sh" "${deps[@]}" || die "installing the dependencies failed"
for t in debootstrap qemu-system-x86_64 mkfs.btrfs btrfs losetup chroot make /usr/bin/python3; do
    command -v "$t" >/dev/null || die "required tool $t is missing after installing the dependencies"
done
grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null || true
grep -qw btrfs /proc/filesystems || die "the host kernel cannot mount btrfs (needed to build and inspect the disk)"

# ---- the Debian mirror this machine's apt sources name (mirror_from_sources: lib.sh)
mirror="${SNAPINST_VM_MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror=$(mirror_from_sources | grep -v -e security -e '^cdrom:' | head -n 1 || true)
fi
[ -n "$mirror" ] || die "no bookworm mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d/ (set SNAPINST_VM_MIRROR)"

# ---- the engine, with crash points
command -v cargo >/dev/null || { [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"; } ||
    die "cargo is not installed (rustup: https://rustup.rs)"
echo "debian-boot: cargo build --release --features failpoints (in $repo)"
(cd "$repo" && cargo build --release --features failpoints --quiet) || die "cargo build failed"
bin="$repo/target/release/snapinst"
[ -x "$bin" ] || die "$bin was not built"
fps=$("$bin" failpoints) || die "$bin failpoints failed"
grep -q '^apply-after-exchange' <<<"$fps" || die "$bin does not list the failpoint apply-after-exchange"

mkdir -p "$cache"
exec 9>"$cache/lock"
flock -n 9 || { echo "debian-boot: waiting for another run of this test (lock $cache/lock)"; flock 9; }

# Take a copy of the binary at once: another build in the same target directory could replace it.
bin_sha=$(sha256sum "$bin" | cut -d' ' -f1)
mkdir -p "$cache/bin"
bin_copy="$cache/bin/snapinst-$bin_sha"
[ -f "$bin_copy" ] || { cp "$bin" "$bin_copy.tmp" && mv "$bin_copy.tmp" "$bin_copy"; }
[ "$(sha256sum "$bin_copy" | cut -d' ' -f1)" = "$bin_sha" ] || die "the cached copy of the binary is corrupt"
ls -1t "$cache/bin"/snapinst-* 2>/dev/null | tail -n +4 | xargs -r rm -f

# ---- the debootstrapped tree (cached; key: suite, variant, packages, mirror, debootstrap version)
suite=bookworm
includes="systemd-sysv,udev,kmod,initramfs-tools,linux-image-amd64,btrfs-progs,libbtrfsutil1"
dbs_version=$(dpkg-query -W -f='${Version}' debootstrap)
rootfs_key=$(printf 'rootfs v1\n%s\nminbase\n%s\n%s\n%s\n' "$suite" "$includes" "$mirror" "$dbs_version" |
    sha256sum | cut -c1-16)
rootfs="$cache/rootfs-$rootfs_key"
if [ "$rebuild_rootfs" = 1 ] || [ ! -f "$rootfs.done" ]; then
    safe_rm "$rootfs" "$rootfs.tmp" "$rootfs.done"
    echo "debian-boot: debootstrap --variant=minbase --include=$includes $suite <dir> $mirror"
    t0=$(date +%s.%N)
    if ! debootstrap --variant=minbase --include="$includes" "$suite" "$rootfs.tmp" "$mirror" \
        >"$cache/debootstrap-$rootfs_key.log" 2>&1; then
        tail -n 30 "$cache/debootstrap-$rootfs_key.log" >&2
        die "debootstrap failed (log: $cache/debootstrap-$rootfs_key.log)"
    fi
    t1=$(date +%s.%N)
    mv "$rootfs.tmp" "$rootfs"
    printf 'debootstrap_s=%s\nmirror=%s\nincludes=%s\n' "$(python3 -c "print(round($t1-$t0,1))")" \
        "$mirror" "$includes" >"$rootfs.done"
    rebuild=1
    # Older trees are not needed any more.
    for old in "$cache"/rootfs-*.done; do
        [ "$old" = "$rootfs.done" ] && continue
        safe_rm "${old%.done}" "$old"
    done
    echo "debian-boot: debootstrap done in $(sed -n 's/^debootstrap_s=//p' "$rootfs.done") s"
else
    echo "debian-boot: cached debootstrap tree $rootfs (built in $(sed -n 's/^debootstrap_s=//p' "$rootfs.done") s)"
fi

# ---- the disk image (cached; key: the tree, the binary, the hooks, the Makefile, the test's guest files, the builder)
inputs_hash() {
    (
        cd "$repo"
        echo "rootfs $rootfs_key"
        echo "bin $bin_sha"
        find hooks -type f -print0 | sort -z | xargs -0 sha256sum
        sha256sum Makefile
        cd "$here"
        find guest -type f -print0 | sort -z | xargs -0 sha256sum
        sha256sum build-image.sh lib.sh
    ) | sha256sum | cut -c1-16
}
image_key=$(inputs_hash)
image="$cache/image-$image_key"
if [ "$rebuild" = 1 ] || [ ! -f "$image/disk.img" ]; then
    echo "debian-boot: building the test disk $image"
    t0=$(date +%s.%N)
    # build-image.sh installs with `make install` from the repository: it must find the binary hashed above.
    [ "$(sha256sum "$bin" | cut -d' ' -f1)" = "$bin_sha" ] || die "$bin changed while this test was starting (a concurrent build?)"
    bash "$here/build-image.sh" "$rootfs" "$image" "$repo" "$bin_copy" >"$cache/image-$image_key.log" 2>&1 || {
        tail -n 40 "$cache/image-$image_key.log" >&2
        die "building the test disk failed (log: $cache/image-$image_key.log)"
    }
    grep '^debian-boot: image: initramfs' "$cache/image-$image_key.log" || true
    t1=$(date +%s.%N)
    printf 'image_build_s=%s\n' "$(python3 -c "print(round($t1-$t0,1))")" >"$image/build-time"
    cp "$cache/image-$image_key.log" "$image/build.log"
    for old in "$cache"/image-*; do
        case "$old" in "$image" | "$image".*) continue ;; esac
        safe_rm "$old"
    done
else
    echo "debian-boot: cached test disk $image"
fi

# ---- the Debian package on a copy of the tree
if [ -z "$deb" ]; then
    bash "$repo/scripts/deb.sh" >"$cache/deb-build.log" 2>&1 || { tail -n 30 "$cache/deb-build.log" >&2; die "scripts/deb.sh failed"; }
    deb=$(sed -n 's/^deb: //p' "$cache/deb-build.log" | tail -n 1)
fi
[ -f "$deb" ] || die "no package at $deb"
bash "$here/package.sh" "$rootfs" "$deb" "$cache/package-work" || die "the package check failed (package.sh)"
safe_rm "$cache/package-work"

# ---- the scenario
runs="$cache/runs"
run_dir="$runs/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
ls -1d "$runs"/*/ 2>/dev/null | sort | head -n -10 | xargs -r rm -rf
# A failed run keeps its disk (about 1 GiB allocated): keep only the last two.
ls -1d "$runs"/*/ 2>/dev/null | sort | head -n -3 | while read -r d; do rm -f "$d/disk.img"; done
args=(--image-dir "$image" --rootfs-done "$rootfs.done" --run-dir "$run_dir" --timeout "$timeout_s" --t-start "$t_start")
[ "$keep_disk" = 1 ] && args+=(--keep-disk)
exec /usr/bin/python3 -u "$here/scenario.py" "${args[@]}"
