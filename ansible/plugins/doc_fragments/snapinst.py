# -*- coding: utf-8 -*-
# Copyright: snapinst developers
# MIT License (see https://opensource.org/licenses/MIT)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The options every snapinst module takes (module_utils/snapinst.py's COMMON_ARGS)."""

    DOCUMENTATION = r"""
options:
  root:
    description: The root the module works on.
    type: path
    default: /
  executable:
    description: Path of the snapinst binary (default C(snapinst) on the PATH, C(/usr/sbin) included).
    type: path
"""
