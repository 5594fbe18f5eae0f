#!/usr/bin/env bash
# snapinst demo: installs examples/hello (commits), then examples/broken (fails at a verify step and is rolled
# back), shows status and list, rolls back to the tree before hello, and installs examples/service (a system user
# and an enabled unit), on a btrfs subvolume, on a plain directory with the overlay backend, and on the top of an
# ext4 filesystem (its state area inside it); then, with an ext4 /boot and an xfs /srv mounted inside that root,
# commits and rolls back a plan that writes into all three, and shows a write to a left-out mount refused; then the
# same plan, committed and rolled back, on the btrfs subvolume mounted on its own (as a btrfs / is) with an ext4
# /boot and an xfs /srv inside it.
# Everything happens in scratch filesystems that are removed on exit.
#
#   sudo bash scripts/demo.sh
#
# Exits 0 when every expectation held, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
. scripts/lib.sh

prepare_release_build "scripts/demo.sh"

make_scratch snapinst-demo

failures=0
pass() { echo "  ok: $*"; }
fail() {
  echo "  FAIL: $*"
  failures=$((failures + 1))
}

# expect_exit CODE CMD...: runs CMD (showing it), and checks its exit code.
expect_exit() {
  local want=$1 rc=0
  shift
  echo "\$ snapinst ${*:2}"
  "$@" || rc=$?
  if [ "$rc" -eq "$want" ]; then
    pass "exit code $rc ($(exit_meaning "$rc")), as expected"
  else
    fail "exit code $rc ($(exit_meaning "$rc")), expected $want ($(exit_meaning "$want"))"
  fi
}

exit_meaning() {
  case "$1" in
    0) echo "success" ;;
    1) echo "a step failed and the transaction was rolled back" ;;
    2) echo "bad plan or usage, nothing touched" ;;
    3) echo "not rolled back cleanly, recover needed" ;;
    *) echo "not a snapinst exit code" ;;
  esac
}

# check DESCRIPTION CMD...: passes when CMD succeeds.
check() {
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}

# expect_eq DESCRIPTION GOT WANT: passes when GOT equals WANT.
expect_eq() {
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: got $2, expected $3"; fi
}

# json_field JSON EXPR: prints a value from a JSON object (EXPR indexes `d`, e.g. d["current_generation"]).
json_field() {
  python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(json.dumps(eval(sys.argv[2])))' "$1" "$2"
}

# demo_root LABEL ROOT BACKEND
demo_root() {
  local label=$1 root=$2 backend=$3 out

  heading "[$label] apply examples/hello/plan.json: expect a commit"
  expect_exit 0 "$snapinst" apply examples/hello/plan.json --root "$root" --backend "$backend"
  check "/etc/hello.conf says greeting=hi" grep -qx 'greeting=hi' "$root/etc/hello.conf"
  check "/opt/hello/hello.sh is executable" test -x "$root/opt/hello/hello.sh"
  check "/usr/local/bin/hello links to /opt/hello/hello.sh" \
    test "$(readlink "$root/usr/local/bin/hello")" = /opt/hello/hello.sh
  check "the run step wrote /var/lib/hello/state" grep -qx installed "$root/var/lib/hello/state"

  heading "[$label] apply examples/broken/plan.json: expect exit 1, rolled back"
  expect_exit 1 "$snapinst" apply examples/broken/plan.json --root "$root" --backend "$backend"
  check "/etc/hello.conf is unchanged (no port=80 line)" \
    test "$(cat "$root/etc/hello.conf" 2>/dev/null)" = 'greeting=hi'
  check "/etc/broken.conf was not created" test ! -e "$root/etc/broken.conf"
  check "/usr/local/bin/hello is still there" test -L "$root/usr/local/bin/hello"

  heading "[$label] status"
  expect_exit 0 "$snapinst" status --root "$root"
  out=$("$snapinst" status --root "$root" --json) || true
  echo "\$ snapinst status --json"
  echo "$out"
  expect_eq "current generation is 1" "$(json_field "$out" 'd["current_generation"]' 2>/dev/null)" 1
  expect_eq "backend is $backend" "$(json_field "$out" 'd["backend"]' 2>/dev/null)" "\"$backend\""
  expect_eq "no transaction in progress" "$(json_field "$out" 'd["in_progress"]' 2>/dev/null)" null

  heading "[$label] list"
  expect_exit 0 "$snapinst" list --root "$root"

  heading "[$label] rollback: back to generation 0, the tree before hello"
  expect_exit 0 "$snapinst" rollback --root "$root"
  check "/etc/hello.conf is gone" test ! -e "$root/etc/hello.conf"
  check "/opt/hello is gone" test ! -e "$root/opt/hello"
  check "/usr/local/bin/hello is gone" test ! -L "$root/usr/local/bin/hello"
  check "/var/lib/hello is gone" test ! -e "$root/var/lib/hello"
  check "the base root is intact (/bin/sh)" test -x "$root/bin/sh"
  out=$("$snapinst" status --root "$root" --json) || true
  expect_eq "current generation is 0" "$(json_field "$out" 'd["current_generation"]' 2>/dev/null)" 0
  echo "\$ ls $root/etc"
  ls -l "$root/etc"
  echo "\$ snapinst list"
  "$snapinst" list --root "$root" || fail "snapinst list after rollback"

  heading "[$label] apply examples/service/plan.json: a system user, a config file, a unit enabled"
  expect_exit 0 "$snapinst" apply examples/service/plan.json --root "$root" --backend "$backend"
  check "/etc/passwd has the system user hello" grep -q '^hello:x:[0-9]*:[0-9]*:hello service:/var/lib/hello:' "$root/etc/passwd"
  check "/etc/group has the group hello" grep -q '^hello:x:' "$root/etc/group"
  check "hello.service is enabled (multi-user.target.wants)" \
    test "$(readlink "$root/etc/systemd/system/multi-user.target.wants/hello.service")" = /etc/systemd/system/hello.service
  check "/var/lib/hello belongs to hello" \
    test "$(stat -c %u "$root/var/lib/hello")" = "$(awk -F: '$1 == "hello" { print $3 }' "$root/etc/passwd")"
}

heading "Setting up a scratch btrfs image (root = subvolume 'root')"
truncate -s 1G "$scratch/btrfs.img"
mkfs.btrfs -q "$scratch/btrfs.img"
loopdev=$(losetup --find --show "$scratch/btrfs.img")
scratch_loops+=("$loopdev")
mkdir "$scratch/btrfs"
mount "$loopdev" "$scratch/btrfs"
btrfs -q subvolume create "$scratch/btrfs/root"
make_base_root "$scratch/btrfs/root"
echo "btrfs root: $scratch/btrfs/root on $loopdev (state dir: $scratch/btrfs/.snapinst-root)"

heading "Setting up a scratch directory on the host filesystem (overlay backend)"
hostfs=$(findmnt -no FSTYPE -T "$scratch")
if [ "$hostfs" = overlay ]; then
  # An overlay upper layer cannot live on overlayfs itself (e.g. inside a container): use an ext4 image.
  echo "the host filesystem is overlayfs: using a scratch ext4 image instead"
  truncate -s 512M "$scratch/ext4.img"
  mkfs.ext4 -q -F "$scratch/ext4.img"
  mkdir "$scratch/host"
  mount -o loop "$scratch/ext4.img" "$scratch/host"
else
  mkdir "$scratch/host"
fi
make_base_root "$scratch/host/root"
echo "overlay root: $scratch/host/root on $(findmnt -no FSTYPE -T "$scratch/host") (state dir: $scratch/host/.snapinst-root)"

heading "Setting up a scratch ext4 filesystem whose top is the root (as an ext4 / is)"
truncate -s 512M "$scratch/top.img"
mkfs.ext4 -q -F "$scratch/top.img"
mkdir "$scratch/top"
mount -o loop "$scratch/top.img" "$scratch/top"
make_base_root "$scratch/top"
mkdir -p "$scratch/top/var/lib"
echo "ext4 root: $scratch/top (state dir inside it: $scratch/top/var/lib/snapinst/state)"

demo_root btrfs "$scratch/btrfs/root" btrfs
demo_root overlay "$scratch/host/root" overlay
demo_root "ext4 top" "$scratch/top" overlay
check "[ext4 top] the state area is inside the root" test -f "$scratch/top/var/lib/snapinst/state/state.json"

# mount_parts ROOT TAG: a fresh ext4 /boot and xfs /srv (images TAG-boot, TAG-srv) mounted inside ROOT, each with
# a README naming it.
mount_parts() {
  local root=$1 tag=$2 part name fstype
  for part in boot:ext4 srv:xfs; do
    name=${part%%:*} fstype=${part##*:}
    truncate -s 320M "$scratch/$tag-$name.img"
    "mkfs.$fstype" -q "$scratch/$tag-$name.img" 2>/dev/null || "mkfs.$fstype" -q -f "$scratch/$tag-$name.img"
    mkdir -p "$root/$name"
    mount -o loop "$scratch/$tag-$name.img" "$root/$name"
    echo "$name on $fstype" >"$root/$name/README"
  done
}

heading "[ext4 top] an ext4 /boot and an xfs /srv mounted inside the root"
mount_parts "$scratch/top" top
printf '{"name": "kernel", "steps": [{"id": "kernel", "type": "file", "path": "/boot/vmlinuz-2", "content": "k2"}, {"id": "grub", "type": "run", "command": ["/bin/sh", "-c", "ls /boot > /etc/boot-seen && echo cfg > /boot/grub.cfg && echo site > /srv/index.html"]}]}\n' \
  >"$scratch/kernel.json"
echo "the plan writes into /boot (ext4) and /srv (xfs): both are staged with the root"
expect_exit 0 "$snapinst" apply "$scratch/kernel.json" --root "$scratch/top"
check "/boot/vmlinuz-2 is on the ext4 /boot" test -f "$scratch/top/boot/vmlinuz-2"
check "/boot/grub.cfg is on the ext4 /boot" grep -qx cfg "$scratch/top/boot/grub.cfg"
check "/srv/index.html is on the xfs /srv" grep -qx site "$scratch/top/srv/index.html"
check "the step saw /boot as the machine does" grep -qx README "$scratch/top/etc/boot-seen"
expect_exit 0 "$snapinst" status --root "$scratch/top"
expect_exit 0 "$snapinst" rollback --root "$scratch/top"
check "the rollback took /boot/vmlinuz-2 away" test ! -e "$scratch/top/boot/vmlinuz-2"
check "the rollback took /srv/index.html away" test ! -e "$scratch/top/srv/index.html"
echo "with --exclude-mount /boot, a plan that writes there is refused"
expect_exit 2 "$snapinst" apply "$scratch/kernel.json" --root "$scratch/top" --exclude-mount /boot
check "/boot is untouched" test "$(ls "$scratch/top/boot" | tr '\n' ' ')" = "README lost+found "
printf '{"name": "motd", "steps": [{"id": "motd", "type": "run", "command": ["/bin/sh", "-c", "echo hi > /etc/motd"]}]}\n' \
  >"$scratch/motd.json"
expect_exit 0 "$snapinst" apply "$scratch/motd.json" --root "$scratch/top"
check "/etc/motd was committed" grep -qx hi "$scratch/top/etc/motd"
check "/srv still shows the xfs filesystem" grep -qx "srv on xfs" "$scratch/top/srv/README"

heading "[btrfs /] the btrfs subvolume mounted on its own, as / is, with an ext4 /boot and an xfs /srv inside"
live=$scratch/live
mkdir "$live"
mount -o subvol=root "$loopdev" "$live"
echo "root: $live (subvolume root of $loopdev, mounted by name)"
mount_parts "$live" live
expect_exit 0 "$snapinst" apply "$scratch/kernel.json" --root "$live"
echo "the parts commit at once; the root's new tree is what its next mount (the next boot) sees"
check "/boot/vmlinuz-2 is on the ext4 /boot now" test -f "$live/boot/vmlinuz-2"
check "/srv/index.html is on the xfs /srv now" grep -qx site "$live/srv/index.html"
check "the running root still has its tree" test ! -e "$live/etc/boot-seen"
check "the subvolume's name (the next boot) has the new tree" grep -qx README "$scratch/btrfs/root/etc/boot-seen"
expect_exit 0 "$snapinst" status --root "$live"
expect_exit 0 "$snapinst" rollback --root "$live"
check "the rollback took /boot/vmlinuz-2 away" test ! -e "$live/boot/vmlinuz-2"
check "the rollback took /srv/index.html away" test ! -e "$live/srv/index.html"
check "the next boot sees the tree before the plan" test ! -e "$scratch/btrfs/root/etc/boot-seen"
umount "$live/srv" "$live/boot" "$live"

heading "Result"
if [ "$failures" -eq 0 ]; then
  echo "demo: every expectation held"
else
  echo "demo: $failures expectation(s) failed"
  exit 1
fi
