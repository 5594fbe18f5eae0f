"""The base tree of the managed root and the plans the VM tests apply to it.

Everything here is deterministic (a fixed seed), so the disk images built from it can be cached by a hash of this
file (and of the busybox binary that goes into the tree).

The base tree (about 1,000 regular files of a few KiB in nested directories, symlinks, hard links, user xattrs,
several owners and modes, fixed mtimes with a non-zero nanosecond part) is what a small system looks like to
snapinst: busybox at /bin/busybox with the usual applets symlinked, /etc/passwd and /etc/group, empty /proc /sys
/dev /tmp /run.

The plan changes about 1,000 paths (the log-writes plan, `plan-logwrites.json`, the same kinds of change on a few
dozen): replaces ~500 existing files, adds ~400 files (some in new directories),
removes ~100 paths (files, symlinks, a hard link, one directory recursively), adds a few symlinks, runs one `run`
step and ends with a `verify` step. The failing plan is the same with a last verify step that fails.

Files written by the plan get the time of the apply as their mtime, which differs from run to run; so the plan's
`run` step sets the mtime of every file the plan writes to a fixed instant (`touch -d @T`), and the tree after the
plan is fully determined, mtimes included. That also checks that the backends keep an mtime set in the stage.
"""

import json
import os
import random
import shutil
import stat

SEED = 20240601
N_FILES = 1000
N_REPLACE = 500
N_ADD = 400
N_REMOVE = 100
FIXED_MTIME = 1643767322  # what the run step stamps on every file the plan writes
APPLETS = ["sh", "ls", "cat", "echo", "mkdir", "touch", "xargs", "rm", "mv", "cp", "grep", "sed", "find", "test",
           "true", "false", "sync", "stat", "sha256sum", "wc", "env", "id"]
UIDS = [(0, 0)] * 6 + [(1000, 1000), (1, 1), (0, 1000)]
MODES = [0o644] * 6 + [0o600, 0o755, 0o640, 0o444]


def _text(rng, size):
    """Printable content of `size` bytes (JSON-friendly, so the plan can carry it inline)."""
    line = 63
    out = []
    n = 0
    while n < size:
        k = min(line, size - n)
        s = "%x" % rng.getrandbits(4 * k)
        s = s.rjust(k, "0")[:k]
        out.append(s[:-1] + "\n" if k == line else s)
        n += k
    return "".join(out)


def _mtime_ns(rel):
    """A fixed, path-derived mtime with a non-zero nanosecond part."""
    h = 0
    for ch in rel.encode():
        h = (h * 131 + ch) % (1 << 61)
    return (1500000000 + h % 100000000) * 1_000_000_000 + 1 + h % 999_999_998


def _layout():
    """(directories, files) of the generated part of the tree, as root-relative paths, in a fixed order."""
    rng = random.Random(SEED)
    dirs = []
    for a in range(8):
        top = "usr/share/vmtest/pkg%02d" % a
        dirs.append(top)
        for b in range(4):
            mid = "%s/sub%d" % (top, b)
            dirs.append(mid)
            if b % 2 == 0:
                dirs.append("%s/deep%d" % (mid, b))
    dirs += ["etc/vmtest.d", "var/lib/vmbase", "opt/app/lib", "opt/app/share/doc"]
    files = []
    for i in range(N_FILES):
        d = dirs[rng.randrange(len(dirs))]
        files.append("%s/f%04d.dat" % (d, i))
    return dirs, files


def build_tree(root, busybox):
    """Populate `root` (an existing empty directory) with the base tree. Needs root privileges (chown, xattrs)."""
    rng = random.Random(SEED + 1)
    mk = lambda rel, mode=0o755: os.makedirs(os.path.join(root, rel), mode=mode, exist_ok=True)
    for d in ["bin", "etc", "proc", "sys", "dev", "run", "usr", "var", "opt", "root"]:
        mk(d)
    mk("tmp")
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    os.chmod(os.path.join(root, "root"), 0o700)
    shutil.copyfile(busybox, os.path.join(root, "bin/busybox"))
    os.chmod(os.path.join(root, "bin/busybox"), 0o755)
    for a in APPLETS:
        os.symlink("busybox", os.path.join(root, "bin", a))
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/:/bin/false\n"
                "app:x:1000:1000:app:/opt/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\ndaemon:x:1:\napp:x:1000:\nnogroup:x:65534:\n")
    dirs, files = _layout()
    for d in dirs:
        mk(d)
    for i, rel in enumerate(files):
        p = os.path.join(root, rel)
        with open(p, "w") as f:
            f.write(_text(rng, rng.randrange(1024, 8 * 1024)))
        uid, gid = UIDS[rng.randrange(len(UIDS))]
        os.chown(p, uid, gid)
        os.chmod(p, MODES[rng.randrange(len(MODES))])
        if i % 97 == 5:
            os.setxattr(p, "user.vmtest", ("attr-%d" % i).encode())
            os.setxattr(p, "user.zzz", b"\x00\x01binary\xff")
    os.setxattr(os.path.join(root, "usr/share/vmtest/pkg01"), "user.dirattr", b"on a directory")
    # Symlinks: relative and absolute, to files and directories, one dangling.
    for i in range(40):
        src = files[(i * 37) % len(files)]
        link = "%s/link%02d" % (dirs[(i * 11) % len(dirs)], i)
        target = ("/" + src) if i % 2 else os.path.relpath(src, os.path.dirname(link))
        os.symlink(target, os.path.join(root, link))
    os.symlink("/usr/share/vmtest/pkg03", os.path.join(root, "opt/app/pkg03"))
    os.symlink("does/not/exist", os.path.join(root, "opt/app/dangling"))
    # Hard links: a few files with a second (and one with a third) name.
    for i in range(6):
        src = files[100 + i * 131]
        os.link(os.path.join(root, src), os.path.join(root, "opt/app/lib/hard%d.dat" % i))
    os.link(os.path.join(root, files[100]), os.path.join(root, "var/lib/vmbase/hard0b.dat"))
    # Fixed mtimes, deepest first, directories too (they are not compared, but keep the image reproducible). In a
    # sorted order, not the directory order (which on ext4 depends on the filesystem's hash seed): the names of a
    # hard-linked file share one mtime, the one set last.
    rels = sorted((os.path.relpath(os.path.join(dp, n), root) for dp, dns, fns in os.walk(root) for n in dns + fns),
                  key=lambda r: (-r.count("/"), r))
    for rel in rels:
        ns = _mtime_ns(rel)
        os.utime(os.path.join(root, rel), ns=(ns, ns), follow_symlinks=False)


def _label(name):
    """A part's name as a file-name prefix (`boot/efi` -> `boot-efi`)."""
    return name.replace("/", "-")


def build_part_tree(top, name, fs, mount_points=()):
    """The tree of a filesystem of type `fs` mounted inside the root at /NAME (its top is `top`): 40 files of a few
    KiB in two directories, a symlink, fixed owners, modes and mtimes (FAT: no symlink, and the owners and modes
    its mount gives), and the directories `mount_points` (relative to it) where other parts are mounted."""
    rng = random.Random("%d-%s" % (SEED, name))
    label = _label(name)
    for i in range(40):
        rel = "%s/%s-%02d" % ("grub" if i % 4 == 0 else "files", label, i)
        p = os.path.join(top, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(_text(rng, rng.randrange(512, 4096)))
        if fs != "vfat":
            os.chmod(p, MODES[i % len(MODES)])
            os.chown(p, *UIDS[i % len(UIDS)])
        t = _mtime_ns(name + "/" + rel)
        os.utime(p, ns=(t, t))
    if fs != "vfat":
        os.symlink("files/%s-01" % label, os.path.join(top, "current"))
    for m in mount_points:
        os.makedirs(os.path.join(top, m))


def _part_steps(name, fs, rng):
    """Steps writing into the part of type `fs` mounted at /NAME: 5 files replaced, 10 added (some in a new
    directory), 3 removed, one symlink replaced (FAT: no symlink, and no modes). Returns (steps, paths written)."""
    label = _label(name)
    modes = fs != "vfat"
    steps = [dict({"id": "%s-newdir" % label, "type": "dir", "path": "/%s/new" % name}, **({"mode": "0755"} if modes else {}))]
    written = []
    for i in range(5):
        path = "/%s/files/%s-%02d" % (name, label, 1 + 4 * i + (i % 3))
        steps.append({"id": "%s-replace-%d" % (label, i), "type": "file", "path": path,
                      "content": _text(rng, rng.randrange(512, 4096))})
        written.append(path)
    for i in range(10):
        path = "/%s/%s/%s-new-%02d" % (name, "new" if i % 3 == 0 else "grub", label, i)
        steps.append(dict({"id": "%s-add-%d" % (label, i), "type": "file", "path": path,
                           "content": _text(rng, rng.randrange(512, 4096))}, **({"mode": "0644"} if modes else {})))
        written.append(path)
    for i, n in enumerate((3, 7, 15)):
        steps.append({"id": "%s-remove-%d" % (label, i), "type": "remove",
                      "path": "/%s/files/%s-%02d" % (name, label, n)})
    if modes:
        steps.append({"id": "%s-relink" % label, "type": "symlink", "path": "/%s/current" % name,
                      "target": "new/%s-new-00" % label})
    return steps, written


def _existing(root):
    """Regular files (not hard-linked), symlinks of the base tree, root-relative, sorted."""
    regs, links, hard = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if rel.startswith("bin/") or rel.startswith("etc/"):
                continue  # the system part of the tree: the plan's steps need it
            elif stat.S_ISLNK(st.st_mode):
                links.append(rel)
            elif rel.startswith("opt/app/share/"):
                continue  # removed whole by the plan
            elif st.st_nlink > 1:
                hard.append(rel)
            else:
                regs.append(rel)
    return regs, links, hard


def build_plans(root, parts=(), scale=None):
    """The plan and the failing plan for the base tree in `root`, as JSON-ready dicts: about 350 changed paths (a
    third of the N_* counts: under emulation an apply of the whole 1,000 took 30 s, and every cut and crash point
    boots one; the kinds of change are the same); with `parts` ((name, fs) of the filesystems mounted inside the
    root, see build_part_tree), the plan writes into each of them too, and changes a tenth of the N_* paths of the
    root (each of its three filesystems pays for a scratch layer and a copy). `scale` divides the number of changed paths (the
    log-writes plan: the same kinds of change, a few dozen paths). The run step declares what it changes, so the
    journal backend takes the plan too."""
    rng = random.Random(SEED + 2)
    scale = scale or (10 if parts else 3)
    n_replace, n_add, n_remove = N_REPLACE // scale, N_ADD // scale, N_REMOVE // scale
    regs, links, hard = _existing(root)
    rng.shuffle(regs)
    replace = regs[:n_replace - 1] + [hard[0]]  # one of them is a hard link: replaced by rename, the link breaks
    remove = regs[n_replace:n_replace + n_remove - 8] + links[:5] + [hard[1]]
    steps = []
    written = []
    new_dirs = ["usr/share/vmtest/new%02d" % i for i in range(8)] + ["usr/share/vmtest/new00/inner"]
    for i, d in enumerate(new_dirs):
        steps.append({"id": "dir-%d" % i, "type": "dir", "path": "/" + d, "mode": "0755"})
    for i, rel in enumerate(replace):
        s = {"id": "replace-%d" % i, "type": "file", "path": "/" + rel,
             "content": _text(rng, rng.randrange(1024, 8 * 1024))}
        if i % 5 == 0:
            s["mode"] = "0640"
            s["owner"] = "app"
            s["group"] = "root"
        steps.append(s)
        written.append("/" + rel)
    old_dirs = sorted({os.path.dirname(r) for r in regs})
    for i in range(n_add):
        d = new_dirs[i % len(new_dirs)] if i % 4 == 0 else old_dirs[i % len(old_dirs)]
        path = "/%s/added%04d.txt" % (d, i)
        s = {"id": "add-%d" % i, "type": "file", "path": path, "content": _text(rng, rng.randrange(1024, 6 * 1024)),
             "mode": "0644" if i % 3 else "0600"}
        if i % 7 == 0:
            s["owner"] = "1000"
            s["group"] = "1000"
        steps.append(s)
        written.append(path)
    for i, rel in enumerate(remove):
        steps.append({"id": "remove-%d" % i, "type": "remove", "path": "/" + rel})
    steps.append({"id": "remove-dir", "type": "remove", "path": "/opt/app/share", "recursive": True})
    for i in range(5):
        steps.append({"id": "symlink-%d" % i, "type": "symlink", "path": "/opt/app/newlink%d" % i,
                      "target": written[(i * 50) % len(written)]})
    for name, fs in parts:
        part_steps, part_written = _part_steps(name, fs, rng)
        steps += part_steps
        written += part_written
    written.append("/etc/vmtest-written")
    written.append("/var/lib/vmtest/ran")
    steps.append({"id": "written-list", "type": "file", "path": "/etc/vmtest-written", "mode": "0644",
                  "content": "".join(w + "\n" for w in written)})
    steps.append({"id": "post", "type": "run", "timeout_s": 600, "changes": written + ["/var/lib/vmtest"], "command": [
        "/bin/sh", "-c",
        "export PATH=/bin; set -e; mkdir -p /var/lib/vmtest; echo ran > /var/lib/vmtest/ran; "
        "xargs touch -c -d @%d < /etc/vmtest-written" % FIXED_MTIME]})
    verify = {"id": "check", "type": "verify", "command": ["/bin/sh", "-c", "/bin/cat /var/lib/vmtest/ran"],
              "expect_exit": 0, "expect_stdout": "ran"}
    plan = {"name": "vmtest", "version": "1", "description": "VM crash test: a few hundred changed paths",
            "steps": steps + [verify]}
    failing = {"name": "vmtest-failing", "version": "1", "description": "the same, with a last step that fails",
               "steps": steps + [verify, {"id": "fail", "type": "verify",
                                          "command": ["/bin/sh", "-c", "echo failing on purpose; exit 3"],
                                          "expect_exit": 0}]}
    return plan, failing


def write_plans(root, dest_dir, parts=()):
    plan, failing = build_plans(root, parts)
    small = dict(build_plans(root, parts, scale=25)[0], name="vmtest-logwrites",
                 description="VM crash-state test (every flush of a log-writes log): a few dozen changed paths")
    os.makedirs(dest_dir, exist_ok=True)
    for name, p in [("plan.json", plan), ("plan-failing.json", failing), ("plan-logwrites.json", small)]:
        with open(os.path.join(dest_dir, name), "w") as f:
            json.dump(p, f, indent=1)
            f.write("\n")
    return plan


if __name__ == "__main__":
    import sys
    build_tree(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "/bin/busybox")
    write_plans(sys.argv[1], sys.argv[1] + ".plans")
