#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: snapinst developers
# MIT License (see https://opensource.org/licenses/MIT)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: apply
short_description: Apply a snapinst plan to a root as one transaction
description:
  - Runs C(snapinst apply --if-changed --json) on the managed host. Either every step of the plan takes effect and a
    new generation is committed, or none does and the root is as it was.
  - C(changed) means a new generation was committed. The generation that an apply commits records a digest of the
    plan and of the files it names, so the same plan with the same files again reports C(changed=false) and stages
    nothing.
  - In check mode the plan runs in a stage that is thrown away (C(--dry-run)), which predicts C(changed) and, in diff
    mode, the changes.
  - A plan committed to the running root (C(/) on a btrfs subvolume) is what the next boot mounts;
    C(reboot_required) says so.
version_added: 0.1.0
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - snapinst.snapinst.snapinst
author:
  - snapinst developers (@snapinst)
options:
  plan:
    description:
      - Path on the managed host of the plan file (C(.json), C(.yaml)/C(.yml) or C(.toml)).
      - Files the plan names (a C(file) step's C(source), a C(package) step's C(debs)) are relative to its directory.
      - Mutually exclusive with O(plan_content).
    type: path
  plan_content:
    description:
      - The plan itself, as a dictionary (the JSON form of a plan). Written to a temporary file for snapinst.
      - Mutually exclusive with O(plan).
    type: dict
  backend:
    description: How the transaction is staged (C(auto) chooses by the root's filesystem).
    type: str
    choices: [auto, btrfs, overlay, journal]
  keep_failed:
    description: When a step fails, keep the stage for C(snapinst resume) or C(snapinst abort) instead of discarding it.
    type: bool
    default: false
  timeout:
    description:
      - Seconds the whole apply may take; after them snapinst is stopped (SIGTERM) and rolls the transaction back.
      - C(0) means no limit.
    type: int
    default: 0
attributes:
  check_mode:
    support: full
    details: The plan runs in a stage that is thrown away; host steps are skipped.
  diff_mode:
    support: full
    details:
      - C(before)/C(after) for each text file a C(file) step writes that changes; a C(prepared) summary of the other
        changed paths and of the package, user, group and service steps.
  platform:
    platforms: linux
    support: full
notes:
  - A busy root (another transaction, or a package manager holding dpkg's lock) fails with C(busy=true), so a task
    can retry with C(until) and C(retries).
requirements:
  - snapinst on the managed host
"""

EXAMPLES = r"""
- name: Apply the web plan (nothing happens when the current generation already holds it)
  snapinst.snapinst.apply:
    plan: /srv/plans/web.yaml
  register: web

- name: Reboot into the new generation when it is for the running root
  ansible.builtin.reboot:
  when: web.reboot_required

- name: An inline plan, retried while another transaction holds the root
  snapinst.snapinst.apply:
    root: /srv/app
    plan_content:
      name: motd
      steps:
        - {id: motd, type: file, path: /etc/motd, content: "managed by ansible\n", mode: "0644"}
  register: motd
  until: not (motd.busy | default(false))
  retries: 10
  delay: 30
"""

RETURN = r"""
outcome:
  description: The summary's outcome (C(committed), C(unchanged), C(dry_run), C(rolled_back), C(kept)).
  returned: always
  type: str
  sample: committed
txn:
  description: The transaction's id (null when nothing was staged).
  returned: always
  type: str
generation_before:
  description: The current generation before the apply.
  returned: always
  type: int
generation:
  description: The current generation after the apply (the new one when committed).
  returned: always
  type: int
booted_generation:
  description: The generation the running system booted (differs from RV(generation) until a reboot when the plan was committed to the running root).
  returned: always
  type: int
pending:
  description: The generation waiting for its boot, with its fallback and boots left, or null.
  returned: always
  type: dict
reboot_required:
  description: Whether the next boot mounts another tree than the running one.
  returned: always
  type: bool
backend:
  description: The backend of the root's transactions.
  returned: always
  type: str
conflicts:
  description: Paths both the plan and the running system changed during the transaction (the plan's version won; the running system's is kept aside).
  returned: always
  type: list
  elements: dict
changes:
  description: The paths the transaction changes, by kind (C(added), C(modified), C(removed), ...), in check or diff mode.
  returned: when check or diff mode
  type: dict
busy:
  description: On failure, whether another transaction or a package manager held the root (try again later).
  returned: failure
  type: bool
failed_step:
  description: On failure, the id of the step that failed (the transaction was rolled back).
  returned: failure
  type: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.snapinst.snapinst.plugins.module_utils.snapinst import (
    COMMON_ARGS,
    EXIT_OK,
    EXIT_ROLLED_BACK,
    Snapinst,
    SnapinstError,
    failure_from,
    facts,
    json_lines,
    summary_of,
)

MAX_DIFF_BYTES = 64 * 1024
PREPARED_TYPES = ("package", "user", "group", "service", "run")


def read_plan(path, content):
    """The plan as a dictionary, when it can be read here (JSON, TOML, or YAML with PyYAML); else None."""
    if content is not None:
        return content
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".toml"):
            import tomllib
            return tomllib.loads(raw.decode("utf-8"))
        if path.endswith((".yaml", ".yml")):
            import yaml
            return yaml.safe_load(raw)
        return json.loads(raw.decode("utf-8"))
    except Exception:
        return None


def text_of(path):
    """The text of a small UTF-8 file, or None (missing, binary, too large)."""
    try:
        if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > MAX_DIFF_BYTES:
            return None
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def file_steps_of(plan):
    """The plan's `file` steps, by the path they write."""
    steps = {}
    for step in (plan or {}).get("steps") or []:
        if isinstance(step, dict) and step.get("type") == "file" and isinstance(step.get("path"), str):
            steps[step["path"]] = step
    return steps


def texts_before(plan, root):
    """The text each `file` step's path holds in the root now (None: missing, binary or large), read before the
    apply changes them."""
    return dict((path, text_of(os.path.join(root, path.lstrip("/")))) for path in file_steps_of(plan))


def build_diff(plan, plan_dir, before_texts, changes):
    """Ansible's diff: before/after for each changed text file a `file` step writes (its text before the apply from
    `before_texts`), and a `prepared` summary of everything else."""
    file_steps = file_steps_of(plan)
    prepared = []
    for step in (plan or {}).get("steps") or []:
        if not isinstance(step, dict):
            continue
        kind = step.get("type")
        if kind in PREPARED_TYPES:
            what = step.get("name") or step.get("unit") or step.get("apt") or step.get("debs") or step.get("command")
            prepared.append("%s step %s: %s" % (kind, step.get("id"), json.dumps(what)))
    diffs = []
    for kind, paths in sorted(changes.items()):
        for path in paths:
            step = file_steps.get(path) if isinstance(path, str) else None
            after = None
            if step is not None and kind in ("added", "modified"):
                if isinstance(step.get("content"), str):
                    after = step["content"]
                elif isinstance(step.get("source"), str):
                    after = text_of(os.path.join(plan_dir, step["source"]))
            before = before_texts.get(path) if isinstance(path, str) and kind != "added" else None
            if after is not None and (before is not None or kind == "added"):
                diffs.append(dict(before=before or "", after=after, before_header=path, after_header=path))
            else:
                prepared.append("%s %s" % (kind, path if isinstance(path, str) else json.dumps(path)))
    if prepared:
        diffs.append(dict(prepared="\n".join(prepared) + "\n"))
    return diffs


def changes_of(events):
    """The paths of the `change` events, by kind of change."""
    changes = {}
    for e in events:
        if e.get("event") == "change":
            changes.setdefault(e.get("change"), []).append(e.get("path"))
    return changes


def main():
    argument_spec = dict(
        plan=dict(type="path"),
        plan_content=dict(type="dict"),
        backend=dict(type="str", choices=["auto", "btrfs", "overlay", "journal"]),
        keep_failed=dict(type="bool", default=False),
        timeout=dict(type="int", default=0),
    )
    argument_spec.update(COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("plan", "plan_content")],
        required_one_of=[("plan", "plan_content")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        si = Snapinst(module)
        before = si.status()
        plan_file = p["plan"]
        if p["plan_content"] is not None:
            plan_file = os.path.join(module.tmpdir, "plan.json")
            with open(plan_file, "w") as f:
                json.dump(p["plan_content"], f)
        plan = read_plan(plan_file, p["plan_content"]) if module._diff else None
        before_texts = texts_before(plan, si.root) if module._diff else {}
        args = ["apply", plan_file, "--root", si.root, "--json", "--if-changed"]
        if p["backend"]:
            args += ["--backend", p["backend"]]
        if module.check_mode:
            args.append("--dry-run")
        elif module._diff:
            args += ["--confirm", "--yes"]
        if p["keep_failed"] and not module.check_mode:
            args.append("--keep-failed")
        rc, out, err = si.run(args, timeout=p["timeout"])
        events = json_lines(out)
        summary = summary_of(events) or {}
        if rc != EXIT_OK:
            error = failure_from(rc, err, events, "snapinst apply")
            if rc == EXIT_ROLLED_BACK:
                error.result["rolled_back"] = summary.get("outcome") != "kept"
            raise error
        outcome = summary.get("outcome")
        after = si.status()
        result = dict(
            changed=outcome in ("committed", "dry_run"),
            outcome=outcome,
            txn=summary.get("txn"),
            generation_before=before.get("current_generation"),
            conflicts=summary.get("conflicts") or [],
        )
        result.update(facts(after))
        if module.check_mode or module._diff:
            changes = changes_of(events)
            result["changes"] = changes
            if module._diff and result["changed"]:
                result["diff"] = build_diff(plan, os.path.dirname(os.path.abspath(plan_file)), before_texts, changes)
        module.exit_json(**result)
    except SnapinstError as e:
        module.fail_json(msg=e.msg, **e.result)


if __name__ == "__main__":
    main()
