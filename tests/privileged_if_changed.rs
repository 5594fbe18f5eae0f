//! `apply --if-changed`, for each backend: the generation an apply with it commits records a digest of the plan and
//! of every file the plan names; the same plan with the same files again does nothing (outcome `unchanged`, the
//! whole tree as it was, no new generation), with `--dry-run` too; a changed source file, or a current generation
//! committed without the flag, applies; `upgrade --if-changed` is refused.

#[macro_use]
mod common;

use common::*;
use serde_json::json;

fn the_plan() -> serde_json::Value {
    plan(
        "ifc",
        vec![
            json!({"id": "dir", "type": "dir", "path": "/opt/ifc", "mode": "0755"}),
            json!({"id": "conf", "type": "file", "path": "/opt/ifc/app.conf", "source": "files/app.conf",
                   "mode": "0644"}),
        ],
    )
}

fn outcome(out: &std::process::Output) -> (String, serde_json::Value) {
    let lines = json_lines(out);
    let s = summary(&lines);
    (s["outcome"].as_str().unwrap_or_default().to_string(), s["generation"].clone())
}

fn generations(root: &std::path::Path) -> Vec<serde_json::Value> {
    list_json(root)["generations"].as_array().cloned().unwrap_or_default()
}

fn apply_if_changed(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let pd = PlanDir::new(&the_plan(), &[("files/app.conf", b"one\n")]);

    // Without a digest on the current generation (generation 0), it applies; the new generation records one.
    let out = apply(&pd.path, &root, backend, &["--if-changed"]);
    assert_code(&out, 0);
    assert_eq!(outcome(&out), ("committed".into(), json!(1)), "{}", show(&out));
    let gens = generations(&root);
    let digest = gens[1]["plan_digest"].as_str().expect("generation 1 records its plan's digest").to_string();
    assert_eq!(digest.len(), 64, "{digest}");
    assert_eq!(gens[0]["plan_digest"], json!(null));
    let m1 = manifest(&root);

    // The same plan and files again: nothing happens, with or without --dry-run.
    for extra in [&["--if-changed"][..], &["--if-changed", "--dry-run"]] {
        let out = apply(&pd.path, &root, backend, extra);
        assert_code(&out, 0);
        assert_eq!(outcome(&out), ("unchanged".into(), json!(1)), "{extra:?}\n{}", show(&out));
        assert!(events(&json_lines(&out), "started").is_empty(), "{extra:?}: no transaction starts\n{}", show(&out));
        assert_manifest_eq_ctx(&m1, &manifest(&root), &format!("apply {extra:?} of the same plan"));
        assert_eq!(generations(&root).len(), 2, "{extra:?}: no new generation");
    }
    assert_no_leftovers(&img);

    // A file the plan names changes: the digest differs, and the plan applies again.
    std::fs::write(pd.dir.path().join("files/app.conf"), b"two\n").unwrap();
    let out = apply(&pd.path, &root, backend, &["--if-changed", "--dry-run"]);
    assert_code(&out, 0);
    assert_eq!(outcome(&out).0, "dry_run", "a changed source is not unchanged\n{}", show(&out));
    let out = apply(&pd.path, &root, backend, &["--if-changed"]);
    assert_code(&out, 0);
    assert_eq!(outcome(&out), ("committed".into(), json!(2)), "{}", show(&out));
    let gens = generations(&root);
    assert_ne!(gens[2]["plan_digest"], json!(digest), "the digest takes in the source file's content");
    let conf = manifest(&root);
    assert_eq!(
        conf.get(std::path::Path::new("/opt/ifc/app.conf")).and_then(|e| e.sha256.clone()),
        Some(sha256_bytes(b"two\n"))
    );

    // A generation committed without the flag records no digest: the next --if-changed applies.
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);
    assert_eq!(generations(&root).last().unwrap()["plan_digest"], json!(null));
    let out = apply(&pd.path, &root, backend, &["--if-changed"]);
    assert_eq!(outcome(&out).0, "committed", "{}", show(&out));
    assert_no_leftovers(&img);
}
for_each_backend!(privileged_apply_if_changed, apply_if_changed);

#[test]
fn privileged_upgrade_if_changed_is_refused() {
    let img = populated(Backend::Overlay);
    let root = img.root();
    let m = manifest(&root);
    let out = snapinst(["upgrade", "--root", root.to_str().unwrap(), "--if-changed"]);
    assert_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--if-changed"), "{}", show(&out));
    assert_manifest_eq(&m, &manifest(&root));
}
