#!/bin/sh
# /init of the snapinst VM-test initramfs (busybox sh). Every line meant for the harness starts with "SNAPINST-VM: ".
#
# Kernel command line:
#   snapinst.mode=recover|apply|apply-failing|apply-writer|rollback|logwrites
#                                                       what to do after the boot-time recovery (apply-writer: the
#                                                       apply while a writer appends fsynced, numbered records to
#                                                       $WRITER_FILES, each announced as "durable N" once fsynced)
#                                                       logwrites: every block write to /dev/vda logged to /dev/vdb
#                                                       by device-mapper's log-writes target, with a mark after each
#                                                       part: an apply of plan-logwrites.json (apply-done), a
#                                                       rollback (rollback-done), an apply killed at
#                                                       snapinst.lwpoint (killed), a recover (recover-done), end
#   snapinst.lwpoint=NAME                               logwrites: the crash point of the killed apply
#   snapinst.boot=1                                     the live layout: `snapinst boot` first, before the root is
#                                                       mounted, as the initramfs hook runs it on a machine
#   snapinst.fs=btrfs|ext4                              the test disk's filesystem (/dev/vda)
#   snapinst.backend=btrfs|overlay                      passed to `snapinst apply --backend`
#   snapinst.layout=dir|subvol|top|live                 where the managed root is (see artefacts.LAYOUTS): /mnt/root
#                                                       (dir, subvol), the top of /dev/vda (top), or the btrfs
#                                                       subvolume root mounted on its own at /sysroot (live)
#   snapinst.parts=1                                    an ext4 /dev/vdb at /boot, an xfs /dev/vdc at /srv and a
#                                                       vfat ESP /dev/vdd at /boot/efi inside the root
#   snapinst.failpoint=NAME                             SNAPINST_FAILPOINT for every snapinst run of this boot,
#                                                       with SNAPINST_FAILPOINT_ACTION=reset (machine reset, no sync)
#
# Every boot first runs `snapinst recover --all` (the registry is on the test disk): that boot-time recovery is
# what the tests check. Then the mode's work, `status --json` and `list --json`, sync, unmount, power off.
export PATH=/bin:/sbin
export HOME=/ TERM=dumb
umask 022

say() { echo "SNAPINST-VM: $*"; }
die() {
    say "error $*"
    sync
    poweroff -f
    sleep 10
}

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /tmp /run /mnt
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
exec </dev/console >/dev/console 2>&1

MODE=recover FS=btrfs BACKEND=btrfs FAILPOINT= LAYOUT=dir PARTS= BOOT_HOOK= LWPOINT=
for w in $(cat /proc/cmdline); do
    case "$w" in
        snapinst.mode=*) MODE=${w#snapinst.mode=} ;;
        snapinst.layout=*) LAYOUT=${w#snapinst.layout=} ;;
        snapinst.parts=*) PARTS=${w#snapinst.parts=} ;;
        snapinst.fs=*) FS=${w#snapinst.fs=} ;;
        snapinst.backend=*) BACKEND=${w#snapinst.backend=} ;;
        snapinst.failpoint=*) FAILPOINT=${w#snapinst.failpoint=} ;;
        snapinst.boot=*) BOOT_HOOK=${w#snapinst.boot=} ;;
        snapinst.lwpoint=*) LWPOINT=${w#snapinst.lwpoint=} ;;
    esac
done
export SNAPINST_REGISTRY=/mnt/vmtest/registry
if [ -n "$FAILPOINT" ]; then
    export SNAPINST_FAILPOINT="$FAILPOINT" SNAPINST_FAILPOINT_ACTION=reset
fi
say "boot mode=$MODE fs=$FS backend=$BACKEND layout=$LAYOUT parts=${PARTS:-0} failpoint=${FAILPOINT:-none} uptime=$(cut -d' ' -f1 /proc/uptime)"

# Run a command with its output (stdout and stderr) on the console, each line tagged "SNAPINST-VM: TAG ".
# Lines go out as they come, so what a command said before a reset is kept. The status is in $RC.
tagged() {
    tag=$1
    shift
    rm -f /tmp/fifo
    mkfifo /tmp/fifo
    (while IFS= read -r l; do echo "SNAPINST-VM: $tag $l"; done </tmp/fifo) &
    reader=$!
    "$@" >/tmp/fifo 2>&1
    RC=$?
    wait $reader
    if [ $RC = 137 ] && [ -n "$FAILPOINT" ]; then
        # Killed by a failpoint that did not reset the machine itself: reset it now, still without syncing.
        say "$tag killed by SIGKILL at a failpoint: resetting"
        echo b >/proc/sysrq-trigger
    fi
}

load() { modprobe "$1" || die "modprobe $1 failed"; }
load virtio_pci
load virtio_blk
modprobe crc32c_intel 2>/dev/null  # faster crc32c when the CPU has SSE4.2; crc32c_generic otherwise
load crc32c_generic
case "$FS" in
    btrfs) for m in xxhash_generic blake2b_generic sha256_generic libcrc32c btrfs; do modprobe "$m" 2>/dev/null; done
           grep -qw btrfs /proc/filesystems || die "btrfs not available" ;;
    ext4) load ext4; load overlay ;;
    *) die "unknown fs $FS" ;;
esac
wait_disk() {
    i=0
    while [ ! -b "$1" ]; do
        i=$((i + 1))
        [ $i -gt 500 ] && die "no $1"
        sleep 0.01
    done
}
wait_disk /dev/vda
DISK=/dev/vda
if [ "$MODE" = logwrites ]; then
    # Every write to vda, in order, with its flush and FUA flags, logged to vdb (no udev here: dmsetup makes the
    # node itself).
    load dm_mod
    load dm_log_writes
    wait_disk /dev/vdb
    export DM_DISABLE_UDEV=1
    dmsetup create lw --noudevsync --table "0 $(blockdev --getsz /dev/vda) log-writes /dev/vda /dev/vdb" ||
        die "dmsetup create log-writes failed"
    DISK=/dev/mapper/lw
    wait_disk $DISK
fi
# A mark in the log (logwrites), said on the console too.
mark() {
    dmsetup message lw 0 mark "$1" || die "dmsetup message lw mark $1 failed"
    say "mark $1"
}

# start_writer HOW FILE...: the running system writing while a transaction runs. A record every 20 ms is appended to
# each FILE and fsynced, then announced (HOW=say: "durable N" on the console; HOW=mark: a durable-N mark in the
# log-writes log), so every announced record was durable before any later power cut or logged state. The writer
# starts 1 s before the caller goes on; stop_writer lets it write 1 s more, then stops it.
start_writer() {
    how=$1
    shift
    rm -f /tmp/writer.stop
    (
        i=0
        while [ ! -e /tmp/writer.stop ]; do
            i=$((i + 1))
            for f in "$@"; do
                echo "$i" >>"$f" && sync "$f" || { say "writer-error record $i to $f"; exit 1; }
            done
            case "$how" in
                say) say "durable $i" ;;
                mark) dmsetup message lw 0 mark "durable-$i" || { say "writer-error mark $i"; exit 1; } ;;
            esac
            sleep 0.02
        done
        say "writer-stopped last=$i"
    ) &
    writer=$!
    sleep 1
}

stop_writer() {
    sleep 1
    touch /tmp/writer.stop
    wait "$writer"
}
[ "$MODE" = logwrites ] && mark start
mount -t "$FS" $DISK /mnt || die "mount $DISK failed"
MOUNTED=/mnt
case "$LAYOUT" in
    dir | subvol) ROOT=/mnt/root ;;
    top) ROOT=/mnt ;;
    live)
        if [ "$BOOT_HOOK" = 1 ]; then
            tagged boot-out snapinst boot --root /mnt/root --json
            say "boot-hook-done rc=$RC"
        fi
        mkdir -p /sysroot
        mount -t btrfs -o subvol=root /dev/vda /sysroot || die "mount subvol=root failed"
        ROOT=/sysroot
        MOUNTED="/sysroot $MOUNTED"
        ;;
    *) die "unknown layout $LAYOUT" ;;
esac
if [ "$PARTS" = 1 ]; then
    load ext4; load xfs; load overlay; load loop
    wait_disk /dev/vdb
    wait_disk /dev/vdc
    mount -t ext4 /dev/vdb "$ROOT/boot" || die "mount /dev/vdb at $ROOT/boot failed"
    mount -t xfs /dev/vdc "$ROOT/srv" || die "mount /dev/vdc at $ROOT/srv failed"
    load vfat; load nls_cp437; load nls_utf8; load nls_ascii
    wait_disk /dev/vdd
    # As a Debian machine's boot does for the ESP (fstab pass 1: systemd-fsck runs fsck -a): FAT has no journal.
    fsck.vfat -a /dev/vdd > /tmp/fsck.out 2>&1
    FSCK_RC=$?
    sed 's/^/SNAPINST-VM: fsck-vfat-out /' /tmp/fsck.out
    say "fsck-vfat rc=$FSCK_RC"
    [ "$FSCK_RC" -le 1 ] || die "fsck.vfat -a /dev/vdd failed (exit $FSCK_RC)"
    mount -t vfat /dev/vdd "$ROOT/boot/efi" || die "mount /dev/vdd at $ROOT/boot/efi failed"
    MOUNTED="$ROOT/boot/efi $ROOT/srv $ROOT/boot $MOUNTED"
fi
say "mounted uptime=$(cut -d' ' -f1 /proc/uptime)"

say "recover-start"
tagged recover-out snapinst recover --all --json
if [ $RC = 0 ]; then say "recovered rc=0"; else say "recover-failed rc=$RC"; fi

case "$MODE" in
    recover)
        # Recovering again must change nothing.
        tagged recover2-out snapinst recover --all --json
        say "recover2-done rc=$RC"
        ;;
    apply | apply-failing)
        plan=/mnt/vmtest/plan.json
        [ "$MODE" = apply-failing ] && plan=/mnt/vmtest/plan-failing.json
        say "apply-start"
        tagged apply-out snapinst apply "$plan" --root "$ROOT" --backend "$BACKEND" --json
        say "apply-done rc=$RC"
        ;;
    apply-writer)
        # The running system writing while the transaction runs: a record every 20 ms to a file in /etc (a
        # directory the plan changes) and, with parts, one on /srv and one on the ESP (filesystems the plan
        # changes), each record fsynced before it is announced, so every announced record was durable before any
        # later power cut.
        WRITER_FILES="$ROOT/etc/vm-writer.log"
        [ "$PARTS" = 1 ] && WRITER_FILES="$WRITER_FILES $ROOT/srv/vm-writer.log $ROOT/boot/efi/vm-writer.log"
        # shellcheck disable=SC2086 # the list splits into files
        start_writer say $WRITER_FILES
        say "apply-start"
        tagged apply-out snapinst apply /mnt/vmtest/plan.json --root "$ROOT" --backend "$BACKEND" --json
        say "apply-done rc=$RC"
        stop_writer
        ;;
    logwrites)
        plan=/mnt/vmtest/plan-logwrites.json
        # The running system writes through the apply (and the btrfs carry-over), each record then marked in the
        # log as durable-N, so the host knows which records every later state must hold.
        start_writer mark "$ROOT/etc/vm-writer.log"
        mark apply-start
        tagged apply-out snapinst apply "$plan" --root "$ROOT" --backend "$BACKEND" --json
        say "apply-done rc=$RC"
        stop_writer
        mark apply-done
        tagged rollback-out snapinst rollback --root "$ROOT" --json
        say "rollback-done rc=$RC"
        mark rollback-done
        SNAPINST_FAILPOINT=$LWPOINT tagged killed-out snapinst apply "$plan" --root "$ROOT" --backend "$BACKEND" --json
        say "killed-done rc=$RC"
        mark killed
        tagged lwrecover-out snapinst recover --root "$ROOT" --json
        say "lwrecover-done rc=$RC"
        mark recover-done
        ;;
    rollback)
        say "rollback-start"
        tagged rollback-out snapinst rollback --root "$ROOT" --json
        say "rollback-done rc=$RC"
        ;;
    *) die "unknown mode $MODE" ;;
esac

unset SNAPINST_FAILPOINT SNAPINST_FAILPOINT_ACTION
tagged status-out snapinst status --root "$ROOT" --json
say "status-done rc=$RC"
tagged list-out snapinst list --root "$ROOT" --json
say "list-done rc=$RC"
sync
for m in $MOUNTED; do
    umount "$m" || die "umount $m failed"
done
if [ "$MODE" = logwrites ]; then
    mark end
    dmsetup remove lw || die "dmsetup remove lw failed"
fi
say "poweroff uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
sleep 10
