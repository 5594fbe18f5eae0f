//! A panic is a bug, and never leaves a transaction behind: the top of the program catches it, recovers the root as
//! `snapinst recover` would (a transaction short of its commit point rolled back whole, one past it finished), says
//! so on stderr and in the `summary` event (`internal_error`), and exits 1 (the root as it was) or 0 (committed);
//! the next transaction runs without anyone running `recover`. The panics are made by the crash points'
//! `SNAPINST_FAILPOINT_ACTION=panic`.
#![cfg(feature = "failpoints")]

#[macro_use]
mod common;

use std::process::Output;

use common::*;
use serde_json::Value;

fn panic_at(name: &str) -> [(&str, &str); 2] {
    [("SNAPINST_FAILPOINT", name), ("SNAPINST_FAILPOINT_ACTION", "panic")]
}

/// The panic's summary: its outcome, with the panic's message in `internal_error`.
fn panic_summary(out: &Output, point: &str) -> Value {
    let s = summary(&json_lines(out)).clone();
    let msg = s["internal_error"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("failpoint {point}")), "the summary names the panic:\n{}", show(out));
    assert!(
        stderr(out).contains("internal error (a bug in snapinst; please report it): failpoint"),
        "stderr says what happened:\n{}",
        show(out)
    );
    assert!(!stderr(out).contains("RUST_BACKTRACE"), "Rust's own panic message is replaced:\n{}", show(out));
    s
}

fn a_panic_is_recovered_at_once(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();

    // Short of the commit point: rolled back, the root exactly as it was, exit 1.
    let hello = Hello::new(backend, "-a", host.path());
    hello.prepare(&root);
    let m = img.booted_manifest();
    let out = apply_env(&hello.plan_dir(&hello.plan()).path, &root, backend, &[], &panic_at("apply-after-steps"));
    assert_code(&out, 1);
    assert_eq!(panic_summary(&out, "apply-after-steps")["outcome"], "rolled_back", "{}", show(&out));
    assert_manifest_eq(&m, &img.booted_manifest());
    hello.assert_host_rolled_back();
    assert_no_leftovers(&img);
    assert!(status_json(&root)["in_progress"].is_null(), "nothing is left in progress");

    // Past the commit point: finished, exit 0, the plan's tree.
    let hello = Hello::new(backend, "-b", host.path());
    hello.prepare(&root);
    let m = img.booted_manifest();
    let mut after = Expect::new(&m);
    hello.expect(&mut after);
    let out = apply_env(&hello.plan_dir(&hello.plan()).path, &root, backend, &[], &panic_at("apply-before-prune"));
    assert_code(&out, 0);
    assert_eq!(panic_summary(&out, "apply-before-prune")["outcome"], "committed", "{}", show(&out));
    after.check(&img.booted_manifest());
    hello.assert_host_committed();
    assert_no_leftovers(&img);

    // A rollback that panics before its commit point is undone: the generation stays current.
    let m = img.booted_manifest();
    let out = rollback(&root, &[], &panic_at("rollback-after-record"));
    assert_code(&out, 1);
    assert_eq!(panic_summary(&out, "rollback-after-record")["outcome"], "rolled_back", "{}", show(&out));
    assert_manifest_eq(&m, &img.booted_manifest());
    assert_no_leftovers(&img);

    // The next transaction runs without a `snapinst recover` by hand.
    let hello = Hello::new(backend, "-c", host.path());
    hello.prepare(&root);
    let m = img.booted_manifest();
    let mut after = Expect::new(&m);
    hello.expect(&mut after);
    let out = apply(&hello.plan_dir(&hello.plan()).path, &root, backend, &[]);
    assert_code(&out, 0);
    after.check(&img.booted_manifest());
    assert_no_leftovers(&img);
}

for_each_backend!(privileged_a_panic_is_recovered_at_once, a_panic_is_recovered_at_once);
