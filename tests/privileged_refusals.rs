//! What snapinst refuses before touching anything: a root that is not a directory, a nested
//! transaction (from a run step, or with `SNAPINST=1` in the environment), a `run` step on the
//! journal backend.

#[macro_use]
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

fn small_plan() -> PlanDir {
    PlanDir::new(&plan("small", vec![json!({"id": "d", "type": "dir", "path": "/opt/small", "mode": "0755"})]), &[])
}

#[test]
fn privileged_root_that_is_a_file_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let file_root = dir.path().join("not-a-dir");
    fs::write(&file_root, b"I am a file\n").unwrap();
    let pd = small_plan();
    for backend in Backend::ALL {
        let out = apply(&pd.path, &file_root, backend, &[]);
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.to_lowercase().contains("not a directory") && err.contains(&*file_root.to_string_lossy()),
            "{} backend: the message should say that {} is not a directory:\n{}",
            backend.name(),
            file_root.display(),
            show(&out)
        );
        assert_eq!(fs::read(&file_root).unwrap(), b"I am a file\n");
    }
    assert_eq!(dir_names(dir.path()), vec!["not-a-dir".to_string()], "something was created next to the file root");
}

#[test]
fn privileged_missing_root_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let pd = small_plan();
    let out = apply(&pd.path, &missing, Backend::Journal, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains(&*missing.to_string_lossy()), "message should name the root:\n{}", show(&out));
    assert!(!missing.exists(), "the missing root was created");
}

#[test]
fn privileged_snapinst_env_refuses_nested_apply() {
    let img = populated(Backend::Btrfs);
    let root = img.root();
    let before = manifest(&root);
    let pd = small_plan();
    let out = apply_env(&pd.path, &root, Backend::Btrfs, &[], &[("SNAPINST", "1")]);
    assert_code(&out, 2);
    let err = stderr(&out).to_lowercase();
    assert!(
        err.contains("snapinst=1") || err.contains("nested"),
        "message should explain the nested refusal:\n{}",
        show(&out)
    );
    assert_manifest_eq(&before, &manifest(&root));
    assert!(!img.state_dir().exists() || status_json(&root)["current_generation"] == json!(0));
}

/// Copies the binary and the shared libraries it needs into the root, so that a run step can
/// start it inside the chroot.
fn install_binary_into(root: &Path) -> &'static str {
    let dest = in_root(root, "/usr/bin/snapinst");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::copy(BIN, &dest).unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_ok(Command::new(require_tool("ldd")).arg(BIN));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if lib.starts_with('/') {
            let d = in_root(root, lib);
            fs::create_dir_all(d.parent().unwrap()).unwrap();
            fs::copy(lib, &d).unwrap_or_else(|e| panic!("copying {lib} into the root: {e}"));
        }
    }
    "/usr/bin/snapinst"
}

fn nested_apply_from_run_step_is_refused(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let bin = install_binary_into(&root);
    let nested_plan =
        plan("nested", vec![json!({"id": "d", "type": "dir", "path": "/opt/nested-was-here", "mode": "0755"})]);
    fs::create_dir_all(in_root(&root, "/nested/root")).unwrap();
    fs::write(in_root(&root, "/nested/plan.json"), serde_json::to_vec(&nested_plan).unwrap()).unwrap();
    fix_mtimes(&root);
    let before = manifest(&root);

    let script = format!(
        "echo \"$SNAPINST\" > /var/lib/snapinst-env; \
         {bin} apply /nested/plan.json --root /nested/root --backend journal > /var/lib/nested.out 2> /var/lib/nested.err; \
         echo $? > /var/lib/nested.rc"
    );
    let steps = vec![json!({"id": "nest", "type": "run", "command": sh(&script), "timeout_s": 60})];
    let pd = PlanDir::new(&plan("outer", steps), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);
    let after = manifest(&root);
    let mut want = Expect::new(&before);
    want.file_content("/var/lib/snapinst-env", b"1\n")
        .file_content("/var/lib/nested.rc", b"2\n")
        .spec("/var/lib/nested.out", Spec { kind: Some(Kind::File), ..Spec::default() })
        .spec("/var/lib/nested.err", Spec { kind: Some(Kind::File), ..Spec::default() });
    if let Err(report) = want.diff(&after) {
        panic!(
            "nested apply inside a run step was not refused with exit 2 (nested stderr: {:?})\n{report}",
            fs::read_to_string(in_root(&root, "/var/lib/nested.err")).unwrap_or_default()
        );
    }
    let err = fs::read_to_string(in_root(&root, "/var/lib/nested.err")).unwrap().to_lowercase();
    assert!(
        err.contains("snapinst") && (err.contains("nested") || err.contains("snapinst=1")),
        "nested refusal message: {err}"
    );
    assert_no_leftovers(&img);
}

#[test]
fn privileged_nested_apply_from_run_step_is_refused_btrfs() {
    nested_apply_from_run_step_is_refused(Backend::Btrfs);
}

#[test]
fn privileged_nested_apply_from_run_step_is_refused_overlay() {
    nested_apply_from_run_step_is_refused(Backend::Overlay);
}

#[test]
fn privileged_journal_backend_refuses_run_steps() {
    let img = populated(Backend::Journal);
    let root = img.root();
    let host = host_tempdir();
    let hello = Hello::new(Backend::Btrfs, "", host.path());
    hello.prepare(&root);
    let before = manifest(&root);
    // Its run step without the paths it changes declared.
    let mut plan = hello.plan();
    for step in plan["steps"].as_array_mut().unwrap() {
        if step["id"] == "post" {
            step.as_object_mut().unwrap().remove("changes");
        }
    }
    let pd = hello.plan_dir(&plan);
    let out = apply(&pd.path, &root, Backend::Journal, &[]);
    assert_code(&out, 2);
    let idx = hello.ids().iter().position(|i| i == "post").unwrap() + 1;
    let err = stderr(&out);
    assert!(
        err.contains(&format!("step \"post\" (#{idx})")) && err.contains("journal") && err.contains("\"changes\""),
        "the refusal should name step \"post\" (#{idx}) and the journal backend:\n{}",
        show(&out)
    );
    assert_manifest_eq(&before, &manifest(&root));
    assert_eq!(hello.log_text(), None, "a host step ran although the plan was refused");
    // With the run step's changes declared, the same plan commits on the journal backend.
    let journal_hello = Hello::new(Backend::Journal, "", host.path());
    let out = apply(&journal_hello.plan_dir(&journal_hello.plan()).path, &root, Backend::Journal, &[]);
    assert_code(&out, 0);
}
