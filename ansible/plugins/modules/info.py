#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: snapinst developers
# MIT License (see https://opensource.org/licenses/MIT)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: info
short_description: The snapinst generations and transactions of a root
description:
  - Returns C(snapinst status --json) and C(snapinst list --json) of a root, and the generation facts the other
    modules return. Changes nothing.
version_added: 0.1.0
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - snapinst.snapinst.snapinst
author:
  - snapinst developers (@snapinst)
attributes:
  check_mode:
    support: full
    details: Reads only.
  diff_mode:
    support: none
  platform:
    platforms: linux
    support: full
requirements:
  - snapinst on the managed host
"""

EXAMPLES = r"""
- name: What generation does this host run?
  snapinst.snapinst.info:
  register: si

- name: Show it
  ansible.builtin.debug:
    msg: "generation {{ si.generation }} (booted {{ si.booted_generation }})"
"""

RETURN = r"""
status:
  description: The object C(snapinst status --json) prints.
  returned: always
  type: dict
generations:
  description: The kept generations (C(snapinst list --json)), each with its plan and plan digest.
  returned: always
  type: list
  elements: dict
transactions:
  description: The recorded transactions (C(snapinst list --json)).
  returned: always
  type: list
  elements: dict
generation:
  description: The current generation.
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
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.snapinst.snapinst.plugins.module_utils.snapinst import (
    COMMON_ARGS,
    Snapinst,
    SnapinstError,
    facts,
)


def main():
    module = AnsibleModule(argument_spec=dict(COMMON_ARGS), supports_check_mode=True)
    try:
        si = Snapinst(module)
        status = si.status()
        listing = si.generations()
        result = dict(changed=False, status=status, generations=listing.get("generations") or [],
                      transactions=listing.get("transactions") or [])
        result.update(facts(status))
        module.exit_json(**result)
    except SnapinstError as e:
        module.fail_json(msg=e.msg, **e.result)


if __name__ == "__main__":
    main()
