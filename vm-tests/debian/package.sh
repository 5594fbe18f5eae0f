#!/usr/bin/env bash
# The Debian package on a Debian 12 root (called by run.sh with the debootstrapped tree of the boot test: systemd,
# initramfs-tools and a kernel; not meant to be run by hand).
#
#   package.sh ROOTFS DEB WORKDIR
#
# On an overlay of ROOTFS (never changed; the changes go to WORKDIR) with /proc, /sys and /dev mounted, in a chroot:
#   dpkg -i DEB          succeeds; dpkg --audit is empty; snapinst --version runs; snapinst config shows the
#                        shipped file; both units are enabled; the update-initramfs trigger rebuilt the initramfs
#                        and lsinitramfs shows snapinst and its boot script; the man page and completion are there
#   dpkg -r snapinst     every file of the package is gone but its conffiles (Debian policy: they go with purge);
#                        the initramfs is rebuilt without snapinst
#   dpkg -P snapinst     the whole tree is as before the install (manifests compared), but for dpkg's own records,
#                        the initramfs (rebuilt: its file list must equal the one before) and the state directory
#                        /var/lib/snapinst, which the package never removes
# Prints "debian-package: N checks passed" or exits non-zero naming the first check that failed.
set -euo pipefail

rootfs=$1 deb=$2 work=$3
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"

say() { echo "debian-package: $*"; }
fail() { echo "debian-package: FAIL: $*" >&2; exit 1; }
checks=0
ok() { checks=$((checks + 1)); say "ok: $*"; }

safe_rm "$work"
mkdir -p "$work/upper" "$work/ovl-work" "$work/root"
root=$work/root
cleanup() { api_down || true; umount_below "$root" || true; }
trap cleanup EXIT
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/ovl-work" "$root"

# /proc, /sys, /dev and /run for the chroot's commands, mounted once (in_root also runs in subshells: the mounts,
# not a variable, say whether they are there) and unmounted for each manifest.
api_up() {
    mountpoint -q "$root/proc" && return
    mount -t proc proc "$root/proc"
    mount -t sysfs sys "$root/sys"
    mount --bind /dev "$root/dev"
    mount --make-rslave "$root/dev"  # the devpts below must not propagate to the host's /dev
    mount -t devpts devpts "$root/dev/pts"
    mkdir -p "$root/run" && mount -t tmpfs tmpfs "$root/run"
}
api_down() {
    local d
    for d in run dev/pts dev sys proc; do
        while mountpoint -q "$root/$d"; do umount "$root/$d"; done
    done
}
in_root() { api_up; chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "$@"; }
snapshot() { api_down; python3 "$here/../manifest.py" "$root" "$work/$1.json"; }
initrd_list() { in_root sh -c 'lsinitramfs /boot/initrd.img-*' | sort; }

kernel=$(cd "$root/boot" && ls initrd.img-* 2>/dev/null | head -n 1)
[ -n "$kernel" ] || fail "the tree has no initramfs to check (no kernel installed?)"
initrd_list >"$work/initrd-before.list"
grep -q snapinst "$work/initrd-before.list" && fail "the initramfs holds snapinst before the package is installed"
snapshot before

# ---- install
cp "$deb" "$root/tmp/snapinst.deb"
in_root dpkg -i /tmp/snapinst.deb >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; fail "dpkg -i"; }
rm "$root/tmp/snapinst.deb"
ok "dpkg -i $(basename "$deb")"
audit=$(in_root dpkg --audit)
[ -z "$audit" ] || fail "dpkg --audit after the install: $audit"
ok "dpkg --audit is empty"
version=$(in_root snapinst --version) || fail "snapinst --version"
ok "snapinst --version: $version"
in_root snapinst config --json >"$work/config.json" || fail "snapinst config --json"
python3 - "$work/config.json" <<'PY' || fail "snapinst config does not show the built-in values of the shipped file"
import json, sys
c = json.load(open(sys.argv[1]))
s = c["settings"]
assert c["dir"] == "/etc/snapinst" and {"keep", "boot_tries", "backend", "suppress_sync"} <= set(s), c
assert all(r["from"] == "built-in default" for r in s.values()), s
PY
ok "snapinst config: every value the built-in default (the shipped file only shows them)"
for u in snapinst-recover.service snapinst-bless.service; do
    state=$(in_root systemctl is-enabled "$u" 2>&1 || true)
    [ "$state" = enabled ] || fail "$u is $state after the install, not enabled"
done
ok "snapinst-recover.service and snapinst-bless.service are enabled (not started: a chroot has no systemd)"
initrd_list >"$work/initrd-installed.list"
grep -qE '^(usr/)?sbin/snapinst$' "$work/initrd-installed.list" || fail "lsinitramfs shows no snapinst binary"
grep -qx scripts/local-premount/snapinst "$work/initrd-installed.list" || fail "lsinitramfs shows no boot script"
ok "the update-initramfs trigger rebuilt the initramfs: lsinitramfs shows sbin/snapinst and scripts/local-premount/snapinst"
for f in /usr/share/man/man8/snapinst.8.gz /usr/share/bash-completion/completions/snapinst \
    /etc/snapinst/snapinst.toml; do
    [ -f "$root$f" ] || fail "$f is missing after the install"
done
ok "the man page, the bash completion and /etc/snapinst/snapinst.toml are installed"
in_root dpkg-query -L snapinst | sort >"$work/files.list"
in_root sh -c 'cat /var/lib/dpkg/info/snapinst.conffiles' | sort >"$work/conffiles.list"

# ---- remove
in_root dpkg -r snapinst >"$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; fail "dpkg -r snapinst"; }
ok "dpkg -r snapinst"
left=()
while read -r f; do
    [ -n "$f" ] && [ "$f" != /. ] || continue
    [ -e "$root$f" ] && [ ! -d "$root$f" ] && ! grep -qx "$f" "$work/conffiles.list" && left+=("$f")
done <"$work/files.list"
[ "${#left[@]}" = 0 ] || fail "dpkg -r left files of the package: ${left[*]}"
while read -r f; do [ -f "$root$f" ] || fail "dpkg -r removed the conffile $f (it goes with purge)"; done \
    <"$work/conffiles.list"
ok "dpkg -r left only the conffiles: $(tr '\n' ' ' <"$work/conffiles.list")"
initrd_list >"$work/initrd-removed.list"
grep -q snapinst "$work/initrd-removed.list" && fail "the initramfs still holds snapinst after dpkg -r"
ok "the initramfs was rebuilt without snapinst"

# ---- purge
in_root dpkg -P snapinst >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "dpkg -P snapinst"; }
ok "dpkg -P snapinst"
audit=$(in_root dpkg --audit)
[ -z "$audit" ] || fail "dpkg --audit after the purge: $audit"
initrd_list >"$work/initrd-purged.list"
cmp -s "$work/initrd-before.list" "$work/initrd-purged.list" ||
    fail "the initramfs's file list differs from the one before the install: $(diff "$work/initrd-before.list" "$work/initrd-purged.list" | head -5)"
snapshot purged
# What may differ: dpkg's and update-initramfs's own records, the rebuilt initramfs (its list compared above),
# and /var/lib/snapinst (state the package never removes; this root has none).
python3 - "$work/before.json" "$work/purged.json" <<'PY' || fail "dpkg -P left the tree different from before the install"
import json, re, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
allowed = re.compile(r"^/(var/lib/dpkg|var/log|var/lib/initramfs-tools|var/lib/snapinst|boot/initrd\.img-[^/]+$|var/cache/debconf|tmp$)")
bad = [p for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p) and not allowed.match(p)]
for p in bad[:20]:
    print("  %s: %s -> %s" % (p, a.get(p), b.get(p)), file=sys.stderr)
sys.exit(1 if bad else 0)
PY
ok "after dpkg -P the whole tree is as before the install (but dpkg's records and the rebuilt initramfs)"
say "$checks checks passed"
