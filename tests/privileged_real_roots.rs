//! Roots laid out as real machines have them: the top of an ext4 or xfs filesystem (as an ext4 `/`
//! is), whose state area must be inside it, and roots with other filesystems mounted inside them
//! (an ext4 `/boot`, an xfs `/srv/www`). Whole-tree manifests take the mounted filesystems in and
//! leave snapinst's own state area out.

#[macro_use]
mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A plan, a full commit, a rollback to the start: the tree is the expected one, then the first.
fn commit_and_roll_back(img: &LoopImage, backend: Backend) {
    let root = img.root();
    let host = host_tempdir();
    let hello = Hello::new(backend, "", host.path());
    hello.prepare(&root);
    let before = manifest(&root);
    let mut after = Expect::new(&before);
    hello.expect(&mut after);
    let out = apply(&hello.plan_dir(&hello.plan()).path, &root, backend, &[]);
    assert_code(&out, 0);
    after.check(&manifest(&root));
    assert_no_leftovers(img);
    let st = status_json(&root);
    assert_eq!(
        st["state_dir"].as_str().map(Path::new),
        Some(img.state_dir().as_path()),
        "the default state area of a filesystem top is inside it: {st}"
    );

    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    assert_manifest_eq_ctx(&before, &manifest(&root), "after rolling back to generation 0");
    assert_no_leftovers(img);
}

fn filesystem_top_commits_and_rolls_back(backend: Backend) {
    let img = populated_in(backend, Layout::Top);
    commit_and_roll_back(&img, backend);
}
backend_tests!(
    privileged_filesystem_top_commits_and_rolls_back,
    filesystem_top_commits_and_rolls_back,
    overlay => Overlay, journal => Journal
);

#[test]
fn privileged_xfs_filesystem_top_commits_and_rolls_back() {
    let img = LoopImage::top(FsKind::Xfs, 320);
    populate_tree(&img.root(), TREE_FILES);
    commit_and_roll_back(&img, Backend::Overlay);
}

#[test]
fn privileged_overlay_stage_hides_the_state_area_inside_the_root() {
    let img = populated_in(Backend::Overlay, Layout::Top);
    let root = img.root();
    let before = manifest(&root);
    let pd = PlanDir::new(
        &plan(
            "peek",
            vec![json!({"id": "peek", "type": "run", "command":
                sh("test -z \"$(ls -A /var/lib/snapinst/state)\" || { echo state visible >&2; exit 1; }; \
                    touch /var/lib/snapinst/state/planted")})],
        ),
        &[],
    );
    let out = apply(&pd.path, &root, Backend::Overlay, &[]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("Read-only file system"),
        "writing into the hidden state area must fail:\n{}",
        show(&out)
    );
    assert!(!img.state_dir().join("planted").exists());
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);

    let pd = PlanDir::new(
        &plan(
            "into-state",
            vec![json!({"id": "f", "type": "file", "path": "/var/lib/snapinst/state/x", "content": "x"})],
        ),
        &[],
    );
    let out = apply(&pd.path, &root, Backend::Overlay, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("is inside snapinst's state area /var/lib/snapinst/state"), "{}", show(&out));
    let pd = PlanDir::new(
        &plan("remove-var", vec![json!({"id": "rm", "type": "remove", "path": "/var/lib", "recursive": true})]),
        &[],
    );
    let out = apply(&pd.path, &root, Backend::Overlay, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("/var/lib holds snapinst's state area"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
}

#[test]
fn privileged_btrfs_refuses_a_state_area_inside_its_subvolume() {
    let img = populated(Backend::Btrfs);
    let root = img.root();
    let before = manifest(&root);
    let pd = PlanDir::new(&plan("p", vec![json!({"id": "d", "type": "dir", "path": "/opt/p"})]), &[]);
    let state = root.join("var/snapinst");
    let out = apply(&pd.path, &root, Backend::Btrfs, &["--state-dir", state.to_str().unwrap()]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("for the btrfs backend it must be outside it"), "{}", show(&out));
    assert!(!state.exists(), "the refused state area was created");
    assert_manifest_eq(&before, &manifest(&root));
}

fn run_plan(name: &str, script: &str) -> PlanDir {
    PlanDir::new(&plan(name, vec![json!({"id": "script", "type": "run", "command": sh(script)})]), &[])
}

/// The ext4 `/boot`, the ESP at `/boot/efi` (ext2 standing in for vfat, staged by copy), the
/// xfs `/srv/www` and the btrfs `/home` (staged by snapshots) mounted inside the root are parts of the transaction: the
/// steps see them as the machine does, a commit changes them with the root, a rollback takes them
/// back, and a failure leaves all three filesystems as they were. The btrfs root is a subvolume
/// mounted on its own, as `/` is: its manifests are of the root mounted again, as the next boot
/// sees it (the parts commit at once).
fn mounts_inside_are_staged_with_the_root(backend: Backend) {
    let WithParts { img, root, hello, before, host: _host } = WithParts::new(backend);

    // The steps see what the machine sees there, and a failure changes no filesystem. A tool that asks which
    // device holds /boot (grub-probe) is told the real one, and on a btrfs root the steps are told the
    // subvolume name the tree is booted by (the stage's own path is not it).
    let boot_dev = String::from_utf8(
        run_ok(Command::new("findmnt").args(["-n", "-o", "SOURCE", "--mountpoint"]).arg(root.join("boot"))).stdout,
    )
    .unwrap();
    let boot_subvol = if backend == Backend::Btrfs { "root" } else { "" };
    let seen = run_plan(
        "look",
        &format!(
            "src=$(awk '$5 == \"/boot\" {{ for (i = 7; i < NF; i++) if ($i == \"-\") {{ print $(i + 2); exit }} }}' \
             /proc/self/mountinfo); \
             test \"$src\" = {dev} || {{ echo \"the stage's /boot is on $src\" >&2; exit 3; }}; \
             awk '$5 == \"/\" {{ found = 1 }} END {{ exit !found }}' /proc/self/mountinfo \
             || {{ echo \"the stage's / has no mount table entry\" >&2; exit 5; }}; \
             test \"${{SNAPINST_BTRFS_SUBVOL:-}}\" = '{boot_subvol}' || {{ echo \"subvol $SNAPINST_BTRFS_SUBVOL\" >&2; exit 4; }}; \
             test -f /boot/vmlinuz-1 && grep -q 'on ext2' /boot/efi/vmlinuz-1 && grep -q 'on xfs' /srv/www/vmlinuz-1 \
             && grep -q 'on btrfs' /home/vmlinuz-1 && test ! -e /home/.snapinst/stage \
             && echo x > /boot/x && echo x > /boot/efi/x && echo x > /home/x && exit 1",
            dev = boot_dev.trim()
        ),
    );
    let out = apply(&seen.path, &root, backend, &[]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("exited with status 1"), "the script must reach its exit 1:\n{}", show(&out));
    let lines = json_lines(&out);
    let parts: Vec<&str> = events(&lines, "part").iter().map(|e| e["path"].as_str().unwrap_or("?")).collect();
    assert_eq!(parts, ["/boot", "/home", "/boot/efi", "/srv/www"], "each staged filesystem is announced");
    let staged_by: Vec<&str> = events(&lines, "part").iter().map(|e| e["staged_by"].as_str().unwrap_or("?")).collect();
    assert_eq!(
        staged_by,
        ["overlay", "snapshot", "copy", "overlay"],
        "the ESP stand-in by copy, the btrfs /home by snapshots"
    );
    assert_manifest_eq(&before, &img.booted_manifest());
    assert_no_leftovers(&img);

    // A dry run lists the changes on every filesystem.
    let out = apply(&hello.plan_dir(&hello.plan()).path, &root, backend, &["--dry-run"]);
    assert_code(&out, 0);
    let changed: Vec<String> =
        events(&json_lines(&out), "change").iter().map(|e| e["path"].as_str().unwrap_or("?").to_string()).collect();
    for want in [
        "/boot/hello.img",
        "/boot/grub/grub.cfg",
        "/boot/efi/hello.img",
        "/srv/www/hello.img",
        "/home/hello.img",
        "/etc/hello.conf",
    ] {
        assert!(changed.iter().any(|c| c == want), "the dry run should list {want}: {changed:?}");
    }
    assert!(!changed.iter().any(|c| c.contains(".snapinst")), "state areas are never listed: {changed:?}");
    assert_manifest_eq(&before, &img.booted_manifest());

    let out = apply(&hello.plan_dir(&hello.plan()).path, &root, backend, &[]);
    assert_code(&out, 0);
    assert_eq!(
        summary(&json_lines(&out))["parts"],
        json!(["boot", "home", "boot/efi", "srv/www"]),
        "the summary names the parts"
    );
    let mut after = Expect::new(&before);
    hello.expect(&mut after);
    after.check(&img.booted_manifest());
    assert_no_leftovers(&img);
    let list = list_json(&root);
    assert_eq!(
        list["generations"][1]["parts"],
        json!(["boot", "home", "boot/efi", "srv/www"]),
        "list shows the parts: {list}"
    );
    assert_eq!(status_json(&root)["parts"], json!(["boot", "home", "boot/efi", "srv/www"]));

    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    assert_manifest_eq_ctx(&before, &img.booted_manifest(), "after the rollback");
    assert_no_leftovers(&img);
}

for_staged_backends!(privileged_mounts_inside_are_staged_with_the_root, mounts_inside_are_staged_with_the_root);

/// Filesystems that are not staged (left out with --exclude-mount, mounted read-only, or under a
/// backend that stages no other filesystem) are never written silently: a plan path on one is
/// refused, a script's write there fails the transaction, both naming the path and the mount.
fn unstaged_mounts_are_never_written_silently(backend: Backend) {
    let img = populated_in(backend, Layout::WithMounts);
    let root = img.root();
    let www = root.join("srv/www");
    if backend == Backend::Overlay {
        nix::mount::mount(
            None::<&str>,
            &www,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("remounting /srv/www read-only");
    }
    let exclude: &[&str] = if backend == Backend::Overlay { &["--exclude-mount", "/boot"] } else { &[] };
    let boot_why = if backend == Backend::Overlay {
        "left out with --exclude-mount"
    } else {
        "the journal backend stages no other filesystem"
    };
    let www_why = if backend == Backend::Overlay {
        "it is mounted read-only"
    } else {
        "the journal backend stages no other filesystem"
    };
    let before = manifest(&root);

    let refusals = [
        (json!({"id": "kernel", "type": "file", "path": "/boot/vmlinuz-2", "content": "k2"}),
         format!("field \"path\": /boot/vmlinuz-2 is on ext4 mounted at /boot ({}), which snapinst does not stage ({boot_why})",
                 img.mounted_inside()[0].loop_device().display())),
        (json!({"id": "wipe", "type": "remove", "path": "/srv", "recursive": true}),
         "/srv holds the mount point of xfs mounted at /srv/www".to_string()),
        (json!({"id": "dir", "type": "dir", "path": "/srv/www/new"}), format!("/srv/www/new is on xfs mounted at /srv/www ({}), which snapinst does not stage ({www_why})", img.mounted_inside()[2].loop_device().display())),
    ];
    for (step, want) in refusals {
        let pd = PlanDir::new(&plan("refused", vec![step]), &[]);
        let out = apply(&pd.path, &root, backend, exclude);
        assert_code(&out, 2);
        assert!(stderr(&out).contains(&want), "{} backend: expected {want:?}\n{}", backend.name(), show(&out));
        assert_manifest_eq(&before, &manifest(&root));
    }
    if backend == Backend::Journal {
        return; // no run steps: the plan check is all there is
    }

    // The stage shows the (empty) directories underneath the mounts, so a script can write there.
    let writes = [
        (
            "mkdir -p /boot/grub && echo set default=1 > /boot/grub/grub.cfg; echo x > /etc/also",
            "a step added /boot/grub, which is on ext4 mounted at /boot",
        ),
        ("echo k2 > /boot/vmlinuz-2", "a step added /boot/vmlinuz-2, which is on ext4 mounted at /boot"),
        ("echo row > /srv/www/orders.db", "a step added /srv/www/orders.db, which is on xfs mounted at /srv/www"),
    ];
    for (script, want) in writes {
        let out = apply(&run_plan("hidden-write", script).path, &root, backend, exclude);
        assert_code(&out, 1);
        assert!(stderr(&out).contains(want), "{} backend: expected {want:?}\n{}", backend.name(), show(&out));
        let lines = json_lines(&out);
        assert_eq!(summary(&lines)["outcome"], "rolled_back");
        let unstaged: Vec<String> =
            events(&lines, "unstaged_mount").iter().map(|e| e["path"].as_str().unwrap_or("?").to_string()).collect();
        assert_eq!(unstaged, ["/boot", "/srv/www"], "each unstaged mount is announced");
        assert_manifest_eq(&before, &manifest(&root));
        assert_no_leftovers(&img);
    }

    // Writes elsewhere commit, and a dry run leaves the unstaged filesystems' contents out.
    let out =
        apply(&run_plan("elsewhere", "echo ok > /etc/ok").path, &root, backend, &[&["--dry-run"], exclude].concat());
    assert_code(&out, 0);
    let changed: Vec<String> =
        events(&json_lines(&out), "change").iter().map(|e| e["path"].as_str().unwrap_or("?").to_string()).collect();
    assert_eq!(changed, ["/etc/ok"], "{} backend: the dry run's changes", backend.name());
    let out = apply(&run_plan("elsewhere", "echo ok > /etc/ok").path, &root, backend, exclude);
    assert_code(&out, 0);
    let mut e = Expect::new(&before);
    e.file("/etc/ok", b"ok\n", 0o644, 0, 0);
    e.check(&manifest(&root));
    assert_no_leftovers(&img);
}
backend_tests!(
    privileged_unstaged_mounts_are_never_written_silently,
    unstaged_mounts_are_never_written_silently,
    overlay => Overlay, journal => Journal
);

#[test]
fn privileged_exclude_mount_must_name_a_mount_inside_the_root() {
    let img = populated_in(Backend::Overlay, Layout::Top);
    let root = img.root();
    let out = apply(&run_plan("p", "true").path, &root, Backend::Overlay, &["--exclude-mount", "/etc"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--exclude-mount /etc: no filesystem is mounted at"), "{}", show(&out));
}

/// A btrfs root that is a plain directory commits by renaming its subvolume: the filesystems
/// mounted inside it would stay with the old tree, so it is refused before anything happens.
#[test]
fn privileged_btrfs_directory_root_with_mounts_inside_is_refused() {
    let img = populated(Backend::Btrfs).with_mounts();
    let root = img.root();
    let before = manifest(&root);
    let out = apply(&run_plan("elsewhere", "echo ok > /etc/ok").path, &root, Backend::Btrfs, &[]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains(
            "(/boot, /home, /boot/efi, /srv/www); the btrfs backend commits by renaming the root's subvolume"
        ),
        "{}",
        show(&out)
    );
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);
}

/// A filesystem mounted inside the root while the steps run: the stage no longer matches the
/// machine, so the transaction fails and says which mount appeared.
fn a_mount_appearing_during_the_transaction_fails_it(backend: Backend) {
    let img = populated_in(backend, Layout::Top);
    let root = img.root();
    fs::create_dir_all(root.join("mnt/usb")).unwrap();
    let before = manifest(&root);
    let pd = run_plan("slow", "sleep 3; echo done > /etc/slow");
    let mut cmd = snapinst_cmd(["apply", pd.path.to_str().unwrap(), "--root", root.to_str().unwrap(), "--json"]);
    cmd.args(["--backend", backend.name()]);
    let mut bg = spawn_background(cmd);
    bg.wait_for(Duration::from_secs(60), "the step to start", |v: &Value| v["event"] == "step_started");
    let usb = root.join("mnt/usb");
    nix::mount::mount(Some("usb"), &usb, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    let status = wait_timeout(&mut bg.child, CMD_TIMEOUT).expect("apply did not finish");
    let err = bg.stderr.join().unwrap();
    nix::mount::umount2(&usb, nix::mount::MntFlags::empty()).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("changed while the transaction ran (mounted: tmpfs mounted at /mnt/usb (usb))"),
        "{} backend: {err}",
        backend.name()
    );
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);
}
backend_tests!(
    privileged_a_mount_appearing_during_the_transaction_fails_it,
    a_mount_appearing_during_the_transaction_fails_it,
    overlay => Overlay
);

/// A part whose filesystem is nearly full is refused before anything is staged, naming it.
#[test]
fn privileged_a_full_part_is_refused() {
    let img = populated_in(Backend::Overlay, Layout::WithMounts);
    let root = img.root();
    let boot = root.join("boot");
    let free = nix::sys::statvfs::statvfs(&boot).map(|s| s.blocks_available() * s.fragment_size()).unwrap();
    let filler = boot.join("filler");
    let f = fs::File::create(&filler).unwrap();
    nix::fcntl::fallocate(
        std::os::fd::AsRawFd::as_raw_fd(&f),
        nix::fcntl::FallocateFlags::empty(),
        0,
        (free - (4 << 20)) as i64,
    )
    .expect("filling /boot");
    drop(f);
    let before = manifest(&root);
    let out = apply(&run_plan("p", "echo x > /etc/x").path, &root, Backend::Overlay, &[]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("not enough free space on ext4 mounted at /boot")
            && stderr(&out).contains("needs 16 MiB"),
        "{}",
        show(&out)
    );
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);
}

/// A root whose filesystem is mounted read-only cannot hold its state area: a clear error naming
/// it, and nothing changed.
#[test]
fn privileged_a_state_area_that_cannot_be_created_is_a_clear_error() {
    let img = populated_in(Backend::Overlay, Layout::Top);
    let root = img.root();
    let before = manifest(&root);
    let flags = nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY;
    nix::mount::mount(None::<&str>, &root, None::<&str>, flags, None::<&str>).expect("remounting the root read-only");
    let out = apply(&run_plan("p", "echo x > /etc/x").path, &root, Backend::Overlay, &[]);
    nix::mount::mount(None::<&str>, &root, None::<&str>, nix::mount::MsFlags::MS_REMOUNT, None::<&str>).unwrap();
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains(&*img.state_dir().to_string_lossy()) && err.contains("Read-only file system"),
        "the error must name the state area and why:\n{}",
        show(&out)
    );
    assert_manifest_eq(&before, &manifest(&root));
    assert!(!img.state_dir().exists());
}

/// The btrfs `/home` is staged by snapshots, yet what the running system writes to it while a
/// transaction runs stays: the commit puts in only what the steps changed there (a new file next
/// to a file written live, an old file appended to live), and a rollback takes out only that.
fn live_writes_to_a_snapshot_staged_part_stay(backend: Backend) {
    let WithParts { img, root, hello: _, before: _, host: _host } = WithParts::new(backend);
    let home = root.join("home");
    let slow = run_plan("slow", "echo planned > /home/planned.txt && sleep 5");
    let mut child = snapinst_cmd([
        "apply".as_ref(),
        slow.path.as_os_str(),
        "--root".as_ref(),
        root.as_os_str(),
        "--backend".as_ref(),
        backend.name().as_ref(),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("starting snapinst apply");
    // The step sleeps 5 s: wait until the stage holds its file, then write to the live /home.
    let stage_file_seen = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        glob_stage_has(&home, "planned.txt")
    });
    assert!(stage_file_seen, "the step's file never appeared in a snapshot stage under {}", home.display());
    assert!(child.try_wait().expect("polling snapinst").is_none(), "the apply ended before the live writes");
    fs::write(home.join("live.txt"), "written live\n").expect("writing /home/live.txt");
    let old = fs::read_to_string(home.join("vmlinuz-1")).expect("reading /home/vmlinuz-1");
    fs::write(home.join("vmlinuz-1"), format!("{old}appended live\n")).expect("appending to /home/vmlinuz-1");
    let out = child.wait_with_output().expect("waiting for snapinst");
    assert_code(&out, 0);
    let read = |name: &str| fs::read_to_string(home.join(name)).ok();
    assert_eq!(read("planned.txt").as_deref(), Some("planned\n"), "the step's file is committed");
    assert_eq!(read("live.txt").as_deref(), Some("written live\n"), "the live new file stays");
    assert_eq!(read("vmlinuz-1"), Some(format!("{old}appended live\n")), "the live append stays");
    assert_no_leftovers(&img);

    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    assert_eq!(read("planned.txt"), None, "the rollback takes the step's file out");
    assert_eq!(read("live.txt").as_deref(), Some("written live\n"), "the rollback keeps the live new file");
    assert_eq!(read("vmlinuz-1"), Some(format!("{old}appended live\n")), "the rollback keeps the live append");
    assert_no_leftovers(&img);
}

/// Whether a snapshot stage of the part at `part` (in its state area) holds `name` at its top.
fn glob_stage_has(part: &Path, name: &str) -> bool {
    let Ok(stages) = fs::read_dir(part.join(".snapinst/stage")) else { return false };
    stages.flatten().any(|s| s.path().join("tree").join(name).exists())
}

for_staged_backends!(privileged_live_writes_to_a_snapshot_staged_part_stay, live_writes_to_a_snapshot_staged_part_stay);
