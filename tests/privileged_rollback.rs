//! Generations and rollback, for each backend: a rollback restores the previous tree exactly,
//! `--to` goes back several steps and forward again, status and list follow.

#[macro_use]
mod common;

use common::*;
use serde_json::json;

/// A second plan that changes what the first one (tag "-a") made.
fn plan_b(backend: Backend, host: &std::path::Path) -> (PlanDir, Hello) {
    let hb = Hello::new(backend, "-b", host);
    let mut steps = hb.steps();
    steps.push(
        json!({"id": "reconf", "type": "file", "path": "/etc/hello-a.conf", "content": "greeting=b\n", "mode": "0600"}),
    );
    steps.push(json!({"id": "unlink", "type": "remove", "path": "/opt/hello-a/current", "recursive": false, "missing_ok": false}));
    steps.push(json!({"id": "chmod-dir", "type": "dir", "path": "/opt/hello-a", "mode": "0700", "owner": "svc", "group": "svc"}));
    let pd = hb.plan_dir(&plan("hello-b", steps));
    (pd, hb)
}

fn rollback_generations(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();
    let ha = Hello::new(backend, "-a", host.path());
    ha.prepare(&root);
    let (pd_b, hb) = plan_b(backend, host.path());
    hb.prepare(&root);
    let m0 = manifest(&root);
    assert_current_generation(&root, 0);

    // Commit A: generation 1.
    let out = apply(&ha.plan_dir(&ha.plan()).path, &root, backend, &[]);
    assert_code(&out, 0);
    let m1 = manifest(&root);
    let mut want = Expect::new(&m0);
    ha.expect(&mut want);
    want.check(&m1);
    assert_current_generation(&root, 1);

    // rollback: back to 0, exactly.
    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    assert_manifest_eq_ctx(&m0, &manifest(&root), "rollback after the first commit");
    assert_current_generation(&root, 0);
    assert_no_leftovers(&img);

    // --to 1: forward again, exactly the committed tree (mtimes included).
    let out = rollback(&root, &["--to", "1"], &[]);
    assert_code(&out, 0);
    assert_manifest_eq_ctx(&m1, &manifest(&root), "rollback --to 1 (forward)");
    assert_current_generation(&root, 1);

    // Commit B on top of A: generation 2.
    let out = apply(&pd_b.path, &root, backend, &[]);
    assert_code(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(events(&lines, "committed")[0]["generation"], json!(2), "new generation is highest + 1\n{}", show(&out));
    let m2 = manifest(&root);
    let mut want = Expect::new(&m1);
    hb.expect(&mut want);
    want.file("/etc/hello-a.conf", b"greeting=b\n", 0o600, 0, 0).remove("/opt/hello-a/current").dir(
        "/opt/hello-a",
        0o700,
        SVC_UID,
        SVC_GID,
    );
    want.check(&m2);
    assert_current_generation(&root, 2);

    // --to 0: the original tree.
    let out = rollback(&root, &["--to", "0"], &[]);
    assert_code(&out, 0);
    assert_manifest_eq_ctx(&m0, &manifest(&root), "rollback --to 0 after two commits");
    assert_current_generation(&root, 0);
    assert_no_leftovers(&img);

    // --to 2: the second tree again.
    let out = rollback(&root, &["--to", "2"], &[]);
    assert_code(&out, 0);
    assert_manifest_eq_ctx(&m2, &manifest(&root), "rollback --to 2 (forward)");
    assert_current_generation(&root, 2);

    // Plain rollback: generation 1.
    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    assert_manifest_eq_ctx(&m1, &manifest(&root), "rollback from 2");
    assert_current_generation(&root, 1);
    assert_no_leftovers(&img);

    let l = list_json(&root);
    let gens: Vec<u64> =
        l["generations"].as_array().unwrap().iter().map(|g| g["generation"].as_u64().unwrap()).collect();
    for g in [0, 1, 2] {
        assert!(gens.contains(&g), "generation {g} missing from list: {l}");
    }
    let txns = l["transactions"].as_array().expect("list.transactions");
    let kinds: Vec<&str> = txns.iter().map(|t| t["kind"].as_str().unwrap_or("?")).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "apply").count(), 2, "two apply transactions listed: {l}");
    assert_eq!(kinds.iter().filter(|k| **k == "rollback").count(), 5, "five rollback transactions listed: {l}");
    for t in txns.iter().filter(|t| t["kind"] == "apply") {
        assert_eq!(t["outcome"], "committed", "both applies committed: {l}");
    }
}
for_each_backend!(privileged_rollback_generations, rollback_generations);

fn rollback_to_unknown_generation_is_refused(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let pd =
        PlanDir::new(&plan("one", vec![json!({"id": "d", "type": "dir", "path": "/opt/one", "mode": "0755"})]), &[]);
    assert_code(&apply(&pd.path, &root, backend, &[]), 0);
    let m1 = manifest(&root);
    let out = rollback(&root, &["--to", "7"], &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains('7'), "the message should name the generation asked for:\n{}", show(&out));
    assert_manifest_eq(&m1, &manifest(&root));
    assert_current_generation(&root, 1);
    assert_no_leftovers(&img);
}
for_each_backend!(privileged_rollback_to_unknown_generation_is_refused, rollback_to_unknown_generation_is_refused);

/// `--keep N` prunes old generations but never the current one.
fn keep_prunes_old_generations(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    for i in 1..=4 {
        let pd = PlanDir::new(
            &plan(
                &format!("p{i}"),
                vec![
                    json!({"id": "f", "type": "file", "path": format!("/etc/gen{i}"), "content": "x\n", "mode": "0644"}),
                ],
            ),
            &[],
        );
        assert_code(&apply(&pd.path, &root, backend, &["--keep", "2"]), 0);
    }
    assert_current_generation(&root, 4);
    let l = list_json(&root);
    let gens: Vec<u64> =
        l["generations"].as_array().unwrap().iter().map(|g| g["generation"].as_u64().unwrap()).collect();
    assert!(gens.contains(&4), "current generation pruned: {l}");
    // Five trees exist (0..=4); keeping 2 (plus, at most, the current one) prunes some.
    assert!(gens.len() <= 3, "--keep 2 left {} generations: {l}", gens.len());
    assert!(!gens.contains(&0), "generation 0 not pruned with --keep 2 after four commits: {l}");
    // The newest kept older generation can still be restored.
    let older = *gens.iter().filter(|g| **g != 4).max().expect("one older generation kept");
    let m4 = manifest(&root);
    let out = rollback(&root, &["--to", &older.to_string()], &[]);
    assert_code(&out, 0);
    let m = manifest(&root);
    for i in (older as usize + 1)..=4 {
        assert!(
            !m.contains_key(std::path::Path::new(&format!("/etc/gen{i}"))),
            "/etc/gen{i} after rollback to {older}"
        );
    }
    let out = rollback(&root, &["--to", "4"], &[]);
    assert_code(&out, 0);
    assert_manifest_eq(&m4, &manifest(&root));
    assert_no_leftovers(&img);
}
for_each_backend!(privileged_keep_prunes_old_generations, keep_prunes_old_generations);
