"""Whole-tree manifests for the VM crash tests.

`manifest(root)` maps every path under `root` (and `/` for the root itself) to what must be identical between two
trees for them to be "the same tree": type, mode (permission bits), uid, gid, size (not for directories: their size
is filesystem bookkeeping), sha256 of a regular file, target of a symlink, device number of a device node, every
xattr sorted by name (except `trusted.overlay.*`, the overlay backend's private bookkeeping), the mtime of regular
files (seconds and nanoseconds; not of directories, which every change touches, nor of symlinks), and for a
non-directory with several names the other names in the tree (so a hard link that breaks, or appears, shows).

A caller that takes many manifests of related trees (btrfs snapshots of one root) can pass `hashes`, a dict kept
between calls: a regular file's sha256 is then reused when the same path has the same inode number, size, mtime and
ctime as when it was hashed. Nothing but the kernel sets a ctime, and every change of a file's content sets it, so
an unchanged ctime is an unchanged content (a snapshot keeps its files' inode numbers and ctimes). A file whose ctime
is within two seconds of the walk's start is always hashed and never remembered, so a write in the same clock tick
cannot hide.

Usable as a module (`manifest`, `diff`, `save`, `load`) or from the command line:
    python3 manifest.py ROOT [OUT.json]       print (or save) the manifest of ROOT
    python3 manifest.py --diff A.json B.json  show how two saved manifests differ
"""

import hashlib
import json
import os
import stat
import sys
import time

EXCLUDED_XATTR_PREFIXES = ("trusted.overlay.",)


def _kind(mode):
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode):
        return "chardev"
    if stat.S_ISBLK(mode):
        return "blockdev"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "unknown"


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _xattrs(path):
    out = []
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (95,):  # EOPNOTSUPP (e.g. xattrs of a symlink on some filesystems)
            return out
        raise
    for n in sorted(names):
        if n.startswith(EXCLUDED_XATTR_PREFIXES):
            continue
        out.append([n, os.getxattr(path, n, follow_symlinks=False).hex()])
    return out


def manifest(root, hashes=None):
    """The manifest of the tree at `root`: {"/rel/path": {field: value}} (JSON-ready, sorted keys). `hashes`: the
    content hashes of earlier walks, reused and added to (see the module's text)."""
    root = os.path.abspath(root)
    m = {}
    inodes = {}
    rootdev = os.lstat(root).st_dev
    settled = time.time_ns() - 2_000_000_000

    def sha256_of(path, key, st):
        if hashes is None:
            return _sha256(path)
        cache_key = "%s %d %d %d %d" % (key, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        h = hashes.get(cache_key)
        if h is None:
            h = _sha256(path)
            if st.st_ctime_ns < settled:
                hashes[cache_key] = h
        return h

    def add(path, st):
        key = "/" + os.path.relpath(path, root) if path != root else "/"
        kind = _kind(st.st_mode)
        e = {"type": kind, "mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
        if kind != "dir":
            e["size"] = st.st_size
        if kind == "file":
            e["sha256"] = sha256_of(path, key, st)
            e["mtime"] = "%d.%09d" % (st.st_mtime_ns // 1_000_000_000, st.st_mtime_ns % 1_000_000_000)
        if kind == "symlink":
            e["target"] = os.readlink(path)
        if kind in ("chardev", "blockdev"):
            e["rdev"] = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        x = _xattrs(path)
        if x:
            e["xattrs"] = x
        if kind != "dir" and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(key)
        m[key] = e

    add(root, os.lstat(root))
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            add(p, st)
        # Never descend into another mount or subvolume (a leaked bind mount or a nested subvolume in the root is
        # a finding, which the entry's "other_device" shows, not something to walk).
        keep = []
        for d in dirnames:
            if os.lstat(os.path.join(dirpath, d)).st_dev == rootdev:
                keep.append(d)
            else:
                key = "/" + os.path.relpath(os.path.join(dirpath, d), root)
                m[key]["other_device"] = True
        dirnames[:] = keep
    for group in inodes.values():
        for k in group:
            others = sorted(o for o in group if o != k)
            if others:
                m[k]["links"] = others
    return dict(sorted(m.items()))


def digest(m):
    """A short fingerprint of a manifest."""
    return hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()[:16]


def diff(a, b, limit=40):
    """Readable differences from manifest `a` to manifest `b` (empty list when equal)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in b:
            out.append("- %s (%s) missing" % (k, a[k]["type"]))
        elif k not in a:
            out.append("+ %s (%s) unexpected" % (k, b[k]["type"]))
        elif a[k] != b[k]:
            fields = sorted(set(a[k]) | set(b[k]))
            ch = ["%s %s -> %s" % (f, a[k].get(f), b[k].get(f)) for f in fields if a[k].get(f) != b[k].get(f)]
            out.append("~ %s: %s" % (k, "; ".join(ch)))
    if len(out) > limit:
        out = out[:limit] + ["... %d more differences" % (len(out) - limit)]
    return out


def count_diff(a, b):
    return sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k))


def save(m, path):
    with open(path + ".tmp", "w") as f:
        json.dump(m, f, indent=0, sort_keys=True)
    os.replace(path + ".tmp", path)


def load(path):
    with open(path) as f:
        return json.load(f)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--diff":
        d = diff(load(sys.argv[2]), load(sys.argv[3]), limit=10**9)
        print("\n".join(d) if d else "identical")
        sys.exit(1 if d else 0)
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    man = manifest(sys.argv[1])
    if len(sys.argv) == 3:
        save(man, sys.argv[2])
    else:
        json.dump(man, sys.stdout, indent=1)
        print()
