"""Every crash state of a transaction, not a sample: the method of fstests (generic/482, btrfs/192).

Inside the VM, device-mapper's log-writes target sits on the test disk and logs every block write, in the order the
disk completed them, with its FLUSH and FUA flags, to a second disk; marks name the parts of the run (an apply, a
rollback, an apply killed at a crash point, the recover after it). On the host this module reads the log (the
format of the kernel's drivers/md/dm-log-writes.c: a super block, then one sector per entry with the written data
after it) and replays it onto a copy of the pristine disk, entry by entry. After every FLUSH or FUA entry (with
`--every`, after every entry) the disk is in a state a power cut can leave it in; each such state is copied and:

- `snapinst recover` runs on it (in a private mount namespace, the root mounted where the guest had it);
- the tree must then be exactly BEFORE (the pristine tree) or exactly AFTER (the plan's tree: the state at the
  `apply-done` mark), the running system's file left out, with nothing left in the stage and no recovery-failed
  stamp;
- the running system's file (`/etc/vm-writer.log`, a record appended and fsynced every 20 ms through the apply,
  each then marked `durable-N` in the log) holds each record once, in order, and every record marked durable
  before the state, in the tree itself;
- a second `recover` must change nothing (it does nothing, and the manifest is the same);
- after unmounting, `btrfs check --readonly` or `e2fsck -fn` must find the filesystem clean.

At the marks the state is known: `apply-done` and `recover-done` must be AFTER, `rollback-done` BEFORE.

    python3 logwrites.py check --layout L --fs F --log LOG --disk VDA --before BEFORE.json --snapinst BIN
                               --out RESULT.json [--every]

runs the check (it must run as root, in a mount namespace of its own: `unshare -m --propagation private`).
"""

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import artefacts
import manifest as mf

LOG_FLUSH, LOG_FUA, LOG_DISCARD, LOG_MARK = 1 << 0, 1 << 1, 1 << 2, 1 << 3
WRITE_LOG_MAGIC = 0x6a736677736872
WRITE_LOG_VERSION = 1
MOUNT_AT = "/mnt"  # where the guest mounted the disk (records hold the root's path)
# What each mark says the state is.
MARK_STATE = {"apply-done": "after", "rollback-done": "before", "recover-done": "after"}
WRITER_FILE = "etc/vm-writer.log"  # the running system's file, relative to the root


class Entry:
    __slots__ = ("index", "sector", "nr_sectors", "flags", "data_at", "mark")

    def __init__(self, index, sector, nr_sectors, flags, data_at, mark):
        self.index, self.sector, self.nr_sectors, self.flags = index, sector, nr_sectors, flags
        self.data_at, self.mark = data_at, mark


def read_log(path):
    """(sector size, entries) of the log at `path`."""
    with open(path, "rb") as f:
        magic, version, nr_entries, sectorsize = struct.unpack("<QQQI", f.read(28))
        if magic != WRITE_LOG_MAGIC:
            raise SystemExit("logwrites: %s is not a log-writes log (magic %#x)" % (path, magic))
        if version != WRITE_LOG_VERSION:
            raise SystemExit("logwrites: %s: log version %d, expected %d" % (path, version, WRITE_LOG_VERSION))
        entries = []
        pos = sectorsize
        for i in range(nr_entries):
            f.seek(pos)
            block = f.read(sectorsize)
            if len(block) < 32:
                raise SystemExit("logwrites: %s: the log ends inside entry %d" % (path, i))
            sector, nr_sectors, flags, data_len = struct.unpack("<QQQQ", block[:32])
            if not flags and not nr_sectors:
                raise SystemExit("logwrites: %s: entry %d is empty (a malformed log)" % (path, i))
            mark = block[32:32 + data_len].split(b"\0")[0].decode() if flags & LOG_MARK else None
            pos += sectorsize
            data_at = pos
            if not flags & LOG_DISCARD:
                pos += nr_sectors * sectorsize
            entries.append(Entry(i, sector, nr_sectors, flags, data_at, mark))
        return sectorsize, entries


def apply_entry(log, disk, sectorsize, e):
    """Write entry `e` of the open log onto the open disk (a discard reads back as zeros)."""
    if not e.nr_sectors:
        return
    size = e.nr_sectors * sectorsize
    if e.flags & LOG_DISCARD:
        disk.seek(e.sector * sectorsize)
        disk.write(b"\0" * size)
        return
    log.seek(e.data_at)
    data = log.read(size)
    disk.seek(e.sector * sectorsize)
    disk.write(data)


def is_state(e, every):
    return every or e.flags & (LOG_FLUSH | LOG_FUA) or (e.mark is not None and not e.mark.startswith("durable-"))


def read_records(path):
    """(records in a writer's file in order, problem or None); a last line without its newline is a record being
    appended when the state was taken, and is not counted."""
    if not os.path.exists(path):
        return [], None
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    lines = text.split("\n")
    lines.pop()  # "" after the last newline, or the torn tail
    recs = []
    for i, l in enumerate(lines):
        if not l.isdigit():
            return recs, "%s line %d is %r, not a record number" % (path, i + 1, l[:40])
        if recs and int(l) <= recs[-1]:
            return recs, "%s: record %s follows record %d" % (path, l, recs[-1])
        recs.append(int(l))
    return recs, None


def sh(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


class StateCheck:
    """Recover one crash state of the disk and say what it is."""

    def __init__(self, args, before, registry):
        self.args, self.before, self.registry = args, before, registry
        self.root = MOUNT_AT if args.root == "top" else os.path.join(MOUNT_AT, "root")
        self.state_area = os.path.join(MOUNT_AT, ".snapinst-root")
        self.after = None  # the manifest of AFTER, once the apply-done mark gave it

    def recover(self):
        env = dict(os.environ, SNAPINST_REGISTRY=self.registry)
        r = subprocess.run([self.args.snapinst, "recover", "--root", self.root, "--json"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        actions = []
        for line in r.stdout.splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("event") == "recovered":
                actions.append(j.get("action"))
        return r.returncode, actions, r.stderr.strip()

    def writer_problems(self, durable):
        """What is wrong with the running system's records: each once and in order in the tree, and every record
        up to `durable` there (on btrfs, what a directory target's system writes after the last carry-over round is
        handed over into the tree right after the exchange, or by the recovery's finishing: docs/transactions.md)."""
        recs, problem = read_records(os.path.join(self.root, WRITER_FILE))
        problems = [problem] if problem else []
        lost = [n for n in range(1, durable + 1) if n not in set(recs)]
        if lost:
            problems.append("%d durable records lost (of %d): %s" % (len(lost), durable, lost[:10]))
        return problems

    def check(self, image, durable=0):
        """(state: "before" | "after" | "bad", problems, manifest); `durable`: the last record the running system
        had made durable."""
        problems = []
        loop = sh(["losetup", "--find", "--show", image]).stdout.strip()
        mounted = sh(["mount", "-t", self.args.fs, loop, MOUNT_AT]).returncode == 0
        m = None
        try:
            if not mounted:
                return "bad", ["the state does not mount"], None
            rc, actions, err = self.recover()
            if rc != 0:
                problems.append("recover exited %d: %s" % (rc, err.splitlines()[-1] if err else ""))
            m = without_writer(mf.manifest(self.root))
            problems += self.writer_problems(durable)
            stage = os.path.join(self.state_area, "stage")
            if os.path.isdir(stage) and os.listdir(stage):
                problems.append("left in the stage: %s" % sorted(os.listdir(stage)))
            if os.path.exists(os.path.join(self.state_area, "recovery-failed")):
                problems.append("recovery-failed stamp")
            rc2, actions2, err2 = self.recover()
            if rc2 != 0 or any(a != "nothing" for a in actions2):
                problems.append("the second recover did %s (exit %d) %s" % (actions2, rc2, err2))
            if without_writer(mf.manifest(self.root)) != m:
                problems.append("the second recover changed the tree")
        finally:
            if mounted:
                sh(["umount", MOUNT_AT])
            sh(["losetup", "-d", loop])
            artefacts.forget_btrfs_devices()
        fsck = (["btrfs", "check", "--readonly", image] if self.args.fs == "btrfs" else ["e2fsck", "-fn", image])
        r = sh(fsck)
        if r.returncode != 0:
            problems.append("%s: exit %d: %s" % (" ".join(fsck[:-1]), r.returncode, r.stdout.strip()[-300:]))
        if m is None:
            return "bad", problems, None
        state = "before" if m == self.before else "after" if self.after is not None and m == self.after else "neither"
        return state, problems, m


def without_writer(m):
    return {k: v for k, v in m.items() if k != "/" + WRITER_FILE}


def check(args):
    before = without_writer(mf.load(args.before))
    sectorsize, entries = read_log(args.log)
    marks = {e.mark: e.index for e in entries if e.mark}
    for want in ("start", "apply-done", "rollback-done", "killed", "recover-done", "end"):
        if want not in marks:
            raise SystemExit("logwrites: the log has no mark %r (marks: %s)" % (want, sorted(marks)))
    tmp = tempfile.mkdtemp(prefix="snapinst-logwrites.", dir=os.path.dirname(os.path.abspath(args.out)))
    registry = os.path.join(tmp, "registry")
    os.makedirs(registry)
    work, state_img = os.path.join(tmp, "work.img"), os.path.join(tmp, "state.img")
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", args.disk, work], check=True)
    checker = StateCheck(args, before, registry)
    # The states from the log's start (the mark `start`, before the mount) to its end.
    first, last = marks["start"], marks["end"]
    states = [e for e in entries[first:last + 1] if is_state(e, args.every)]
    result = {"layout": args.layout, "entries": len(entries), "flush_fua": sum(
        1 for e in entries if e.flags & (LOG_FLUSH | LOG_FUA)), "states": 0, "before": 0, "after": 0, "bad": 0,
        "problems": [], "marks": {}, "every": args.every}
    t0 = time.monotonic()
    pending = []  # states seen before AFTER was known (the apply-done mark): classified once it is
    durable = 0
    result["durable_records"] = 0
    with open(args.log, "rb") as log, open(work, "r+b") as disk:
        at = 0
        for e in states:
            while at <= e.index:
                apply_entry(log, disk, sectorsize, entries[at])
                if entries[at].mark and entries[at].mark.startswith("durable-"):
                    durable = max(durable, int(entries[at].mark[len("durable-"):]))
                at += 1
            result["durable_records"] = durable
            disk.flush()
            os.fsync(disk.fileno())
            subprocess.run(["cp", "--sparse=always", "--reflink=auto", work, state_img], check=True)
            state, problems, m = checker.check(state_img, durable)
            if e.mark == "apply-done":
                if m is None or m == before:
                    problems.append("at the apply-done mark the tree is %s" % ("unreadable" if m is None else
                                                                               "BEFORE"))
                else:
                    checker.after = m
                    mf.save(m, os.path.join(os.path.dirname(args.out), "%s.after.json" % args.layout))
                    state = "after"
                    for p_index, p_m, p_problems in pending:
                        p_state = "before" if p_m == before else "after" if p_m == m else "neither"
                        record(result, p_index, p_state, p_problems + neither_detail(p_state, p_m, before, m), entries)
                    pending = []
            if e.mark in MARK_STATE and state != MARK_STATE[e.mark]:
                problems.append("at the %s mark the tree is %s, not %s" % (e.mark, state, MARK_STATE[e.mark]))
            if e.mark:
                result["marks"][e.mark] = state
            if state == "neither" and checker.after is None and not problems:
                pending.append((e.index, m, problems))
                continue
            record(result, e.index, state, problems + neither_detail(state, m, before, checker.after), entries)
            if result["states"] % 25 == 0:
                print("logwrites: %s: %d of %d states checked (%d bad), %.0fs" % (
                    args.layout, result["states"], len(states), result["bad"], time.monotonic() - t0), flush=True)
    for p_index, p_m, p_problems in pending:
        record(result, p_index, "neither", p_problems + ["no AFTER to compare with"], entries)
    result["seconds"] = round(time.monotonic() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def neither_detail(state, m, before, after):
    """For a tree that is neither BEFORE nor AFTER: the first paths where it differs from each."""
    if state != "neither" or m is None:
        return []
    out = []
    for name, other in (("BEFORE", before), ("AFTER", after)):
        if other is None:
            continue
        paths = sorted(k for k in set(m) | set(other) if m.get(k) != other.get(k))
        out.append("differs from %s at %d paths: %s" % (name, len(paths), ", ".join(paths[:5])))
    return out


def record(result, index, state, problems, entries):
    result["states"] += 1
    if state == "neither":
        problems = problems + ["the tree is neither BEFORE nor AFTER"]
    if problems:
        result["bad"] += 1
        if len(result["problems"]) < 20:
            result["problems"].append("entry %d (%s): %s" % (index, flags_text(entries[index]), "; ".join(problems)))
    else:
        result[state] += 1


def flags_text(e):
    names = [n for bit, n in ((LOG_FLUSH, "FLUSH"), (LOG_FUA, "FUA"), (LOG_DISCARD, "DISCARD"), (LOG_MARK, "MARK"))
             if e.flags & bit]
    return "|".join(names) + (" " + e.mark if e.mark else "") or "write"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--layout", required=True)
    c.add_argument("--fs", required=True, choices=["btrfs", "ext4"])
    c.add_argument("--root", default="dir", help="where the root is: dir/subvol (MOUNT/root) or top")
    c.add_argument("--log", required=True)
    c.add_argument("--disk", required=True, help="the pristine disk the log starts from")
    c.add_argument("--before", required=True)
    c.add_argument("--snapinst", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--every", action="store_true", help="a state after every entry, not only after FLUSH/FUA")
    args = ap.parse_args()
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
