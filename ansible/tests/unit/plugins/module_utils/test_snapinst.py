# -*- coding: utf-8 -*-
# Copyright: snapinst developers
# MIT License (see https://opensource.org/licenses/MIT)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.snapinst.snapinst.plugins.module_utils.snapinst import (
    EXIT_BUSY,
    EXIT_NEEDS_RECOVERY,
    EXIT_ROLLED_BACK,
    booted_generation,
    facts,
    failure_from,
    json_lines,
    summary_of,
)

EVENTS = "\n".join([
    '{"v":1,"apiVersion":"snapinst/v1","kind":"Event","event":"started","txn":"T"}',
    '{"v":1,"apiVersion":"snapinst/v1","kind":"Event","event":"step_failed","txn":"T","step":"check","output":"no"}',
    '{"v":1,"apiVersion":"snapinst/v1","kind":"Event","event":"summary","txn":"T","outcome":"rolled_back"}',
    '{"v":1,"event":"summary","txn":"T", "outcome": "cut off',
])


def test_json_lines_skips_what_is_not_an_object():
    lines = json_lines(EVENTS + "\nnot json\n[1]\n\n")
    assert [e["event"] for e in lines] == ["started", "step_failed", "summary"]
    assert summary_of(lines)["outcome"] == "rolled_back"
    assert summary_of([]) is None


def test_a_failure_says_busy_recovery_and_the_failed_step():
    e = failure_from(EXIT_ROLLED_BACK, "[7/7] check FAILED\nsnapinst: step \"check\" failed\n", json_lines(EVENTS),
                     "snapinst apply")
    assert e.msg == 'snapinst: step "check" failed'
    assert e.result["failed_step"] == "check" and e.result["step_output"] == "no"
    assert e.result["busy"] is False and e.result["outcome"] == "rolled_back"
    busy = failure_from(EXIT_BUSY, "snapinst: another snapinst transaction on / is running (pid 7)\n", [], "x")
    assert busy.result["busy"] is True and busy.result["needs_recovery"] is False
    assert failure_from(EXIT_NEEDS_RECOVERY, "", [], "snapinst apply").msg == "snapinst apply exited 3"
    assert failure_from(EXIT_NEEDS_RECOVERY, "", [], "x").result["needs_recovery"] is True


def test_the_booted_generation_is_the_fallback_while_one_is_pending():
    pending = {"current_generation": 5, "next_boot_differs": True,
               "pending": {"generation": 5, "fallback": 4, "boots_left": 3}, "backend": "btrfs"}
    assert booted_generation(pending) == 4
    f = facts(pending)
    assert f["reboot_required"] is True and f["generation"] == 5 and f["backend"] == "btrfs"
    settled = {"current_generation": 5, "next_boot_differs": False, "pending": None}
    assert booted_generation(settled) == 5 and facts(settled)["reboot_required"] is False
