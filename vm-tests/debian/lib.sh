# Shell helpers shared by run.sh and build-image.sh (sourced).

# Unmount everything mounted at or below a directory, deepest first (a build killed half-way can leave /proc,
# /sys or a bind of /dev mounted in a tree): never remove such a tree without this.
umount_below() {
    local m
    awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
}
safe_rm() {
    local d
    for d in "$@"; do
        [ -e "$d" ] || continue
        umount_below "$(realpath -m "$d")"
        rm -rf --one-file-system "$d"
    done
}
