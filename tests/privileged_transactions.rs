//! Transactions on real filesystems, for each backend: a successful plan commits exactly its
//! effects, a failure at any step leaves the tree exactly as it was, dry-run changes nothing,
//! host steps are undone in reverse order, SIGTERM rolls back.

#[macro_use]
mod common;

use std::fs;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Names next to the root, without the state directory (which may appear).
fn siblings(img: &LoopImage) -> Vec<String> {
    let state = img.state_dir().file_name().unwrap().to_string_lossy().into_owned();
    dir_names(img.mountpoint()).into_iter().filter(|n| *n != state).collect()
}

fn success_commits_exactly_the_plan(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();
    let hello = Hello::new(backend, "", host.path());
    hello.prepare(&root);
    let before = manifest(&root);
    let siblings_before = siblings(&img);
    let pd = hello.plan_dir(&hello.plan());

    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);

    // The tree: exactly the plan's effects, every other path unchanged.
    let after = manifest(&root);
    let mut want = Expect::new(&before);
    hello.expect(&mut want);
    want.check(&after);
    assert!(
        after.keys().all(|k| !k.to_string_lossy().contains(".snapinst")),
        "state directory content inside the root"
    );
    assert!(img.state_dir().is_dir(), "default state dir {} not created", img.state_dir().display());
    assert_eq!(siblings(&img), siblings_before, "paths next to the root changed");
    hello.assert_host_committed();

    // The JSON Lines.
    let lines = json_lines(&out);
    let ids = hello.ids();
    let n = ids.len();
    let txn = lines[0]["txn"].clone();
    assert!(!txn.is_null(), "first line has no txn: {}", lines[0]);
    for l in &lines {
        assert_eq!(l["txn"], txn, "all events of one apply carry the same txn: {l}");
    }
    let started = events(&lines, "started");
    assert_eq!(started.len(), 1, "one started event\n{}", show(&out));
    assert_eq!(started[0]["backend"], backend.name());
    assert_eq!(started[0]["plan"], "hello");
    assert_eq!(started[0]["steps"], json!(n));
    assert_eq!(
        canon(std::path::Path::new(started[0]["root"].as_str().expect("started.root is a string"))),
        canon(&root)
    );
    let ss: Vec<(String, u64)> = events(&lines, "step_started")
        .iter()
        .map(|e| (e["step"].as_str().unwrap().to_string(), e["index"].as_u64().unwrap()))
        .collect();
    let want_seq: Vec<(String, u64)> = ids.iter().cloned().zip(1..).collect();
    assert_eq!(ss, want_seq, "step_started events in plan order");
    let sf = events(&lines, "step_finished");
    assert_eq!(sf.len(), n, "one step_finished per step\n{}", show(&out));
    for (e, (id, i)) in sf.iter().zip(&want_seq) {
        assert_eq!(e["step"], json!(id));
        assert_eq!(e["index"], json!(i));
        assert_eq!(e["total"], json!(n));
        assert!(e["elapsed_ms"].is_u64(), "elapsed_ms missing: {e}");
    }
    assert!(events(&lines, "step_failed").is_empty());
    assert!(events(&lines, "rolled_back").is_empty());
    let committed = events(&lines, "committed");
    assert_eq!(committed.len(), 1, "one committed event\n{}", show(&out));
    assert_eq!(committed[0]["generation"], json!(1));
    let sum = summary(&lines);
    assert_eq!(sum["outcome"], "committed");
    assert_eq!(sum["generation"], json!(1));
    for t in ["prepare", "steps", "commit"] {
        assert!(sum["timings_ms"][t].is_u64(), "summary.timings_ms.{t} missing: {sum}");
    }

    // status and list.
    assert_current_generation(&root, 1);
    let st = status_json(&root);
    assert_eq!(st["backend"], backend.name(), "status backend: {st}");
    assert_eq!(canon(std::path::Path::new(st["root"].as_str().unwrap())), canon(&root), "status root: {st}");
    assert_eq!(
        canon(std::path::Path::new(st["state_dir"].as_str().unwrap())),
        canon(&img.state_dir()),
        "status state_dir: {st}"
    );
    assert!(st["in_progress"].is_null(), "status in_progress: {st}");
    let l = list_json(&root);
    let txns = l["transactions"].as_array().expect("list.transactions");
    assert_eq!(txns.len(), 1, "one transaction listed: {l}");
    assert_eq!(txns[0]["kind"], "apply");
    assert_eq!(txns[0]["plan"], "hello");
    assert_eq!(txns[0]["outcome"], "committed");
    assert_eq!(txns[0]["txn"], txn);
    let gens: Vec<u64> =
        l["generations"].as_array().unwrap().iter().map(|g| g["generation"].as_u64().unwrap()).collect();
    assert!(gens.contains(&0) && gens.contains(&1), "generations 0 and 1 listed: {l}");

    assert_no_leftovers(&img);
}
for_each_backend!(privileged_success_commits_exactly_the_plan, success_commits_exactly_the_plan);

fn failure_at_each_step_changes_nothing(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();
    let hello = Hello::new(backend, "", host.path());
    hello.prepare(&root);
    let before = manifest(&root);
    let siblings_before = siblings(&img);
    let ids = hello.ids();
    let n = ids.len();
    let host_k = hello.host_index();

    for k in 1..=n {
        let id = &ids[k - 1];
        let ctx = format!("{} backend, step {k} ({id}) failing", backend.name());
        let _ = fs::remove_file(hello.log());
        let _ = fs::remove_file(hello.marker());
        let pd = hello.plan_dir(&hello.failing_plan(k));
        let out = apply(&pd.path, &root, backend, &[]);
        assert_eq!(out.status.code(), Some(1), "{ctx}: exit code\n{}", show(&out));

        assert_manifest_eq_ctx(&before, &manifest(&root), &ctx);
        assert_eq!(siblings(&img), siblings_before, "{ctx}: paths next to the root changed");

        let lines = json_lines(&out);
        let failed = events(&lines, "step_failed");
        assert_eq!(failed.len(), 1, "{ctx}: one step_failed\n{}", show(&out));
        assert_eq!(failed[0]["step"], json!(id), "{ctx}");
        assert_eq!(failed[0]["index"], json!(k), "{ctx}");
        assert_eq!(failed[0]["total"], json!(n), "{ctx}");
        assert!(
            failed[0]["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{ctx}: step_failed.error empty: {}",
            failed[0]
        );
        match id.as_str() {
            "post" => assert!(
                failed[0]["output"].as_str().unwrap_or("").contains("boom-run"),
                "{ctx}: step_failed.output lacks the script's stderr: {}",
                failed[0]
            ),
            "check" => assert!(
                failed[0]["output"].as_str().unwrap_or("").contains("greeting=hi"),
                "{ctx}: step_failed.output lacks the verify command's stdout: {}",
                failed[0]
            ),
            _ => {}
        }
        let finished: Vec<u64> = events(&lines, "step_finished").iter().map(|e| e["index"].as_u64().unwrap()).collect();
        assert_eq!(finished, (1..k as u64).collect::<Vec<_>>(), "{ctx}: steps finished before the failure");
        assert_eq!(events(&lines, "rolled_back").len(), 1, "{ctx}: one rolled_back\n{}", show(&out));
        assert!(events(&lines, "committed").is_empty(), "{ctx}: committed event on failure");
        let sum = summary(&lines);
        assert_eq!(sum["outcome"], "rolled_back", "{ctx}");
        assert!(sum["generation"].is_null(), "{ctx}: summary.generation must be null: {sum}");

        // Host effects: undone when the failure came after the host step.
        let log = hello.log_text();
        if k < host_k {
            assert_eq!(log, None, "{ctx}: host step ran although an earlier step failed");
        } else if k == host_k {
            // The failed command may have done part of its work: its (idempotent) undo may run,
            // once, as recovery after a crash at that point would have to.
            assert!(
                matches!(log.as_deref(), Some("do-failed\n") | Some("do-failed\nundo\n")),
                "{ctx}: host log {log:?}"
            );
        } else {
            assert_eq!(log.as_deref(), Some("do\nundo\n"), "{ctx}: host undo did not run exactly once");
        }
        hello.assert_host_rolled_back();

        assert_no_leftovers(&img);
        assert_current_generation(&root, 0);
    }
}
for_each_backend!(privileged_failure_at_each_step_changes_nothing, failure_at_each_step_changes_nothing);

fn dry_run_changes_nothing(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();
    let hello = Hello::new(backend, "", host.path());
    hello.prepare(&root);
    let before = manifest(&root);
    let pd = hello.plan_dir(&hello.plan());
    let out = apply(&pd.path, &root, backend, &["--dry-run"]);
    assert_code(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(summary(&lines)["outcome"], "dry_run");
    assert!(events(&lines, "committed").is_empty(), "dry run committed\n{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);
    assert_current_generation(&root, 0);
    // A host step acts on the host, outside any stage: a dry run must not run it (running `do`
    // then `undo` is still a change to the host, and undo is not always exact).
    assert_eq!(hello.log_text(), None, "dry run executed a host step");
}
for_each_backend!(privileged_dry_run_changes_nothing, dry_run_changes_nothing);

fn host_undo_runs_in_reverse_order(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();
    let log = host.path().join("log");
    let logs = log.display().to_string();
    let before = manifest(&root);

    // A later step fails: both undos run, last first.
    let steps = vec![
        json!({"id": "h1", "type": "host", "do": sh(&format!("echo do1 >> {logs}")), "undo": sh(&format!("echo undo1 >> {logs}"))}),
        json!({"id": "d", "type": "dir", "path": "/opt/between", "mode": "0755"}),
        json!({"id": "h2", "type": "host", "do": sh(&format!("echo do2 >> {logs}")), "undo": sh(&format!("echo undo2 >> {logs}"))}),
        json!({"id": "bad", "type": "verify", "command": sh("exit 3"), "expect_exit": 0}),
    ];
    let pd = PlanDir::new(&plan("undo-order", steps), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 1);
    assert_eq!(fs::read_to_string(&log).unwrap(), "do1\ndo2\nundo2\nundo1\n", "host undo order");
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);

    // The host step itself fails: only the earlier host step is undone.
    fs::remove_file(&log).unwrap();
    let steps = vec![
        json!({"id": "h1", "type": "host", "do": sh(&format!("echo do1 >> {logs}")), "undo": sh(&format!("echo undo1 >> {logs}"))}),
        json!({"id": "h2", "type": "host", "do": sh(&format!("echo do2-failed >> {logs}; exit 1")), "undo": sh(&format!("echo undo2 >> {logs}"))}),
        json!({"id": "d", "type": "dir", "path": "/opt/after", "mode": "0755"}),
    ];
    let pd = PlanDir::new(&plan("undo-order-2", steps), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 1);
    let lines = json_lines(&out);
    assert_eq!(events(&lines, "step_failed")[0]["step"], "h2");
    // undo2 may run for the failed step (its command may have half-worked); if it does, it runs
    // before undo1. undo1 must run, once.
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text == "do1\ndo2-failed\nundo1\n" || text == "do1\ndo2-failed\nundo2\nundo1\n",
        "host step failing itself: log {text:?}"
    );
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);

    // Success: no undo runs.
    fs::remove_file(&log).unwrap();
    let steps = vec![
        json!({"id": "h1", "type": "host", "do": sh(&format!("echo do1 >> {logs}")), "undo": sh(&format!("echo undo1 >> {logs}"))}),
        json!({"id": "d", "type": "dir", "path": "/opt/ok", "mode": "0755"}),
    ];
    let pd = PlanDir::new(&plan("undo-order-3", steps), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);
    assert_eq!(fs::read_to_string(&log).unwrap(), "do1\n", "undo ran after a commit");
    let mut want = Expect::new(&before);
    want.dir("/opt/ok", 0o755, 0, 0);
    want.check(&manifest(&root));
}
for_each_backend!(privileged_host_undo_runs_in_reverse_order, host_undo_runs_in_reverse_order);

/// A file step on a path that has other hard links replaces the file (the other names keep the
/// old content), and rolling back restores the hard-link group.
fn hardlinked_file_is_replaced_not_written_through(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    let target = "/usr/share/pkg00/sub0/d0/f0000.dat";
    assert_eq!(
        before[std::path::Path::new(target)].links,
        vec![std::path::PathBuf::from("/usr/share/links/h0000")],
        "test tree: {target} should be hard-linked"
    );
    let steps = vec![json!({"id": "over", "type": "file", "path": target, "content": "replaced\n", "mode": "0644"})];
    let pd = PlanDir::new(&plan("hardlink", steps), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);
    let mut want = Expect::new(&before);
    want.file(target, b"replaced\n", 0o644, 0, 0);
    want.check(&manifest(&root));

    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);
}
for_each_backend!(
    privileged_hardlinked_file_is_replaced_not_written_through,
    hardlinked_file_is_replaced_not_written_through
);

/// A step that sleeps: a `run` step where allowed, else a `verify` step.
pub fn sleep_step(backend: Backend, id: &str, secs: u32) -> Value {
    if backend.allows_run() {
        json!({"id": id, "type": "run", "command": ["/bin/sleep", secs.to_string()], "timeout_s": 120})
    } else {
        json!({"id": id, "type": "verify", "command": ["/bin/sleep", secs.to_string()], "expect_exit": 0})
    }
}

fn sigterm_rolls_back(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();
    let marker = host.path().join("marker");
    let before = manifest(&root);
    let steps = vec![
        json!({"id": "d", "type": "dir", "path": "/opt/interrupted", "mode": "0755"}),
        json!({"id": "f", "type": "file", "path": "/etc/interrupted.conf", "content": "x\n", "mode": "0644"}),
        json!({"id": "h", "type": "host", "do": sh(&format!("touch {}", marker.display())),
               "undo": sh(&format!("rm -f {}", marker.display()))}),
        sleep_step(backend, "sleep", 5),
        json!({"id": "e", "type": "dir", "path": "/opt/never", "mode": "0755"}),
    ];
    let pd = PlanDir::new(&plan("sigterm", steps), &[]);
    let mut cmd = snapinst_cmd(["apply"]);
    cmd.arg(&pd.path).arg("--root").arg(&root).args(["--backend", backend.name(), "--json"]);
    let mut bg = spawn_background(cmd);
    bg.wait_for(Duration::from_secs(60), "step_started of the sleep step", |v| {
        v["event"] == "step_started" && v["step"] == "sleep"
    });
    assert!(marker.exists(), "host step did not run before the sleep step");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bg.pid() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("sending SIGTERM");
    let st = wait_timeout(&mut bg.child, Duration::from_secs(60)).unwrap_or_else(|| {
        let _ = bg.child.kill();
        panic!("snapinst did not stop within 60 s of SIGTERM");
    });
    let err = bg.stderr.join().unwrap_or_default();
    assert_eq!(
        st.code(),
        Some(1),
        "SIGTERM during a transaction: expected a clean rollback (exit 1), got {st:?}; stderr:\n{err}"
    );
    assert_manifest_eq(&before, &manifest(&root));
    assert!(!marker.exists(), "host undo did not run after SIGTERM");
    assert_no_leftovers(&img);
    assert_current_generation(&root, 0);
}
for_each_backend!(privileged_sigterm_rolls_back, sigterm_rolls_back);

fn auto_backend(img: LoopImage, expected: &str) {
    let root = img.root();
    populate_tree(&root, 50);
    let pd =
        PlanDir::new(&plan("auto", vec![json!({"id": "d", "type": "dir", "path": "/opt/auto", "mode": "0755"})]), &[]);
    let mut cmd = snapinst_cmd(["apply"]);
    cmd.arg(&pd.path).arg("--root").arg(&root).args(["--backend", "auto", "--json"]);
    let out = run_timeout(&mut cmd, CMD_TIMEOUT);
    assert_code(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(events(&lines, "started")[0]["backend"], expected, "--backend auto\n{}", show(&out));
    assert_eq!(status_json(&root)["backend"], expected);
    assert!(root.join("opt/auto").is_dir());
}

#[test]
fn privileged_auto_backend_picks_btrfs_on_a_subvolume() {
    auto_backend(BtrfsImage::new(256).into_inner(), "btrfs");
}

#[test]
fn privileged_auto_backend_picks_overlay_on_ext4() {
    auto_backend(Ext4Image::new(128).into_inner(), "overlay");
}
