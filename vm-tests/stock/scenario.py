"""The stock-layout boots and their checks (run by run.sh).

For each layout: the disk's install boot (from -kernel: grub-install, update-grub), then every other boot through
OVMF and GRUB. The main run: apply the kernel plan, reboot into the new kernel, roll back, reboot into the old one,
every filesystem as before. The cuts: the machine resets at a crash point of that apply, or is killed (a power cut)
at a random instant of it; the next boot must come up and every filesystem must be exactly before or exactly after.
Between boots the host reads the disk read-only: each filesystem's whole-tree manifest (vm-tests/manifest.py; the
ESP through mtools, as this host's kernel may have no vfat).
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import manifest  # noqa: E402

os.environ["MTOOLS_SKIP_CHECK"] = "1"  # a partition at an offset has no disk geometry to check

# What the running system writes on every boot (the journal, the random seed, ...) and snapinst's own state areas:
# never part of a transaction, so left out of the comparison.
VOLATILE = ("/var/log", "/var/lib/systemd", "/var/tmp", "/tmp", "/var/lib/snapinst", "/.snapinst", "/root/.cache",
            "/var/cache/private")
# Made afresh by the transaction's hooks with a timestamp or a hash of one inside: only whether they are there is
# compared.
GENERATED = (re.compile(r"^/(boot/)?initrd\.img-"), re.compile(r"^/var/lib/initramfs-tools/"))
# FAT has no journal: lost clusters that a cut leaves on the ESP are saved as /FSCKnnnn.REC by the boot's fsck.vfat -a.
# They are counted (a column of the table), not compared: the README says so.
LOST_CLUSTERS = re.compile(r"^/FSCK[0-9]{4}\.REC$")


def lost_cluster_files(m, fstype):
    """The FSCKnnnn.REC files of a FAT filesystem's manifest."""
    return [k for k in m if fstype == "vfat" and LOST_CLUSTERS.match(k)]


def log(msg):
    print("stock-boot: " + msg, flush=True)


class Failure(Exception):
    pass


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def mtools(cmd):
    """Run an mtools command; its stdout, or a Failure with its stderr."""
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise Failure("%s failed: %s" % (" ".join(cmd), r.stderr.strip()[-1000:]))
    return r.stdout


def comparable(m, place, fstype):
    """A manifest without the volatile paths, the mtimes, the contents of generated files and FAT's saved lost
    clusters."""
    out = {}
    lost = set(lost_cluster_files(m, fstype))
    for k, e in m.items():
        if k in lost or any(k == v or k.startswith(v + "/") for v in VOLATILE):
            continue
        e = {f: x for f, x in e.items() if f != "mtime"}
        full = (place.rstrip("/") + k) if place != "/" else k
        if any(g.match(full) for g in GENERATED):
            e = {"type": e["type"]}
        out[k] = e
    return out


class Disk:
    """Read the filesystems of a raw disk image (read-only loop device, read-only mounts without log replay)."""

    def __init__(self, image, layout):
        self.image, self.layout = image, layout
        self.lost_clusters = 0  # FSCKnnnn.REC files on the ESP

    def manifests(self):
        table = json.loads(subprocess.check_output(["sfdisk", "-J", self.image], text=True))["partitiontable"]
        parts = table["partitions"]
        out = {}
        for p in self.layout:
            entry = parts[p["partition"] - 1]
            loop = subprocess.check_output(
                ["losetup", "-f", "--show", "-r", "-o", str(entry["start"] * 512), "--sizelimit",
                 str(entry["size"] * 512), self.image], text=True).strip()
            try:
                m = self._manifest(loop, p)
                self.lost_clusters += len(lost_cluster_files(m, p["fstype"]))
                out[p["place"]] = comparable(m, p["place"], p["fstype"])
            finally:
                subprocess.run(["losetup", "-d", loop], check=False)
                subprocess.run(["btrfs", "device", "scan", "--forget"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=False)
        return out

    def _manifest(self, dev, p):
        d = tempfile.mkdtemp(prefix="snapinst-stock.")
        try:
            if p["fstype"] == "vfat":
                check = subprocess.run(["fsck.vfat", "-n", dev], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
                if check.returncode != 0:
                    raise Failure("fsck.vfat -n on the ESP: %s" % check.stdout.strip()[-1000:])
                tree = os.path.join(d, "t")
                os.makedirs(tree)
                # (mtools asks a loop device for a disk geometry it does not have, and says so on stderr)
                if mtools(["mdir", "-b", "-i", dev, "::/"]).strip():
                    mtools(["mcopy", "-s", "-m", "-n", "-i", dev, "::/*", tree + "/"])
                m = manifest.manifest(tree)
                # mcopy makes every file 0644 and its own: FAT has no modes or owners to compare.
                return {k: {f: x for f, x in e.items() if f not in ("mode", "uid", "gid")} for k, e in m.items()}
            opts = {"ext4": "ro,noload", "btrfs": "ro,rescue=nologreplay,subvol=%s" % p.get("subvol", "")}[p["fstype"]]
            run(["mount", "-t", p["fstype"], "-o", opts, dev, d])
            try:
                return manifest.manifest(d)
            finally:
                run(["umount", d])
        finally:
            shutil.rmtree(d, ignore_errors=True)


class Boot:
    def __init__(self, console, rc, killed, seconds):
        self.console, self.rc, self.killed, self.seconds = console, rc, killed, seconds
        self.lines = [l[len("@@STOCK "):].rstrip("\r") for l in console.splitlines() if l.startswith("@@STOCK ")]

    def get(self, key):
        for l in self.lines:
            if l == key or l.startswith(key + " "):
                return l[len(key):].strip()
        return None

    def events(self):
        out = []
        for l in self.lines:
            if l.startswith("apply-event "):
                try:
                    out.append(json.loads(l[len("apply-event "):]))
                except ValueError:
                    pass
        return out


class Machine:
    def __init__(self, args, name, image_dir, run_dir):
        self.args, self.name, self.image_dir = args, name, image_dir
        self.dir = os.path.join(run_dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.n = 0

    def boot(self, disk, vars_fd, mode, direct=False, kill_after_apply_start=None):
        self.n += 1
        tag = "%s.boot%d" % (os.path.basename(disk), self.n)
        console = os.path.join(self.dir, tag + ".console.log")
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2", "-display", "none", "-vga", "none",
               "-monitor", "none", "-nic", "none", "-no-reboot", "-serial", "file:" + console,
               "-drive", "file=%s,format=raw,if=virtio,cache=none" % disk,
               "-fw_cfg", "name=opt/snapinst/mode,string=%s" % mode]
        if direct:
            with open(os.path.join(self.image_dir, "cmdline")) as f:
                cmdline = f.read().strip()
            cmd += ["-kernel", os.path.join(self.image_dir, "vmlinuz"), "-initrd",
                    os.path.join(self.image_dir, "initrd.img"), "-append", cmdline]
        else:
            cmd += ["-drive", "if=pflash,format=raw,readonly=on,file=" + self.args.ovmf_code,
                    "-drive", "if=pflash,format=raw,file=" + vars_fd]
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=open(os.path.join(self.dir, tag + ".qemu.log"), "w"),
                                stderr=subprocess.STDOUT)
        killed = False
        deadline = t0 + self.args.timeout
        kill_at = None
        while proc.poll() is None:
            time.sleep(0.5)
            if kill_after_apply_start is not None and kill_at is None and "@@STOCK apply-start" in _read(console):
                kill_at = time.time() + kill_after_apply_start
            if (kill_at is not None and time.time() >= kill_at) or time.time() > deadline:
                proc.kill()
                killed = True
                proc.wait()
        if killed and kill_at is None:
            raise Failure("%s: boot %d (%s) did not finish in %d s (console: %s)"
                          % (self.name, self.n, mode, self.args.timeout, console))
        b = Boot(_read(console), proc.returncode, killed, time.time() - t0)
        log("%s: boot %d (%s%s): %.0f s%s" % (self.name, self.n, mode, ", -kernel" if direct else ", OVMF+GRUB",
                                             b.seconds, ", power cut" if killed else ""))
        return b


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def copy_disk(src, dst):
    run(["cp", "--sparse=always", src, dst])


class Layout:
    def __init__(self, args, name, image_dir, run_dir):
        self.args, self.name, self.image_dir = args, name, image_dir
        with open(os.path.join(image_dir, "layout.json")) as f:
            self.parts = json.load(f)
        # The root's backend (auto): btrfs on a btrfs /, the overlay on any other.
        self.backend = "btrfs" if any(p["place"] == "/" and p["fstype"] == "btrfs" for p in self.parts) else "overlay"
        self.m = Machine(args, name, image_dir, run_dir)
        self.dir = self.m.dir
        self.old = args.old_kernel.replace("linux-image-", "")
        self.new = args.new_kernel.replace("linux-image-", "")
        self.passed, self.failed, self.rows = 0, 0, []

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            log("%s: FAIL: %s" % (self.name, what))
        return ok

    def fresh(self, tag, start=None):
        """A disk and firmware variables for a run: copies of the installed disk and OVMF's empty variables, or of
        `start`, a (disk, vars) pair."""
        disk = os.path.join(self.dir, tag + ".img")
        vars_fd = os.path.join(self.dir, tag + ".vars.fd")
        copy_disk(start[0] if start else self.installed, disk)
        shutil.copy(start[1] if start else self.args.ovmf_vars, vars_fd)
        return disk, vars_fd

    def install(self):
        """The disk after its install boot (cached beside the image)."""
        self.installed = os.path.join(self.image_dir, "installed.img")
        if os.path.exists(self.installed):
            return
        tmp = self.installed + ".tmp"
        copy_disk(os.path.join(self.image_dir, "disk.img"), tmp)
        b = self.m.boot(tmp, None, "install", direct=True)
        if b.get("grub-install-rc") != "0" or b.get("update-grub-rc") != "0" or b.get("end mode=install") is None:
            raise Failure("%s: the install boot failed: grub-install %s, update-grub %s (console: %s.boot%d)"
                          % (self.name, b.get("grub-install-rc"), b.get("update-grub-rc"), tmp, self.m.n))
        os.replace(tmp, self.installed)

    def booted(self, b, mode, kernel=None):
        ok = self.check(b.get("end mode=%s" % mode) is not None, "boot %s reached the test unit's end" % mode)
        ok &= self.check(b.get("efi") == "yes", "boot %s booted through UEFI" % mode)
        uname = (b.get("begin mode=%s" % mode) or "").split("uname=")[-1]
        if kernel:
            ok &= self.check(uname == kernel, "boot %s runs kernel %s (uname -r: %r)" % (mode, kernel, uname))
        return uname

    def compare(self, got, want, what):
        ok = True
        for place in want:
            d = manifest.diff(want[place], got.get(place, {}), limit=15)
            if not self.check(not d, "%s: %s is as %s" % (what, place, "expected")):
                log("  " + "\n  ".join(d))
                ok = False
        return ok

    def side(self, got, before=None, after=None):
        """'before', 'after', 'unchanged' (where the plan changes nothing) or 'NEITHER' (logged with both
        differences), per filesystem."""
        before, after = before or self.pre, after or self.post
        sides = {}
        for place in before:
            if got.get(place) == before[place]:
                # (a filesystem the plan does not change must just be as it was)
                sides[place] = "unchanged" if before[place] == after[place] else "before"
            elif got.get(place) == after[place]:
                sides[place] = "after"
            else:
                sides[place] = "NEITHER"
                log("  %s: %s differs from before:\n    %s\n  and from after:\n    %s" % (
                    self.name, place, "\n    ".join(manifest.diff(before[place], got.get(place, {}), 8)),
                    "\n    ".join(manifest.diff(after[place], got.get(place, {}), 8))))
        return sides

    def main_run(self):
        disk, vars_fd = self.fresh("main")
        self.pre = Disk(disk, self.parts).manifests()
        b = self.m.boot(disk, vars_fd, "apply")
        self.booted(b, "apply", self.old)
        self.check((b.get("apply-rc") or "").split(" ")[0] == "0", "apply exits 0 (got %s)" % b.get("apply-rc"))
        summary = [e for e in b.events() if e.get("event") == "summary"]
        self.check(summary and summary[-1].get("outcome") == "committed", "the apply's summary says committed")
        t = [float(x) for x in re.findall(r"uptime=([0-9.]+)", " ".join(
            [l for l in b.lines if l.startswith("apply-start") or l.startswith("apply-rc")]))]
        self.apply_s = (t[-1] - t[0]) if len(t) >= 2 else 120.0
        self.post = Disk(disk, self.parts).manifests()
        for place in self.pre:
            self.check(self.post[place] != self.pre[place] or place in ("/home", "/boot/efi"),
                       "the apply changed %s" % place)
        boot_fs = "/boot" if "/boot" in self.post else "/"
        prefix = "" if boot_fs == "/boot" else "/boot"
        self.check(prefix + "/vmlinuz-" + self.new in self.post[boot_fs], "after the apply /boot has vmlinuz-" + self.new)
        self.check("/lib/modules/" + self.new in self.post["/"] or "/usr/lib/modules/" + self.new in self.post["/"],
                   "after the apply /lib/modules has " + self.new)
        b = self.m.boot(disk, vars_fd, "rollback")
        self.booted(b, "rollback", self.new)
        self.check(b.get("rollback-rc") == "0", "rollback exits 0 (got %s)" % b.get("rollback-rc"))
        b = self.m.boot(disk, vars_fd, "check")
        self.booted(b, "check", self.old)
        final = Disk(disk, self.parts).manifests()
        self.compare(final, self.pre, "after the rollback")
        # (the plan's own .deb, put on the disk with the test, is there before the apply too)
        gone = [k for place, m in final.items() for k in m if self.new in k and k not in self.pre.get(place, {})]
        self.check(not gone, "after the rollback nothing of %s is left (%s)" % (self.new, gone[:5]))
        self.rows.append(("main", "apply %.0f s in the guest" % self.apply_s, "committed, rolled back",
                          "%s, then %s" % (self.new, self.old), "-"))
        os.remove(disk)

    # The writer run's files (vm-tests/stock/guest/snapinst-stocktest): its own, in a directory of /, in /etc (which
    # the plan changes) and in /home (a filesystem the plan changes), and the file the plan writes too.
    WRITER_OWN = ("/var/lib/stock-writer/own.log", "/etc/stock-writer.log", "/home/stock-writer.log")
    WRITER_CONFLICT = "/etc/snapinst-stock.conf"
    # What the writer plan (guest/writer-plan.json) changes, below which a difference from before the apply is
    # expected.
    WRITER_PLAN = ("/etc/snapinst-stock.conf", "/etc/motd", "/boot/snapinst-stock.txt",
                   "/boot/efi/EFI/snapinst-stock.txt", "/home/stock")

    @staticmethod
    def writer_files(b):
        """{path: {"lines", "last", "contiguous", "records" (the set of record numbers), "head"}} from a writer-check
        boot, the kept copies under "kept:PATH"."""
        out = {}
        for l in b.lines:
            m = re.match(r"^writer-(file|kept) (\S+) lines=(\d+) last=(\d+) contiguous=(\w+) ranges=(\S+) head=(.*)$",
                         l)
            if m:
                key = m.group(2) if m.group(1) == "file" else "kept:" + m.group(2)
                recs = set()
                for r in m.group(6).split(",") if m.group(6) != "-" else []:
                    lo, hi = r.split("-")
                    recs.update(range(int(lo), int(hi) + 1))
                out[key] = {"lines": int(m.group(3)), "last": int(m.group(4)), "contiguous": m.group(5) == "yes",
                            "records": recs, "head": m.group(7)}
        return out

    @staticmethod
    def conflict_paths(b):
        try:
            v = json.loads(b.get("conflicts") or "{}")
        except ValueError:
            return None
        return sorted({c["path"] for t in v.get("transactions", []) for c in t.get("conflicts", [])})

    @staticmethod
    def newest_conflicts(b):
        """(plan, conflict paths) of the newest transaction that lists conflicts, from a writer-check boot."""
        try:
            v = json.loads(b.get("conflicts") or "{}")
        except ValueError:
            return None, None
        t = (v.get("transactions") or [{}])[0]
        return t.get("plan"), sorted(c["path"] for c in t.get("conflicts", []))

    @staticmethod
    def kept_paths(b, path):
        """Where the conflicts of a writer-check boot say the running system's versions of `path` are kept."""
        try:
            v = json.loads(b.get("conflicts") or "{}")
        except ValueError:
            return []
        return [c["kept"] for t in v.get("transactions", []) for c in t.get("conflicts", [])
                if c.get("path") == path and c.get("kept")]

    def writer_changes_only(self, got, want, allowed, what):
        """Every filesystem of `got` is `want` but for the writer's files, `allowed` paths (and what is below them)
        and their directories."""
        keep_out = set(self.WRITER_OWN) | {"/var/lib/stock-writer", self.WRITER_CONFLICT} | set(allowed)
        def full(place, k):
            return k if place == "/" else place.rstrip("/") + (k if k != "/" else "")
        def expected(path):
            return any(path == p or path.startswith(p + "/") or p.startswith(path.rstrip("/") + "/")
                       for p in keep_out)
        for place in want:
            w = {k: e for k, e in want[place].items() if not expected(full(place, k))}
            g = {k: e for k, e in got.get(place, {}).items() if not expected(full(place, k))}
            d = manifest.diff(w, g, limit=15)
            if not self.check(not d, "%s: %s holds nothing else changed or lost" % (what, place)):
                log("  " + "\n  ".join(d))

    def writer_check_records(self, files, last, what):
        for f in self.WRITER_OWN:
            r = files.get(f)
            self.check(r is not None and r["contiguous"] and r["last"] == last,
                       "%s: %s holds every record 1..%d, none twice (%s)" % (what, f, last, r))

    def writer_run(self):
        """A writer through an apply until the reboot, and through a keeping rollback until the next one: every
        record of its own files is in the tree the machine boots; the file the plan writes too is the one conflict
        (the plan's version in the tree, the writer's kept, every record in one or the other)."""
        disk, vars_fd = self.fresh("writer")
        pre = Disk(disk, self.parts).manifests()
        b = self.m.boot(disk, vars_fd, "writer-apply")
        self.booted(b, "writer-apply", self.old)
        self.check((b.get("apply-rc") or "").split(" ")[0] == "0", "writer apply exits 0 (got %s)" % b.get("apply-rc"))
        n1 = int(b.get("writer-last") or 0)
        c = self.m.boot(disk, vars_fd, "writer-check")
        self.booted(c, "writer-check", self.old)
        files = self.writer_files(c)
        self.writer_check_records(files, n1, "after the apply and a reboot")
        conf = files.get(self.WRITER_CONFLICT) or {}
        self.check(conf.get("head") == "stock=1", "after the apply %s is the plan's (%s)" % (self.WRITER_CONFLICT, conf))
        conflicts = self.conflict_paths(c)
        self.check(conflicts == [self.WRITER_CONFLICT], "the conflicts are exactly %s (got %s)"
                   % (self.WRITER_CONFLICT, conflicts))
        kept = [files.get("kept:" + k) for k in self.kept_paths(c, self.WRITER_CONFLICT)]
        kept = [r for r in kept if r]
        seen = max([r["last"] for r in kept if r["contiguous"] and r["head"] == "record 1"] or [0])
        tail = conf.get("lines", 0)  # records appended to the plan's version after the commit (a live commit)
        # (btrfs: the tree has the plan's version alone, the kept copy every record, the later ones carried at the
        # boot; a live commit: the records after the commit's swap are appended to the plan's version in the tree)
        split = seen == n1 and tail == 0 or (tail == n1 - seen and conf.get("last") == n1)
        self.check(split, "every record of %s is in the tree or the kept copy, once (kept 1..%d, %d in the tree, the "
                   "last %s, %d written)" % (self.WRITER_CONFLICT, seen, tail, conf.get("last"), n1))
        self.writer_changes_only(Disk(disk, self.parts).manifests(), pre, self.WRITER_PLAN, "after the apply")
        r = self.m.boot(disk, vars_fd, "writer-rollback")
        self.booted(r, "writer-rollback")
        self.check(r.get("rollback-rc") == "0", "writer rollback exits 0 (got %s)" % r.get("rollback-rc"))
        n2 = int(r.get("writer-last") or 0)
        c = self.m.boot(disk, vars_fd, "writer-check")
        self.booted(c, "writer-check", self.old)
        files = self.writer_files(c)
        self.writer_check_records(files, n2, "after the rollback and a reboot")
        conf = files.get(self.WRITER_CONFLICT) or {}
        self.check(conf.get("head") == "record 1",
                   "after the rollback %s is the writer's version again (%s)" % (self.WRITER_CONFLICT, conf))
        # The writer went on appending to the plan's version through the rollback: the rollback's one conflict,
        # the version the generation before had in the tree, the running system's kept.
        plan, rolled = self.newest_conflicts(c)
        self.check(plan is None and rolled == [self.WRITER_CONFLICT],
                   "the rollback's conflicts are exactly %s (got %s, plan %s)" % (self.WRITER_CONFLICT, rolled, plan))
        have = set(conf.get("records", ()))
        for k in self.kept_paths(c, self.WRITER_CONFLICT):
            have |= (files.get("kept:" + k) or {}).get("records", set())
        lost = sorted(set(range(1, n2 + 1)) - have)
        self.check(not lost, "every record 1..%d of %s is in the tree or a kept copy (missing %d: %s)"
                   % (n2, self.WRITER_CONFLICT, len(lost), lost[:10]))
        self.writer_changes_only(Disk(disk, self.parts).manifests(), pre, (), "after the rollback")
        self.rows.append(("writer", "records: %d through the apply, %d through the rollback" % (n1, n2 - n1),
                          "every record kept; conflicts %s, then %s" % (",".join(conflicts or []),
                                                                       ",".join(rolled or [])), self.old, "-"))
        os.remove(disk)

    def cut_run(self, tag, mode, kill_after=None, start=None, before=None, after=None):
        """Boot `mode` on a fresh disk (or a copy of `start`, a (disk, vars) pair), reset at its crash point or
        killed `kill_after` s into the apply; then boot and check that every filesystem is `before` or `after`."""
        disk, vars_fd = self.fresh(tag, start)
        b = self.m.boot(disk, vars_fd, mode if kill_after is None else "apply", kill_after_apply_start=kill_after)
        what = "reset at %s" % mode.split("=", 1)[-1] if kill_after is None else \
            "power cut %.1f s into the apply" % kill_after
        if kill_after is None:
            self.check(b.get("cut-returned") is None and b.get("end mode=%s" % mode) is None,
                       "%s: the machine reset at the crash point" % tag)
        b2 = self.m.boot(disk, vars_fd, "check")
        uname = self.booted(b2, "check")
        self.check(not (b2.get("failed-units") or ""), "%s: no failed units after the cut (%s)"
                   % (tag, b2.get("failed-units")))
        d = Disk(disk, self.parts)
        sides = self.side(d.manifests(), before, after)
        vals = set(sides.values()) - {"unchanged"}
        self.check(vals in ({"before"}, {"after"}), "%s (%s): every filesystem before or every one after: %s"
                   % (tag, what, sides))
        self.rows.append((tag, what, "/".join(sorted(vals)), uname, str(d.lost_clusters)))
        os.remove(disk)

    def parts_run(self):
        """The crash points' plan (it writes into every filesystem): applied and rolled back uncut, leaving the
        committed disk for the rollback's crash points."""
        disk, vars_fd = self.fresh("parts")
        b = self.m.boot(disk, vars_fd, "parts-apply")
        self.booted(b, "parts-apply", self.old)
        self.check((b.get("apply-rc") or "").split(" ")[0] == "0", "parts apply exits 0 (got %s)" % b.get("apply-rc"))
        self.parts_post = Disk(disk, self.parts).manifests()
        for place in self.pre:
            self.check(self.parts_post[place] != self.pre[place], "the parts plan changed %s" % place)
        self.parts_after = (disk + ".after", vars_fd + ".after")
        copy_disk(disk, self.parts_after[0])
        shutil.copy(vars_fd, self.parts_after[1])
        b = self.m.boot(disk, vars_fd, "rollback")
        self.check(b.get("rollback-rc") == "0", "parts rollback exits 0 (got %s)" % b.get("rollback-rc"))
        self.compare(Disk(disk, self.parts).manifests(), self.pre, "after the parts plan's rollback")
        self.rows.append(("parts", "the crash points' plan, uncut", "committed, rolled back", self.old, "-"))
        os.remove(disk)

    def crash_points(self, points):
        """Every crash point of an apply and of a rollback, with the plan that writes into every filesystem."""
        self.parts_run()
        for fp, op in points:
            if op == "apply":
                self.cut_run("cut-" + fp, "parts-cut=" + fp, before=self.pre, after=self.parts_post)
            else:
                self.cut_run("cut-" + fp, "rollback-cut=" + fp, start=self.parts_after,
                             before=self.parts_post, after=self.pre)
        for f in self.parts_after:
            os.remove(f)


def layout_points(snapinst, backend):
    """The crash points an apply and a rollback reach on a root of `backend` with delta parts inside it
    (`snapinst failpoints`: name, operation, backends)."""
    out = []
    for line in subprocess.check_output([snapinst, "failpoints"], text=True).splitlines():
        name, op, backends = line.split("\t")
        if op not in ("apply", "rollback"):
            continue  # apply-failing is the journal's; recover-mid-recovery needs a recovery run by hand
        if backend in backends.split(",") or name in ("apply-mid-merge", "rollback-mid-swap"):
            out.append((name, op))  # the parts' merges and swaps are on every layout
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--timeout", type=int, default=2700)
    ap.add_argument("--t-start", type=float, default=time.time())
    ap.add_argument("--cuts", type=int, default=2)
    ap.add_argument("--crash-points", type=int, default=1)
    ap.add_argument("--writer", type=int, default=1)
    ap.add_argument("--main", type=int, default=1)
    ap.add_argument("--snapinst", required=True)
    ap.add_argument("--ovmf-code", required=True)
    ap.add_argument("--ovmf-vars", required=True)
    ap.add_argument("--old-kernel", required=True)
    ap.add_argument("--new-kernel", required=True)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    rng = random.Random(int(os.environ.get("SNAPINST_VM_SEED", str(int(time.time())))))
    passed = failed = 0
    tables = []
    for spec in args.images:
        name, image_dir = spec.split("=", 1)
        lay = Layout(args, name, image_dir, args.run_dir)
        try:
            lay.install()
            if args.main:
                lay.main_run()
            if args.writer:
                lay.writer_run()
            if args.main and args.crash_points:
                lay.cut_run("kernel-at-commit", "cut=apply-after-commit-record")
                lay.crash_points(layout_points(args.snapinst, lay.backend))
            for i in range(args.cuts if args.main else 0):
                lay.cut_run("random-%d" % (i + 1), "apply", kill_after=rng.uniform(0, lay.apply_s))
        except Failure as e:
            lay.failed += 1
            log("%s: FAIL: %s" % (name, e))
        passed += lay.passed
        failed += lay.failed
        tables.append((name, lay.rows))
    for name, rows in tables:
        print("\n%s layout:\n| run | what | filesystems after the next boot | kernel that boot ran | FSCK*.REC on the ESP |"
              "\n|---|---|---|---|---|" % name)
        for r in rows:
            print("| %s |" % " | ".join(r))
    log("total %.0f s" % (time.time() - args.t_start))
    print("stock-boot: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
