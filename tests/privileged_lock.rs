//! One transaction per root: a second one fails at once naming the holder, and a lock left by
//! a process killed with SIGKILL does not block recovery or the next transaction.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn sleep_step(backend: Backend, id: &str, secs: u32) -> Value {
    if backend.allows_run() {
        json!({"id": id, "type": "run", "command": ["/bin/sleep", secs.to_string()], "timeout_s": 120})
    } else {
        json!({"id": id, "type": "verify", "command": ["/bin/sleep", secs.to_string()], "expect_exit": 0})
    }
}

fn lock_conflict(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();
    let hello = Hello::new(backend, "", host.path());
    hello.prepare(&root);
    let before = manifest(&root);

    let slow = PlanDir::new(
        &plan(
            "slow",
            vec![
                json!({"id": "d", "type": "dir", "path": "/opt/slow", "mode": "0755"}),
                sleep_step(backend, "sleep", 5),
            ],
        ),
        &[],
    );
    let mut cmd = snapinst_cmd(["apply"]);
    cmd.arg(&slow.path).arg("--root").arg(&root).args(["--backend", backend.name(), "--json"]);
    let mut first = spawn_background(cmd);
    first.wait_for(Duration::from_secs(60), "the first apply to reach its sleep step", |v| {
        v["event"] == "step_started" && v["step"] == "sleep"
    });
    let holder = first.pid();

    // The second transaction fails at once and names the holder.
    let pd = hello.plan_dir(&hello.plan());
    let t = Instant::now();
    let out = apply(&pd.path, &root, backend, &[]);
    let took = t.elapsed();
    assert_code(&out, 4); // busy: nothing changed, try again later
    assert!(took < Duration::from_secs(3), "second apply waited {took:?} instead of failing at once");
    assert!(
        stderr(&out).contains(&holder.to_string()),
        "the lock conflict message should name the holder's pid {holder}:\n{}",
        show(&out)
    );
    assert!(first.child.try_wait().unwrap().is_none(), "the first apply ended before the check was done");
    assert_eq!(hello.log_text(), None, "the refused apply ran a host step");
    // status sees the transaction in progress, with its pid.
    let st = status_json(&root);
    assert_eq!(st["in_progress"]["pid"], json!(holder), "status in_progress during a transaction: {st}");

    // Kill the holder without cleanup. Its step processes must not outlive it: an orphaned
    // step would go on running inside a stage that recovery is about to throw away.
    let steps_pids = descendants(holder);
    first.child.kill().expect("SIGKILL to the first apply");
    let st = first.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let orphans = still_alive(&steps_pids);
    assert!(
        orphans.is_empty(),
        "step processes outlived the killed transaction (pid {holder}):\n  {}",
        orphans.join("\n  ")
    );
    assert!(std::os::unix::process::ExitStatusExt::signal(&st) == Some(libc::SIGKILL), "first apply: {st:?}");

    let out = recover(&root);
    assert_code(&out, 0);
    assert_manifest_eq_ctx(&before, &manifest(&root), "recover after the lock holder was killed");
    assert_no_leftovers(&img);

    // A new transaction works.
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);
    let mut want = Expect::new(&before);
    hello.expect(&mut want);
    want.check(&manifest(&root));
    assert_no_leftovers(&img);
}
for_each_backend!(privileged_lock_conflict, lock_conflict);

/// A killed holder's lock does not block `status` or `recover`, even while the step it was
/// running would still be sleeping.
fn stale_lock_does_not_block(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    let slow = PlanDir::new(&plan("slow", vec![sleep_step(backend, "sleep", 30)]), &[]);
    let mut cmd = snapinst_cmd(["apply"]);
    cmd.arg(&slow.path).arg("--root").arg(&root).args(["--backend", backend.name(), "--json"]);
    let mut first = spawn_background(cmd);
    first.wait_for(Duration::from_secs(60), "the sleep step", |v| v["event"] == "step_started" && v["step"] == "sleep");
    let holder = first.pid();
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // status answers (it must not wait for the dead holder's lock).
    let t = Instant::now();
    let _ = status_json(&root);
    assert!(t.elapsed() < Duration::from_secs(3), "status waited after the holder (pid {holder}) was killed");
    let out = recover(&root);
    assert_code(&out, 0);
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);
}
for_each_backend!(privileged_stale_lock_does_not_block, stale_lock_does_not_block);
