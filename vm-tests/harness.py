"""The snapinst VM crash-consistency tests: power cuts at random instants and at every named crash point, with the
boot-time recovery of a real Debian kernel checked against whole-tree manifests. Run through run.sh.

For each layout (artefacts.LAYOUTS: btrfs, the root a btrfs subvolume; overlay, a directory on ext4; ext4-top, the
top of an ext4 filesystem with an ext4 /boot and an xfs /srv mounted inside it; btrfs-live, a btrfs subvolume
mounted on its own, as a btrfs / is, with the same /boot and /srv inside it):
  1. reference: boot mode=apply on a copy of the pristine image, no cut. Its duration is T, the tree it leaves is
     AFTER (BEFORE is the pristine image's tree). The image it leaves is kept for the rollback crash points.
  2. power cuts: boot mode=apply, SIGKILL QEMU a random delay in [0, T] after the console shows apply-start; boot
     mode=recover (the init runs `snapinst recover --all` first thing on every boot, then once more); mount the
     image read-only on the host and check the tree is exactly BEFORE or AFTER, with status, list, the recover
     actions and the state area agreeing.
  3. named crash points from `snapinst failpoints`: boot with snapinst.failpoint=NAME (the engine resets the VM at
     that point), then recover and check the same way.
"""

import argparse
import concurrent.futures
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import artefacts
import manifest as mf

MARK = "SNAPINST-VM: "
LAYOUTS = artefacts.LAYOUTS
BOOT_TIMEOUT = 600
# Kernel messages that make a boot a failure whatever the tree looks like (the kernel logs at level <= 5 on the
# console: errors and warnings, so a WARN_ON or a filesystem error shows).
KERNEL_TROUBLE = re.compile(r"Kernel panic|BUG:|Oops|WARNING:|Call Trace|general protection|BTRFS (error|critical)|"
                            r"EXT4-fs error|EXT4-fs \(vda\): (error|warning)|overlayfs: .*(error|failed)|I/O error|"
                            r"blk_update_request|Buffer I/O")


def log(msg):
    print("vm-tests: " + msg, flush=True)


def fmt_s(s):
    return "%dm%02ds" % (s // 60, s % 60) if s >= 60 else "%.1fs" % s


# --------------------------------------------------------------------------------------------------------------
# One boot of the VM


class Boot:
    """What one boot printed and how it ended."""

    def __init__(self, name, log_path):
        self.name, self.log_path = name, log_path
        self.lines = []  # (host seconds since QEMU start, text)
        self.end = None  # "poweroff" | "reset" | "cut" | "timeout"
        self.duration = 0.0
        self.cut_after = None  # seconds after apply-start at which QEMU was killed
        self.qemu_rc = None

    def text(self):
        return "\n".join(l for _, l in self.lines)

    def marker(self, name):
        """(time, rest of line) of the first marker `name`, or None."""
        for t, l in self.lines:
            if l.startswith(MARK + name):
                return t, l[len(MARK) + len(name):].strip()
        return None

    def has(self, name):
        return self.marker(name) is not None

    def rc(self, name):
        m = self.marker(name)
        if m and "rc=" in m[1]:
            return int(m[1].split("rc=")[1].split()[0])
        return None

    def tagged(self, tag):
        p = MARK + tag + " "
        return [l[len(p):] for _, l in self.lines if l.startswith(p)]

    def json_lines(self, tag):
        out = []
        for l in self.tagged(tag):
            l = l.strip()
            if l.startswith("{"):
                try:
                    out.append(json.loads(l))
                except ValueError:
                    pass
        return out

    def json_object(self, tag):
        """The one JSON object a command printed (on one line or several)."""
        lines = self.tagged(tag)
        try:
            return json.loads("\n".join(lines))
        except ValueError:
            objs = [o for o in self.json_lines(tag) if isinstance(o, dict)]
            return objs[-1] if objs else None

    def kernel_trouble(self):
        return [l for _, l in self.lines if not l.startswith(MARK) and KERNEL_TROUBLE.search(l)]

    def actions(self, tag):
        return [j.get("action") for j in self.json_lines(tag) if j.get("event") == "recovered"]

    def events(self, tag):
        return [j.get("event") for j in self.json_lines(tag)]


def last_step_finished(line):
    """Whether a console line is the apply's `step_finished` event of its last step."""
    p = MARK + "apply-out "
    if not line.startswith(p) or '"step_finished"' not in line:
        return False
    try:
        e = json.loads(line[len(p):])
    except ValueError:
        return False
    return e.get("event") == "step_finished" and e.get("index") is not None and e.get("index") == e.get("total")


class VM:
    def __init__(self, kernel, initrd, accel, logdir):
        kfile = os.path.join(kernel["dir"], kernel["boot"])
        self.base = ["qemu-system-x86_64", "-M", "pc", "-smp", "1", "-m", "512", "-nodefaults", "-no-user-config",
                     "-display", "none", "-no-reboot", "-monitor", "none", "-kernel", kfile, "-initrd", initrd]
        self.base += accel
        self.logdir = logdir
        self.boots = 0
        self.boot_time = []  # host seconds from QEMU start to the "mounted" marker

    def boot(self, disk_dir, layout, mode, name, failpoint=None, cut_delay=None, boot_hook=False, after_steps=False,
             extra_disks=(), extra_append=()):
        """Boot the VM on the disk set in `disk_dir`, laid out as `layout`. With `cut_delay`, SIGKILL QEMU that many
        seconds after apply-start shows (with `after_steps`: after the apply's last step finished, where its commit
        phase begins). With `boot_hook`, the live layout runs `snapinst boot` before its root is mounted, as a
        machine's initramfs does."""
        self.boots += 1
        log_path = os.path.join(self.logdir, "%s.console.log" % name)
        b = Boot(name, log_path)
        lay = LAYOUTS[layout]
        append = ["console=ttyS0", "quiet", "loglevel=5", "panic=-1", "snapinst.mode=" + mode,
                  "snapinst.fs=" + lay["fs"], "snapinst.backend=" + lay["backend"], "snapinst.layout=" + lay["root"],
                  "snapinst.parts=%d" % lay["parts"]]
        if failpoint:
            append.append("snapinst.failpoint=" + failpoint)
        if boot_hook:
            append.append("snapinst.boot=1")
        append += list(extra_append)
        # The disk: cache=none opens the image with O_DIRECT, so QEMU keeps no write-back buffer of its own and a
        # completed guest write is in the host file, while the guest is told it has a volatile write cache and so
        # issues real flushes (FUA/flush, turned into fdatasync on the host). A SIGKILL of QEMU then loses exactly
        # what a power cut loses: everything still in the guest's page cache and whatever requests were in flight.
        # aio=threads: plain pwrite/preadv in QEMU's thread pool (no io_uring/native-AIO requirements).
        # cache=unsafe would be wrong: it ignores the guest's flushes, so it cannot tell flushed from unflushed
        # data, and a test of durability must not drop the guest's barriers. (A real disk could also lose or
        # reorder completed-but-unflushed writes; QEMU does not simulate that, so this is a lower bound.)
        drives = []
        for disk in artefacts.disks(layout) + list(extra_disks):
            drives += ["-drive", "file=%s,format=raw,if=virtio,cache=none,aio=threads" % os.path.join(disk_dir, disk)]
        cmd = self.base + ["-append", " ".join(append)] + drives + ["-serial", "file:" + log_path]
        if os.path.exists(log_path):
            os.unlink(log_path)
        errf = open(os.path.join(self.logdir, "%s.qemu.log" % name), "w")
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errf, stderr=subprocess.STDOUT)
        pos, partial = 0, b""
        deadline = None
        t_mounted = None

        def read_console():
            nonlocal pos, partial, deadline, t_mounted
            try:
                with open(log_path, "rb") as f:
                    f.seek(pos)
                    d = f.read()
            except FileNotFoundError:
                return
            if not d:
                return
            pos += len(d)
            now = time.monotonic() - t0
            parts = (partial + d).split(b"\n")
            partial = parts.pop()
            for raw in parts:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                b.lines.append((now, line))
                if line.startswith(MARK + "mounted") and t_mounted is None:
                    t_mounted = now
                if cut_delay is not None and deadline is None and (
                        last_step_finished(line) if after_steps else line.startswith(MARK + "apply-start")):
                    deadline = now + cut_delay

        try:
            while True:
                read_console()
                now = time.monotonic() - t0
                if deadline is not None and now >= deadline:
                    p.send_signal(signal.SIGKILL)  # the power cut
                    p.wait()
                    b.end = "cut"
                    b.cut_after = now - (deadline - cut_delay)
                    break
                if p.poll() is not None:
                    break
                if now > BOOT_TIMEOUT:
                    p.kill()
                    p.wait()
                    b.end = "timeout"
                    break
                wait = 0.005
                if deadline is not None:
                    wait = max(0.0005, min(wait, deadline - now))
                time.sleep(wait)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            errf.close()
        read_console()
        if partial:
            b.lines.append((time.monotonic() - t0, partial.decode("utf-8", "replace").rstrip("\r")))
        b.duration = time.monotonic() - t0
        b.qemu_rc = p.returncode
        if b.end is None:
            b.end = "poweroff" if b.has("poweroff") else "reset"
        if t_mounted is not None:
            self.boot_time.append(t_mounted)
        with open(os.path.join(self.logdir, "%s.timed.log" % name), "w") as f:
            f.write("# host seconds since QEMU started; ended by %s after %.2fs%s\n"
                    % (b.end, b.duration, "" if b.cut_after is None else
                       "; power cut %.3fs after apply-start" % b.cut_after))
            for t, l in b.lines:
                f.write("%7.3f %s\n" % (t, l))
        return b


# --------------------------------------------------------------------------------------------------------------
# Checks


class Failure(Exception):
    pass


class Result:
    def __init__(self, state, action, problems, m=None, fat_rec=0):
        self.state, self.action, self.problems, self.manifest = state, action, problems, m
        # FSCKnnnn.REC files fsck.vfat made of lost clusters at this boot (see fat_lost_cluster_files)
        self.fat_rec = fat_rec


RECLAIMED = re.compile(r"Reclaimed \d+ unused clusters? \(\d+ bytes\) in (\d+) chains?")


def fat_lost_cluster_files(boots, m):
    """The paths of the FSCKnnnn.REC files at the top of each FAT part, when the boot's `fsck.vfat -a` reported
    saving exactly that many lost cluster chains (FAT has no journal: a power cut while it is written leaves such
    clusters, and a machine's boot saves them so). Any other count is left to the tree comparison, which fails."""
    chains = sum(int(x.group(1)) for b in boots for x in map(RECLAIMED.search, b.tagged("fsck-vfat-out")) if x)
    files = [k for k in m for name, fs, _ in artefacts.PARTS
             if fs == "vfat" and re.fullmatch(r"/%s/FSCK\d{4}\.REC" % re.escape(name), k)]
    return files if files and len(files) == chains else []


def inspect_image(disk_dir, layout, ignore=()):
    """(manifest of the root with its parts, `ignore`d paths left out, entries left in the stage/ of any state area,
    recovery-failed stamp or None)."""
    with artefacts.MountedSet(disk_dir, layout) as ms:
        m = {k: v for k, v in ms.manifest().items() if k not in ignore}
        left = []
        stages = [os.path.join(state, "stage") for state in [ms.state] + ms.part_states]
        part_stages = os.path.join(ms.state, "part-stages")  # a copy-staged part's, in the root's state area
        if os.path.isdir(part_stages):
            stages += [os.path.join(part_stages, p) for p in sorted(os.listdir(part_stages))]
        for stage in stages:
            if os.path.isdir(stage):
                left += [os.path.join(os.path.relpath(stage, ms.tmp), e) for e in sorted(os.listdir(stage))]
        stamp = os.path.join(ms.state, "recovery-failed")
        failed = open(stamp, errors="replace").read().strip() if os.path.exists(stamp) else None
    return m, left, failed


def check_recovered(boot, image, layout, before, after, gens=(0, 1), names=("BEFORE", "AFTER"), ignore=(),
                    earlier=()):
    """Check a recover boot and the image it left. `before`/`after`: manifests of the trees before and after the
    interrupted transaction (for a rollback: the tree with the plan applied, and the original one), with the
    current generation each must show in `gens`; the paths in `ignore` are left out of the comparison; `earlier`:
    the boots since the cut before this one (whose fsck.vfat may have saved lost clusters too). Result.state
    is "before" or "after" relative to that transaction ("neither" is a failure). Returns a Result (problems empty
    when all is well)."""
    problems = ["kernel: " + l for l in boot.kernel_trouble()[:5]]
    if boot.end != "poweroff":
        problems.append("the recover boot ended by %s, not a clean power-off (QEMU rc %s)" % (boot.end, boot.qemu_rc))
    if boot.has("error"):
        problems.append("init: %s" % boot.marker("error")[1])
    if not boot.has("recovered rc=0"):
        problems.append("boot-time `snapinst recover --all` failed: %s" % str(boot.marker("recover-failed") or "no result"))
    actions = boot.actions("recover-out")
    bad = [a for a in actions if a not in ("rolled_back", "rolled_forward", "nothing")]
    if bad:
        problems.append("recover --json: unknown actions %r" % bad)
    again = boot.actions("recover2-out")
    if boot.rc("recover2-done") != 0:
        problems.append("the second recover exited %s" % boot.rc("recover2-done"))
    if [a for a in again if a != "nothing"]:
        problems.append("the second recover did something: %r" % again)
    status = boot.json_object("status-out")
    lst = boot.json_object("list-out")
    if not isinstance(status, dict):
        problems.append("no status --json output")
        status = {}
    if not isinstance(lst, dict):
        problems.append("no list --json output")
        lst = {}
    m, left, stamp = inspect_image(image, layout, ignore)
    rec = fat_lost_cluster_files(list(earlier) + [boot], m)
    m = {k: v for k, v in m.items() if k not in rec}
    if left:
        problems.append("stage left behind: %r" % left)
    if stamp is not None:
        problems.append("recovery-failed stamp: %s" % stamp)
    if m == before:
        state = "before"
    elif m == after:
        state = "after"
    else:
        state = "neither"
        problems.append("the tree is neither %s nor %s (%d paths differ from the first, %d from the second)"
                        % (names[0], names[1], mf.count_diff(before, m), mf.count_diff(after, m)))
    allowed = {"before": ("rolled_back", "nothing"), "after": ("rolled_forward", "nothing")}.get(state, ())
    if state != "neither":
        tree = names[0] if state == "before" else names[1]
        wrong = [a for a in actions if a not in allowed]
        if wrong:
            problems.append("the tree is %s but recover said %r" % (tree, wrong))
        want = gens[0] if state == "before" else gens[1]
        if status.get("current_generation") != want:
            problems.append("status current_generation %r, the tree is %s (generation %d)"
                            % (status.get("current_generation"), tree, want))
        if lst.get("current_generation") != want:
            problems.append("list current_generation %r, the tree is %s (generation %d)"
                            % (lst.get("current_generation"), tree, want))
        gl = lst.get("generations", [])
        cur = [g.get("generation") for g in gl if g.get("current")]
        # No generation listed at all is what a root shows before its first transaction got as far as writing
        # state.json (a crash right after taking the lock): acceptable for generation 0 only.
        if lst and cur != [want] and not (gl == [] and want == 0):
            problems.append("list marks generations %r current, want [%d]" % (cur, want))
    if status.get("in_progress", "missing") is not None:
        problems.append("status in_progress is %r, not null" % (status.get("in_progress", "missing"),))
    if status.get("recovery_failed") is not None:
        problems.append("status recovery_failed: %r" % status.get("recovery_failed"))
    unfinished = [t for t in lst.get("transactions", []) if t.get("state", "done") != "done"]
    if unfinished:
        problems.append("list shows unfinished transactions: %r" % unfinished)
    action = "rolled_forward" if "rolled_forward" in actions else "rolled_back" if "rolled_back" in actions \
        else "nothing"
    return Result(state, action, problems, m, len(rec))


# --------------------------------------------------------------------------------------------------------------
# The running system's writes (init.sh's apply-writer mode)


def writer_files(layout):
    """The files the guest's writer appends its numbered records to: one in /etc (a directory the plan changes) and,
    with parts, one on /srv and one on the ESP (filesystems the plan changes)."""
    parts = ["/srv/vm-writer.log", "/boot/efi/vm-writer.log"] if LAYOUTS[layout]["parts"] else []
    return ["/etc/vm-writer.log"] + parts


def durable_records(boot):
    """The last record the writer announced as fsynced (0: none): every record up to it was durable before the boot
    ended, whatever ended it."""
    last = 0
    for _, l in boot.lines:
        if l.startswith(MARK + "durable "):
            try:
                last = max(last, int(l[len(MARK) + len("durable "):].split()[0]))
            except (ValueError, IndexError):
                pass
    return last


def read_records(path, torn_tail=False):
    """(the records in a writer's file, in file order; a problem or None). A missing file has none. Each line must
    be a record number, each number once, in increasing order; with `torn_tail` (FAT: no journal, so a cut while
    a record is appended can leave its clusters unwritten) the last line may be anything, and is not counted."""
    if not os.path.exists(path):
        return [], None
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    if torn_tail and lines and not lines[-1].isdigit():
        lines.pop()
    recs = []
    for i, l in enumerate(lines):
        if not l.isdigit():
            return recs, "line %d is %r, not a record number" % (i + 1, l[:40])
        n = int(l)
        if recs and n <= recs[-1]:
            return recs, "record %d follows record %d (a record twice, or out of order)" % (n, recs[-1])
        recs.append(n)
    return recs, None


def writer_records(disk_dir, layout):
    """{file: ((records in the tree, problem), (records in generation 0's kept tree, problem) or None)}. Generation
    0's tree is read on the btrfs backend's own filesystem, to count what a directory target's running system wrote
    between the commit's last carry-over round and the exchange and the handover did not carry (it must carry
    all: docs/transactions.md)."""
    out = {}
    with artefacts.MountedSet(disk_dir, layout) as ms:
        for f in writer_files(layout):
            kept = None
            gen0 = os.path.join(ms.state, "gens", "0")
            if LAYOUTS[layout]["backend"] == "btrfs" and f.startswith("/etc/") and os.path.isdir(gen0):
                kept = read_records(os.path.join(gen0, f.lstrip("/")))
            out[f] = (read_records(os.path.join(ms.root, f.lstrip("/")), torn_tail=f.startswith("/boot/efi/")), kept)
    return out


# --------------------------------------------------------------------------------------------------------------
# The campaign of one layout


class Campaign:
    def __init__(self, layout, vm, pristine, before, workdir, logdir, rng, failpoints, cuts):
        self.layout, self.vm, self.pristine, self.before = layout, vm, pristine, before
        self.backend = LAYOUTS[layout]["backend"]
        self.work = os.path.join(workdir, layout)
        self.after_img = os.path.join(workdir, "%s-after" % layout)
        self.logdir = os.path.join(logdir, layout)
        os.makedirs(self.logdir, exist_ok=True)
        vm.logdir = self.logdir
        self.rng, self.failpoints, self.ncuts = rng, failpoints, cuts
        self.after = None
        self.T = None
        self.commit_s = 0.0
        self.late = 0.0
        self.counts = {"before": 0, "rolled_back": 0, "during": 0, "after": 0}
        self.fat_repairs = []  # the cuts after which fsck.vfat saved lost clusters of the ESP as files
        self.fp_passed = self.fp_total = 0
        self.nwriter = 0  # power cuts of an apply while the guest's writer runs
        self.full = False  # every crash point on this layout, even the ones its parts add nothing to
        self.writer_rows = []  # (case, cut after apply-start or None, tree, durable, in the tree, kept only)
        self.fp_rows = []
        self.passed = self.failed = 0
        self.failures = []
        self.evidence_images = 0

    # -- helpers
    def reset(self, src=None, dest=None):
        """Make `dest` (the work disk set) a copy of the set `src` (the pristine one)."""
        dest = dest or self.work
        os.makedirs(dest, exist_ok=True)
        for disk in artefacts.disks(self.layout):
            subprocess.run(["cp", "--sparse=always", "--reflink=auto", os.path.join(src or self.pristine, disk),
                            os.path.join(dest, disk)], check=True)

    def evidence(self, case, boots, result=None, extra=""):
        d = os.path.join(self.logdir, "FAILED-" + case)
        os.makedirs(d, exist_ok=True)
        for b in boots:
            if b and os.path.exists(b.log_path):
                shutil.copy2(b.log_path, d)
        with open(os.path.join(d, "report.txt"), "w") as f:
            f.write(extra + "\n")
            if result is not None:
                f.write("\n".join(result.problems) + "\n")
                if result.manifest is not None:
                    f.write("\n--- differences from BEFORE ---\n")
                    f.write("\n".join(mf.diff(self.before, result.manifest, limit=400)) + "\n")
                    if self.after is not None:
                        f.write("\n--- differences from AFTER ---\n")
                        f.write("\n".join(mf.diff(self.after, result.manifest, limit=400)) + "\n")
                    mf.save(result.manifest, os.path.join(d, "manifest.json"))
        if result is not None and result.state == "neither" and self.evidence_images < 2:
            self.evidence_images += 1
            self.reset(self.work, os.path.join(d, "disks"))
        return d

    def fail(self, case, msg, boots=(), result=None):
        d = self.evidence(case, boots, result, msg)
        self.failed += 1
        self.failures.append("%s %s: %s (evidence: %s)" % (self.layout, case, msg, d))
        log("FAIL %s %s: %s" % (self.layout, case, msg))
        if result is not None:
            for p in result.problems:
                log("       %s" % p)

    # -- 1. reference run
    def reference(self):
        self.reset()
        b = self.vm.boot(self.work, self.layout, "apply", "reference-apply")
        t0, t1 = b.marker("apply-start"), b.marker("apply-done")
        problems = []
        if b.end != "poweroff":
            problems.append("ended by %s" % b.end)
        if t1 is None or b.rc("apply-done") != 0:
            problems.append("apply did not succeed (rc %s)" % b.rc("apply-done"))
        if "committed" not in b.events("apply-out"):
            problems.append("no committed event")
        problems += ["kernel: " + l for l in b.kernel_trouble()[:5]]
        if problems:
            self.fail("reference", "the uncut apply failed: " + "; ".join(problems), [b])
            raise Failure("%s: the reference apply failed; see %s" % (self.layout, b.log_path))
        self.T = t1[0] - t0[0]
        summ = [j for j in b.json_lines("apply-out") if j.get("event") == "summary"]
        self.commit_s = (summ[-1].get("timings_ms") or {}).get("commit", 0) / 1000.0 if summ else 0.0
        m, left, stamp = inspect_image(self.work, self.layout)
        status = b.json_object("status-out") or {}
        if left or stamp or status.get("current_generation") != 1 or m == self.before:
            self.fail("reference", "after the uncut apply: stage %r, stamp %r, status %r, tree changed: %s"
                      % (left, stamp, status, m != self.before), [b])
            raise Failure("%s: the reference apply left a bad state" % self.layout)
        self.after = m
        mf.save(m, os.path.join(self.logdir, "after.manifest.json"))
        mf.save(self.before, os.path.join(self.logdir, "before.manifest.json"))
        self.reset(self.work, self.after_img)
        self.passed += 1
        log("%s: reference apply took T=%.2fs (commit phase %.0f ms; boot to apply-start %.2fs); BEFORE %s, "
            "AFTER %s (%d paths differ)" % (self.layout, self.T, self.commit_s * 1000, t0[0], mf.digest(self.before),
                                            mf.digest(m), mf.count_diff(self.before, m)))

    # -- 2. power cuts
    def cuts(self):
        for i in range(self.ncuts):
            case = "cut-%03d" % i
            if self.late and self.rng.random() < self.late:
                # Aimed at the commit phase (the last part of the apply, as long as the reference's commit timing
                # plus 0.3 s), where a uniform draw over [0, T] seldom lands.
                delay = self.rng.uniform(max(0.0, self.T - self.commit_s - 0.3), self.T)
            else:
                delay = self.rng.uniform(0, self.T)
            self.reset()
            a = r = None
            try:
                a = self.vm.boot(self.work, self.layout, "apply", case + "-apply", cut_delay=delay)
                if a.end == "poweroff" and a.rc("apply-done") == 0:
                    # This apply ran faster than the reference: it had finished and the VM had powered off before
                    # the instant of the cut. That is a cut after the end, and is checked like one.
                    a.cut_after = delay
                elif a.end != "cut":
                    self.fail(case, "the apply boot ended by %s before the cut (apply-start seen: %s, apply rc %s)"
                              % (a.end, a.has("apply-start"), a.rc("apply-done")), [a])
                    continue
                finished = a.has("apply-done")
                committed = "committed" in a.events("apply-out")
                r = self.vm.boot(self.work, self.layout, "recover", case + "-recover")
                res = check_recovered(r, self.work, self.layout, self.before, self.after)
                if res.fat_rec:
                    self.fat_repairs.append("%s (%d)" % (case, res.fat_rec))
                if committed and res.state == "before":
                    res.problems.append("the apply printed `committed` before the cut, yet the tree is BEFORE")
                res.problems += ["kernel during the apply: " + l for l in a.kernel_trouble()[:5]]
                if res.problems:
                    self.fail(case, "cut %.3fs after apply-start" % a.cut_after, [a, r], res)
                    continue
                self.passed += 1
                if res.state == "before":
                    self.counts["before"] += 1
                    if res.action == "rolled_back":
                        self.counts["rolled_back"] += 1
                elif res.action == "rolled_forward":
                    self.counts["during"] += 1
                else:
                    self.counts["after"] += 1
                what = res.state.upper() + (" (rolled forward)" if res.action == "rolled_forward" else
                                            " (rolled back)" if res.action == "rolled_back" else "")
                log("%s %s: cut %.3fs after apply-start (%s) -> %s%s"
                    % (self.layout, case, a.cut_after, "VM already off" if a.end == "poweroff" else
                       "apply had finished" if finished else
                       "after the commit event" if committed else "apply running", what,
                       "; fsck.vfat saved %d lost cluster chains of the ESP as FSCKnnnn.REC" % res.fat_rec
                       if res.fat_rec else ""))
            except Exception as e:  # a harness or host problem: record it, go on with the next cut
                self.fail(case, "exception: %s\n%s" % (e, traceback.format_exc()), [a, r])

    # -- 4. power cuts while the running system writes
    def writer_cuts(self):
        """The apply while the guest's writer appends fsynced records, once uncut; on btrfs once reset right after
        the exchange (`apply-after-exchange`); then cut at random instants of its commit phase (the carry-over and
        the exchange): [0, the uncut commit phase + 0.2 s] after its last step finished."""
        if not self.nwriter:
            return
        ref = self.writer_case("writer-ref")
        if ref is None:
            return
        commit_s = ref[1]
        if self.backend == "btrfs":
            # The machine reset right after the exchange: on a running root everything written to the replaced
            # tree since the carry-over's last look is carried at the boots after it.
            self.writer_case("writer-after-exchange", failpoint="apply-after-exchange")
        for i in range(self.nwriter):
            self.writer_case("writer-cut-%03d" % i, self.rng.uniform(0.0, commit_s + 0.2))

    def writer_case(self, case, delay=None, failpoint=None):
        """One apply with the writer (see init.sh's apply-writer), cut `delay` seconds after apply-start (None:
        uncut), then the recover boot; the live layout boots twice more, each running `snapinst boot` before the
        root is mounted, so what a handover carries is in the tree the second one leaves. The tree must be BEFORE
        or AFTER but for the writer's files, no conflict listed, and every record announced durable before the
        cut in the tree itself (a btrfs directory target too: what was written between the last carry-over round
        and the exchange is handed over right after it). Returns (T, commit phase) of the apply, or None when
        the case failed."""
        try:
            return self._writer_case(case, delay, failpoint)
        except Exception as e:  # a harness or host problem: record it, go on with the next case
            self.fail(case, "exception: %s\n%s" % (e, traceback.format_exc()))
            return None

    def _writer_case(self, case, delay, failpoint):
        self.reset()
        a = self.vm.boot(self.work, self.layout, "apply-writer", case + "-apply", cut_delay=delay, after_steps=True,
                         failpoint=failpoint)
        boots = [a]
        if failpoint and a.end == "reset":
            a.cut_after = None
        elif a.end == "poweroff" and a.rc("apply-done") == 0 and not failpoint:
            a.cut_after = None
        elif delay is None or a.end != "cut":
            self.fail(case, "the writer's apply boot ended by %s (apply rc %s)" % (a.end, a.rc("apply-done")), boots)
            return None
        problems = ["kernel during the apply: " + l for l in a.kernel_trouble()[:5]]
        if a.has("writer-error"):
            problems.append("the writer failed: %s" % a.marker("writer-error")[1])
        durable = durable_records(a)
        if durable == 0:
            problems.append("the writer announced no durable record")
        committed = "committed" in a.events("apply-out")
        summary = [j for j in a.json_lines("apply-out") if j.get("event") == "summary"]
        if summary and summary[-1].get("conflicts"):
            problems.append("conflicts listed %r: the plan changes none of the writer's paths"
                            % summary[-1]["conflicts"])
        live = LAYOUTS[self.layout]["root"] == "live"
        ignore = set(writer_files(self.layout))
        for n in range(2 if live else 1):
            r = self.vm.boot(self.work, self.layout, "recover", "%s-recover%d" % (case, n + 1), boot_hook=live)
            boots.append(r)
            res = check_recovered(r, self.work, self.layout, self.before, self.after, ignore=ignore,
                                  earlier=boots[1:-1])
            if res.problems:
                break
        res.problems = problems + res.problems
        if committed and res.state == "before":
            res.problems.append("the apply printed `committed` before the cut, yet the tree is BEFORE")
        in_tree = kept_only = 0
        for f, ((tree, bad), kept) in sorted(writer_records(self.work, self.layout).items()):
            if bad:
                res.problems.append("%s in the tree: %s" % (f, bad))
            have = set(tree)
            if kept is not None:
                # What the handover right after the exchange did not carry: shown (a durable one is lost, below).
                kept_only += len(set(kept[0]) - have)
            if tree != list(range(1, len(tree) + 1)):
                res.problems.append("%s: the tree's records are not 1..N (missing: %s)"
                                    % (f, sorted(set(range(1, max(tree) + 1)) - set(tree))[:20]))
            lost = sorted(set(range(1, durable + 1)) - have)
            if lost:
                res.problems.append("%s: %d of the %d records announced durable are lost (%s)"
                                    % (f, len(lost), durable, lost[:20]))
            in_tree = len(tree) if not in_tree else min(in_tree, len(tree))
        when = "reset at %s" % failpoint if failpoint else \
            "uncut" if a.cut_after is None else "cut %.3fs after the last step" % a.cut_after
        if res.problems:
            self.fail(case, "writer: %s" % when, boots, res)
            self.writer_rows.append((case, "reset" if failpoint else a.cut_after, "FAILED", durable, in_tree, kept_only))
            return None
        self.passed += 1
        self.writer_rows.append((case, "reset" if failpoint else a.cut_after, res.state.upper(), durable, in_tree, kept_only))
        log("%s %s: writer, %s -> %s; %d records durable, %d in the tree%s"
            % (self.layout, case, when, res.state.upper(), durable, in_tree,
               ", %d only in generation 0's kept tree" % kept_only
               if kept_only else ""))
        t0, t1 = a.marker("apply-start"), a.marker("apply-done")
        commit_s = (summary[-1].get("timings_ms") or {}).get("commit", 0) / 1000.0 if summary else 0.0
        return (t1[0] - t0[0] if t0 and t1 else 0.0), commit_s

    # -- 3. named crash points
    def crash_point(self, case, *args, **kw):
        """Boot a mode with a failpoint, then recover and check (see _crash_point). Returns the Result, or None when
        the case failed (recorded, with its evidence)."""
        try:
            return self._crash_point(case, *args, **kw)
        except Exception as e:  # a harness or host problem: record it, go on with the next point
            self.fail(case, "exception: %s\n%s" % (e, traceback.format_exc()))
            return None

    def _crash_point(self, case, name, mode, start_img, before, after, gens, expect=None, pre=None,
                     names=("BEFORE", "AFTER")):
        """Boot `mode` with failpoint `name` on `start_img` (after `pre` boots, if any), then recover and check."""
        self.reset(start_img)
        boots = []
        if pre:
            pb = self.vm.boot(self.work, self.layout, "apply", case + "-pre", failpoint=pre)
            boots.append(pb)
            if pb.end != "reset":
                self.fail(case, "the preparing crash at %s did not happen (boot ended by %s)" % (pre, pb.end), boots)
                return None
        a = self.vm.boot(self.work, self.layout, mode, case + "-crash", failpoint=name)
        boots.append(a)
        reached = a.end == "reset"
        if a.end not in ("reset", "poweroff"):
            self.fail(case, "the crash boot ended by %s" % a.end, boots)
            return None
        if not reached and mode != "recover":
            self.fail(case, "failpoint %s (operation %s) was not reached on %s: the boot powered off normally"
                      % (name, mode, self.layout), boots)
            return None
        committed = "committed" in a.events("apply-out" if mode.startswith("apply") else mode + "-out")
        r = self.vm.boot(self.work, self.layout, "recover", case + "-recover")
        boots.append(r)
        res = check_recovered(r, self.work, self.layout, before, after, gens, names)
        if committed and res.state == "before":
            res.problems.append("`committed` was printed before the crash, yet the tree is the one before")
        for cb in boots[:-1]:
            res.problems += ["kernel during %s: %s" % (cb.name, l) for l in cb.kernel_trouble()[:5]]
        if expect and res.state in ("before", "after") and res.state != expect:
            res.problems.append("recovered to %s, expected %s" % (res.state.upper(), expect.upper()))
        if res.problems:
            self.fail(case, "crash at %s during %s" % (name, mode), boots, res)
            return None
        res.reached = reached
        return res

    def failpoint_matrix(self):
        # The parts are staged by the overlay backend whatever the root's: its points are reached in them.
        stagers = {self.backend} | ({"overlay"} if LAYOUTS[self.layout]["parts"] else set())
        mine = [(n, op) for n, op, bks in self.failpoints if stagers & set(bks)]
        if LAYOUTS[self.layout]["parts"] and not self.full:
            # Until its steps end an apply touches only its stages: a crash there throws them away, which the
            # layouts without parts show at every such point. The default run starts at the end of the steps here,
            # where the parts' commit begins; --full runs them all.
            names = [n for n, _ in mine]
            first = names.index("apply-after-steps")
            mine = [(n, op) for i, (n, op) in enumerate(mine) if op != "apply" or i >= first]
            # The rollback's crash points with parts mounted inside the root are crashed at by the cargo matrix
            # (privileged_crash_at_every_failpoint_with_mounts_inside); here they run with --full.
            mine = [(n, op) for n, op in mine if op != "rollback"]
        pre_commit = post_commit = None
        rows = []
        for name, op in mine:
            # A crash while recovering is run below; the boot-time carry's point (operation "boot") is run by the
            # cargo test of the boot hook: the guest's boot hook takes no failpoint from the host.
            if op in ("recover", "boot"):
                continue
            self.fp_total += 1
            case = "fp-%s" % name
            if op == "apply":
                res = self.crash_point(case, name, "apply", self.pristine, self.before, self.after, (0, 1))
            elif op == "apply-failing":
                res = self.crash_point(case, name, "apply-failing", self.pristine, self.before, self.after, (0, 1),
                                       expect="before")
            elif op == "rollback":
                # The image has the plan applied: the rollback goes from AFTER (generation 1) back to BEFORE
                # (generation 0 made current again), so the rollback's "before" is AFTER and its "after" BEFORE.
                res = self.crash_point(case, name, "rollback", self.after_img, self.after, self.before, (1, 0),
                                       names=("AFTER (the rollback's before)", "BEFORE (the rollback's after)"))
            else:
                self.fail(case, "unknown failpoint operation %r" % op)
                continue
            if res is None:
                rows.append((name, op, "FAILED", ""))
                continue
            self.passed += 1
            self.fp_passed += 1
            tree = res.state.upper() if op != "rollback" else \
                ("AFTER (rollback undone)" if res.state == "before" else "BEFORE (rollback done)")
            if res.fat_rec:
                tree += " +%d FSCK.REC" % res.fat_rec
            rows.append((name, op, tree, res.action))
            log("%s failpoint %-30s (%s) -> %s, recover: %s" % (self.layout, name, op, tree, res.action))
            if op == "apply" and res.state == "before" and res.action == "rolled_back" and pre_commit is None:
                pre_commit = name
            if op == "apply" and res.state == "after" and res.action == "rolled_forward" and post_commit is None:
                post_commit = name
        # Crash points of the recovery itself: first leave an interrupted transaction (a crash before the commit
        # point, and one after it), then crash the boot-time recovery at the point, then recover and check that
        # the tree ends on the same side as the first crash put it.
        for name, op in mine:
            if op != "recover":
                continue
            for side, pre in (("before", pre_commit), ("after", post_commit)):
                self.fp_total += 1
                case = "fp-%s-%s" % (name, side)
                if pre is None:
                    self.fail(case, "no apply crash point left work for recovery on the %s side" % side)
                    rows.append((name, "recover/" + side, "FAILED", ""))
                    continue
                res = self.crash_point(case, name, "recover", self.pristine, self.before, self.after, (0, 1),
                                       expect=side, pre=pre)
                if res is None:
                    rows.append((name, "recover/" + side, "FAILED", ""))
                    continue
                self.passed += 1
                self.fp_passed += 1
                note = "" if res.reached else " (not reached)"
                rows.append((name, "recover after %s" % pre, res.state.upper() + note, res.action))
                log("%s failpoint %-30s (recover after a crash at %s) -> %s%s"
                    % (self.layout, name, pre, res.state.upper(), note))
        self.fp_rows = rows


# --------------------------------------------------------------------------------------------------------------


# The crash point of the killed apply in a log-writes run, per backend: one past its commit point, so that the
# recover after it has work to do (finish the commit).
LOGWRITES_POINT = {"btrfs": "apply-after-exchange", "overlay": "apply-mid-merge", "journal": "apply-after-commit-record"}
LOGWRITES_LAYOUTS = ["btrfs", "overlay", "journal"]
LOG_SIZE = 2 << 30


class LogwritesRun:
    """One log-writes run of a layout: a VM boot that logs every block write of an apply, a rollback, an apply
    killed at a crash point and the recover after it (see logwrites.py), then every FLUSH/FUA state of the log (or
    every entry's) recovered and checked on the host."""

    def __init__(self, layout, vm, pristine, workdir, logdir, snapinst, every):
        self.layout, self.vm, self.pristine, self.snapinst, self.every = layout, vm, pristine, snapinst, every
        self.work = os.path.join(workdir, "logwrites-" + layout)
        self.logdir = os.path.join(logdir, "logwrites-" + layout)
        os.makedirs(self.logdir, exist_ok=True)
        self.result = None
        self.passed = self.failed = 0
        self.failures = []
        self.elapsed = 0.0

    def fail(self, msg):
        self.failed += 1
        self.failures.append("logwrites %s: %s (logs: %s)" % (self.layout, msg, self.logdir))
        log("FAIL logwrites %s: %s" % (self.layout, msg))

    def run(self):
        t0 = time.monotonic()
        lay = LAYOUTS[self.layout]
        os.makedirs(self.work, exist_ok=True)
        subprocess.run(["cp", "--sparse=always", "--reflink=auto", os.path.join(self.pristine, "vda.img"),
                        os.path.join(self.work, "vda.img")], check=True)
        with open(os.path.join(self.work, "log.img"), "wb") as f:
            f.truncate(LOG_SIZE)
        self.vm.logdir = self.logdir
        b = self.vm.boot(self.work, self.layout, "logwrites", "logwrites", extra_disks=["log.img"],
                         extra_append=["snapinst.lwpoint=" + LOGWRITES_POINT[lay["backend"]]])
        want = {"apply-done": 0, "rollback-done": 0, "killed-done": 137, "lwrecover-done": 0}
        got = {k: b.rc(k) for k in want}
        trouble = b.kernel_trouble()[:5]
        if b.end != "poweroff" or got != want or not b.has("mark end") or trouble:
            self.fail("the logged boot went wrong: ended by %s, exit codes %s (want %s), kernel %s"
                      % (b.end, got, want, trouble))
            self.elapsed = time.monotonic() - t0
            return
        out = os.path.join(self.logdir, "result.json")
        cmd = ["unshare", "-m", "--propagation", "private", sys.executable, "-B",
               os.path.join(os.path.dirname(os.path.abspath(__file__)), "logwrites.py"), "check",
               "--layout", self.layout, "--fs", lay["fs"], "--root", lay["root"],
               "--log", os.path.join(self.work, "log.img"), "--disk", os.path.join(self.pristine, "vda.img"),
               "--before", os.path.join(self.pristine, "before.json"), "--snapinst", self.snapinst, "--out", out]
        if self.every:
            cmd.append("--every")
        with open(os.path.join(self.logdir, "replay.log"), "w") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0 or not os.path.exists(out):
            self.fail("the replay failed (exit %d); see replay.log" % r.returncode)
        else:
            with open(out) as f:
                self.result = json.load(f)
            if self.result["bad"]:
                self.fail("%d of %d states bad: %s" % (self.result["bad"], self.result["states"],
                                                      "; ".join(self.result["problems"][:3])))
            else:
                self.passed += 1
        shutil.rmtree(self.work, ignore_errors=True)
        self.elapsed = time.monotonic() - t0


def parse_failpoints(snapinst):
    r = subprocess.run([snapinst, "failpoints"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit("vm-tests: `snapinst failpoints` failed: %s" % r.stderr.strip())
    fps = []
    for line in r.stdout.splitlines():
        f = line.split("\t")
        if len(f) < 3:
            raise SystemExit("vm-tests: `snapinst failpoints` line %r is not NAME<TAB>OPERATION<TAB>BACKENDS" % line)
        fps.append((f[0].strip(), f[1].strip(), [b.strip() for b in f[2].split(",")]))
    if not fps:
        raise SystemExit("vm-tests: `snapinst failpoints` lists nothing: not a --features failpoints build?")
    return fps


def accel_args():
    if os.environ.get("SNAPINST_VM_KVM") == "1":
        try:
            fd = os.open("/dev/kvm", os.O_RDWR)
            os.close(fd)
            return ["-accel", "kvm", "-cpu", "host"], "kvm"
        except OSError as e:
            log("SNAPINST_VM_KVM=1 but /dev/kvm is not usable (%s): using TCG" % e)
    return ["-accel", "tcg", "-cpu", "max"], "tcg"


def preflight():
    missing = [t for t in ("qemu-system-x86_64", "mount", "umount", "cp", "cpio", "gzip", "depmod", "dpkg-deb",
                           "apt-get", "apt-cache", "mkfs.btrfs", "mkfs.ext4", "mkfs.xfs", "losetup", "btrfs", "ldd") if not shutil.which(t)]
    if missing:
        raise SystemExit("vm-tests: missing tools: %s" % " ".join(missing))
    if os.geteuid() != 0:
        raise SystemExit("vm-tests: must run as root (loop mounts, image building)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true",
                    help="the whole campaign: 8 cuts per layout without parts, 4 with parts, 2 writer cuts, and on the"
                    " layouts with parts also the apply's crash points before its steps end (the default runs those"
                    " on the layouts without parts only)")
    ap.add_argument("--cuts", type=int, default=None, help="power cuts per layout without parts (default 3; --full 8)")
    ap.add_argument("--cuts-with-parts", type=int, default=None,
                    help="power cuts per layout with filesystems mounted inside the root (default 1; --full 4)")
    ap.add_argument("--soak", type=int, default=None, help="a long run: N power cuts per layout")
    ap.add_argument("--seed", type=int, default=None, help="seed of the cut delays (default: random, printed)")
    ap.add_argument("--backend", action="append", choices=["btrfs", "overlay", "journal"],
                    help="only the layouts of this backend (repeatable)")
    ap.add_argument("--layout", action="append", choices=sorted(LAYOUTS), help="only this layout (repeatable)")
    ap.add_argument("--writer-cuts", type=int, default=None,
                    help="power cuts per layout of an apply while the guest's writer runs, aimed at the commit phase"
                    " (default 1; --full 2; after one uncut writer run; 0: neither)")
    ap.add_argument("--no-failpoints", action="store_true", help="only the power cuts")
    ap.add_argument("--late", type=float, default=0.0,
                    help="fraction of the cuts aimed at the commit phase instead of [0, T] (default 0)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="layouts run at once, each in a VM of its own (default 2: one per core)")
    ap.add_argument("--no-logwrites", action="store_true",
                    help="skip the crash-state logs (every FLUSH/FUA state of a logged apply, rollback and recover)")
    ap.add_argument("--logwrites-only", action="store_true", help="only the crash-state logs (no power cuts)")
    ap.add_argument("--logwrites-every", action="store_true",
                    help="check a state after every entry of the logs, not only after each FLUSH/FUA (long)")
    ap.add_argument("--snapinst", required=True, help="the failpoints build of snapinst")
    ap.add_argument("--cache", required=True)
    args = ap.parse_args()
    t_start = time.monotonic()
    preflight()
    for name, default, full in (("cuts", 3, 8), ("cuts_with_parts", 1, 4), ("writer_cuts", 1, 2)):
        if getattr(args, name) is None:
            setattr(args, name, full if args.full else default)
    cuts = args.soak if args.soak is not None else args.cuts
    seed = args.seed if args.seed is not None else int(os.environ.get("SNAPINST_VM_SEED") or
                                                       random.SystemRandom().randrange(1, 10**9))
    log("seed %d (rerun the same cut delays with --seed %d or SNAPINST_VM_SEED=%d)" % (seed, seed, seed))
    os.makedirs(args.cache, exist_ok=True)
    snapinst = os.path.abspath(args.snapinst)
    failpoints = parse_failpoints(snapinst)
    log("%d failpoints from `snapinst failpoints`" % len(failpoints))
    accel, accel_name = accel_args()

    kernel = artefacts.ensure_kernel(args.cache)
    initrd, ikey = artefacts.ensure_initrd(args.cache, kernel, snapinst)
    chosen = [l for l in LAYOUTS if (not args.layout or l in args.layout) and
              (not args.backend or LAYOUTS[l]["backend"] in args.backend)]
    layouts = [l for l in chosen if (LAYOUTS[l].get("cuts", True) or (args.layout and l in args.layout))
               and not args.logwrites_only]
    lw_layouts = [] if args.no_logwrites else [l for l in LOGWRITES_LAYOUTS if l in chosen]
    if not args.full and not args.layout:
        # The journal backend's log (4,000 entries, 6 minutes) only in the whole campaign: it is the fallback, and
        # the cargo tests crash it at every point.
        lw_layouts = [l for l in lw_layouts if l != "journal"]
    if not layouts and not lw_layouts:
        raise SystemExit("vm-tests: no layout matches --layout %s --backend %s" % (args.layout, args.backend))
    images = {l: artefacts.ensure_image(args.cache, l) for l in sorted(set(layouts) | set(lw_layouts))}
    log("artefacts ready in %s (kernel %s, initramfs %s, %s)" % (args.cache, kernel["kver"], ikey, accel_name))

    run_id = time.strftime("%Y%m%d-%H%M%S")
    logroot = os.environ.get("SNAPINST_VM_LOGS") or os.path.join(args.cache, "logs")
    logdir = os.path.join(logroot, run_id)
    os.makedirs(logdir, exist_ok=True)
    old = sorted(d for d in os.listdir(logroot) if d != run_id)
    for d in old[:-9]:
        shutil.rmtree(os.path.join(logroot, d), ignore_errors=True)
    workdir = os.path.join(args.cache, "work")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    log("logs in %s" % logdir)

    # Each layout is a campaign with a VM of its own and cut delays of its own (drawn from the seed and its name,
    # so a rerun with the seed repeats them whatever runs beside it); `--jobs` campaigns run at once.
    results = []
    for layout in layouts:
        img, before = images[layout]
        ncuts = cuts if args.soak is not None or not LAYOUTS[layout]["parts"] else args.cuts_with_parts
        c = Campaign(layout, VM(kernel, initrd, accel, logdir), img, before, workdir, logdir,
                     random.Random("%d-%s" % (seed, layout)), failpoints, ncuts)
        # Few cuts seldom land in the commit phase by chance: with parts, half of them are aimed at it.
        c.late = args.late if args.late or not LAYOUTS[layout]["parts"] else 0.5
        c.nwriter = args.writer_cuts
        c.full = args.full
        results.append(c)

    def run_campaign(c):
        t0 = time.monotonic()
        try:
            c.reference()
            c.cuts()
            c.writer_cuts()
            if not args.no_failpoints:
                c.failpoint_matrix()
        except Failure as e:
            log(str(e))
        except Exception as e:
            c.fail("campaign", "exception: %s\n%s" % (e, traceback.format_exc()))
        c.elapsed = time.monotonic() - t0

    lw_runs = [LogwritesRun(l, VM(kernel, initrd, accel, logdir), images[l][0], workdir, logdir, snapinst,
                            args.logwrites_every) for l in lw_layouts]

    def run_logwrites(r):
        try:
            r.run()
        except Exception as e:
            r.fail("exception: %s\n%s" % (e, traceback.format_exc()))

    # The layouts with parts take longest: start them first; the crash-state logs after the campaigns, in the same
    # pool, so a worker that finishes its campaigns early takes them up.
    order = sorted(results, key=lambda c: not LAYOUTS[c.layout]["parts"])
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = [pool.submit(run_campaign, c) for c in order] + [pool.submit(run_logwrites, r) for r in lw_runs]
        for j in jobs:
            j.result()
    boots = sum(c.vm.boots for c in results) + sum(r.vm.boots for r in lw_runs)
    boot_times = sorted(t for c in results for t in c.vm.boot_time)

    # The same plan on the same base tree must give the same tree on every backend (BEFORE is the same by
    # construction): a discrepancy is an engine bug even when each backend is crash-consistent on its own. (The
    # layouts with parts have trees of their own.)
    cross = None
    done = [c for c in results if c.after is not None and not LAYOUTS[c.layout]["parts"]]
    if len(done) > 1:
        d = mf.diff(done[0].after, done[1].after, limit=20)
        if d:
            cross = "AFTER differs between %s and %s:\n    %s" % (done[0].backend, done[1].backend, "\n    ".join(d))
            done[1].failed += 1
            done[1].failures.append("cross-backend: " + cross)
            log("FAIL " + cross)
        else:
            done[1].passed += 1
            log("cross-backend: the %s and %s AFTER trees are identical" % (done[0].backend, done[1].backend))

    # The logged runs apply the same plan to the same base tree: their AFTER trees (each the state at its apply-done
    # mark) must be the same on every backend, which checks the AFTER each run compared its states with.
    lw_after = [(r, mf.load(os.path.join(r.logdir, "%s.after.json" % r.layout))) for r in lw_runs
                if r.result and os.path.exists(os.path.join(r.logdir, "%s.after.json" % r.layout))]
    for r, m in lw_after[1:]:
        d = mf.diff(lw_after[0][1], m, limit=20)
        if d:
            r.fail("its AFTER differs from %s's:\n    %s" % (lw_after[0][0].layout, "\n    ".join(d)))
        else:
            r.passed += 1
    if len(lw_after) > 1:
        log("logwrites: the AFTER trees of %s are %s" % (", ".join(r.layout for r, _ in lw_after),
                                                         "identical" if not any(
                                                             mf.diff(lw_after[0][1], m) for _, m in lw_after[1:])
                                                         else "NOT identical"))

    # ---- report
    total = time.monotonic() - t_start
    print()
    print("snapinst VM crash tests: seed %d, %s, kernel %s, %d boots (%d at once), median boot to the mounted disks "
          "%.2fs" % (seed, accel_name, kernel["kver"], boots, max(1, args.jobs),
                     boot_times[len(boot_times) // 2] if boot_times else 0))
    hdr = "%-10s %5s %7s %8s %13s %19s %6s %11s %7s %8s" % ("layout", "T", "commit", "cuts", "before",
                                                           "during(rolled fwd)", "after", "failpoints", "failed",
                                                           "time")
    print(hdr)
    print("-" * len(hdr))
    for c in results:
        ncut = sum(c.counts[k] for k in ("before", "during", "after"))
        print("%-10s %5s %7s %8s %13s %19d %6d %11s %7d %8s" % (
            c.layout, "%.1fs" % c.T if c.T else "-", "%dms" % (c.commit_s * 1000), "%d/%d" % (ncut, c.ncuts),
            "%d (%d rb)" % (c.counts["before"], c.counts["rolled_back"]), c.counts["during"], c.counts["after"],
            "%d/%d" % (c.fp_passed, c.fp_total), c.failed, fmt_s(c.elapsed)))
    print("  (T: the uncut apply, apply-start to apply-done; commit: its commit phase per the summary; cuts at a"
          " random instant in [0, T]%s.\n   before: the tree is BEFORE, rb = of which recovery rolled back a started"
          " transaction; during: recovery rolled forward; after: the apply had completed)"
          % (", %d%% aimed at the commit phase" % (args.late * 100) if args.late else
             ", half of them aimed at the commit phase on the layouts with parts"))
    for c in results:
        if c.fat_repairs:
            print("%s: after %d cuts (%s: the number of chains) the recover boot's fsck.vfat -a saved lost clusters"
                  " of the ESP as FSCKnnnn.REC files, as a machine's boot does (FAT has no journal); the trees, those"
                  " files left out, were BEFORE or AFTER" % (c.layout, len(c.fat_repairs), ", ".join(c.fat_repairs)))
    for c in results:
        if c.writer_rows:
            print("%s, the writer (a fsynced record every 20 ms to %s) through the apply, cut in its commit phase:"
                  % (c.layout, ", ".join(writer_files(c.layout))))
            print("  %-16s %-9s %-7s %8s %8s %s" % ("case", "cut at", "tree", "durable", "in tree", "in gen 0 only"))
            for case, at, tree, durable, in_tree, kept_only in c.writer_rows:
                print("  %-16s %-9s %-7s %8d %8d %d" % (case, "uncut" if at is None else
                                                       at if isinstance(at, str) else "%.3fs" % at, tree,
                                                       durable, in_tree, kept_only))
    for c in results:
        if c.fp_rows:
            print("%s crash points:" % c.layout)
            for name, op, state, action in c.fp_rows:
                print("  %-30s %-38s %-24s %s" % (name, op, state, action))
    if lw_runs:
        print("crash states of the logged runs (dm-log-writes: an apply with the running system writing through it, a"
              " rollback, an apply killed at a crash point and its recover), %s; records: the running system's"
              " records made durable, each held by every later state:"
              % ("after every entry" if args.logwrites_every else "after every FLUSH/FUA"))
        print("  %-8s %8s %9s %8s %7s %6s %4s %8s %8s  %s" % ("layout", "entries", "flush/fua", "states", "before",
                                                           "after", "bad", "records", "time", "at the marks"))
        for r in lw_runs:
            x = r.result or {}
            print("  %-8s %8s %9s %8s %7s %6s %4s %8s %8s  %s" % (
                r.layout, x.get("entries", "-"), x.get("flush_fua", "-"), x.get("states", "-"), x.get("before", "-"),
                x.get("after", "-"), x.get("bad", "-") if r.result else "FAIL", x.get("durable_records", "-"),
                fmt_s(r.elapsed),
                ", ".join("%s=%s" % kv for kv in (x.get("marks") or {}).items())))
    passed = sum(c.passed for c in results) + sum(r.passed for r in lw_runs)
    failed = sum(c.failed for c in results) + sum(r.failed for r in lw_runs)
    if failed:
        print("failures:")
        for c in list(results) + lw_runs:
            for f in c.failures:
                print("  " + f.splitlines()[0])
    print("total time %s; logs in %s" % (fmt_s(total), logdir))
    shutil.rmtree(workdir, ignore_errors=True)
    print("vm-tests: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed or passed == 0 else 0)


if __name__ == "__main__":
    main()
