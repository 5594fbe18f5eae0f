#!/bin/sh
# dracut pre-mount hook: finish or undo an interrupted snapinst transaction on a btrfs root mounted by subvolume
# name (rootflags=subvol=NAME), then run the failed-boot fallback (`snapinst boot`).
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

dev="${root#block:}"
[ -b "$dev" ] || return 0 2>/dev/null || exit 0
[ "$(blkid -o value -s TYPE "$dev" 2>/dev/null)" = btrfs ] || return 0 2>/dev/null || exit 0
subvol=
oldifs=$IFS
IFS=,
for opt in $rflags; do
    case "$opt" in
    subvol=*) subvol=${opt#subvol=} ;;
    esac
done
IFS=$oldifs
subvol=${subvol#/}
if [ -z "$subvol" ]; then
    warn "snapinst: the root is not mounted by subvolume name (rootflags=subvol=...); skipping"
else
    top=/run/snapinst/boot
    mkdir -p "$top"
    if mount -t btrfs -o subvolid=5 "$dev" "$top"; then
        info "snapinst: checking $subvol on $dev"
        snapinst boot --root "$top/$subvol" || warn "snapinst: boot-time recovery of $subvol FAILED; snapinst-recover.service will report it"
        umount "$top"
    else
        warn "snapinst: cannot mount the top level of $dev; boot-time recovery did not run"
    fi
fi
