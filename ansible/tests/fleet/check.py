"""Checks of the fleet simulation (tests/run.sh): every host's whole-tree manifest against the one saved before
the first run, and the rollout's summary file.

    python3 check.py MANIFEST_DIR WORK PHASE

WORK holds hosts.json ({host: root}), faults.json ({host: the health check made to fail there}), the saved
manifests (HOST.0.json), the content hashes the manifests share (hashes.json: the btrfs roots are snapshots of one
Debian root, see manifest.py) and summary.json; PHASE is one of:
  before   save every host's manifest
  check    after the rollout in check mode: every tree as it was, every host predicted to change
  rollout  after the rollout with a failing health check on the hosts in faults.json: the batches before and the
           failing one applied (each failing host rolled back to exactly its tree before, its summary naming the
           check that failed), the later ones untouched
  again    after the same rollout without faults: every host applied, those applied already unchanged
"""

import json
import os
import sys

sys.path.insert(0, sys.argv[1])
import manifest  # noqa: E402

work, phase = sys.argv[2], sys.argv[3]
hosts = json.load(open(os.path.join(work, "hosts.json")))
names = sorted(hosts)
hashes_file = os.path.join(work, "hashes.json")
hashes = json.load(open(hashes_file)) if os.path.exists(hashes_file) else {}
# The plan's paths (tests/fleet/plan/plan.yaml): an applied tree has these, and the directories above them that it
# lacked, added; nothing else differs.
PLAN_PATHS = {"/opt/web", "/opt/web/index.html", "/opt/web/current", "/etc/web.conf",
              "/etc/systemd/system/fleet-web.service", "/etc/systemd/system/multi-user.target.wants/fleet-web.service"}


def ancestors(path):
    while path != "/":
        path = os.path.dirname(path)
        yield path


PLAN_PARENTS = {a for p in PLAN_PATHS for a in ancestors(p)}
# The task of the role that each kind of fault fails (tests/run.sh makes it fail on the hosts in faults.json).
FAILED_TASK = {"command": "Health check, command", "url": "Health check, URL", "unit": "Health check, systemd unit"}
problems = []


def saved(h):
    return os.path.join(work, "%s.0.json" % h)


def tree_is(h, what):
    """The host's tree compared whole with its tree before: `what` is "before" (identical) or "applied" (the plan's
    paths added, with the directories above them that were missing, and everything else identical)."""
    now, before = manifest.manifest(hosts[h], hashes), manifest.load(saved(h))
    if what == "before":
        d = manifest.diff(before, now)
        if d:
            problems.append("%s: the tree is not exactly the one before: %s" % (h, d[:5]))
        return
    added = set(now) - set(before)
    if not PLAN_PATHS <= added or added - PLAN_PATHS - PLAN_PARENTS or set(before) - set(now):
        problems.append("%s: the applied tree adds %s and loses %s, not the plan's paths"
                        % (h, sorted(added), sorted(set(before) - set(now))))
    if any(now[k]["type"] != "dir" for k in added - PLAN_PATHS):
        problems.append("%s: the apply added what is not a directory above the plan's paths" % h)
    changed = [k for k in before if k in now and before[k] != now[k]]
    if changed:
        problems.append("%s: the apply changed what the plan does not name: %s" % (h, changed))


if phase == "before":
    for h in names:
        manifest.save(manifest.manifest(hosts[h], hashes), saved(h))
    manifest.save(hashes, hashes_file)
    print("fleet: %d manifests saved" % len(names))
    sys.exit(0)

summary = json.load(open(os.path.join(work, "summary.json")))
if sorted(summary) != names:
    problems.append("the summary lists %s, not every host" % sorted(summary))
all_faults = json.load(open(os.path.join(work, "faults.json")))
faults = all_faults if phase == "rollout" else {}
# The batches of playbooks/rollout.yml over 20 hosts: the canary; then of the other 19, 1, 10% (1), 50% (9), 50%.
batches = [names[0:1], names[1:2], names[2:3], names[3:12], names[12:20]]
stopped = next((i for i, b in enumerate(batches) if set(b) & set(faults)), None)
for i, batch in enumerate(batches):
    for h in batch:
        s = summary.get(h, {})
        outcome, generation = s.get("outcome"), int(s.get("generation", -1))
        if phase == "check":
            want, tree = ("predicted", 0), "before"
        elif phase == "rollout" and h in faults:
            want, tree = ("rolled_back", 0), "before"
        elif phase == "rollout" and stopped is not None and i > stopped:
            want, tree = ("untouched", 0), "before"
        elif phase == "rollout":
            want, tree = ("committed", 1), "applied"
        else:
            rolled_back = h in all_faults
            untouched = i > 3
            want, tree = (("committed", 2) if rolled_back else ("committed", 1) if untouched else ("unchanged", 1)), "applied"
        if (outcome, generation) != want:
            problems.append("%s (batch %d): outcome %s, generation %s; expected %s, %s"
                            % (h, i, outcome, generation, want[0], want[1]))
        if h in faults and s.get("failed_task") != FAILED_TASK[faults[h]]:
            problems.append("%s: the summary names the failed task %r, not %r"
                            % (h, s.get("failed_task"), FAILED_TASK[faults[h]]))
        if h not in faults and s.get("failed_task") is not None:
            problems.append("%s: the summary names a failed task, %r" % (h, s.get("failed_task")))
        tree_is(h, tree)

manifest.save(hashes, hashes_file)
for p in problems:
    print("fleet: " + p)
print("fleet %s: %d hosts, %d problems" % (phase, len(names), len(problems)))
sys.exit(1 if problems else 0)
