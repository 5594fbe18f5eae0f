#!/usr/bin/env python3
"""The boots of the snapinst Debian boot test and the checks on them (run by run.sh, which builds the disk).

Six boots of one copy of the cached disk, QEMU under TCG, each with a hard timeout (the image's configuration gives a
pending generation 2 boots, `boot_tries = 2` in /etc/snapinst/snapinst.d/, so the fallback takes one boot fewer than
with the default 3 and the configuration key is proven at boot):

  1     generation 0: the initramfs hook runs on an unmanaged root; snapinst-recover.service and
        snapinst-bless.service are installed and enabled; the test unit applies /root/plan.json (generation 1, whose
        broken-health.service makes boot-complete.target fail): committed, pending, the live root unchanged.
  2..3  generation 1, pending: the hook spends try k of 2; bless never runs; the marker is there.
  4     the hook restores generation 0; bless runs; status shows generation 0, nothing pending, the boot note.
  5     generation 0: `snapinst apply /root/plan2.json` with SNAPINST_FAILPOINT=apply-after-exchange
        SNAPINST_FAILPOINT_ACTION=reset: the machine resets after the commit point.
  6     the hook rolls the transaction forward: generation 2 (plan2's marker) boots, nothing in progress.

Between boots the disk is inspected on the host through a read-only loop device, mounted read-only (without log
replay), and the kernel and initrd are taken from @/boot again. Every console log is kept in the run directory.
Prints one line per check and ends with "debian-boot: N passed, M failed"; exit status 1 when a check failed.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

# The boots a pending generation gets: build-image.sh configures it (/etc/snapinst/snapinst.d/50-vmtest.toml).
TRIES = 2
# snapinst's MESSAGE_IDs in the journal (src/journal.rs).
MSG_COMMITTED = "5e0b6e4ad7a84d0c9a0b1f7e3c2d9a11"
MSG_RECOVERED = "2b7e151628ae4d2aa6d2abf7158809cf"
MSG_FALLBACK = "f4e3d2c1b0a94837a6b5c4d3e2f10a15"


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Boot:
    """One boot: its console, how it ended, and the @@VMTEST lines the guest printed."""

    def __init__(self, name, mode, log):
        self.name, self.mode, self.log = name, mode, log
        self.console = ""
        self.seconds = None
        self.end = None  # "poweroff", "reset", "timeout", "exit"
        self.qemu_rc = None
        self.facts = {}  # tag -> [rest of line, ...]

    def fact(self, tag, default=None):
        v = self.facts.get(tag)
        return v[-1] if v else default

    def facts_of(self, tag):
        return self.facts.get(tag, [])

    def json_fact(self, tag):
        v = self.fact(tag)
        if v is None:
            return None
        try:
            return json.loads(v)
        except ValueError:
            return None

    def journal(self, tag, message_id):
        """snapinst's journal entries printed under `tag` (journalctl -o json) with that MESSAGE_ID."""
        out = []
        for line in self.facts_of(tag):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("MESSAGE_ID") == message_id and e.get("SYSLOG_IDENTIFIER") == "snapinst":
                out.append(e)
        return out

    def show(self, unit):
        """systemctl show properties of a unit, as printed by the guest."""
        v = self.fact("show")
        props = {}
        for line in self.facts_of("show"):
            u, _, rest = line.partition(" ")
            if u == unit:
                for kv in rest.split():
                    k, _, val = kv.partition("=")
                    props[k] = val
        return props

    def lines(self, pattern):
        """Console lines that match a regular expression (search)."""
        r = re.compile(pattern)
        return [line for line in self.console.splitlines() if r.search(line)]

    def has(self, pattern):
        return bool(self.lines(pattern))


class Run:
    def __init__(self, args):
        self.args = args
        self.run_dir = args.run_dir
        self.image_dir = args.image_dir
        self.disk = os.path.join(self.run_dir, "disk.img")
        self.kernel = os.path.join(self.run_dir, "vmlinuz")
        self.initrd = os.path.join(self.run_dir, "initrd.img")
        self.results = []  # (section, name, ok, evidence)
        self.boots = []
        self.section = "setup"
        self.mnt = None

    # ---- reporting
    def check(self, name, ok, evidence=""):
        ok = bool(ok)
        self.results.append((self.section, name, ok, evidence))
        mark = "PASS" if ok else "FAIL"
        print("  %s  %s%s" % (mark, name, ("\n          " + evidence.replace("\n", "\n          ")) if evidence else ""))
        return ok

    def expect_line(self, boot, name, pattern):
        lines = boot.lines(pattern)
        return self.check(name, lines, lines[0].strip() if lines else "no console line matches /%s/ (%s)" % (pattern, boot.log))

    # ---- the VM
    def boot(self, mode, name):
        log = os.path.join(self.run_dir, "%s.console.log" % name)
        b = Boot(name, mode, log)
        # root=UUID=..., as GRUB writes it: the initramfs hook must find the device itself.
        uuid = subprocess.check_output(["blkid", "-o", "value", "-s", "UUID", self.disk], text=True).strip()
        append = ("root=UUID=%s rootflags=subvol=@ rw console=ttyS0 systemd.show_status=1 panic=-1 snapinst_vmtest=%s"
                  % (uuid, mode))
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1",
               "-nographic", "-monitor", "none", "-serial", "file:%s" % log, "-nic", "none", "-no-reboot",
               "-kernel", self.kernel, "-initrd", self.initrd, "-append", append,
               "-drive", "file=%s,format=raw,if=virtio,cache=none" % self.disk]
        with open(os.path.join(self.run_dir, "%s.cmdline" % name), "w") as f:
            f.write(" ".join(cmd) + "\n")
        print("\n== boot %s (snapinst_vmtest=%s)" % (name, mode), flush=True)
        t0 = time.monotonic()
        with open(os.path.join(self.run_dir, "%s.qemu.log" % name), "w") as qlog:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT)
            try:
                b.qemu_rc = p.wait(timeout=self.args.timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                b.end = "timeout"
                print("   TIMEOUT: boot %s did not end within %.0f s; QEMU killed (console: %s)" % (
                    name, self.args.timeout, log))
        b.seconds = time.monotonic() - t0
        with open(log, "rb") as f:
            b.console = f.read().decode("utf-8", "replace").replace("\r", "")
        for line in b.console.splitlines():
            m = re.search(r"@@VMTEST (\S+) ?(.*)$", line)
            if m:
                b.facts.setdefault(m.group(1), []).append(m.group(2))
        if b.end is None:
            if b.has(r"reboot: Power down"):
                b.end = "poweroff"
            elif b.has(r"sysrq: Resetting|reboot: Restarting system"):
                b.end = "reset"
            else:
                b.end = "exit"
        print("   %.1f s, ended by %s (QEMU exit status %s); console: %s" % (b.seconds, b.end, b.qemu_rc, log))
        self.boots.append(b)
        return b

    # ---- the disk, read-only on the host
    def inspect(self, writable_ok=()):
        """Mount the disk read-only and return what the host sees; refresh the kernel and initrd from @/boot.
        Checks that every kept generation is a read-only subvolume, except those in writable_ok: the tree that was
        the running root when a commit replaced it may stay writable until the next boot."""
        facts = {}
        loop = sh("losetup", "-r", "-f", "--show", self.disk).stdout.strip()
        top = tempfile.mkdtemp(prefix="snapinst-debian-top.")
        try:
            # No log replay: the host must not write to the disk, and the tree seen is what was committed.
            opts = ["ro,subvolid=5,rescue=nologreplay", "ro,subvolid=5,nologreplay", "ro,subvolid=5"]
            for o in opts:
                if sh("mount", "-t", "btrfs", "-o", o, loop, top, check=False).returncode == 0:
                    facts["mount_options"] = o
                    break
            else:
                raise RuntimeError("cannot mount %s read-only" % self.disk)
            try:
                root = os.path.join(top, "@")
                state_dir = os.path.join(top, ".snapinst-@")
                facts["gen1_marker"] = os.path.exists(os.path.join(root, "etc/snapinst-vmtest/gen1-marker"))
                facts["gen2_marker"] = os.path.exists(os.path.join(root, "etc/snapinst-vmtest/gen2-marker"))
                facts["broken_health_link"] = os.path.islink(
                    os.path.join(root, "etc/systemd/system/boot-complete.target.requires/broken-health.service"))
                facts["registry"] = sorted(os.listdir(os.path.join(root, "var/lib/snapinst/roots"))) \
                    if os.path.isdir(os.path.join(root, "var/lib/snapinst/roots")) else []
                facts["root_subvol_id"] = int(sh("btrfs", "inspect-internal", "rootid", root).stdout.strip())
                facts["state"] = None
                facts["gens_ro"] = {}
                facts["txns"] = []
                facts["gens"] = []
                facts["stage"] = []
                if os.path.isdir(state_dir):
                    sp = os.path.join(state_dir, "state.json")
                    if os.path.exists(sp):
                        with open(sp) as f:
                            facts["state"] = json.load(f)
                    td = os.path.join(state_dir, "txns")
                    if os.path.isdir(td):
                        for n in sorted(os.listdir(td)):
                            if n.endswith(".json") and not n.startswith("."):
                                with open(os.path.join(td, n)) as f:
                                    facts["txns"].append(json.load(f))
                    for d in ("gens", "stage"):
                        p = os.path.join(state_dir, d)
                        facts[d] = sorted(os.listdir(p)) if os.path.isdir(p) else []
                    facts["gens_ro"] = {
                        g: sh("btrfs", "property", "get", "-ts", os.path.join(state_dir, "gens", g), "ro",
                              check=False).stdout.strip() for g in facts["gens"]}
                facts["subvolumes"] = sh("btrfs", "subvolume", "list", "-a", top).stdout.strip()
                # The kernel and initrd the next boot uses: the ones in @/boot.
                boot = os.path.join(root, "boot")
                for name, dst in (("vmlinuz", self.kernel), ("initrd.img", self.initrd)):
                    src = os.path.join(root, name) if os.path.exists(os.path.join(root, name)) else None
                    if src is None:
                        cands = sorted(n for n in os.listdir(boot) if n.startswith(name + "-"))
                        src = os.path.join(boot, cands[-1]) if cands else None
                    if src is None:
                        raise RuntimeError("no %s in @/boot" % name)
                    if not os.path.exists(dst) or sha256(src) != sha256(dst):
                        shutil.copyfile(src, dst)
                        print("   (copied %s from the disk's @/boot)" % os.path.basename(os.path.realpath(src)))
            finally:
                sh("umount", top)
        finally:
            sh("losetup", "-d", loop, check=False)
            os.rmdir(top)
        sealed = {g: v for g, v in facts["gens_ro"].items() if g not in writable_ok}
        if sealed:
            self.check("host: every kept generation (%s) is a read-only subvolume" % ", ".join(sorted(sealed)),
                       all(v == "ro=true" for v in sealed.values()), json.dumps(facts["gens_ro"]))
        st = facts["state"]
        print("   host: @ is subvolume %s; gen1-marker %s, gen2-marker %s; state: current %s, pending %s; "
              "gens %s; unfinished txns %s" % (
                  facts["root_subvol_id"], facts["gen1_marker"], facts["gen2_marker"],
                  st and st.get("current"), st and json.dumps(st.get("pending")), facts["gens"],
                  [t["txn"] + ":" + t["phase"] for t in facts["txns"] if t.get("phase") != "done"]))
        return facts

    # ---- common checks on a boot that ran the test unit
    def common(self, b, powered_off=True):
        if powered_off:
            self.check("the boot ended by a clean power-off (not timeout/reset)", b.end == "poweroff",
                       "ended by %s after %.0f s" % (b.end, b.seconds))
            self.check("the test unit ran to its end", b.fact("end") is not None,
                       "@@VMTEST end %s" % b.fact("end") if b.fact("end") else "no '@@VMTEST end' on the console")
        self.expect_line(b, "initramfs: the snapinst local-premount script ran (log_begin_msg)",
                         r"snapinst: checking @ on /dev/vda")
        bad = b.lines(r"(snapinst.*(not mounted by subvolume|FAILED|cannot mount|skipping|not found))|"
                      r"(local-premount/snapinst.*not found)")
        self.check("initramfs: no error or warning from the snapinst hook", not bad, "\n".join(x.strip() for x in bad))
        if b.fact("root-ro") is not None:
            self.check("the booted root is writable (btrfs property ro=false)", b.fact("root-ro").strip() == "ro=false",
                       "root-ro: %s" % b.fact("root-ro"))

    def status(self, b, tag="status"):
        st = b.json_fact(tag)
        if st is None:
            self.check("%s --json printed an object" % tag, False,
                       "%s: %s" % (tag, b.fact(tag)) if b.fact(tag) is not None else "no %s line" % tag)
            return {}
        return st

    def units_ran(self, b, recover_expected):
        rec = b.show("snapinst-recover.service")
        bless = b.show("snapinst-bless.service")
        self.check("snapinst-recover.service is installed and enabled",
                   any(x.startswith("snapinst-recover.service enabled") for x in b.facts_of("is-enabled")),
                   "is-enabled: %s; %s" % (b.facts_of("is-enabled"), rec))
        self.check("snapinst-bless.service is installed and enabled",
                   any(x.startswith("snapinst-bless.service enabled") for x in b.facts_of("is-enabled")),
                   "%s" % bless)
        if recover_expected == "skipped":
            self.check("snapinst-recover.service was skipped by its condition (no root registered yet)",
                       rec.get("ConditionResult") == "no" and rec.get("ExecMainStartTimestampMonotonic") == "0",
                       "systemctl show: %s" % rec)
        else:
            journal = [x for x in b.facts_of("journal-recover")]
            ran = rec.get("ConditionResult") == "yes" and rec.get("Result") == "success" and \
                rec.get("ActiveState") == "active" and rec.get("ExecMainStatus") == "0"
            self.check("snapinst-recover.service ran `snapinst recover --all` and succeeded",
                       ran and any("nothing to recover" in x for x in journal),
                       "systemctl show: %s\n%s" % (rec, "\n".join("journal: " + x for x in journal)))
            self.check("systemctl is-failed snapinst-recover.service: active (not failed)",
                       any(x.startswith("snapinst-recover.service active") for x in b.facts_of("is-failed")),
                       "is-failed: %s" % b.facts_of("is-failed"))

    # ---- the scenario
    def main(self):
        t0 = time.monotonic()
        print("debian-boot: run directory %s" % self.run_dir)
        sh("cp", "--sparse=always", os.path.join(self.image_dir, "disk.img"), self.disk + ".tmp")
        os.rename(self.disk + ".tmp", self.disk)
        self.t0 = t0
        self.step_a()
        self.step_b()
        self.step_c()
        self.step_d()

    def step_a(self):
        self.section = "a"
        print("\n### a. boot 1: generation 0; hooks installed; apply plan.json (generation 1, broken health check)")
        h = self.inspect()
        self.check("host: fresh disk: @ has no marker and no state area", not h["gen1_marker"] and h["state"] is None,
                   "state %s" % h["state"])
        b = self.boot("apply1", "boot1")
        self.common(b)
        self.expect_line(b, "initramfs: `snapinst boot` found the root unmanaged (generation 0, nothing registered)",
                         r"snapinst: /run/snapinst/boot/@ is not managed")
        self.units_ran(b, "skipped")
        bless = b.show("snapinst-bless.service")
        self.check("snapinst-bless.service was skipped by its condition too (no root registered yet)",
                   bless.get("ConditionResult") == "no", "systemctl show: %s" % bless)
        st = self.status(b)
        self.check("status before apply: generation 0, nothing pending, nothing in progress",
                   st.get("current_generation") == 0 and st.get("pending") is None and st.get("in_progress") is None,
                   json.dumps(st))
        events = [json.loads(x) for x in b.facts_of("apply1-event") if x.startswith("{")]
        summary = [e for e in events if e.get("event") == "summary"]
        committed = [e for e in events if e.get("event") == "committed"]
        self.check("apply plan.json: exit 0, committed, generation 1",
                   b.fact("apply1-rc") == "0" and committed and committed[0].get("generation") == 1 and summary and
                   summary[-1].get("outcome") == "committed" and summary[-1].get("generation") == 1,
                   "rc %s; %s\n%s" % (b.fact("apply1-rc"), json.dumps(summary[-1] if summary else None),
                                     "\n".join("stderr: " + x for x in b.facts_of("apply1-stderr"))))
        st = self.status(b, "after-apply1-status")
        p = st.get("pending") or {}
        self.check("status after apply: current 1, pending generation 1 (fallback 0, %d boots left), "
                   "next boot differs" % TRIES,
                   st.get("current_generation") == 1 and p.get("generation") == 1 and p.get("fallback") == 0 and
                   p.get("boots_left") == TRIES and st.get("next_boot_differs") is True and
                   st.get("in_progress") is None, json.dumps(st))
        self.check("the running root stays writable after the commit (ro=false; a file can be created in /var/tmp)",
                   (b.fact("after-apply1-root-ro") or "").strip() == "ro=false" and
                   b.fact("after-apply1-root-writable") == "yes",
                   "btrfs property get -ts / ro: %s; writable: %s\n%s" % (
                       b.fact("after-apply1-root-ro"), b.fact("after-apply1-root-writable"),
                       "\n".join(x.strip() for x in b.lines(r"Read-only file system|[Cc]orrupt")[:4])))
        j = b.journal("after-apply1-journal", MSG_COMMITTED)
        self.check("journal: the commit is an entry of its own (journalctl -t snapinst MESSAGE_ID=committed) with "
                   "the transaction, root, generation and backend",
                   len(j) == 1 and j[0].get("SNAPINST_GENERATION") == "1" and j[0].get("SNAPINST_ROOT") == "/" and
                   j[0].get("SNAPINST_BACKEND") == "btrfs" and bool(j[0].get("SNAPINST_TXN")),
                   "\n".join(b.facts_of("after-apply1-journal")[:6]))
        self.check("the running root still shows generation 0 (no marker until the next boot)",
                   "gen1-marker absent" in b.facts_of("after-apply1-marker"), str(b.facts_of("after-apply1-marker")))
        # Generation 0 was the running root when generation 1 was committed: it may stay writable until the next
        # boot (it must not be made read-only under the running system: see the check above).
        h = self.inspect(writable_ok=("0",))
        st = h["state"] or {}
        self.check("host: @ is generation 1 (marker, broken-health enabled), state.json pending generation 1",
                   h["gen1_marker"] and h["broken_health_link"] and st.get("current") == 1 and
                   (st.get("pending") or {}).get("generation") == 1 and h["registry"],
                   "markers %s/%s, registry %s, state %s" % (h["gen1_marker"], h["broken_health_link"], h["registry"],
                                                             json.dumps(st)))

    def step_b(self):
        self.section = "b"
        for k in range(1, TRIES + 1):
            print("\n### b. boot %d: generation 1, pending: try %d of %d" % (k + 1, k, TRIES))
            b = self.boot("check", "boot%d" % (k + 1))
            self.common(b)
            self.expect_line(b, "initramfs: booting generation 1 (try %d of %d)" % (k, TRIES),
                             r"snapinst: booting generation 1 \(try %d of %d\)" % (k, TRIES))
            self.check("generation 1 booted: its marker is there", "gen1-marker present" in b.facts_of("marker"),
                       str(b.facts_of("marker")))
            self.units_ran(b, "ran")
            hc = b.show("broken-health.service")
            bc = b.show("boot-complete.target")
            bless = b.show("snapinst-bless.service")
            self.check("broken-health.service failed and boot-complete.target was not reached",
                       hc.get("ActiveState") == "failed" and bc.get("ActiveState") != "active",
                       "broken-health: %s\nboot-complete.target: %s" % (hc, bc))
            jb = b.facts_of("journal-bless")
            self.check("snapinst-bless.service did not run (its dependency on boot-complete.target failed)",
                       bless.get("ExecMainStartTimestampMonotonic") == "0" and
                       any("Dependency failed for snapinst-bless.service" in x for x in jb) and
                       not any("booted successfully" in x or "nothing pending" in x for x in jb),
                       "bless: %s\n%s" % (bless, "\n".join("journal: " + x for x in jb)))
            st = self.status(b)
            p = st.get("pending") or {}
            self.check("status: current 1, pending generation 1 with %d boots left" % (TRIES - k),
                       st.get("current_generation") == 1 and p.get("generation") == 1 and
                       p.get("boots_left") == TRIES - k and st.get("in_progress") is None, json.dumps(st))
            h = self.inspect()
            hp = (h["state"] or {}).get("pending") or {}
            self.check("host: state.json pending generation 1, %d boots left" % (TRIES - k),
                       hp.get("generation") == 1 and hp.get("boots_left") == TRIES - k, json.dumps(h["state"]))

    def step_c(self):
        self.section = "c"
        print("\n### c. boot %d: no try left: the hook restores generation 0" % (TRIES + 2))
        b = self.boot("check", "boot%d" % (TRIES + 2))
        self.common(b)
        note = "generation 1 did not reach boot-complete.target in %d boots; generation 0 is current again" % TRIES
        self.expect_line(b, "initramfs: the hook restored generation 0", re.escape("snapinst: " + note))
        self.check("generation 0 booted: no generation 1 marker",
                   "gen1-marker absent" in b.facts_of("marker"), str(b.facts_of("marker")))
        self.units_ran(b, "ran")
        early = self.status(b, "early-status")
        ep = early.get("pending") or {}
        self.check("before bless: current 0, pending generation 0 (no further fallback, %d tries), boot_note says why"
                   % TRIES,
                   early.get("current_generation") == 0 and ep.get("generation") == 0 and
                   ep.get("fallback") is None and ep.get("boots_left") == TRIES and early.get("boot_note") == note,
                   json.dumps(early))
        j = b.journal("journal-snapinst", MSG_FALLBACK)
        self.check("journal: the initramfs hook's fallback reached the journal once it ran (MESSAGE_ID=fallback, "
                   "generation 0)", len(j) == 1 and j[0].get("SNAPINST_GENERATION") == "0" and
                   "did not reach boot-complete.target" in str(j[0].get("MESSAGE")),
                   "\n".join(b.facts_of("journal-snapinst")[:6]))
        bless = b.show("snapinst-bless.service")
        jb = b.facts_of("journal-bless")
        self.check("snapinst-bless.service ran and succeeded",
                   bless.get("ExecMainStartTimestampMonotonic") not in (None, "0") and
                   bless.get("ExecMainStatus") == "0" and bless.get("Result") == "success" and
                   any("booted successfully" in x for x in jb),
                   "bless: %s\n%s" % (bless, "\n".join("journal: " + x for x in jb)))
        st = self.status(b)
        self.check("status after bless: current_generation 0, pending null, nothing in progress, a boot_note",
                   st.get("current_generation") == 0 and st.get("pending") is None and
                   st.get("in_progress") is None and st.get("recovery_failed") is None and
                   bool(st.get("boot_note")), json.dumps(st))
        self.check("status after bless still says why generation 1 was abandoned (README: `status` shows it as "
                   "`last boot check`)", "did not reach boot-complete.target" in str(st.get("boot_note")),
                   "boot_note: %s" % json.dumps(st.get("boot_note")))
        lst = b.json_fact("list") or {}
        gens = {g.get("generation"): g for g in lst.get("generations", [])}
        kinds = [(t.get("kind"), t.get("outcome")) for t in lst.get("transactions", [])]
        self.check("list: generations 0 (current) and 1 kept; an apply and a rollback, both committed",
                   lst.get("current_generation") == 0 and gens.get(0, {}).get("current") is True and 1 in gens and
                   ("apply", "committed") in kinds and ("rollback", "committed") in kinds,
                   json.dumps(lst))
        h = self.inspect()
        st = h["state"] or {}
        self.check("host: @ is generation 0 again (no marker); state.json current 0, nothing pending; "
                   "booted subvolume = state's current_subvol",
                   not h["gen1_marker"] and st.get("current") == 0 and st.get("pending") is None and
                   st.get("current_subvol") == h["root_subvol_id"] and
                   (b.fact("root-subvol-id") or "").strip() == str(h["root_subvol_id"]),
                   "@ subvol %s, guest rootid %s, state %s" % (h["root_subvol_id"], b.fact("root-subvol-id"),
                                                              json.dumps(st)))

    def step_d(self):
        self.section = "d"
        print("\n### d. boot %d: apply plan2.json, machine reset at apply-after-exchange" % (TRIES + 3))
        b = self.boot("crash2", "boot%d" % (TRIES + 3))
        self.common(b, powered_off=False)
        self.check("the crash run started on generation 0 with nothing pending",
                   b.fact("crash2-start") is not None and (self.status(b).get("current_generation") == 0) and
                   self.status(b).get("pending") is None, json.dumps(self.status(b)))
        self.check("the machine reset inside `snapinst apply` (no power-off, the test unit never got to its end)",
                   b.end in ("reset", "exit") and b.qemu_rc == 0 and b.fact("end") is None and
                   b.fact("crash2-returned") is None,
                   "ended by %s (QEMU %s); %s" % (b.end, b.qemu_rc,
                                                 "; ".join(x.strip() for x in b.lines(r"failpoint|sysrq"))))
        h = self.inspect()
        open_txns = [t for t in h["txns"] if t.get("phase") != "done"]
        self.check("host: the crash left an unfinished apply in phase committing, and @ is already the new tree",
                   len(open_txns) == 1 and open_txns[0].get("phase") == "committing" and h["gen2_marker"],
                   "unfinished %s; gen2-marker in @ %s; stage %s" % (
                       [(t["txn"], t["kind"], t["phase"]) for t in open_txns], h["gen2_marker"], h["stage"]))
        txn = open_txns[0]["txn"] if open_txns else "?"

        print("\n### d. boot %d: the boot hook finishes the interrupted transaction" % (TRIES + 4))
        b = self.boot("check", "boot%d" % (TRIES + 4))
        self.common(b)
        self.expect_line(b, "initramfs: `snapinst boot` rolled the transaction forward",
                         r"snapinst: /run/snapinst/boot/@: transaction %s rolled forward" % re.escape(txn))
        self.expect_line(b, "initramfs: generation 2 is pending: try 1 of %d" % TRIES,
                         r"snapinst: booting generation 2 \(try 1 of %d\)" % TRIES)
        j = b.journal("journal-snapinst", MSG_RECOVERED)
        self.check("journal: the initramfs hook's roll-forward reached the journal (MESSAGE_ID=recovered, the "
                   "transaction)", len(j) == 1 and j[0].get("SNAPINST_TXN") == txn,
                   "\n".join(b.facts_of("journal-snapinst")[:6]))
        self.check("generation 2 booted: plan2's marker is there, generation 1's is not",
                   "gen2-marker present" in b.facts_of("marker") and "gen1-marker absent" in b.facts_of("marker"),
                   str(b.facts_of("marker")))
        self.units_ran(b, "ran")
        st = self.status(b)
        self.check("status: current_generation 2, no transaction in progress, no failed recovery, blessed",
                   st.get("current_generation") == 2 and st.get("in_progress") is None and
                   st.get("recovery_failed") is None and st.get("pending") is None, json.dumps(st))
        lst = b.json_fact("list") or {}
        tx = [t for t in lst.get("transactions", []) if t.get("txn") == txn]
        self.check("list: the interrupted transaction is recorded as committed (recovered)",
                   tx and tx[0].get("outcome") == "committed (recovered)" and tx[0].get("state") == "done",
                   json.dumps(tx))
        h = self.inspect()
        st = h["state"] or {}
        open_txns = [t for t in h["txns"] if t.get("phase") != "done"]
        self.check("host: @ has plan2's marker, state.json current 2, no unfinished transaction, empty stage",
                   h["gen2_marker"] and not h["gen1_marker"] and st.get("current") == 2 and not open_txns and
                   not h["stage"], "state %s; unfinished %s; stage %s" % (json.dumps(st), open_txns, h["stage"]))

    def summary(self, t0):
        total = time.monotonic() - t0
        passed = sum(1 for r in self.results if r[2])
        failed = len(self.results) - passed
        print("\n== summary")
        for b in self.boots:
            print("   %-6s %-7s %6.1f s  ended by %s" % (b.name, b.mode, b.seconds, b.end))
        print("   boots: %.1f s in all; scenario %.1f s; whole test (with build/cache checks) %.1f s" % (
            sum(b.seconds for b in self.boots), total, time.time() - self.args.t_start))
        if self.args.rootfs_done and os.path.exists(self.args.rootfs_done):
            with open(self.args.rootfs_done) as f:
                m = re.search(r"debootstrap_s=(\S+)", f.read())
            if m:
                print("   debootstrap (when the cached tree was made): %s s" % m.group(1))
        bt = os.path.join(self.image_dir, "build-time")
        if os.path.exists(bt):
            with open(bt) as f:
                print("   disk build (when the cached disk was made): %s s" % f.read().strip().split("=")[-1])
        for sec in "abcd":
            rs = [r for r in self.results if r[0] == sec]
            if rs:
                print("   step %s: %d/%d checks passed%s" % (sec, sum(1 for r in rs if r[2]), len(rs),
                                                            "" if all(r[2] for r in rs) else "  <-- FAILED"))
        first = next((r for r in self.results if not r[2]), None)
        if first:
            print("   first failure (later ones may follow from it): (%s) %s\n      %s" % (
                first[0], first[1], first[3].replace("\n", "\n      ")))
        for sec, name, ok, ev in self.results:
            if not ok:
                print("   FAILED (%s) %s" % (sec, name))
        if failed or self.args.keep_disk:
            print("   the disk is kept: %s" % self.disk)
        else:
            os.remove(self.disk)
        print("   console logs: %s" % self.run_dir)
        print("debian-boot: %d passed, %d failed" % (passed, failed))
        return failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-dir", required=True)
    ap.add_argument("--rootfs-done")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--t-start", type=float, default=time.time())
    ap.add_argument("--keep-disk", action="store_true")
    args = ap.parse_args()
    r = Run(args)
    r.t0 = time.monotonic()
    try:
        r.main()
    except Exception as e:  # a harness problem is a failure, never a skip
        import traceback
        traceback.print_exc()
        r.check("the test harness ran to its end", False, "%s: %s" % (type(e).__name__, e))
    r.summary(r.t0)
    failed = sum(1 for x in r.results if not x[2])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
