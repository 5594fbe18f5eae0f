//! btrfs roots beyond a plain subvolume beside its state area: a root with nested subvolumes (refused), a plan
//! that does not fit in the free space (refused), and a subvolume mounted on its own, the way `/` is: the commit
//! changes what its name points at (the next mount), the live mount keeps its tree, and the new generation is
//! pending until `snapinst bless`, with `snapinst boot` restoring the previous one after its tries.

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

#[test]
fn privileged_nested_subvolume_is_refused() {
    let img = populated(Backend::Btrfs);
    let root = img.root();
    run_ok(Command::new(require_tool("btrfs")).args(["subvolume", "create"]).arg(root.join("srv/nested")));
    let before = manifest(&root);
    let pd = PlanDir::new(&plan("nested", vec![json!({"id": "d", "type": "dir", "path": "/opt/x"})]), &[]);
    let out = apply(&pd.path, &root, Backend::Btrfs, &[]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("nested subvolumes") && err.contains("/srv/nested"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
}

#[test]
fn privileged_plan_larger_than_free_space_is_refused() {
    let img = populated(Backend::Overlay);
    let root = img.root();
    let before = manifest(&root);
    let host = host_tempdir();
    let big = host.path().join("big.bin");
    std::fs::File::create(&big).unwrap().set_len(4 << 30).unwrap(); // sparse: 4 GiB that take no room here
    let pd = PlanDir::new(
        &plan("big", vec![json!({"id": "big", "type": "file", "path": "/opt/big.bin", "source": big})]),
        &[],
    );
    let out = apply(&pd.path, &root, Backend::Overlay, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("not enough free space"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
    assert!(!img.state_dir().join("txns").exists() || dir_names(&img.state_dir().join("txns")).is_empty());
}

fn boot(root: &Path) -> Output {
    snapinst(["boot", "--root", root.to_str().unwrap(), "--json"])
}

/// Three boots that each spend a try of the pending generation (none blesses it), then the one
/// that falls back; returns the note of that last boot.
fn boot_until_the_fallback(name: &Path) -> String {
    for left in [2, 1, 0] {
        assert_code(&boot(name), 0);
        assert_eq!(status_json(name)["pending"]["boots_left"], json!(left));
    }
    let out = boot(name);
    assert_code(&out, 0);
    let note = json_lines(&out).into_iter().find(|v| v["event"] == "boot").expect("a boot event");
    note["note"].as_str().unwrap_or_default().to_string()
}

#[test]
fn privileged_mounted_subvolume_commits_for_the_next_boot_and_falls_back() {
    let img = populated(Backend::Btrfs).mounted_subvolume();
    let name = img.subvolume_name().expect("a subvolume mounted on its own").to_path_buf();
    let live = img.root();
    let before = manifest(&live);
    assert_manifest_eq_ctx(&before, &manifest(&name), "the live mount and the subvolume name (test setup)");

    let steps = vec![json!({"id": "f", "type": "file", "path": "/etc/gen1.conf", "content": "one\n", "mode": "0644"})];
    let pd = PlanDir::new(&plan("gen1", steps), &[]);
    // No --state-dir: the default is beside the subvolume on the top level, the same as for the plain subvolume.
    let out = apply(&pd.path, &live, Backend::Btrfs, &[]);
    assert_code(&out, 0);
    assert!(img.state_dir().join("state.json").exists(), "state area not beside the subvolume\n{}", show(&out));

    // The live mount still shows the old tree; the name (what the next mount sees) has the new one.
    assert_manifest_eq_ctx(&before, &manifest(&live), "the live mount after the commit");
    let mut want = Expect::new(&before);
    want.file("/etc/gen1.conf", b"one\n", 0o644, 0, 0);
    want.check(&manifest(&name));

    let st = status_json(&live);
    assert_eq!(st["current_generation"], json!(1), "{st}");
    assert_eq!(st["next_boot_differs"], json!(true), "{st}");
    assert_eq!(st["pending"]["generation"], json!(1), "{st}");
    assert_eq!(st["pending"]["boots_left"], json!(3), "{st}");

    // Three boots that never bless it, then the fourth restores generation 0.
    let note = boot_until_the_fallback(&name);
    assert!(note.contains("did not reach boot-complete.target in 3 boots"), "{note}");
    assert_manifest_eq_ctx(&before, &manifest(&name), "the subvolume after the fallback");
    let st = status_json(&name);
    assert_eq!(st["current_generation"], json!(0), "{st}");
    // The restored generation has tries of its own but nothing further to fall back to.
    assert_eq!(st["pending"]["generation"], json!(0), "{st}");
    assert_eq!(st["pending"]["fallback"], json!(null), "{st}");

    // It boots fine: bless clears the mark.
    assert_code(&snapinst(["bless", "--root", name.to_str().unwrap()]), 0);
    let st = status_json(&name);
    assert_eq!(st["pending"], json!(null), "{st}");
    assert!(st["boot_note"].as_str().unwrap().contains("booted successfully"), "{st}");
    assert_code(&recover(&name), 0);
    assert_no_leftovers(&img);
}

#[test]
fn privileged_unhealthy_fallback_stops_falling_back() {
    let img = populated(Backend::Btrfs).mounted_subvolume();
    let name = img.subvolume_name().expect("a subvolume mounted on its own").to_path_buf();
    let live = img.root();
    let pd = PlanDir::new(&plan("gen1", vec![json!({"id": "d", "type": "dir", "path": "/opt/gen1"})]), &[]);
    assert_code(&apply(&pd.path, &live, Backend::Btrfs, &["--boot-tries", "1"]), 0);
    assert_code(&boot(&name), 0); // the one try
    assert_code(&boot(&name), 0); // falls back to 0
    assert_eq!(status_json(&name)["current_generation"], json!(0));
    assert_code(&boot(&name), 0); // generation 0's one try
    let out = boot(&name); // generation 0 is unhealthy too: no further fallback
    assert_code(&out, 0);
    let st = status_json(&name);
    assert_eq!(st["current_generation"], json!(0), "{st}");
    assert_eq!(st["pending"], json!(null), "{st}");
    assert!(st["boot_note"].as_str().unwrap().contains("nothing left to fall back to"), "{st}");
}

/// A subvolume mounted on its own with an ext4 `/boot` and an xfs `/srv/www` inside it. The
/// failed-boot fallback runs before the root is mounted, when nothing is mounted inside it: it
/// switches the root's subvolume and leaves the parts' half to `snapinst recover`, run once the
/// local filesystems are; until then no boot is counted. After that every filesystem is as it was.
#[test]
fn privileged_fallback_takes_the_filesystems_inside_along_once_mounted() {
    let WithParts { img, root, hello, before, host: _host } = WithParts::new(Backend::Btrfs);
    let name = img.subvolume_name().expect("a subvolume mounted on its own").to_path_buf();
    let mut after = Expect::new(&before);
    hello.expect(&mut after);
    assert_code(&apply(&hello.plan_dir(&hello.plan()).path, &root, Backend::Btrfs, &[]), 0);
    after.check(&img.booted_manifest());

    // The boot hook sees the root by name on the top level, with nothing mounted inside it.
    let note = boot_until_the_fallback(&name);
    assert!(
        note.contains("generation 0 is current again (its root now; /boot, /home, /boot/efi, /srv/www once mounted"),
        "{note}"
    );

    // Until the parts are mounted the rollback waits, and a boot counts no try.
    let out = boot(&name);
    assert_code(&out, 0);
    let waiting: Vec<Value> = json_lines(&out).into_iter().filter(|v| v["action"] == "waiting").collect();
    assert_eq!(waiting.len(), 1, "the unfinished rollback waits for its parts\n{}", show(&out));
    assert_eq!(waiting[0]["parts"], json!(["/boot", "/home", "/boot/efi", "/srv/www"]));

    // The machine mounts its filesystems; the recovery unit finishes the rollback.
    img.boot_again();
    let out = recover(&root);
    assert_code(&out, 0);
    assert_eq!(recovered_actions(&out), ["rolled_forward"], "{}", show(&out));
    assert_manifest_eq_ctx(&before, &img.booted_manifest(), "every filesystem after the fallback");
    let st = status_json(&root);
    assert_eq!(st["current_generation"], json!(0), "{st}");
    assert_eq!(st["pending"]["generation"], json!(0), "the restored generation keeps its own tries: {st}");
    assert_eq!(st["pending"]["fallback"], json!(null), "{st}");
    assert_no_leftovers(&img);
}
