//! Crash at every named point (`snapinst failpoints`), for each backend: the process dies by
//! SIGKILL, `snapinst recover` leaves the tree exactly as before or exactly as after (before
//! when the commit record cannot have been written, after when it was), a second recover
//! changes nothing, and no stage, lock or mount remains. Also: crashes while rolling back a
//! failed transaction, while rolling back a generation, and while recovering.
#![cfg(feature = "failpoints")]

#[macro_use]
mod common;

use std::process::Output;

use common::*;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Before,
    After,
}

const FP: &str = "SNAPINST_FAILPOINT";

/// Keep every generation: the rollback case goes back to the generation that was current
/// before its apply, which pruning by count could otherwise have removed (it need not be one of
/// the newest after earlier rollbacks).
const KEEP: &[&str] = &["--keep", "1000"];

/// Points this matrix's plan does not pass, each crashed at by a test with a plan that does.
const REACHED_ELSEWHERE: &[(&str, &str)] =
    &[("apply-mid-save", "privileged_journal_run.rs: a run step that changes a path the tree already had")];

/// A crash point as `snapinst failpoints` lists it: its name, the operation that reaches it (`apply`,
/// `apply-failing`, `rollback`, `recover`, `boot`) and the backends whose code has it.
struct Point {
    name: String,
    op: String,
    backends: Vec<String>,
}

fn failpoints() -> Vec<Point> {
    let out = snapinst(["failpoints"]);
    assert_code(&out, 0);
    let points: Vec<Point> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, op, backends) = (f.next()?, f.next()?, f.next()?);
            Some(Point {
                name: name.to_string(),
                op: op.to_string(),
                backends: backends.split(',').map(str::to_string).collect(),
            })
        })
        .collect();
    assert!(!points.is_empty(), "`snapinst failpoints` lists no points in a failpoints build");
    points
}

/// The points this backend's operations reach on this layout, each with the operation that reaches it. Filesystems
/// mounted inside the root are staged by the overlay backend whatever the root's, so its points are reached there
/// too. (The boot's points are run by the boot hook's tests.)
fn points_for(backend: Backend, layout: Layout) -> Vec<Point> {
    let mut stagers = vec![backend.name()];
    if layout == Layout::WithMounts {
        stagers.push("overlay");
    }
    failpoints()
        .into_iter()
        .filter(|p| p.op != "boot" && p.backends.iter().any(|b| stagers.contains(&b.as_str())))
        .collect()
}

/// What the name says about its side of the commit point, when it says it. From the design
/// notes (principle 1): on btrfs the commit point is the exchange of the stage and the root, so
/// a crash after any record but before the exchange is thrown away; on overlay and journal it
/// is the durable commit record, so everything after it (merge, swap) is rolled forward.
/// Pruning comes after the commit; locking, staging, steps and discarding come before it.
fn hint(name: &str, backend: Backend, layout: Layout) -> Option<State> {
    let n = name.to_lowercase().replace('_', "-");
    let after_any = ["after-exchange", "mid-merge", "prune", "post-commit"];
    let before_any =
        ["before-commit", "pre-commit", "after-lock", "after-stage", "mid-save", "mid-step", "after-steps", "discard"];
    if after_any.iter().any(|k| n.contains(k)) {
        Some(State::After)
    } else if before_any.iter().any(|k| n.contains(k)) {
        Some(State::Before)
    } else if n.contains("after-commit") || n.contains("mid-swap") {
        // After the commit record. A btrfs root commits with its exchange, which comes before any
        // part's delta swaps.
        let after_exchange = n.contains("mid-swap") && layout == Layout::WithMounts;
        if backend == Backend::Btrfs && !after_exchange {
            Some(State::Before)
        } else {
            Some(State::After)
        }
    } else if n.ends_with("after-record") {
        // The intent record, written before anything is staged.
        Some(State::Before)
    } else {
        None
    }
}

/// Which of the two trees the root holds; panics when it is neither.
fn classify(img: &LoopImage, before: &Expect, after: Option<&Expect>, ctx: &str) -> State {
    let m = img.booted_manifest();
    let b = before.diff(&m);
    let a = after.map(|e| e.diff(&m));
    match (b, a) {
        (Ok(()), _) => State::Before,
        (Err(_), Some(Ok(()))) => State::After,
        (Err(db), Some(Err(da))) => {
            panic!(
                "{ctx}: the tree is neither the one before nor the one after\nversus before: {db}\nversus after: {da}"
            )
        }
        (Err(db), None) => {
            panic!("{ctx}: the tree is not the one before (and no commit was possible)\n{db}")
        }
    }
}

/// After a crash: recover, classify, check the actions, leftovers, and that recovering again
/// does nothing.
fn recover_and_check(
    img: &LoopImage,
    crash: &Output,
    before: &Expect,
    after: Option<&Expect>,
    expected: Option<State>,
    ctx: &str,
) -> State {
    let root = img.root();
    let r = recover(&root);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{ctx}: recover failed\n{}\n--- the crashed run ---\n{}",
        show(&r),
        show(crash)
    );
    let actions = recovered_actions(&r);
    let state = classify(img, before, after, ctx);
    if let Some(want) = expected {
        assert_eq!(
            state,
            want,
            "{ctx}: recovered to the wrong side of the commit point\nrecover: {}\ncrashed run: {}",
            show(&r),
            show(crash)
        );
    }
    let allowed: &[&str] = match state {
        State::Before => &["rolled_back", "nothing"],
        State::After => &["rolled_forward", "nothing"],
    };
    for a in &actions {
        assert!(allowed.contains(&a.as_str()), "{ctx}: recover action {a:?} but the tree is {state:?}\n{}", show(&r));
    }
    assert_no_leftovers(img);

    let m = img.booted_manifest();
    let again = recover(&root);
    assert_code(&again, 0);
    for a in recovered_actions(&again) {
        assert_eq!(a, "nothing", "{ctx}: a second recover did something\n{}", show(&again));
    }
    assert_manifest_eq_ctx(&m, &img.booted_manifest(), &format!("{ctx}: second recover"));
    assert_no_leftovers(img);
    state
}

fn committed_seen(out: &Output) -> bool {
    json_lines_lenient(out).iter().any(|l: &Value| l["event"] == "committed")
}

fn crash_at_every_failpoint(backend: Backend) {
    crash_at_every_failpoint_in(backend, Layout::Plain)
}

fn crash_at_every_failpoint_in(backend: Backend, layout: Layout) {
    let points = points_for(backend, layout);
    let img = populated_in(backend, layout);
    let root = img.root();
    let host = host_tempdir();
    // With filesystems mounted inside, the plan writes into each of them too.
    let hello_for = |tag: String| {
        let h = Hello::new(backend, &tag, host.path());
        if layout == Layout::WithMounts {
            h.writing_into(&["/boot", "/home", "/boot/efi", "/srv/www"])
        } else {
            h
        }
    };
    let mut hit: Vec<(String, &'static str, State)> = Vec::new();
    let mut pre_commit_point: Option<String> = None;
    let mut post_commit_point: Option<String> = None;

    // Each point is run in the operations that reach it: an apply's points in a successful and in a failing
    // apply, a failed apply's in the failing one, a rollback's in a rollback.
    for (i, Point { name, op, .. }) in points.iter().enumerate() {
        let env = [(FP, name.as_str())];
        let (apply_ok, apply_failing, rolling_back) = (op == "apply", op.starts_with("apply"), op == "rollback");

        // A successful plan.
        if apply_ok {
            let hello = hello_for(format!("-s{i}"));
            hello.prepare(&root);
            let m = img.booted_manifest();
            let before = Expect::new(&m);
            let mut after = Expect::new(&m);
            hello.expect(&mut after);
            let out = apply_env(&hello.plan_dir(&hello.plan()).path, &root, backend, KEEP, &env);
            let ctx = format!("{} backend, apply crashed at {name}", backend.name());
            if killed_by_sigkill(&out) {
                let expected = if committed_seen(&out) { Some(State::After) } else { hint(name, backend, layout) };
                let state = recover_and_check(&img, &out, &before, Some(&after), expected, &ctx);
                match state {
                    State::Before => {
                        hello.assert_host_rolled_back();
                        // The latest point before the commit leaves the most to throw away.
                        pre_commit_point = Some(name.clone());
                    }
                    State::After => {
                        hello.assert_host_committed();
                        // The earliest point after the commit leaves the most to roll forward.
                        post_commit_point.get_or_insert(name.clone());
                    }
                }
                hit.push((name.clone(), "apply", state));
            } else {
                assert_code(&out, 0);
                after.check(&img.booted_manifest());
                hello.assert_host_committed();
            }
        }

        // A plan whose last step fails: whatever happens, the tree ends as before.
        if apply_failing {
            let hello = hello_for(format!("-f{i}"));
            hello.prepare(&root);
            let m = img.booted_manifest();
            let before = Expect::new(&m);
            let n = hello.ids().len();
            let out = apply_env(&hello.plan_dir(&hello.failing_plan(n)).path, &root, backend, KEEP, &env);
            let ctx = format!("{} backend, failing apply crashed at {name}", backend.name());
            if killed_by_sigkill(&out) {
                recover_and_check(&img, &out, &before, None, Some(State::Before), &ctx);
                hit.push((name.clone(), "failed apply", State::Before));
            } else {
                assert_code(&out, 1);
                assert_manifest_eq_ctx(&m, &img.booted_manifest(), &ctx);
                assert_no_leftovers(&img);
            }
            hello.assert_host_rolled_back();
        }

        // Rolling back a generation.
        if rolling_back {
            let hello = hello_for(format!("-r{i}"));
            hello.prepare(&root);
            let m_pre = img.booted_manifest();
            let g_pre = status_json(&root)["current_generation"].as_u64().expect("status current_generation");
            assert_code(&apply(&hello.plan_dir(&hello.plan()).path, &root, backend, KEEP), 0);
            let m_post = img.booted_manifest();
            let list_before = list_json(&root);
            // Explicit --to: after earlier rollbacks, "current - 1" need not be the tree before this apply.
            let out = rollback(&root, &["--to", &g_pre.to_string()], &env);
            let ctx = format!(
                "{} backend, rollback --to {g_pre} crashed at {name} (list before the rollback: {list_before})",
                backend.name()
            );
            if killed_by_sigkill(&out) {
                let expected = if committed_seen(&out) { Some(State::After) } else { hint(name, backend, layout) };
                let state =
                    recover_and_check(&img, &out, &Expect::new(&m_post), Some(&Expect::new(&m_pre)), expected, &ctx);
                hit.push((name.clone(), "rollback", state));
            } else {
                assert_eq!(out.status.code(), Some(0), "{ctx}\n{}", show(&out));
                assert_manifest_eq_ctx(&m_pre, &img.booted_manifest(), &ctx);
                assert_no_leftovers(&img);
            }
        }
    }

    // Crashing while recovering: the next recover ends on the same side as an uninterrupted one.
    for (crash_at, side) in [(&pre_commit_point, State::Before), (&post_commit_point, State::After)] {
        let Some(crash_at) = crash_at else { continue };
        for (j, Point { name, .. }) in points.iter().filter(|p| p.op == "recover").enumerate() {
            let hello = hello_for(format!("-c{j}{side:?}"));
            hello.prepare(&root);
            let m = img.booted_manifest();
            let before = Expect::new(&m);
            let mut after = Expect::new(&m);
            hello.expect(&mut after);
            let out = apply_env(&hello.plan_dir(&hello.plan()).path, &root, backend, KEEP, &[(FP, crash_at.as_str())]);
            assert!(killed_by_sigkill(&out), "failpoint {crash_at} killed apply before but not now\n{}", show(&out));
            let r = recover_env(&root, &[(FP, name.as_str())]);
            let ctx = format!("{} backend, apply crashed at {crash_at}, recover crashed at {name}", backend.name());
            if killed_by_sigkill(&r) {
                hit.push((name.clone(), "recover", side));
                recover_and_check(&img, &r, &before, Some(&after), Some(side), &ctx);
            } else {
                assert_eq!(r.status.code(), Some(0), "{ctx}: recover\n{}", show(&r));
                let state = classify(&img, &before, Some(&after), &ctx);
                assert_eq!(state, side, "{ctx}: recovered to the other side than before");
                assert_no_leftovers(&img);
            }
        }
    }

    eprintln!("{} backend: failpoints reached:", backend.name());
    for (name, op, state) in &hit {
        eprintln!("  {name:40} during {op:12} -> {state:?}");
    }
    // Every point of this backend is reached by its operation: a point the engine lists and never passes is a
    // crash nobody tests.
    let unreached: Vec<&str> = points
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| !hit.iter().any(|(h, _, _)| h == n) && !REACHED_ELSEWHERE.iter().any(|(e, _)| e == n))
        .collect();
    assert!(unreached.is_empty(), "{} backend, {layout:?}: points never reached: {unreached:?}", backend.name());
}
for_each_backend!(privileged_crash_at_every_failpoint, crash_at_every_failpoint);

/// The root is the top of an ext4 filesystem (as an ext4 `/` is), with its state area inside it.
fn crash_at_every_failpoint_on_a_filesystem_top(backend: Backend) {
    crash_at_every_failpoint_in(backend, Layout::Top)
}
backend_tests!(
    privileged_crash_at_every_failpoint_on_a_filesystem_top,
    crash_at_every_failpoint_on_a_filesystem_top,
    overlay => Overlay, journal => Journal
);

/// The root has an ext4 `/boot` and an xfs `/srv/www` mounted inside it, staged as parts of every
/// transaction; the plan writes into both, and the manifests take them in. The btrfs root is a
/// subvolume mounted on its own (as `/` is): each manifest is of the root mounted again, as the
/// next boot sees it.
fn crash_at_every_failpoint_with_mounts_inside(backend: Backend) {
    crash_at_every_failpoint_in(backend, Layout::WithMounts)
}
backend_tests!(
    privileged_crash_at_every_failpoint_with_mounts_inside,
    crash_at_every_failpoint_with_mounts_inside,
    btrfs => Btrfs, overlay => Overlay
);

/// The first transaction of a root with filesystems mounted inside it, killed right after its
/// record (which lists the parts) and before any part's state area exists: recovery discards it
/// and every filesystem is as before. (The matrix above reaches this point only once the state
/// areas exist.)
fn first_transaction_with_parts_killed_after_its_record(backend: Backend) {
    let WithParts { img, root, hello, before, host: _host } = WithParts::new(backend);
    let out = apply_env(&hello.plan_dir(&hello.plan()).path, &root, backend, &[], &[(FP, "apply-after-record")]);
    assert!(killed_by_sigkill(&out), "the failpoint must kill the apply\n{}", show(&out));
    for sub in img.mounted_inside() {
        assert!(!sub.mountpoint().join(".snapinst").exists(), "{}: no state area yet", sub.mountpoint().display());
    }
    let r = recover(&root);
    assert_code(&r, 0);
    assert_eq!(recovered_actions(&r), ["rolled_back"], "{}", show(&r));
    assert_manifest_eq_ctx(&before, &img.booted_manifest(), "after recovering the first transaction");
    assert_no_leftovers(&img);
}
backend_tests!(
    privileged_first_transaction_with_parts_killed_after_its_record,
    first_transaction_with_parts_killed_after_its_record,
    btrfs => Btrfs, overlay => Overlay
);

/// A journal delta that a crash of an older snapinst left with one side only (its `old/` made durable, its `new/`
/// not yet): recovery takes the missing side as empty, and the tree is exactly as before.
#[test]
fn privileged_recover_takes_a_missing_delta_side_as_empty() {
    let backend = Backend::Journal;
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();
    let hello = Hello::new(backend, "", host.path());
    hello.prepare(&root);
    let before = img.booted_manifest();
    let out = apply_env(&hello.plan_dir(&hello.plan()).path, &root, backend, KEEP, &[(FP, "apply-after-stage")]);
    assert!(killed_by_sigkill(&out), "the apply stops at its crash point:\n{}", show(&out));
    let gens = img.state_dir().join("gens");
    let deltas: Vec<_> = std::fs::read_dir(&gens)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("old").is_dir() && p.join("new").is_dir())
        .collect();
    assert_eq!(deltas.len(), 1, "the transaction's delta in {}: {deltas:?}", gens.display());
    std::fs::remove_dir(deltas[0].join("new")).unwrap();

    let r = recover(&root);
    assert_code(&r, 0);
    assert_eq!(recovered_actions(&r), ["rolled_back"], "{}", show(&r));
    assert_manifest_eq(&before, &img.booted_manifest());
    assert_no_leftovers(&img);
}
