//! `apply --keep-failed`, `resume`, `abort` and `diff` on real btrfs and overlay roots: a kept transaction leaves
//! the root exactly as it was, blocks other transactions, survives `recover`, shows its stage with `diff`, and
//! either commits exactly the fixed plan's effects when resumed (from the failed step, or exactly from an earlier
//! one through its checkpoint) or leaves nothing behind when aborted.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

/// A plan whose step "c" fails unless `c_ok`; step "b" appends to a log, so a step run twice shows.
fn app_plan(a_content: &str, c_ok: bool) -> Value {
    let c = if c_ok { "echo c >> /opt/app/log" } else { "echo 'not ready' >&2; exit 1" };
    plan(
        "app",
        vec![
            json!({"id": "a", "type": "file", "path": "/opt/app/a.conf", "content": a_content}),
            json!({"id": "b", "type": "run", "command": sh("echo b >> /opt/app/log")}),
            json!({"id": "c", "type": "run", "command": sh(c)}),
            json!({"id": "d", "type": "file", "path": "/opt/app/d.conf", "content": "four\n"}),
        ],
    )
}

fn write_plan(pd: &PlanDir, plan: &Value) {
    fs::write(&pd.path, serde_json::to_string_pretty(plan).unwrap()).unwrap();
}

fn root_cmd(cmd: &str, root: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![cmd, "--root", root.to_str().unwrap(), "--json"];
    args.extend(extra);
    snapinst(args)
}

fn status(root: &Path) -> Value {
    let out = root_cmd("status", root, &[]);
    assert_code(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The kept transaction's stage entries (stage and checkpoints) in the state area.
fn stage_entries(img: &LoopImage) -> Vec<String> {
    let dir = img.state_dir().join("stage");
    if dir.is_dir() {
        dir_names(&dir)
    } else {
        Vec::new()
    }
}

/// Apply the failing plan with --keep-failed: kept, root unchanged.
fn keep_failing(img: &LoopImage, backend: Backend, pd: &PlanDir, before: &Manifest) {
    let root = img.root();
    let out = apply(&pd.path, &root, backend, &["--keep-failed"]);
    assert_code(&out, 1);
    let lines = json_lines(&out);
    assert_eq!(lines.last().unwrap()["outcome"], "kept", "{}", show(&out));
    assert!(stderr(&out).contains("snapinst resume"), "{}", show(&out));
    assert_manifest_eq(before, &manifest(&root));
    let kept = &status(&root)["kept"];
    assert_eq!(kept["failed_step"], "c", "{kept}");
    assert_eq!(kept["steps_done"], 2, "{kept}");
}

fn expect_committed(before: &Manifest, a_content: &str) -> Expect {
    let mut want = Expect::new(before);
    want.dir_any("/opt/app")
        .file_content("/opt/app/a.conf", a_content.as_bytes())
        .file_content("/opt/app/log", b"b\nc\n")
        .file_content("/opt/app/d.conf", b"four\n");
    want
}

fn keep_then_resume(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    let pd = PlanDir::new(&app_plan("one\n", false), &[]);
    keep_failing(&img, backend, &pd, &before);

    // While it is kept: no other transaction, and recovery leaves it alone.
    let other = PlanDir::new(&plan("other", vec![json!({"id": "x", "type": "dir", "path": "/opt/other"})]), &[]);
    let out = apply(&other.path, &root, backend, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("is kept after its step \"c\" failed"), "{}", show(&out));
    assert_code(&root_cmd("rollback", &root, &[]), 2);
    assert_code(&root_cmd("recover", &root, &[]), 0);
    assert_eq!(status(&root)["kept"]["failed_step"], "c");
    assert_manifest_eq(&before, &manifest(&root));

    // diff: what the kept stage holds (steps a and b; the failed step wrote nothing).
    let out = root_cmd("diff", &root, &[]);
    assert_code(&out, 0);
    let changes: Vec<(String, String)> = events(&json_lines(&out), "change")
        .iter()
        .map(|e| (e["change"].as_str().unwrap().to_string(), e["path"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = [("added", "/opt/app"), ("added", "/opt/app/a.conf"), ("added", "/opt/app/log")]
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect();
    assert_eq!(changes, want, "{}", show(&out));

    // A resume cannot start after the failed step.
    assert_code(&root_cmd("resume", &root, &["--from", "d"]), 2);

    // Fix the plan and resume: it continues at "c" from the checkpoint after "b", so "b" ran once.
    write_plan(&pd, &app_plan("one\n", true));
    let out = root_cmd("resume", &root, &[]);
    assert_code(&out, 0);
    assert_eq!(json_lines(&out).last().unwrap()["outcome"], "committed", "{}", show(&out));
    expect_committed(&before, "one\n").check(&manifest(&root));
    assert_eq!(status(&root)["kept"], Value::Null);
    assert_eq!(stage_entries(&img), Vec::<String>::new(), "stage or checkpoints left after the commit");
    assert_no_leftovers(&img);

    // The committed generation rolls back like any other.
    assert_code(&root_cmd("rollback", &root, &[]), 0);
    assert_manifest_eq(&before, &manifest(&root));
}

fn resume_from_an_earlier_step(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    let pd = PlanDir::new(&app_plan("one\n", false), &[]);
    keep_failing(&img, backend, &pd, &before);

    // The fix changes step "a" too: resuming from "a" starts from the checkpoint taken before any step.
    write_plan(&pd, &app_plan("ONE\n", true));
    let out = root_cmd("resume", &root, &["--from", "a"]);
    assert_code(&out, 0);
    expect_committed(&before, "ONE\n").check(&manifest(&root));
    assert_eq!(stage_entries(&img), Vec::<String>::new());
    assert_no_leftovers(&img);
}

/// `resume --list --json`: (step, outcome, changed, resumable) of each step.
fn listed(root: &Path) -> Vec<(String, String, Option<u64>, bool)> {
    let out = root_cmd("resume", root, &["--list"]);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", show(&out)));
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            assert_eq!(s["index"], i + 1);
            let t = |k: &str| s[k].as_str().unwrap().to_string();
            (t("step"), t("outcome"), s["changed"].as_u64(), s["resumable"].as_bool().unwrap())
        })
        .collect()
}

fn resume_list_says_what_each_step_did(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    let failing = |c: &str| {
        plan(
            "app",
            vec![
                json!({"id": "a", "type": "file", "path": "/opt/app/a.conf", "content": "one\n"}),
                json!({"id": "b", "type": "run", "command": sh("echo b >> /opt/app/log")}),
                json!({"id": "c", "type": "run", "command": sh(c)}),
                json!({"id": "d", "type": "file", "path": "/opt/app/d.conf", "content": "four\n"}),
            ],
        )
    };
    let pd = PlanDir::new(&failing("touch /opt/app/p1 /opt/app/p2; exit 1"), &[]);
    assert_code(&apply(&pd.path, &root, backend, &["--keep-failed"]), 1);
    let s = |id: &str, outcome: &str, changed: Option<u64>, resumable: bool| {
        (id.to_string(), outcome.to_string(), changed, resumable)
    };
    // a: the directory and the file; b: the log (the directory's times do not count); c: two files, then failed.
    let want = vec![
        s("a", "done", Some(2), true),
        s("b", "done", Some(1), true),
        s("c", "failed", Some(2), true),
        s("d", "not_run", None, false),
    ];
    // The state area but its lock file, which each command that takes the lock writes its pid into.
    let state_area = || {
        let mut m = manifest_all(&img.state_dir());
        m.remove(Path::new("/lock"));
        m
    };
    let state_before = state_area();
    assert_eq!(listed(&root), want);
    assert_manifest_eq(&before, &manifest(&root));
    assert_manifest_eq(&state_before, &state_area());

    // The text table: a row per step, and where a resume can start.
    let out = snapinst(["resume", "--root", root.to_str().unwrap(), "--list"]);
    assert_code(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rows: Vec<Vec<&str>> = text.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        vec![
            vec!["1", "a", "done", "2", "--from", "a"],
            vec!["2", "b", "done", "1", "--from", "b"],
            vec!["3", "c", "failed", "2", "--from", "c"],
            vec!["4", "d", "not", "run", "-"],
        ],
        "{text}"
    );

    // Resumed from "b", failing again at "c": the counts are the new run's.
    write_plan(&pd, &failing("echo c >> /opt/app/log; touch /opt/app/p3; exit 1"));
    assert_code(&root_cmd("resume", &root, &["--from", "b"]), 1);
    let want = vec![
        s("a", "done", Some(2), true),
        s("b", "done", Some(1), true),
        s("c", "failed", Some(2), true),
        s("d", "not_run", None, false),
    ];
    assert_eq!(listed(&root), want);
    // --list and --from do not go together.
    assert_code(&root_cmd("resume", &root, &["--list", "--from", "a"]), 2);
    assert_code(&root_cmd("abort", &root, &[]), 0);
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);
}

for_staged_backends!(resume_list_says_what_each_step_did, resume_list_says_what_each_step_did);

fn resume_that_fails_again_stays_kept_then_abort(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    let pd = PlanDir::new(&app_plan("one\n", false), &[]);
    keep_failing(&img, backend, &pd, &before);

    // Not fixed: the resume fails at "c" again and the transaction stays kept.
    let out = root_cmd("resume", &root, &[]);
    assert_code(&out, 1);
    assert_eq!(json_lines(&out).last().unwrap()["outcome"], "kept", "{}", show(&out));
    assert_eq!(status(&root)["kept"]["failed_step"], "c");
    assert_manifest_eq(&before, &manifest(&root));

    let out = root_cmd("abort", &root, &[]);
    assert_code(&out, 0);
    assert_eq!(status(&root)["kept"], Value::Null);
    assert_manifest_eq(&before, &manifest(&root));
    assert_eq!(stage_entries(&img), Vec::<String>::new(), "stage or checkpoints left after abort");
    assert_no_leftovers(&img);
    // Nothing is kept any more.
    assert_code(&root_cmd("abort", &root, &[]), 2);
    assert_code(&root_cmd("resume", &root, &[]), 2);
}

for_staged_backends!(keep_then_resume, keep_then_resume);

for_staged_backends!(resume_from_an_earlier_step, resume_from_an_earlier_step);

for_staged_backends!(resume_fails_again_then_abort, resume_that_fails_again_stays_kept_then_abort);

/// The journal backend has no stage to keep, and host steps cannot be checkpointed: both refused up front.
#[test]
fn keep_failed_refusals() {
    let img = populated(Backend::Journal);
    let root = img.root();
    let before = manifest(&root);
    let pd = PlanDir::new(&plan("files", vec![json!({"id": "a", "type": "dir", "path": "/opt/x"})]), &[]);
    let out = apply(&pd.path, &root, Backend::Journal, &["--keep-failed"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("journal backend"), "{}", show(&out));
    let host = PlanDir::new(
        &plan("host", vec![json!({"id": "h", "type": "host", "do": ["/bin/true"], "undo": ["/bin/true"]})]),
        &[],
    );
    let out = apply(&host.path, &root, Backend::Overlay, &["--keep-failed"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("host step"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
}

/// Crashes (SIGKILL at a crash point) while a kept transaction is being resumed: before its commit point recovery
/// throws the resumed transaction away, root unchanged; after it, recovery finishes the commit. Either way nothing
/// of the stage or its checkpoints is left.
#[cfg(feature = "failpoints")]
fn crash_while_resuming(backend: Backend) {
    let after_commit = match backend {
        Backend::Btrfs => "apply-after-exchange",
        _ => "apply-after-commit-record",
    };
    for (point, committed) in [("apply-mid-step", false), ("apply-after-steps", false), (after_commit, true)] {
        let img = populated(backend);
        let root = img.root();
        let before = manifest(&root);
        let pd = PlanDir::new(&app_plan("one\n", false), &[]);
        keep_failing(&img, backend, &pd, &before);
        write_plan(&pd, &app_plan("one\n", true));

        let out =
            snapinst_env(["resume", "--root", root.to_str().unwrap(), "--json"], &[("SNAPINST_FAILPOINT", point)]);
        assert!(killed_by_sigkill(&out), "{point}: the resume was not killed\n{}", show(&out));
        assert_code(&root_cmd("recover", &root, &[]), 0);
        if committed {
            expect_committed(&before, "one\n").check(&manifest(&root));
        } else {
            assert_manifest_eq_ctx(&before, &manifest(&root), point);
        }
        assert_eq!(status(&root)["kept"], Value::Null, "{point}");
        assert_eq!(stage_entries(&img), Vec::<String>::new(), "{point}: stage or checkpoints left");
        assert_no_leftovers(&img);
    }
}

/// A crash during an `apply --keep-failed` (after some checkpoints were taken) is recovered like any apply.
#[cfg(feature = "failpoints")]
fn crash_while_keeping(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    let pd = PlanDir::new(&app_plan("one\n", true), &[]);
    let out = apply_env(&pd.path, &root, backend, &["--keep-failed"], &[("SNAPINST_FAILPOINT", "apply-mid-step")]);
    assert!(killed_by_sigkill(&out), "the apply was not killed\n{}", show(&out));
    assert_code(&root_cmd("recover", &root, &[]), 0);
    assert_manifest_eq(&before, &manifest(&root));
    assert_eq!(stage_entries(&img), Vec::<String>::new(), "stage or checkpoints left");
    assert_no_leftovers(&img);
}

#[cfg(feature = "failpoints")]
for_staged_backends!(crash_while_resuming, crash_while_resuming);

#[cfg(feature = "failpoints")]
for_staged_backends!(crash_while_keeping, crash_while_keeping);

/// A plan over the filesystems mounted inside the root (ext4 `/boot`, btrfs `/home` staged by
/// snapshots, xfs `/srv/www`) whose step "c" fails unless `c_ok`.
fn parts_plan(c_ok: bool) -> Value {
    let c = if c_ok { "echo c >> /home/app.log" } else { "echo 'not ready' >&2; exit 1" };
    plan(
        "parts",
        vec![
            json!({"id": "a", "type": "file", "path": "/home/a.conf", "content": "home\n"}),
            json!({"id": "b", "type": "run", "command": sh("echo b >> /home/app.log && echo b > /boot/b.img")}),
            json!({"id": "c", "type": "run", "command": sh(c)}),
            json!({"id": "d", "type": "file", "path": "/srv/www/d.conf", "content": "four\n"}),
        ],
    )
}

/// `--keep-failed` and `resume` take every part along: the kept stage and its checkpoints hold the
/// parts' changes, `diff` lists them, and the resumed transaction commits them all, once each.
fn keep_then_resume_with_mounts_inside(backend: Backend) {
    let WithParts { img, root, hello: _, before, host: _host } = WithParts::new(backend);
    let pd = PlanDir::new(&parts_plan(false), &[]);
    let out = apply(&pd.path, &root, backend, &["--keep-failed"]);
    assert_code(&out, 1);
    assert_eq!(json_lines(&out).last().unwrap()["outcome"], "kept", "{}", show(&out));
    assert_manifest_eq_ctx(&before, &img.booted_manifest(), "while the transaction is kept");

    let out = root_cmd("diff", &root, &[]);
    assert_code(&out, 0);
    let mut changed: Vec<String> =
        events(&json_lines(&out), "change").iter().map(|e| e["path"].as_str().unwrap_or("?").to_string()).collect();
    changed.sort();
    assert_eq!(changed, ["/boot/b.img", "/home/a.conf", "/home/app.log"], "{}", show(&out));

    write_plan(&pd, &parts_plan(true));
    let out = root_cmd("resume", &root, &[]);
    assert_code(&out, 0);
    assert_eq!(json_lines(&out).last().unwrap()["outcome"], "committed", "{}", show(&out));
    let mut want = Expect::new(&before);
    want.file_content("/home/a.conf", b"home\n")
        .file_content("/home/app.log", b"b\nc\n")
        .file_content("/boot/b.img", b"b\n")
        .file_content("/srv/www/d.conf", b"four\n");
    want.check(&img.booted_manifest());
    assert_no_leftovers(&img);

    assert_code(&root_cmd("rollback", &root, &[]), 0);
    assert_manifest_eq_ctx(&before, &img.booted_manifest(), "after the rollback");
    assert_no_leftovers(&img);
}
backend_tests!(
    privileged_keep_then_resume_with_mounts_inside,
    keep_then_resume_with_mounts_inside,
    btrfs => Btrfs, overlay => Overlay
);
