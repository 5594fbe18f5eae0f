//! `run` steps on the journal backend: a step that declares the paths it changes (`changes`) is accepted; each
//! declared path is saved before the step runs and restored exactly (contents, metadata, xattrs, hard links, inode
//! identity) when the transaction fails, by a failure, a crash at any point, or a rollback; its `undo` runs after
//! the restore. A run step that declares nothing is refused with a message that says how to declare. Writes outside
//! the declared paths are not undone, which the commit-then-rollback case shows.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;

/// The application the plan upgrades: a directory with every kind of entry (a hard-link pair inside it, one file
/// hard-linked to a file outside it, an xattr, a setuid file, a symlink), and a config file.
fn make_app(root: &Path) {
    let at = |p: &str| in_root(root, p);
    write_file(&at("/opt/app/a.txt"), b"a\n");
    write_file(&at("/opt/app/sub/b.bin"), &pseudo_bytes(7, 70_000));
    write_file(&at("/opt/app/x"), b"x\n");
    std::fs::hard_link(at("/opt/app/x"), at("/opt/app/y")).unwrap();
    write_file(&at("/srv/shared-with-app"), b"shared\n");
    std::fs::hard_link(at("/srv/shared-with-app"), at("/opt/app/shared")).unwrap();
    set_xattr(&at("/opt/app/a.txt"), "user.origin", b"test");
    write_file(&at("/opt/app/suid"), b"#!/bin/sh\n");
    chmod(&at("/opt/app/suid"), 0o4755);
    std::os::unix::fs::symlink("a.txt", at("/opt/app/link")).unwrap();
    write_file(&at("/etc/app.conf"), b"orig\n");
    fix_mtimes(root);
}

const INSTALL: &str = "set -e
echo new >> /opt/app/a.txt
rm /opt/app/sub/b.bin
mkdir -p /opt/app/new && echo n > /opt/app/new/n
chmod 600 /opt/app/x
echo more >> /opt/app/shared
echo changed > /etc/app.conf
mkdir -p /srv/new/sub && echo s > /srv/new/sub/s
echo outside > /var/log/outside.log";

/// The plan: the declared upgrade (its undo removes the one undeclared write, and checks the restore came first),
/// then, when `fail`, a check that fails.
fn app_plan(fail: bool) -> PlanDir {
    let undo = "test \"$(cat /etc/app.conf)\" = orig && rm -f /var/log/outside.log";
    let mut steps = vec![
        json!({"id": "install", "type": "run", "command": sh(INSTALL),
               "changes": ["/opt/app", "/etc/app.conf", "/srv/new/sub", "/opt/app/sub"], "undo": sh(undo)}),
        json!({"id": "conf", "type": "file", "path": "/etc/app.d/extra.conf", "content": "extra\n"}),
    ];
    if fail {
        steps.push(json!({"id": "check", "type": "verify", "command": sh("exit 3")}));
    }
    PlanDir::new(&plan("app", steps), &[])
}

/// The tree after the upgrade committed.
fn upgraded(before: &Manifest) -> Expect {
    let mut e = Expect::new(before);
    e.file_content("/opt/app/a.txt", b"a\nnew\n")
        .remove("/opt/app/sub/b.bin")
        .dir_any("/opt/app/new")
        .file_content("/opt/app/new/n", b"n\n")
        .file_content("/opt/app/shared", b"shared\nmore\n")
        .file_content("/etc/app.conf", b"changed\n")
        .dir_any("/srv/new/sub")
        .file_content("/srv/new/sub/s", b"s\n")
        .file_content("/var/log/outside.log", b"outside\n")
        .dir_any("/etc/app.d")
        .file_content("/etc/app.d/extra.conf", b"extra\n");
    // x and y stay one file, now mode 0600; the copy the step was given no longer shares its inode with /srv.
    e.spec(
        "/opt/app/x",
        Spec {
            kind: Some(Kind::File),
            mode: Some(0o600),
            content: Some(b"x\n".to_vec()),
            links: Some(vec!["/opt/app/y".into()]),
            ..Spec::default()
        },
    );
    e.spec(
        "/opt/app/y",
        Spec { kind: Some(Kind::File), mode: Some(0o600), links: Some(vec!["/opt/app/x".into()]), ..Spec::default() },
    );
    e.spec(
        "/srv/shared-with-app",
        Spec { kind: Some(Kind::File), content: Some(b"shared\n".to_vec()), links: Some(vec![]), ..Spec::default() },
    );
    e
}

fn journal_image() -> (LoopImage, Manifest) {
    let img = populated(Backend::Journal);
    make_app(&img.root());
    let before = img.booted_manifest();
    (img, before)
}

#[test]
fn privileged_a_failed_run_step_is_restored_exactly() {
    require_root();
    let (img, before) = journal_image();
    let root = img.root();
    let out = apply(&app_plan(true).path, &root, Backend::Journal, &[]);
    assert_code(&out, 1);
    let lines = json_lines(&out);
    assert_eq!(summary(&lines)["outcome"], "rolled_back", "{}", show(&out));
    let failed: Vec<_> = events(&lines, "step_failed").iter().map(|e| e["step"].clone()).collect();
    assert_eq!(failed, ["check"], "the upgrade ran, and the check after it failed\n{}", show(&out));
    // Every declared path as it was, the hard links across the tree included, and the undo ran after the restore.
    assert_manifest_eq(&before, &img.booted_manifest());
    assert_no_leftovers(&img);
}

#[test]
fn privileged_a_committed_run_step_rolls_back_but_not_its_undeclared_writes() {
    require_root();
    let (img, before) = journal_image();
    let root = img.root();
    let out = apply(&app_plan(false).path, &root, Backend::Journal, &[]);
    assert_code(&out, 0);
    upgraded(&before).check(&img.booted_manifest());
    assert_no_leftovers(&img);
    assert_code(&rollback(&root, &[], &[]), 0);
    let mut rolled_back = Expect::new(&before);
    rolled_back.file_content("/var/log/outside.log", b"outside\n");
    rolled_back.check(&img.booted_manifest());
    assert_no_leftovers(&img);
}

fn journal_apply_points() -> Vec<String> {
    let out = snapinst(["failpoints"]);
    assert_code(&out, 0);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3 && f[1] == "apply" && f[2].split(',').any(|b| b.trim() == "journal"))
        .map(|f| f[0].to_string())
        .collect()
}

/// A crash at every point of the apply, then recover: exactly before, or exactly the upgrade; a second recover
/// changes nothing.
#[cfg(feature = "failpoints")]
#[test]
fn privileged_a_crash_anywhere_in_a_run_step_recovers_before_or_after() {
    require_root();
    let points = journal_apply_points();
    assert!(points.iter().any(|p| p == "apply-mid-save"), "{points:?}");
    let mut seen = Vec::new();
    for point in &points {
        let (img, before) = journal_image();
        let root = img.root();
        let out = apply_env(&app_plan(false).path, &root, Backend::Journal, &[], &[("SNAPINST_FAILPOINT", point)]);
        if !killed_by_sigkill(&out) {
            assert_code(&out, 0);
            continue;
        }
        let r = recover(&root);
        assert_code(&r, 0);
        let now = img.booted_manifest();
        let state = if manifests_equal(&before, &now) {
            "before"
        } else {
            upgraded(&before)
                .diff(&now)
                .unwrap_or_else(|d| panic!("{point}: neither before nor after:\n{d}\n{}", show(&r)));
            "after"
        };
        let again = recover(&root);
        assert_code(&again, 0);
        assert_manifest_eq_ctx(&now, &img.booted_manifest(), point);
        assert_no_leftovers(&img);
        seen.push(format!("{point}={state}"));
    }
    assert!(seen.iter().any(|s| s == "apply-mid-save=before"), "{seen:?}");
    assert!(seen.iter().any(|s| s.ends_with("=after")), "{seen:?}");
}

#[test]
fn privileged_a_run_step_must_declare_its_changes_on_the_journal() {
    require_root();
    let (img, before) = journal_image();
    let root = img.root();
    let try_plan = |step: Value| {
        let pd = PlanDir::new(&plan("bad", vec![step]), &[]);
        let out = apply(&pd.path, &root, Backend::Journal, &[]);
        assert_code(&out, 2);
        assert_manifest_eq(&before, &img.booted_manifest());
        stderr(&out)
    };
    let err = try_plan(json!({"id": "s", "type": "run", "command": sh("true")}));
    assert!(err.contains("step \"s\" (#1) field \"type\"") && err.contains("\"changes\": [\"/opt/app\""), "{err}");
    let err = try_plan(json!({"id": "s", "type": "run", "command": sh("true"), "changes": ["opt/app"]}));
    assert!(err.contains("\"s\"") && err.contains("changes[0]") && err.contains("is not absolute"), "{err}");
    let err = try_plan(json!({"id": "s", "type": "run", "command": sh("true"), "changes": ["/"]}));
    assert!(err.contains("changes[0]") && err.contains("is the root itself"), "{err}");
    let err = try_plan(json!({"id": "s", "type": "run", "command": sh("true"), "changes": ["/opt/../etc"]}));
    assert!(err.contains("changes[0]") && err.contains(".."), "{err}");
    let err = try_plan(json!({"id": "s", "type": "run", "command": sh("true"), "changes": []}));
    assert!(err.contains("\"s\"") && err.contains("changes"), "{err}");
    assert_no_leftovers(&img);
}
