//! What a `run` step does to the staged tree is committed exactly as if the same script had run
//! directly on the tree: the expected tree is made by running the script chrooted in a `cp -a`
//! copy of the root. This exercises what the overlay merge must get right (whiteouts, opaque
//! directories, copy-up of metadata and xattrs, a new hard link to a lower file, a removed member
//! of a hard-link group) and that the btrfs exchange carries everything.

#[macro_use]
mod common;

use std::process::Command;

use common::*;
use serde_json::json;

/// A fixed time for everything the script creates or changes, so the two runs agree on mtimes.
const T: &str = "202001020304.05";

fn script() -> String {
    let renamed_from = tree_file(5); // has a user xattr
    let renamed_to = renamed_from.replace("f0005.dat", "renamed.dat");
    let appended = tree_file(11); // has a user xattr, owned by svc
    let chmodded = tree_file(6);
    let chowned = tree_file(8);
    [
        "set -e".to_string(),
        // A directory removed and made again: an opaque directory in the upper layer.
        format!("rm -rf /usr/share/pkg03 && mkdir /usr/share/pkg03 && echo new > /usr/share/pkg03/x && touch -t {T} /usr/share/pkg03/x"),
        // A removed lower file: a whiteout.
        "rm /etc/hostname".to_string(),
        // A renamed lower file: copy-up (xattrs and mtime kept), then rename.
        format!("mv {renamed_from} {renamed_to}"),
        // Data and metadata changes of lower files.
        format!("echo appended >> {appended} && touch -t {T} {appended}"),
        format!("chmod 4750 {chmodded}"),
        format!("chown 990:990 {chowned}"),
        // A new hard link to a lower file, and one name of a three-name group removed.
        "ln /etc/passwd /etc/passwd.hl".to_string(),
        "rm /usr/share/links/h0020".to_string(),
        // New things.
        format!("ln -s /etc/passwd /srv/newlink && touch -h -t {T} /srv/newlink"),
        "mkdir -p /srv/newdir/a && chmod 0700 /srv/newdir".to_string(),
        format!("echo fresh > /srv/newdir/a/file && chmod 0640 /srv/newdir/a/file && touch -t {T} /srv/newdir/a/file"),
        // A file removed from a sticky directory.
        "rm /srv/shared/note".to_string(),
    ]
    .join("\n")
}

fn run_step_edits_match_direct_execution(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);

    // The reference: a copy of the tree, edited by the same script run directly.
    let reference = img.mountpoint().join("reference");
    run_ok(Command::new(require_tool("cp")).arg("-a").arg(&root).arg(&reference));
    assert_manifest_eq_ctx(&before, &manifest(&reference), "cp -a copy of the test tree (test setup)");
    run_ok(
        Command::new(require_tool("chroot"))
            .arg(&reference)
            .args(["/bin/sh", "-c", &script()])
            .env_clear()
            .env("PATH", "/bin"),
    );
    let expected = manifest(&reference);

    let pd = PlanDir::new(
        &plan("edits", vec![json!({"id": "edit", "type": "run", "command": sh(&script()), "timeout_s": 60})]),
        &[],
    );
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);
    assert_manifest_eq_ctx(&expected, &manifest(&root), "the committed tree versus the script run directly");
    assert_no_leftovers(&img);

    // And back.
    assert_code(&rollback(&root, &[], &[]), 0);
    assert_manifest_eq_ctx(&before, &manifest(&root), "rollback of the run step's edits");
    assert_no_leftovers(&img);
}

#[test]
fn privileged_run_step_edits_match_direct_execution_btrfs() {
    run_step_edits_match_direct_execution(Backend::Btrfs);
}

#[test]
fn privileged_run_step_edits_match_direct_execution_overlay() {
    run_step_edits_match_direct_execution(Backend::Overlay);
}

/// A script that writes into a file with several names changes every name, as it would without
/// snapinst (the names share one inode). On overlayfs with `index=off` (the mount options the design
/// prescribes), copy-up gives the written name a new inode: in the stage the other names keep the
/// old content, and the overlay backend commits exactly what the steps saw there (documented in the
/// README). So the overlay expectation is the direct run with the group split.
fn write_into_hardlinked_file(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    let target = tree_file(40);
    assert_eq!(
        before[std::path::Path::new(&target)].links,
        vec![std::path::PathBuf::from("/usr/share/links/h0040")],
        "test tree: {target} should have a second name"
    );
    let script = format!("echo appended >> {target} && touch -t {T} {target}");

    let reference = img.mountpoint().join("reference");
    run_ok(Command::new(require_tool("cp")).arg("-a").arg(&root).arg(&reference));
    run_ok(
        Command::new(require_tool("chroot"))
            .arg(&reference)
            .args(["/bin/sh", "-c", &script])
            .env_clear()
            .env("PATH", "/bin"),
    );
    let mut expected = manifest(&reference);
    if backend == Backend::Overlay {
        let other = std::path::Path::new("/usr/share/links/h0040");
        let mut kept = before[other].clone();
        kept.links.clear();
        expected.insert(other.to_path_buf(), kept);
        expected.get_mut(std::path::Path::new(&target)).expect("the written file").links.clear();
    }

    let pd = PlanDir::new(
        &plan("hardlink-write", vec![json!({"id": "w", "type": "run", "command": sh(&script), "timeout_s": 60})]),
        &[],
    );
    assert_code(&apply(&pd.path, &root, backend, &[]), 0);
    assert_manifest_eq_ctx(
        &expected,
        &manifest(&root),
        "a write into a hard-linked file, versus the script run directly",
    );
    assert_code(&rollback(&root, &[], &[]), 0);
    assert_manifest_eq_ctx(&before, &manifest(&root), "rollback");
}

#[test]
fn privileged_write_into_hardlinked_file_reaches_every_name_btrfs() {
    write_into_hardlinked_file(Backend::Btrfs);
}

#[test]
fn privileged_write_into_hardlinked_file_splits_the_group_as_the_stage_showed_overlay() {
    write_into_hardlinked_file(Backend::Overlay);
}
