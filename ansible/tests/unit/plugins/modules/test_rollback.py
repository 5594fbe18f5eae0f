# -*- coding: utf-8 -*-
# Copyright: snapinst developers
# MIT License (see https://opensource.org/licenses/MIT)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.snapinst.snapinst.plugins.module_utils.snapinst import SnapinstError
from ansible_collections.snapinst.snapinst.plugins.modules.rollback import target_of

LISTING = {"current_generation": 3, "generations": [
    {"generation": 0, "parent": None}, {"generation": 2, "parent": 0}, {"generation": 3, "parent": 2}]}


def test_the_default_target_is_the_current_generations_parent():
    assert target_of(LISTING, None) == 2
    assert target_of(LISTING, 0) == 0
    assert target_of(LISTING, 3) == 3


def test_a_generation_not_kept_or_none_before_is_an_error():
    with pytest.raises(SnapinstError, match="generation 1 is not kept"):
        target_of(LISTING, 1)
    with pytest.raises(SnapinstError, match="the oldest kept"):
        target_of({"current_generation": 0, "generations": [{"generation": 0, "parent": None}]}, None)
