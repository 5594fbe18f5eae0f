//! snapinst's mount namespaces follow the host's (on a machine whose mounts are shared, as systemd makes them): a
//! filesystem the administrator unmounts while a transaction runs is gone from snapinst's namespace and from the
//! step's sandbox at once, so its device is released (it can be opened exclusively, as only an unmounted block
//! device can), and the transaction goes on.

#[macro_use]
mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The processes of the tree rooted at `pid` (the process itself first).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
            // The fields after the command name, which is in parentheses and may hold spaces.
            let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
            if after.split(' ').nth(1).and_then(|pp| pp.parse::<u32>().ok()) == Some(parent) && !all.contains(&p) {
                all.push(p);
            }
        }
        i += 1;
    }
    all
}

/// Whether the mount table of process `pid` has a mount at `at`.
fn has_mount(pid: u32, at: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else { return false };
    table.lines().any(|l| l.split(' ').nth(4) == Some(at.to_str().unwrap()))
}

/// A bind mount of a directory onto itself, made shared, as systemd makes every mount of a machine (a mount under
/// it propagates to the namespaces copied from it); unmounted when dropped.
struct SharedDir(tempfile::TempDir);

impl SharedDir {
    fn new() -> SharedDir {
        let d = tempfile::tempdir().unwrap();
        run_ok(Command::new("mount").arg("--bind").arg(d.path()).arg(d.path()));
        run_ok(Command::new("mount").arg("--make-shared").arg(d.path()));
        SharedDir(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(self.0.path()).status();
    }
}

/// A loop device, detached when dropped (after whatever was mounted from it).
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn host_unmount_reaches_the_transaction(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    // A filesystem of the administrator's, mounted outside the root before the transaction starts, on a machine
    // whose mounts are shared.
    let usb = SharedDir::new();
    let file = usb.path().join("usb.img");
    std::fs::File::create(&file).unwrap().set_len(32 << 20).unwrap();
    run_ok(Command::new(require_tool("mkfs.ext4")).args(["-q", "-F"]).arg(&file));
    let dev = Loop(
        String::from_utf8(run_ok(Command::new("losetup").args(["--find", "--show"]).arg(&file)).stdout)
            .unwrap()
            .trim()
            .to_string(),
    );
    let at = usb.path().join("mnt");
    std::fs::create_dir(&at).unwrap();
    run_ok(Command::new("mount").arg(&dev.0).arg(&at));

    let step = if backend.allows_run() {
        json!({"id": "sleep", "type": "run", "command": ["/bin/sleep", "4"], "timeout_s": 120})
    } else {
        json!({"id": "sleep", "type": "verify", "command": ["/bin/sleep", "4"], "expect_exit": 0})
    };
    let pd = PlanDir::new(
        &plan("host-unmount", vec![json!({"id": "d", "type": "dir", "path": "/opt/during", "mode": "0755"}), step]),
        &[],
    );
    let mut cmd = snapinst_cmd(["apply"]);
    cmd.arg(&pd.path).arg("--root").arg(&root).args(["--backend", backend.name(), "--json"]);
    let mut bg = spawn_background(cmd);
    bg.wait_for(Duration::from_secs(60), "the sleep step", |v| v["event"] == "step_started" && v["step"] == "sleep");
    std::thread::sleep(Duration::from_millis(300));
    let tree = process_tree(bg.pid());
    assert!(tree.len() >= 2, "the step runs in a process of its own: {tree:?}");
    assert!(tree.iter().any(|&p| has_mount(p, &at)), "snapinst's namespaces start with the host's mounts");

    run_ok(Command::new("umount").arg(&at));
    let still: Vec<u32> = tree.iter().copied().filter(|&p| has_mount(p, &at)).collect();
    assert!(still.is_empty(), "processes {still:?} of the transaction still have {} mounted", at.display());
    let exclusive = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(&dev.0);
    assert!(exclusive.is_ok(), "{} is still busy after the host unmounted it: {exclusive:?}", dev.0);
    drop(exclusive);

    let status = bg.child.wait().unwrap();
    assert!(status.success(), "the apply went on and committed: {status:?}, {}", bg.stderr.join().unwrap());
    assert!(root.join("opt/during").is_dir());
    assert_no_leftovers(&img);
}

for_each_backend!(privileged_host_unmount_reaches_the_transaction, host_unmount_reaches_the_transaction);
