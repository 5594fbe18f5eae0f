//! Symlinks that point outside the root, made by a run step or by symlink steps, cannot carry
//! a later file/dir/symlink/remove step outside it: every write lands inside the root (the
//! links resolve as if the root were `/`), and nothing on the host or next to the root changes.

#[macro_use]
mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::{json, Value};

struct Sentinels {
    host: tempfile::TempDir,
    host_names: Vec<String>,
    mnt_names: Vec<String>,
}

fn plant_sentinels(img: &LoopImage) -> Sentinels {
    let host = host_tempdir();
    fs::write(host.path().join("victim"), b"host victim\n").unwrap();
    fs::write(host.path().join("sentinel"), b"host sentinel\n").unwrap();
    let mnt = img.mountpoint();
    fs::write(mnt.join("sentinel"), b"image sentinel\n").unwrap();
    fs::write(mnt.join("victim"), b"image victim\n").unwrap();
    // The root has its own directory at the host directory's path, so a link that names the host
    // directory resolves, inside the root, to an existing directory (as `mkdir -p` through a
    // dangling link would fail anyway).
    fs::create_dir_all(in_root(&img.root(), &host.path().to_string_lossy())).unwrap();
    fix_mtimes(&img.root());
    Sentinels { host_names: dir_names(host.path()), mnt_names: dir_names(mnt), host }
}

fn check_sentinels(img: &LoopImage, s: &Sentinels) {
    let h = s.host.path();
    assert_eq!(dir_names(h), s.host_names, "the host directory {} changed", h.display());
    assert_eq!(fs::read(h.join("victim")).unwrap(), b"host victim\n");
    assert_eq!(fs::read(h.join("sentinel")).unwrap(), b"host sentinel\n");
    let mnt = img.mountpoint();
    let state = img.state_dir().file_name().unwrap().to_string_lossy().into_owned();
    let names: Vec<String> = dir_names(mnt).into_iter().filter(|n| *n != state).collect();
    assert_eq!(names, s.mnt_names, "paths next to the root changed");
    assert_eq!(fs::read(mnt.join("sentinel")).unwrap(), b"image sentinel\n", "sentinel next to the root overwritten");
    assert_eq!(fs::read(mnt.join("victim")).unwrap(), b"image victim\n", "file next to the root removed");
}

/// Steps that write through /etc/evil2 (absolute link to the host dir), /etc/evil3 (relative
/// link climbing to the host dir) and /etc/evil4 (relative link to the root's parent), and with
/// `with_evil`, /etc/evil (`/../../..`). Followed from the host, each would leave the root;
/// resolved inside it, each leads to an existing directory of the root.
fn write_steps(h: &str, with_evil: bool) -> Vec<Value> {
    let mut v = vec![
        json!({"id": "w-dir", "type": "dir", "path": "/etc/evil2/sub", "mode": "0755"}),
        json!({"id": "w-file", "type": "file", "path": "/etc/evil2/pwned", "content": "pwned2\n", "mode": "0644"}),
        json!({"id": "w-rel", "type": "file", "path": "/etc/evil3/pwned-rel", "content": "pwned3\n", "mode": "0644"}),
        json!({"id": "w-up", "type": "file", "path": "/etc/evil4/sentinel", "content": "pwned4\n", "mode": "0644"}),
        json!({"id": "w-updir", "type": "dir", "path": "/etc/evil4/sibling-dir", "mode": "0755"}),
        json!({"id": "w-link", "type": "symlink", "path": "/etc/evil2/ln", "target": "/etc/shadow"}),
        json!({"id": "w-rm", "type": "remove", "path": "/etc/evil2/victim", "recursive": false, "missing_ok": true}),
        json!({"id": "w-rmup", "type": "remove", "path": "/etc/evil4/victim", "recursive": false, "missing_ok": true}),
    ];
    if with_evil {
        v.push(json!({"id": "w-evil-dir", "type": "dir", "path": format!("/etc/evil{h}/via-evil"), "mode": "0755"}));
        v.push(json!({"id": "w-evil-file", "type": "file", "path": format!("/etc/evil{h}/pwned-abs"), "content": "pwned1\n", "mode": "0644"}));
    }
    // Inside the root, the links lead to the in-root copy of the host path.
    v.push(json!({"id": "look", "type": "verify", "command": sh(&format!("cat {h}/pwned")), "expect_exit": 0, "expect_stdout": "pwned2"}));
    v
}

fn expect_writes(e: &mut Expect, h: &str, with_evil: bool) {
    e.dir_any(h)
        .dir(format!("{h}/sub"), 0o755, 0, 0)
        .file(format!("{h}/pwned"), b"pwned2\n", 0o644, 0, 0)
        .file(format!("{h}/pwned-rel"), b"pwned3\n", 0o644, 0, 0)
        .file("/sentinel", b"pwned4\n", 0o644, 0, 0)
        .dir("/sibling-dir", 0o755, 0, 0)
        .symlink(&format!("{h}/ln"), "/etc/shadow");
    if with_evil {
        e.dir(format!("{h}/via-evil"), 0o755, 0, 0).file(format!("{h}/pwned-abs"), b"pwned1\n", 0o644, 0, 0);
    }
}

fn climb(h: &str) -> String {
    format!("../../../../../../../../../..{h}")
}

fn escape_via_run_step(backend: Backend) {
    assert!(backend.allows_run());
    let img = populated(backend);
    let root = img.root();
    let s = plant_sentinels(&img);
    let h = s.host.path().to_string_lossy().into_owned();
    let before = manifest(&root);

    let mut steps = vec![json!({"id": "links", "type": "run", "timeout_s": 60, "command": sh(&format!(
        "ln -s /../../.. /etc/evil && ln -s {h} /etc/evil2 && ln -s {} /etc/evil3 && ln -s ../.. /etc/evil4",
        climb(&h)
    ))})];
    steps.extend(write_steps(&h, true));
    let pd = PlanDir::new(&plan("escape", steps), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    check_sentinels(&img, &s);
    assert_code(&out, 0);

    let mut want = Expect::new(&before);
    want.symlink("/etc/evil", "/../../..")
        .symlink("/etc/evil2", &h)
        .symlink("/etc/evil3", &climb(&h))
        .symlink("/etc/evil4", "../..");
    expect_writes(&mut want, &h, true);
    want.check(&manifest(&root));
    assert_no_leftovers(&img);
}

#[test]
fn privileged_path_escape_via_run_step_btrfs() {
    escape_via_run_step(Backend::Btrfs);
}

#[test]
fn privileged_path_escape_via_run_step_overlay() {
    escape_via_run_step(Backend::Overlay);
}

fn escape_via_symlink_steps(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let s = plant_sentinels(&img);
    let h = s.host.path().to_string_lossy().into_owned();
    let before = manifest(&root);

    let mut steps = vec![
        json!({"id": "l2", "type": "symlink", "path": "/etc/evil2", "target": h}),
        json!({"id": "l3", "type": "symlink", "path": "/etc/evil3", "target": climb(&h)}),
        json!({"id": "l4", "type": "symlink", "path": "/etc/evil4", "target": "../.."}),
    ];
    steps.extend(write_steps(&h, false));
    let pd = PlanDir::new(&plan("escape", steps), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    check_sentinels(&img, &s);
    assert_code(&out, 0);

    let mut want = Expect::new(&before);
    want.symlink("/etc/evil2", &h).symlink("/etc/evil3", &climb(&h)).symlink("/etc/evil4", "../..");
    expect_writes(&mut want, &h, false);
    want.check(&manifest(&root));
    assert_no_leftovers(&img);

    // Rolling back must not follow the links either.
    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    check_sentinels(&img, &s);
    assert_manifest_eq(&before, &manifest(&root));
}
for_each_backend!(privileged_path_escape_via_symlink_steps, escape_via_symlink_steps);

/// A symlink already in the tree (not made by the plan) pointing at the host is no way out.
fn escape_via_existing_symlink(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let s = plant_sentinels(&img);
    let h = s.host.path().to_string_lossy().into_owned();
    std::os::unix::fs::symlink(&h, in_root(&root, "/etc/evil2")).unwrap();
    std::os::unix::fs::symlink(climb(&h), in_root(&root, "/etc/evil3")).unwrap();
    std::os::unix::fs::symlink("../..", in_root(&root, "/etc/evil4")).unwrap();
    let before = manifest(&root);
    let pd = PlanDir::new(&plan("escape", write_steps(&h, false)), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    check_sentinels(&img, &s);
    assert_code(&out, 0);
    let mut want = Expect::new(&before);
    expect_writes(&mut want, &h, false);
    want.check(&manifest(&root));
    assert!(!Path::new(&h).join("pwned").exists());
}
for_each_backend!(privileged_path_escape_via_existing_symlink, escape_via_existing_symlink);

/// A dir step whose missing parent is a dangling symlink (here, to the host directory, which the
/// root does not have): either the step fails and nothing changes (as `mkdir -p` does), or the
/// directories are made where the link leads inside the root. The link is never replaced, and
/// nothing is made on the host.
fn dir_through_dangling_symlink(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let host = host_tempdir();
    let h = host.path().to_string_lossy().into_owned();
    std::os::unix::fs::symlink(&h, in_root(&root, "/etc/dangling")).unwrap();
    let before = manifest(&root);
    let steps = vec![
        json!({"id": "mk", "type": "dir", "path": "/etc/dangling/sub", "mode": "0755"}),
        json!({"id": "wr", "type": "file", "path": "/etc/dangling/sub/f", "content": "x\n", "mode": "0644"}),
    ];
    let pd = PlanDir::new(&plan("dangling", steps), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert!(dir_names(host.path()).is_empty(), "a dir step through a dangling link wrote on the host");
    let after = manifest(&root);
    let link = &after[Path::new("/etc/dangling")];
    assert!(
        link.kind == Kind::Symlink && link.target.as_deref() == Some(Path::new(&h)),
        "the dangling symlink /etc/dangling was replaced: {}\n{}",
        describe(link),
        show(&out)
    );
    match out.status.code() {
        Some(1) => assert_manifest_eq(&before, &after),
        Some(0) => {
            let mut want = Expect::new(&before);
            want.dir_any(&h).dir(format!("{h}/sub"), 0o755, 0, 0).file(format!("{h}/sub/f"), b"x\n", 0o644, 0, 0);
            want.check(&after);
        }
        _ => panic!("unexpected exit\n{}", show(&out)),
    }
    assert_no_leftovers(&img);
}
for_each_backend!(privileged_dir_step_never_replaces_a_dangling_symlink, dir_through_dangling_symlink);
