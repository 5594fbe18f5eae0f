# -*- coding: utf-8 -*-
# Copyright: snapinst developers
# MIT License (see https://opensource.org/licenses/MIT)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible_collections.snapinst.snapinst.plugins.modules.apply import build_diff, changes_of, read_plan, texts_before

PLAN = {"name": "p", "steps": [
    {"id": "conf", "type": "file", "path": "/etc/app.conf", "content": "new\n"},
    {"id": "new", "type": "file", "path": "/etc/new.conf", "source": "files/new.conf"},
    {"id": "pkg", "type": "package", "apt": ["hello"]},
    {"id": "dir", "type": "dir", "path": "/opt/app"},
]}


def test_diff_has_before_and_after_of_text_files_and_prepares_the_rest(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("old\n")
    plan_dir = tmp_path / "plan"
    (plan_dir / "files").mkdir(parents=True)
    (plan_dir / "files" / "new.conf").write_text("fresh\n")
    before = texts_before(PLAN, str(root))
    assert before == {"/etc/app.conf": "old\n", "/etc/new.conf": None}
    (root / "etc" / "app.conf").write_text("new\n")  # the apply happened: the diff keeps what was read before it
    events = [{"event": "change", "change": "modified", "path": "/etc/app.conf"},
              {"event": "change", "change": "added", "path": "/etc/new.conf"},
              {"event": "change", "change": "added", "path": "/opt/app"},
              {"event": "change", "change": "added", "path": {"hex": "2f6fff"}},
              {"event": "changes", "counts": {"added": 3, "modified": 1}}]
    changes = changes_of(events)
    assert changes == {"modified": ["/etc/app.conf"], "added": ["/etc/new.conf", "/opt/app", {"hex": "2f6fff"}]}
    diff = build_diff(PLAN, str(plan_dir), before, changes)
    files = dict((d["after_header"], d) for d in diff if "after_header" in d)
    assert files["/etc/app.conf"]["before"] == "old\n" and files["/etc/app.conf"]["after"] == "new\n"
    assert files["/etc/new.conf"]["before"] == "" and files["/etc/new.conf"]["after"] == "fresh\n"
    prepared = diff[-1]["prepared"]
    assert 'package step pkg: ["hello"]' in prepared
    assert "added /opt/app" in prepared and '"2f6fff"' in prepared


def test_plans_are_read_in_each_form(tmp_path):
    j = tmp_path / "p.json"
    j.write_text(json.dumps(PLAN))
    t = tmp_path / "p.toml"
    t.write_text('name = "p"\n[[steps]]\nid = "d"\ntype = "dir"\npath = "/x"\n')
    assert read_plan(str(j), None)["steps"][0]["id"] == "conf"
    assert read_plan(str(t), None)["steps"][0]["path"] == "/x"
    assert read_plan(str(tmp_path / "missing.json"), None) is None
    assert read_plan("ignored", {"name": "inline"}) == {"name": "inline"}
