#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: snapinst developers
# MIT License (see https://opensource.org/licenses/MIT)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: rollback
short_description: Make an earlier snapinst generation of a root current again
description:
  - Runs C(snapinst rollback --json) on the managed host, as one transaction.
  - C(changed) means another generation became current; rolling back to the current generation changes nothing.
  - A rollback of the running root (C(/) on a btrfs subvolume) takes effect at the next boot; C(reboot_required) says so.
version_added: 0.1.0
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - snapinst.snapinst.snapinst
author:
  - snapinst developers (@snapinst)
options:
  to:
    description: The generation to make current (default the current generation's parent).
    type: int
  exact:
    description: Restore the generation's whole kept tree, dropping everything written since (btrfs roots only).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Predicts from C(snapinst list) which generation would become current.
  diff_mode:
    support: none
  platform:
    platforms: linux
    support: full
requirements:
  - snapinst on the managed host
"""

EXAMPLES = r"""
- name: Back to the generation before the current one
  snapinst.snapinst.rollback:

- name: Back to generation 3 of /srv/app, exactly as it was kept
  snapinst.snapinst.rollback:
    root: /srv/app
    to: 3
    exact: true
"""

RETURN = r"""
generation_before:
  description: The current generation before the rollback.
  returned: always
  type: int
generation:
  description: The current generation after it.
  returned: always
  type: int
booted_generation:
  description: The generation the running system booted.
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
busy:
  description: On failure, whether another transaction or a package manager held the root (try again later).
  returned: failure
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.snapinst.snapinst.plugins.module_utils.snapinst import (
    COMMON_ARGS,
    Snapinst,
    SnapinstError,
    facts,
    json_lines,
    summary_of,
)


def target_of(listing, to):
    """The generation a rollback would make current, from `snapinst list --json` (None: there is none)."""
    current = listing.get("current_generation")
    gens = dict((g.get("generation"), g) for g in listing.get("generations") or [])
    if to is not None:
        if to not in gens:
            raise SnapinstError("generation %d is not kept (kept: %s)" % (to, ", ".join(str(g) for g in sorted(gens))))
        return to
    parent = (gens.get(current) or {}).get("parent")
    if parent is None:
        raise SnapinstError("generation %s is the oldest kept; there is nothing before it" % current)
    return parent


def main():
    argument_spec = dict(to=dict(type="int"), exact=dict(type="bool", default=False))
    argument_spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        si = Snapinst(module)
        before = si.status()
        target = target_of(si.generations(), module.params["to"])
        result = dict(generation_before=before.get("current_generation"))
        if module.check_mode:
            result.update(facts(before))
            result.update(changed=target != before.get("current_generation"), generation=target)
            module.exit_json(**result)
        args = ["rollback", "--root", si.root, "--json", "--to", str(target)]
        if module.params["exact"]:
            args.append("--exact")
        rc, out, err = si.run(args, check_rc=True)
        summary = summary_of(json_lines(out)) or {}
        result.update(facts(si.status()))
        result.update(changed=summary.get("outcome") == "committed", txn=summary.get("txn"))
        module.exit_json(**result)
    except SnapinstError as e:
        module.fail_json(msg=e.msg, **e.result)


if __name__ == "__main__":
    main()
