# -*- coding: utf-8 -*-
# Copyright: snapinst developers
# MIT License (see https://opensource.org/licenses/MIT)
"""Running snapinst from a module: every call is `snapinst ... --json` and every answer is read from its JSON
(the JSON Lines events and their summary, or the one object of `status` and `list`) and its exit code, never from
the text meant for people."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

# snapinst's exit codes (docs/cli-contract.md).
EXIT_OK = 0
EXIT_ROLLED_BACK = 1
EXIT_REFUSED = 2
EXIT_NEEDS_RECOVERY = 3
EXIT_BUSY = 4
EXIT_TIMED_OUT = 124  # timeout(1)'s

COMMON_ARGS = dict(
    root=dict(type="path", default="/"),
    executable=dict(type="path"),
)


class SnapinstError(Exception):
    """snapinst ended without the answer asked for. `result` holds what the module returns with the failure."""

    def __init__(self, msg, **result):
        super(SnapinstError, self).__init__(msg)
        self.msg = msg
        self.result = result


def json_lines(text):
    """The JSON objects of a JSON Lines text; a line that is not JSON is skipped (a killed run's last line)."""
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def summary_of(events):
    """The last `summary` event, or None."""
    for e in reversed(events):
        if e.get("event") == "summary":
            return e
    return None


def failure_from(rc, stderr, events, what):
    """The SnapinstError for a run of `what` that ended with exit code `rc`."""
    # The message: snapinst's last line on stderr, which says what happened (the whole stderr is returned too).
    lines = [line for line in (stderr or "").splitlines() if line.strip()]
    msg = lines[-1] if lines else "%s exited %s" % (what, rc)
    summary = summary_of(events) or {}
    result = dict(rc=rc, stderr=stderr, busy=rc == EXIT_BUSY, needs_recovery=rc == EXIT_NEEDS_RECOVERY,
                  outcome=summary.get("outcome"), txn=summary.get("txn"))
    failed = [e for e in events if e.get("event") == "step_failed"]
    if failed:
        result["failed_step"] = failed[-1].get("step")
        result["step_output"] = failed[-1].get("output")
    return SnapinstError(msg, **result)


class Snapinst(object):
    """The snapinst of the managed host, for one root."""

    def __init__(self, module):
        self.module = module
        self.root = module.params["root"]
        found = module.params.get("executable")
        self.bin = found or module.get_bin_path("snapinst", required=True, opt_dirs=["/usr/sbin", "/sbin"])

    def run(self, args, check_rc=False, timeout=0):
        """Run `snapinst ARGS`; returns (rc, stdout, stderr). With `timeout` (seconds), snapinst is stopped by
        SIGTERM after that long (it then rolls its transaction back), and the run fails."""
        cmd = [self.bin] + list(args)
        if timeout > 0:
            cmd = ["timeout", "--signal=TERM", "--kill-after=60", str(timeout)] + cmd
        rc, out, err = self.module.run_command(cmd, check_rc=False)
        if timeout > 0 and rc == EXIT_TIMED_OUT:
            raise SnapinstError("snapinst %s took more than %d s and was stopped (its transaction was rolled back)"
                                % (args[0], timeout), rc=rc, timed_out=True)
        if check_rc and rc != EXIT_OK:
            raise failure_from(rc, err, json_lines(out), "snapinst %s" % args[0])
        return rc, out, err

    def one_object(self, command):
        """`snapinst COMMAND --root ROOT --json`, whose answer is one JSON object."""
        rc, out, err = self.run([command, "--root", self.root, "--json"], check_rc=True)
        try:
            value = json.loads(out)
        except ValueError:
            raise SnapinstError("snapinst %s --json printed no JSON object: %s" % (command, out[:200]), rc=rc)
        return value

    def status(self):
        return self.one_object("status")

    def generations(self):
        return self.one_object("list")


def booted_generation(status):
    """The generation the running system booted: while a generation committed to a running root waits for its
    boot (`pending`), the one before it; else the current one."""
    pending = status.get("pending") or {}
    if status.get("next_boot_differs") and pending.get("fallback") is not None:
        return pending.get("fallback")
    return status.get("current_generation")


def facts(status):
    """What every module returns about the root after it ran."""
    return dict(
        generation=status.get("current_generation"),
        booted_generation=booted_generation(status),
        pending=status.get("pending"),
        reboot_required=bool(status.get("next_boot_differs")),
        backend=status.get("backend"),
    )
