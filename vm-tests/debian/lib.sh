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

# The bookworm mirrors this machine's apt sources name, one per line.
mirror_from_sources() {
    local f
    # deb822 .sources: a stanza with Types: deb and a Suites: line naming bookworm
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN{RS=""}
             /(^|\n)Types:[^\n]*deb([ \t]|\n|$)/ && /(^|\n)Suites:[^\n]*bookworm([ \t]|\n|$)/ {
                 if (match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/)) { s = substr($0, RSTART, RLENGTH); sub(/.*URIs:[ \t]*/, "", s); print s } }' "$f"
    done
    # one-line style: deb [options] URI bookworm main ...
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -n 's/^[ \t]*deb[ \t]\+\(\[[^]]*\][ \t]\+\)\{0,1\}\([^ \t]\+\)[ \t]\+bookworm[ \t].*/\2/p' "$f"
    done
}

# Mounts made with mnt_ (the mount point is the last argument), undone in reverse order by unmount_all: with
# --strict an unmount that fails is an error (the end of a build), else it is done lazily (the cleanup of a build
# that stopped half-way).
mounted=()
mnt_() {
    mount "$@"
    mounted+=("${@: -1}")
}
unmount_all() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        if [ "${1:-}" = --strict ]; then
            umount "${mounted[$i]}" || return 1
        else
            umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" 2>/dev/null || true
        fi
        unset 'mounted[i]'
    done
    mounted=()
}
