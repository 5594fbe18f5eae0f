//! The package database never disagrees with the files. While a transaction runs on a root, snapinst holds that
//! root's dpkg locks, so a live dpkg waits or fails with its own message (and a live dpkg that holds them makes
//! snapinst refuse, changing nothing). While a generation committed to a running root waits for its boot, dpkg's
//! pre-invoke hook (`snapinst dpkg-guard`) refuses a live dpkg run, naming the generation and what to do, and
//! Debian's `/run/reboot-required` says a restart is needed; a rollback that makes the mounted tree current again
//! takes both back.

#[macro_use]
mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Try dpkg's way of locking `path` (a write lock over the whole file, not waiting); on failure, the holder's pid.
fn try_dpkg_lock(path: &Path) -> Result<File, i32> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).unwrap();
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
        return Ok(f);
    }
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut lock) };
    Err(lock.l_pid)
}

fn with_dpkg_dir(root: &Path) {
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
}

fn dpkg_locks_held_during_a_transaction(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    with_dpkg_dir(&root);
    let steps = vec![
        json!({"id": "f", "type": "file", "path": "/etc/pkgdb.conf", "content": "x\n", "mode": "0644"}),
        json!({"id": "wait", "type": "host", "do": ["sleep", "2"], "undo": ["true"]}),
    ];
    let pd = PlanDir::new(&plan("locks", steps), &[]);
    let mut cmd = snapinst_cmd(["apply"]);
    cmd.arg(&pd.path).arg("--root").arg(&root).args(["--backend", backend.name(), "--json"]);
    let mut bg = spawn_background(cmd);
    bg.wait_for(Duration::from_secs(60), "the waiting step", |v| v["event"] == "step_started" && v["step"] == "wait");
    for name in ["lock-frontend", "lock"] {
        let holder = try_dpkg_lock(&root.join("var/lib/dpkg").join(name)).expect_err("the lock is held");
        let comm = std::fs::read_to_string(format!("/proc/{holder}/comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{holder}/stat")).unwrap_or_default();
        let ppid: u32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!((comm.trim(), ppid), ("snapinst", bg.pid()), "snapinst holds dpkg's {name} during the transaction");
    }
    assert!(bg.child.wait().unwrap().success());
    assert!(try_dpkg_lock(&root.join("var/lib/dpkg/lock-frontend")).is_ok(), "released after the transaction");

    // A live package manager holding the lock (another process, as dpkg is): snapinst refuses and changes nothing.
    let lock = root.join("var/lib/dpkg/lock-frontend");
    let script = "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)";
    let mut dpkg =
        Command::new("python3").args(["-c", script]).arg(&lock).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(dpkg.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let before = manifest(&root);
    let pd = PlanDir::new(&plan("refused", vec![json!({"id": "d", "type": "dir", "path": "/opt/refused"})]), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 4); // busy: dpkg's lock is held
    assert!(
        stderr(&out).contains("the package manager is using") && stderr(&out).contains("lock-frontend"),
        "{}",
        show(&out)
    );
    assert!(stderr(&out).contains(&format!("pid {}", dpkg.id())), "names the holder: {}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
    let _ = dpkg.kill();
    let _ = dpkg.wait();
    assert_no_leftovers(&img);
}
for_each_backend!(privileged_dpkg_locks_held_during_a_transaction, dpkg_locks_held_during_a_transaction);

fn guard(root: &Path, extra_env: &[(&str, &str)]) -> std::process::Output {
    let mut env = vec![("DPKG_ROOT", root.to_str().unwrap())];
    env.extend_from_slice(extra_env);
    snapinst_env(["dpkg-guard"], &env)
}

/// A btrfs root mounted on its own, as `/` is, with a tmpfs at /run: a commit leaves a generation pending.
#[test]
fn privileged_pending_generation_refuses_live_dpkg_and_marks_reboot_required() {
    let img = populated(Backend::Btrfs).mounted_subvolume();
    let live = img.root();
    with_dpkg_dir(&live);
    run_ok(Command::new("mount").args(["-t", "tmpfs", "run", live.join("run").to_str().unwrap()]));
    // Nothing pending yet: the hook does nothing.
    assert_code(&guard(&live, &[]), 0);
    let pd = PlanDir::new(&plan("pending", vec![json!({"id": "d", "type": "dir", "path": "/opt/pending"})]), &[]);
    assert_code(&apply(&pd.path, &live, Backend::Btrfs, &[]), 0);

    let out = guard(&live, &[]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("generation 1") && err.contains("Reboot first") && err.contains("snapinst rollback"), "{err}");
    // dpkg itself, with the hook as it is installed, refuses with that message and installs nothing.
    let bin = BIN;
    let hook = format!("--pre-invoke=SNAPINST_TEST_COPY_STAGED=ext2 {bin} dpkg-guard");
    let status_before = std::fs::read(live.join("var/lib/dpkg/status")).unwrap();
    let dpkg = Command::new("dpkg")
        .arg(format!("--root={}", live.display()))
        .arg(&hook)
        .args(["--configure", "-a"])
        .output()
        .unwrap();
    let dpkg_err = String::from_utf8_lossy(&dpkg.stderr).to_string();
    assert!(
        !dpkg.status.success() && dpkg_err.contains("waits for the next boot"),
        "dpkg: {:?}\n{dpkg_err}",
        dpkg.status
    );
    assert_eq!(std::fs::read(live.join("var/lib/dpkg/status")).unwrap(), status_before);
    // Inside a transaction's stage the hook never refuses (the package steps run dpkg there).
    assert_code(&guard(&live, &[("SNAPINST_TXN", "t")]), 0);

    let pkgs = std::fs::read_to_string(live.join("run/reboot-required.pkgs")).expect("reboot-required.pkgs written");
    assert!(pkgs.lines().any(|l| l == "snapinst"), "{pkgs}");
    assert!(live.join("run/reboot-required").exists());

    // Rolling back to the mounted tree: nothing pending, the mark and the refusal go.
    assert_code(&rollback(&live, &[], &[]), 0);
    assert_code(&guard(&live, &[]), 0);
    assert!(!live.join("run/reboot-required").exists() && !live.join("run/reboot-required.pkgs").exists());
    run_ok(Command::new("umount").arg(live.join("run")));
}

/// A root snapinst does not manage: the hook does nothing.
#[test]
fn privileged_dpkg_guard_leaves_an_unmanaged_root_alone() {
    let img = populated(Backend::Overlay);
    let out = guard(&img.root(), &[]);
    assert_code(&out, 0);
    assert!(stderr(&out).is_empty(), "{}", show(&out));
}
