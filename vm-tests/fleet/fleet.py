"""The rollout over SSH to three QEMU VMs (run.sh prepares the disks; see it for the scenario).

Starts the VMs (user-mode networking, SSH forwarded on 127.0.0.1 only, reboots restart the same kernel), waits for
SSH, records each VM's whole-tree manifests of /etc, /usr/sbin and /usr/share/initramfs-tools, runs the collection's rollout playbook, then checks:
the playbook failed (the rollout stopped); the summary file; over SSH, each VM's current and booted generation, the
plan's file, and /etc and /usr of the rolled-back and the untouched VM exactly as before.
"""

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--work", required=True)
ap.add_argument("--kernel", required=True)
ap.add_argument("--initrd", required=True)
ap.add_argument("--manifest", required=True)
args = ap.parse_args()
work = args.work
NAMES = ["vm1", "vm2", "vm3"]
# The trees compared whole before and after (hashing all of /usr takes minutes under emulation): the plan writes to
# /etc, and snapinst and its hooks live in /usr/sbin and /usr/share.
TREES = ["/etc", "/usr/sbin", "/usr/share/initramfs-tools"]
problems = []


def log(msg):
    print("vm-fleet: " + msg, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


ports = {n: free_port() for n in NAMES}
uuid = subprocess.check_output(["blkid", "-o", "value", "-s", "UUID", os.path.join(work, "vm1.img")], text=True).strip()
procs = {}
for n in NAMES:
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "768", "-smp", "1", "-nographic",
           "-monitor", "none", "-serial", "file:%s/%s.console.log" % (work, n),
           "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:%d-:22" % ports[n], "-device", "virtio-net-pci,netdev=net0",
           "-kernel", args.kernel, "-initrd", args.initrd,
           "-append", "root=UUID=%s rootflags=subvol=@ rw console=ttyS0 panic=-1" % uuid,
           "-drive", "file=%s/%s.img,format=raw,if=virtio,cache=unsafe" % (work, n)]
    procs[n] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open("%s/%s.qemu.log" % (work, n), "w"),
                                stderr=subprocess.STDOUT)


def ssh(n, command, check=True):
    r = subprocess.run(["ssh", "-i", os.path.join(work, "id"), "-p", str(ports[n]), "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                        "-o", "ConnectTimeout=10", "root@127.0.0.1", command],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s: exit %d: %s" % (n, command, r.returncode, r.stderr.strip()))
    return r


def status(n):
    return json.loads(ssh(n, "snapinst status --root / --json").stdout.splitlines()[-1])


def manifest(n):
    with open(args.manifest) as f:
        code = f.read()
    r = subprocess.run(["ssh", "-i", os.path.join(work, "id"), "-p", str(ports[n]), "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                        "root@127.0.0.1", "python3 - " + " ".join(TREES)],
                       input=code.replace('if __name__ == "__main__":', "if False:") +
                       "\nimport json, sys\nprint(json.dumps({r: manifest(r) for r in sys.argv[1:]}))\n",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    m = json.loads(r.stdout)
    # What a running system rewrites by itself at every boot.
    for volatile in ("/etc/machine-id", "/etc/resolv.conf"):
        m["/etc"].pop(volatile.replace("/etc", "", 1) or "/", None)
    return m


try:
    t0 = time.monotonic()
    up = set()
    while up != set(NAMES):
        if time.monotonic() - t0 > 900:
            raise RuntimeError("SSH did not come up on %s within 900 s" % sorted(set(NAMES) - up))
        for n in NAMES:
            if n not in up and procs[n].poll() is None and ssh(n, "true", check=False).returncode == 0:
                up.add(n)
                log("%s: SSH up after %.0f s" % (n, time.monotonic() - t0))
        time.sleep(5)
    with concurrent.futures.ThreadPoolExecutor(len(NAMES)) as pool:
        before = dict(zip(NAMES, pool.map(manifest, NAMES)))
    with open(os.path.join(work, "inventory.ini"), "w") as f:
        f.write("[fleet]\n")
        for n in NAMES:
            f.write("%s ansible_host=127.0.0.1 ansible_port=%d\n" % (n, ports[n]))
        f.write("[fleet:vars]\nansible_user=root\nansible_ssh_private_key_file=%s/id\n" % work)
        f.write("ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n")
        f.write("ansible_python_interpreter=/usr/bin/python3\n")
    extra = {
        "snapinst_rollout_plan_content": {"name": "fleet", "steps": [
            {"id": "release", "type": "file", "path": "/etc/fleet-release", "content": "2\n", "mode": "0644"}]},
        "snapinst_rollout_summary_file": os.path.join(work, "summary.json"),
        "snapinst_rollout_health_command":
            "{{ '/bin/false' if inventory_hostname == 'vm2' else 'grep -qx 2 /etc/fleet-release' }}",
        "snapinst_rollout_health_retries": 1,
        # A minbase Debian has no D-Bus, which `shutdown -r` needs for logind.
        "snapinst_rollout_reboot_command": "systemctl reboot",
        "snapinst_rollout_health_delay": 1,
    }
    log("ansible-playbook snapinst.snapinst.rollout over vm1, vm2, vm3 (the health check fails on vm2)")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False")
    rc = subprocess.run(["ansible-playbook", "-i", os.path.join(work, "inventory.ini"), "snapinst.snapinst.rollout",
                         "-e", json.dumps(extra)], env=env).returncode
    if rc == 0:
        problems.append("the playbook succeeded, though vm2's health check fails")
    summary = json.load(open(os.path.join(work, "summary.json")))
    want = {"vm1": ("committed", 1), "vm2": ("rolled_back", 0), "vm3": ("untouched", 0)}
    for n, (outcome, gen) in want.items():
        s = summary.get(n, {})
        if (s.get("outcome"), s.get("generation")) != (outcome, gen):
            problems.append("%s: the summary says %s, generation %s; expected %s, %s"
                            % (n, s.get("outcome"), s.get("generation"), outcome, gen))
        st = status(n)
        booted = st.get("current_generation") if not st.get("next_boot_differs") else None
        if booted != gen:
            problems.append("%s: booted generation %s (status %s), expected %s" % (n, booted, st, gen))
        release = ssh(n, "cat /etc/fleet-release", check=False).stdout
        if (release == "2\n") != (n == "vm1"):
            problems.append("%s: /etc/fleet-release is %r" % (n, release))
    for n in ("vm2", "vm3"):
        after = manifest(n)
        for root in TREES:
            a, b = before[n][root], after[root]
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if diff:
                problems.append("%s: %s is not as before: %s" % (n, root, diff[:10]))
    log("vm1: %s" % status("vm1"))
finally:
    for n, p in procs.items():
        p.kill()
        p.wait()

for p in problems:
    log("problem: " + p)
if problems:
    log("FAILED: %d problems" % len(problems))
    sys.exit(1)
log("passed: the canary committed and booted generation 1, vm2 was rolled back and rebooted into generation 0, "
    "vm3 was not touched")
