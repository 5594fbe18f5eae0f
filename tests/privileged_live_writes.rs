//! The running system goes on writing while a transaction runs: nothing it writes is lost. On btrfs the commit
//! carries into the new tree what the live root received since the stage was taken (every kind of change, the
//! whole tree compared), and a path both the plan and the live system changed is a conflict: the plan's version
//! in the tree, the live one kept in the state area and listed in the summary, the record, `list --json` and
//! `snapinst conflicts`. A writer that appends numbered records every few milliseconds loses none, on every
//! backend.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn live_changes_plan(root: &Path, extra: Vec<Value>) -> Value {
    let r = root.display();
    // What the running system does while the transaction runs: every kind of change a tree can receive.
    let script = format!(
        "set -e; cd {r}
         mkdir -p var/lib/shop && echo order-1 > var/lib/shop/orders.db
         echo live-edit >> etc/app.conf
         echo appended >> etc/live.txt
         mv etc/old.d etc/new.d && rm etc/new.d/gone
         ln etc/live.txt etc/live-link
         ln -s ../etc/live.txt srv/latest
         chmod 0600 etc/secret && chown 12:34 etc/secret
         touch -d '2020-01-02 03:04:05' etc/dated
         mkfifo srv/pipe
         rm etc/unwanted
         mkdir -p srv/deep/er/still && echo deep > srv/deep/er/still/file
         echo j2 >> var/log/journal/system.journal && echo a2 >> var/log/journal/archived.journal
         touch var/log/journal/user.journal && chattr +C var/log/journal/user.journal && echo u1 >> var/log/journal/user.journal"
    );
    let mut steps = vec![
        conf_step(),
        json!({"id": "dropin", "type": "file", "path": "/etc/app.d/plan.conf", "content": "p\n", "mode": "0644"}),
        json!({"id": "live", "type": "host", "do": ["/bin/sh", "-c", script], "undo": ["true"]}),
    ];
    steps.extend(extra);
    plan("live-changes", steps)
}

/// A journal as systemd keeps it on btrfs: a no-copy-on-write file (`chattr +C`), which btrfs clones only to
/// another such file.
/// systemd marks the journal directory too, so new files there take the flag, and takes it off the journals it
/// archives: `archived.journal` is an ordinary file in the marked directory.
fn seed_journal(root: &Path) {
    let dir = root.join("var/log/journal");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("archived.journal"), "a1\n").unwrap();
    let chattr = |p: &Path| run_ok(std::process::Command::new(require_tool("chattr")).arg("+C").arg(p));
    chattr(&dir);
    let j = dir.join("system.journal");
    std::fs::File::create(&j).unwrap();
    chattr(&j);
    std::fs::write(&j, "j1\n").unwrap();
}

/// The plan's edit of the seeded `/etc/app.conf`.
fn conf_step() -> Value {
    json!({"id": "conf", "type": "file", "path": "/etc/app.conf", "content": "plan\n", "mode": "0644"})
}

/// A btrfs root mounted on its own, as `/` is, with the seeded tree; the image and the mounted root.
fn running_root() -> (LoopImage, PathBuf) {
    let img = populated(Backend::Btrfs).mounted_subvolume();
    let live = img.root();
    seed_live_tree(&live);
    (img, live)
}

fn seed_syslog(root: &Path) {
    std::fs::create_dir_all(root.join("var/log")).unwrap();
    std::fs::write(root.join("var/log/syslog"), "before the apply\n").unwrap();
}

fn seed_live_tree(root: &Path) {
    for (p, c) in [
        ("etc/app.conf", "original\n"),
        ("etc/live.txt", "one\n"),
        ("etc/old.d/kept", "k\n"),
        ("etc/old.d/gone", "g\n"),
        ("etc/secret", "s\n"),
        ("etc/dated", "d\n"),
        ("etc/unwanted", "u\n"),
        ("etc/app.d/live.conf", "l\n"),
    ] {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, c).unwrap();
    }
    std::fs::create_dir_all(root.join("srv")).unwrap();
    xattr::set(root.join("etc/old.d/kept"), "user.origin", b"live").unwrap();
}

fn conflict_paths(conflicts: &Value) -> Vec<String> {
    conflicts
        .as_array()
        .map(|a| a.iter().map(|c| c["path"].as_str().unwrap_or("?").to_string()).collect())
        .unwrap_or_default()
}

/// btrfs: every change the host step makes to the live root during the transaction is in the new tree, which is
/// the tree the live root had at the commit (the replaced generation) with the plan's changes on top: compared
/// whole. The one path both changed is the one conflict, its live version kept.
#[test]
fn privileged_btrfs_commit_carries_every_live_change_into_the_new_tree() {
    let img = populated(Backend::Btrfs);
    let root = img.root();
    seed_live_tree(&root);
    seed_journal(&root);
    let pd = PlanDir::new(&live_changes_plan(&root, vec![]), &[]);
    let out = apply(&pd.path, &root, Backend::Btrfs, &[]);
    assert_code(&out, 0);
    let lines = json_lines(&out);

    let replaced = img.state_dir().join("gens/0");
    let at_commit = manifest(&replaced);
    assert!(at_commit.contains_key(Path::new("/var/lib/shop/orders.db")), "the host step ran on the live root");
    let mut want = Expect::new(&at_commit);
    want.file("/etc/app.conf", b"plan\n", 0o644, 0, 0).dir_any("/etc/app.d").file(
        "/etc/app.d/plan.conf",
        b"p\n",
        0o644,
        0,
        0,
    );
    want.check(&manifest(&root));

    let carried = events(&lines, "carried_over");
    assert_eq!(carried.len(), 1, "{}", show(&out));
    assert!(carried[0]["paths"].as_u64().unwrap() >= 10, "{}", show(&out));
    let summary = summary(&lines);
    assert_eq!(conflict_paths(&summary["conflicts"]), ["/etc/app.conf"], "{}", show(&out));
    let c = &summary["conflicts"][0];
    assert_eq!((c["plan"]["kind"].as_str(), c["plan"]["size"].as_u64()), (Some("file"), Some(5)));
    assert_eq!((c["live"]["kind"].as_str(), c["live"]["size"].as_u64()), (Some("file"), Some(19)));
    let kept = PathBuf::from(c["kept"].as_str().expect("the live version is kept"));
    assert!(kept.starts_with(img.state_dir()), "kept in the state area, not in the tree: {}", kept.display());
    assert_eq!(std::fs::read(&kept).unwrap(), b"original\nlive-edit\n");

    // The same conflict in the record (`list --json`) and in `snapinst conflicts`.
    let txn = summary["txn"].as_str().unwrap();
    let listed = list_json(&root);
    let t = listed["transactions"].as_array().unwrap().iter().find(|t| t["txn"] == txn).unwrap();
    assert_eq!(conflict_paths(&t["conflicts"]), ["/etc/app.conf"]);
    let shown = snapinst(["conflicts", "--root", root.to_str().unwrap(), "--txn", txn]);
    assert_code(&shown, 0);
    let text = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(
        text.contains("/etc/app.conf: the plan's file (5 bytes) is in the new tree")
            && text.contains(&kept.display().to_string()),
        "{text}"
    );
    assert_eq!(status_json(&root)["last_conflicts"]["txn"], txn);
    assert_no_leftovers(&img);
}

/// overlay: the running system's version of a conflicting path is what the commit's swap moves out of the tree,
/// whole: a process that holds the file open and writes to it after the conflict was found (even after the commit)
/// writes into the kept version, which the conflict names.
#[test]
fn privileged_overlay_conflict_keeps_the_version_the_swap_moved_out() {
    use std::io::Write;
    let img = populated(Backend::Overlay);
    let root = img.root();
    seed_live_tree(&root);
    let mut held = std::fs::OpenOptions::new().append(true).open(root.join("etc/app.conf")).unwrap();
    let during = format!("echo during >> {}/etc/app.conf", root.display());
    let steps =
        vec![conf_step(), json!({"id": "live", "type": "host", "do": ["/bin/sh", "-c", during], "undo": ["true"]})];
    let pd = PlanDir::new(&plan("held", steps), &[]);
    let out = apply(&pd.path, &root, Backend::Overlay, &[]);
    assert_code(&out, 0);
    held.write_all(b"through the open file\n").unwrap();
    drop(held);
    let s = summary(&json_lines(&out)).clone();
    assert_eq!(conflict_paths(&s["conflicts"]), ["/etc/app.conf"], "{}", show(&out));
    let kept = PathBuf::from(s["conflicts"][0]["kept"].as_str().unwrap());
    assert_eq!(std::fs::read(&kept).unwrap(), b"original\nduring\nthrough the open file\n");
    assert_eq!(std::fs::read(root.join("etc/app.conf")).unwrap(), b"plan\n");
}

/// A writer that appends a numbered record every few milliseconds to each of its files, opening each by its path
/// every time (as a logger that reopens, or a database writing through its path, does).
struct Writer {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(files: Vec<PathBuf>) -> Writer {
        for f in &files {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        }
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            let mut n = 0;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                for f in &files {
                    // A write into a tree being swapped may fail for an instant (EROFS on the kept one): retry.
                    let written = (0..100).any(|_| {
                        let ok = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(f)
                            .and_then(|mut h| h.write_all(format!("record {n}\n").as_bytes()));
                        if ok.is_err() {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        ok.is_ok()
                    });
                    assert!(written, "record {n} could not be written to {} for 100 tries", f.display());
                }
                c.store(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(4));
            }
        });
        Writer { count, stop, thread: Some(thread) }
    }

    fn written(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.written()
    }
}

fn records(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("record ").and_then(|n| n.parse().ok()))
        .collect()
}

/// Runs a plan whose last step waits 2 s while the writer writes into the live root `live`, and returns the
/// records written before that step started, the records written in all, and the apply's JSON lines.
fn apply_while_writing(live: &Path, backend: Backend, files: &[&str]) -> (u64, u64, Vec<Value>) {
    let steps = vec![
        conf_step(),
        json!({"id": "dropin", "type": "file", "path": "/etc/app.d/plan.conf", "content": "p\n", "mode": "0644"}),
        json!({"id": "wait", "type": "host", "do": ["sleep", "2"], "undo": ["true"]}),
    ];
    let pd = PlanDir::new(&plan("while-writing", steps), &[]);
    let writer = Writer::start(files.iter().map(|f| live.join(f)).collect());
    std::thread::sleep(Duration::from_millis(300));
    let mut cmd = snapinst_cmd(["apply"]);
    cmd.arg(&pd.path).arg("--root").arg(live).args(["--backend", backend.name(), "--json"]);
    let mut bg = spawn_background(cmd);
    bg.wait_for(Duration::from_secs(120), "the waiting step", |v| v["event"] == "step_started" && v["step"] == "wait");
    let before_wait = writer.written();
    let mut lines = Vec::new();
    while let Ok(l) = bg.lines.recv_timeout(Duration::from_secs(120)) {
        if let Ok(v) = serde_json::from_str::<Value>(&l) {
            lines.push(v);
        }
    }
    let status = bg.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let total = writer.finish();
    assert!(status.success(), "apply failed: {:?}\n{}", status, bg.stderr.join().unwrap());
    assert!(
        before_wait >= 20 && total > before_wait + 100,
        "the writer wrote during the transaction ({before_wait}, {total})"
    );
    (before_wait, total, lines)
}

/// `tree`'s file holds every record from 1 to `total`, each once, in the order written: nothing the running system
/// wrote during the transaction is lost, hidden in a kept tree, or duplicated; except that records may be in a kept
/// copy of the file that the command reported as a conflict (`conflicts`: its JSON lines' conflict events): when the running system appends faster than the
/// handover can merge the two sides, the side written in the commit's last instant is kept as a conflict, never
/// dropped. The file itself still holds its records in order, each once.
#[track_caller]
fn assert_records_kept_or_reported(tree: &Path, file: &str, total: u64, conflicts: &[Value]) {
    let here = records(&tree.join(file));
    let in_order = here.windows(2).all(|w| w[0] < w[1]);
    let path = format!("/{file}");
    let kept: Vec<u64> = conflicts
        .iter()
        .filter(|c| c["conflict"]["path"] == path.as_str())
        .filter_map(|c| c["conflict"]["kept"].as_str())
        .flat_map(|k| records(Path::new(k)))
        .collect();
    let missing: Vec<u64> = (1..=total).filter(|n| !here.contains(n) && !kept.contains(n)).collect();
    if !in_order || !missing.is_empty() || here.last().is_some_and(|&n| n > total) {
        panic!("{path}: {} records, not 1..{total} in order (missing: {missing:?}; in order: {in_order})", here.len());
    }
}

/// The conflict events of a command's JSON lines.
fn conflict_events(lines: &[Value]) -> Vec<Value> {
    lines.iter().filter(|l| l["event"] == "conflict").cloned().collect()
}

fn writer_keeps_every_record(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    seed_live_tree(&root);
    let files = ["var/lib/writer/own.log", "etc/app.d/live.log", "etc/app.conf"];
    let (upto, total, lines) = apply_while_writing(&root, backend, &files);
    // Every record is in the new tree, in order: on btrfs what was appended to the replaced tree in the commit's
    // last instant is handed over right after the commit, merged with what was appended to the new tree since.
    let apply_conflicts = conflict_events(&lines);
    for f in &files[..2] {
        assert_records_kept_or_reported(&root, f, total, &apply_conflicts);
    }
    let first_total = total;
    let conf = std::fs::read_to_string(root.join("etc/app.conf")).unwrap();
    assert!(conf.starts_with("plan\n"), "the plan's version of /etc/app.conf is in the new tree: {conf:?}");
    if backend != Backend::Journal {
        let s = summary(&lines);
        assert_eq!(conflict_paths(&s["conflicts"]), ["/etc/app.conf"], "the one path both changed");
        let kept = PathBuf::from(s["conflicts"][0]["kept"].as_str().unwrap());
        let kept_records = records(&kept);
        assert!((1..=upto).all(|n| kept_records.contains(&n)), "the kept live /etc/app.conf has every record");
    }

    // The rollback of that generation, while a writer goes on: its records stay too.
    let files = ["var/lib/writer/during-rollback.log", "etc/app.d/during-rollback.log"];
    let writer = Writer::start(files.iter().map(|f| root.join(f)).collect());
    std::thread::sleep(Duration::from_millis(300));
    let out = rollback(&root, &[], &[]);
    std::thread::sleep(Duration::from_millis(200));
    let total = writer.finish();
    assert_code(&out, 0);
    let rollback_conflicts = conflict_events(&json_lines(&out));
    for f in files {
        assert_records_kept_or_reported(&root, f, total, &rollback_conflicts);
    }
    // What the apply's writer wrote stays through the rollback.
    for f in &["var/lib/writer/own.log", "etc/app.d/live.log"] {
        assert_records_kept_or_reported(&root, f, first_total, &apply_conflicts);
    }
    assert!(!root.join("etc/app.d/plan.conf").exists(), "the rollback reverted the generation");
}

for_each_backend!(privileged_writer_keeps_every_record_through_apply, writer_keeps_every_record);

/// A btrfs root mounted on its own (as `/` is): what the running system wrote before the commit is in the new tree
/// (what the next mount sees); what it writes after goes on into the mounted tree.
#[test]
fn privileged_mounted_btrfs_root_new_tree_has_the_writes_made_during_the_transaction() {
    let img = populated(Backend::Btrfs).mounted_subvolume();
    let live = img.root();
    let name = img.subvolume_name().unwrap().to_path_buf();
    seed_live_tree(&live);
    let files = ["var/lib/writer/own.log", "etc/app.d/live.log", "etc/app.conf"];
    let (upto, total, lines) = apply_while_writing(&live, Backend::Btrfs, &files);
    // The conflict's kept copy is named as a user finds it: on the filesystem's top level, by device (the state
    // area is beside the subvolume, reached through a private mount of the top level).
    let s = summary(&lines);
    assert_eq!(conflict_paths(&s["conflicts"]), ["/etc/app.conf"]);
    let kept = s["conflicts"][0]["kept"].as_str().unwrap();
    assert!(kept.starts_with("/dev/loop") && kept.contains(":/.snapinst-"), "{kept}");
    for f in &files[..2] {
        let next = records(&name.join(f));
        assert!(
            (1..=upto).all(|n| next.contains(&n)),
            "/{f}: the next boot's tree lacks records written during the transaction"
        );
        assert_eq!(records(&live.join(f)), (1..=total).collect::<Vec<_>>(), "/{f}: the mounted tree has every record");
    }
    assert!(std::fs::read_to_string(name.join("etc/app.conf")).unwrap().starts_with("plan\n"));
}

/// A crash in the middle of the carry-over (before the commit record) leaves the root as the live system made it:
/// `recover` discards the stage and the carry-over snapshots.
#[test]
fn privileged_crash_mid_carry_over_leaves_the_live_tree_and_no_snapshots() {
    let img = populated(Backend::Btrfs);
    let root = img.root();
    seed_live_tree(&root);
    seed_journal(&root);
    let pd = PlanDir::new(&live_changes_plan(&root, vec![]), &[]);
    let out = apply_env(&pd.path, &root, Backend::Btrfs, &[], &[("SNAPINST_FAILPOINT", "apply-mid-carry-over")]);
    assert!(killed_by_sigkill(&out), "{}", show(&out));
    let live = manifest(&root);
    assert!(live.contains_key(Path::new("/var/lib/shop/orders.db")));
    assert_eq!(recovered_actions(&recover(&root)), ["rolled_back"]);
    assert_manifest_eq(&live, &manifest(&root));
    assert_no_leftovers(&img);
}

/// A generation that changes /etc/app.conf and adds /etc/app.d/plan.conf, committed; then the running system
/// writes: a file of its own, an edit to a file the generation did not touch, and (with `touch_conf`) an edit to
/// /etc/app.conf. Returns the tree before the generation and the tree before the rollback.
fn commit_then_write(backend: Backend, root: &Path, touch_conf: bool) -> (Manifest, Manifest) {
    seed_live_tree(root);
    let m0 = manifest(root);
    let steps = vec![
        conf_step(),
        json!({"id": "dropin", "type": "file", "path": "/etc/app.d/plan.conf", "content": "p\n", "mode": "0644"}),
    ];
    let pd = PlanDir::new(&plan("gen1", steps), &[]);
    assert_code(&apply(&pd.path, root, backend, &[]), 0);
    std::fs::create_dir_all(root.join("var/lib/shop")).unwrap();
    std::fs::write(root.join("var/lib/shop/orders.db"), "a day of orders\n").unwrap();
    std::fs::write(root.join("etc/live.txt"), "edited after the commit\n").unwrap();
    if touch_conf {
        std::fs::write(root.join("etc/app.conf"), "plan\nlive-edit\n").unwrap();
    }
    (m0, manifest(root))
}

/// `rollback` puts back only what the rolled-back generation changed; every write made since stays: the whole tree
/// is compared, the tree before the rollback with the generation's two paths as they were before it. With
/// `touch_conf`, a path the generation changed that the running system changed again is the one conflict: the
/// rollback's version goes in, the running system's is kept (btrfs: in the state area; overlay and journal: in the
/// delta's storage, from which `rollback --to` that generation would bring it back) and listed. On overlay and
/// journal, `--exact` (a whole kept tree) is refused by name first and changes nothing.
fn rollback_keeps_writes(backend: Backend, touch_conf: bool) {
    let img = populated(backend);
    let root = img.root();
    let (m0, now) = commit_then_write(backend, &root, touch_conf);
    if backend != Backend::Btrfs {
        let out = rollback(&root, &["--exact"], &[]);
        assert_code(&out, 2);
        assert!(stderr(&out).contains("--exact") && stderr(&out).contains(backend.name()), "{}", show(&out));
        assert_manifest_eq(&now, &manifest(&root));
    }
    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    let mut want = Expect::new(&now);
    want.entry("/etc/app.conf", m0[Path::new("/etc/app.conf")].clone()).remove("/etc/app.d/plan.conf");
    want.check(&manifest(&root));
    let s = summary(&json_lines(&out)).clone();
    if touch_conf {
        assert_eq!(conflict_paths(&s["conflicts"]), ["/etc/app.conf"], "{}", show(&out));
        let kept = PathBuf::from(s["conflicts"][0]["kept"].as_str().unwrap());
        assert_eq!(std::fs::read(&kept).unwrap(), b"plan\nlive-edit\n");
        assert!(kept.starts_with(img.state_dir()), "kept in the state area: {}", kept.display());
    } else {
        assert_eq!(conflict_paths(&s["conflicts"]), Vec::<String>::new(), "{}", show(&out));
    }
    assert_current_generation(&root, 0);
    assert_no_leftovers(&img);
}

fn rollback_keeps_writes_made_since(backend: Backend) {
    rollback_keeps_writes(backend, false)
}
for_each_backend!(privileged_rollback_keeps_writes_made_since, rollback_keeps_writes_made_since);

fn rollback_conflict_keeps_the_running_systems_version(backend: Backend) {
    rollback_keeps_writes(backend, true)
}
for_each_backend!(
    privileged_rollback_conflict_keeps_the_running_systems_version,
    rollback_conflict_keeps_the_running_systems_version
);

/// The kept copies of a transaction's conflicts go when the generation it made current is pruned, and its record
/// says so; until then they stay.
#[test]
fn privileged_conflict_copies_go_with_their_generation() {
    let img = populated(Backend::Btrfs);
    let root = img.root();
    commit_then_write(Backend::Btrfs, &root, true);
    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    let s = summary(&json_lines(&out)).clone();
    let kept = PathBuf::from(s["conflicts"][0]["kept"].as_str().expect("a kept copy"));
    let txn = s["txn"].as_str().unwrap().to_string();
    let again = |i: usize| {
        let steps = vec![json!({"id": "f", "type": "file", "path": format!("/srv/later-{i}"), "content": "x\n"})];
        let pd = PlanDir::new(&plan(&format!("later-{i}"), steps), &[]);
        assert_code(&apply(&pd.path, &root, Backend::Btrfs, &["--keep", "1"]), 0);
    };
    // The rollback made generation 0 current again; the next commit keeps it as the current one's parent.
    again(1);
    assert!(kept.exists(), "the kept copy went before its generation");
    again(2);
    assert!(!kept.exists(), "{} stayed after generation 0 was pruned", kept.display());
    let shown = snapinst(["conflicts", "--root", root.to_str().unwrap(), "--txn", &txn, "--json"]);
    let v: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let c = &v["transactions"][0]["conflicts"][0];
    assert_eq!((c["path"].as_str(), c.get("kept"), c["pruned_with"].as_u64()), (Some("/etc/app.conf"), None, Some(0)));
    assert_no_leftovers(&img);
}

/// `rollback --exact` restores the kept tree itself: exactly the tree before the generation.
#[test]
fn privileged_btrfs_rollback_exact_restores_the_kept_tree() {
    let img = populated(Backend::Btrfs);
    let root = img.root();
    let (m0, _) = commit_then_write(Backend::Btrfs, &root, true);
    let out = rollback(&root, &["--exact"], &[]);
    assert_code(&out, 0);
    assert_manifest_eq(&m0, &manifest(&root));
    assert_no_leftovers(&img);
}

/// A btrfs root mounted on its own, as `/` is: after the commit the running system goes on writing to the tree it
/// is mounted from, until the shutdown. `snapinst boot`, before the root is mounted again, carries those writes
/// into the new generation: a new file, an edit to a file the plan did not touch, a removal; an edit to a file the
/// plan changed is a conflict (the plan's version in the tree, the running system's kept and listed).
#[test]
fn privileged_boot_carries_the_writes_made_after_the_commit_until_the_shutdown() {
    let img = populated(Backend::Btrfs).mounted_subvolume();
    let live = img.root();
    let name = img.subvolume_name().unwrap().to_path_buf();
    seed_live_tree(&live);
    let steps = vec![
        conf_step(),
        json!({"id": "dropin", "type": "file", "path": "/etc/app.d/plan.conf", "content": "p\n", "mode": "0644"}),
    ];
    let pd = PlanDir::new(&plan("gen1", steps), &[]);
    let out = apply(&pd.path, &live, Backend::Btrfs, &[]);
    assert_code(&out, 0);
    let txn = summary(&json_lines(&out))["txn"].as_str().unwrap().to_string();
    // The running system, after the commit.
    std::fs::create_dir_all(live.join("var/log/app")).unwrap();
    std::fs::write(live.join("var/log/app/after-commit.log"), "written before the shutdown\n").unwrap();
    std::fs::write(live.join("etc/live.txt"), "one\nedited after the commit\n").unwrap();
    std::fs::remove_file(live.join("etc/unwanted")).unwrap();
    std::fs::write(live.join("etc/app.conf"), "original\nedited after the commit\n").unwrap();
    let mounted_at_shutdown = manifest(&live);

    // The first boot's initramfs is cut off with an entry made for the carry and not yet put in place, the second
    // at the end of the carry; the next one does it all again, leaving nothing of the carries cut off.
    for point in ["handover-mid-put", "boot-mid-handover"] {
        let mut cut = None;
        img.boot_again_with(|| {
            let env = [("SNAPINST_FAILPOINT", point)];
            cut = Some(snapinst_env(["boot", "--root", name.to_str().unwrap(), "--json"], &env))
        });
        assert!(killed_by_sigkill(cut.as_ref().unwrap()), "{point}: {}", show(cut.as_ref().unwrap()));
    }
    let mut boot_out = None;
    img.boot_again_with(|| boot_out = Some(snapinst(["boot", "--root", name.to_str().unwrap(), "--json"])));
    let boot_out = boot_out.unwrap();
    assert_code(&boot_out, 0);
    let handed = json_lines(&boot_out).into_iter().find(|v| v["event"] == "handed_over").expect("a handed_over event");
    assert_eq!(conflict_paths(&handed["conflicts"]), ["/etc/app.conf"], "{}", show(&boot_out));

    // The tree the machine boots: what it ran on at the shutdown, with the plan's two paths.
    let mut want = Expect::new(&mounted_at_shutdown);
    want.file("/etc/app.conf", b"plan\n", 0o644, 0, 0).dir_any("/etc/app.d").file(
        "/etc/app.d/plan.conf",
        b"p\n",
        0o644,
        0,
        0,
    );
    want.check(&manifest(&live));
    let kept = PathBuf::from(handed["conflicts"][0]["kept"].as_str().unwrap());
    assert_eq!(std::fs::read(&kept).unwrap(), b"original\nedited after the commit\n");
    let shown = snapinst(["conflicts", "--root", live.to_str().unwrap(), "--txn", &txn, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(conflict_paths(&v["transactions"][0]["conflicts"]), ["/etc/app.conf"], "{}", show(&shown));
    // A second boot has nothing more to carry.
    let mut again = None;
    img.boot_again_with(|| again = Some(snapinst(["boot", "--root", name.to_str().unwrap(), "--json"])));
    assert!(json_lines(&again.unwrap()).iter().all(|v| v["event"] != "handed_over"));
    assert_no_leftovers(&img);
}

/// Boot a mounted image's root again, running `snapinst boot` in its "initramfs"; the boot's output.
fn boot_with_hook(img: &LoopImage) -> std::process::Output {
    let name = img.subvolume_name().unwrap().to_path_buf();
    let mut out = None;
    img.boot_again_with(|| out = Some(snapinst(["boot", "--root", name.to_str().unwrap(), "--json"])));
    let out = out.unwrap();
    assert_code(&out, 0);
    out
}

/// A keeping rollback on a running root (btrfs `/`, booted on the generation it rolls back): the running system
/// goes on writing to the tree the rollback replaced until the shutdown, and the next boot carries those writes into
/// the rolled-back tree; an edit to a path the rollback put back is a conflict (the rollback's version in the tree).
#[test]
fn privileged_boot_carries_the_writes_made_after_a_keeping_rollback() {
    let (img, live) = running_root();
    let steps = vec![conf_step()];
    let pd = PlanDir::new(&plan("gen1", steps), &[]);
    assert_code(&apply(&pd.path, &live, Backend::Btrfs, &[]), 0);
    boot_with_hook(&img);
    std::fs::create_dir_all(live.join("var/log/app")).unwrap();
    std::fs::write(live.join("var/log/app/before-rollback.log"), "on the new generation\n").unwrap();
    let out = rollback(&live, &[], &[]);
    assert_code(&out, 0);
    // The running system, after the rollback's commit.
    std::fs::write(live.join("var/log/app/after-rollback.log"), "written before the shutdown\n").unwrap();
    std::fs::write(live.join("etc/live.txt"), "one\nedited after the rollback\n").unwrap();
    std::fs::write(live.join("etc/app.conf"), "plan\nedited after the rollback\n").unwrap();
    let mounted_at_shutdown = manifest(&live);

    let boot_out = boot_with_hook(&img);
    let handed = json_lines(&boot_out).into_iter().find(|v| v["event"] == "handed_over").expect("a handed_over event");
    assert_eq!(conflict_paths(&handed["conflicts"]), ["/etc/app.conf"], "{}", show(&boot_out));
    let mut want = Expect::new(&mounted_at_shutdown);
    want.file("/etc/app.conf", b"original\n", 0o644, 0, 0);
    want.check(&manifest(&live));
    let kept = PathBuf::from(handed["conflicts"][0]["kept"].as_str().unwrap());
    assert_eq!(std::fs::read(&kept).unwrap(), b"plan\nedited after the rollback\n");
    assert_no_leftovers(&img);
}

/// A keeping rollback after the reboot reverts only what the generation's transaction changed: a log the running
/// system appended to after the commit (carried at the boot) and after the boot is not the generation's change, so
/// it keeps every line and is no conflict.
#[test]
fn privileged_keeping_rollback_after_the_handover_keeps_what_was_carried() {
    let (img, live) = running_root();
    seed_syslog(&live);
    // The running system writes during the transaction too (carried at the commit: a clone of its file).
    let during = format!("echo during >> {}/var/log/syslog", live.display());
    let steps =
        vec![conf_step(), json!({"id": "live", "type": "host", "do": ["/bin/sh", "-c", during], "undo": ["true"]})];
    let pd = PlanDir::new(&plan("gen1", steps), &[]);
    assert_code(&apply(&pd.path, &live, Backend::Btrfs, &[]), 0);
    std::fs::write(live.join("var/log/syslog"), "before the apply\nduring\nafter the commit\n").unwrap();
    boot_with_hook(&img);
    let syslog = "before the apply\nduring\nafter the commit\nafter the boot\n";
    std::fs::write(live.join("var/log/syslog"), syslog).unwrap();
    let now = manifest(&live);
    let out = rollback(&live, &[], &[]);
    assert_code(&out, 0);
    assert_eq!(conflict_paths(&summary(&json_lines(&out))["conflicts"]), Vec::<String>::new(), "{}", show(&out));
    // The rollback's stage becomes the tree of the next boot.
    boot_with_hook(&img);
    let mut want = Expect::new(&now);
    want.file("/etc/app.conf", b"original\n", 0o644, 0, 0);
    want.check(&manifest(&live));
    assert_no_leftovers(&img);
}

/// A rollback before the reboot, on a running root, goes back to the tree the machine still runs on: every write
/// made to it, before and after the rollback, is there at the next boot, and nothing is handed over.
#[test]
fn privileged_rollback_before_the_reboot_keeps_every_write_of_the_running_tree() {
    let (img, live) = running_root();
    let steps = vec![conf_step()];
    let pd = PlanDir::new(&plan("gen1", steps), &[]);
    assert_code(&apply(&pd.path, &live, Backend::Btrfs, &[]), 0);
    std::fs::write(live.join("etc/live.txt"), "one\nafter the commit\n").unwrap();
    assert_code(&rollback(&live, &[], &[]), 0);
    std::fs::write(live.join("etc/app.conf"), "original\nafter the rollback\n").unwrap();
    let mounted_at_shutdown = manifest(&live);
    let boot_out = boot_with_hook(&img);
    assert!(json_lines(&boot_out).iter().all(|v| v["event"] != "handed_over"), "{}", show(&boot_out));
    assert_manifest_eq(&mounted_at_shutdown, &manifest(&live));
    assert_no_leftovers(&img);
}

/// The failed-boot fallback keeps what the failed boots wrote: a generation that never reaches boot-complete is
/// booted three times, each boot writing its log (a new file, and an append to one the generation before has too)
/// and an edit to the path the plan changed; the fourth boot falls back (cut off in the middle of carrying back,
/// the next boot carries again), and the restored tree has every log line, with the one conflict (the plan's path:
/// the fallback's version in the tree, the failed boots' kept and listed).
#[test]
fn privileged_fallback_keeps_what_the_failed_boots_wrote() {
    let (img, live) = running_root();
    seed_syslog(&live);
    let steps = vec![conf_step()];
    let pd = PlanDir::new(&plan("gen1", steps), &[]);
    assert_code(&apply(&pd.path, &live, Backend::Btrfs, &[]), 0);
    let at_shutdown = manifest(&live);
    let mut syslog = String::from("before the apply\n");
    for n in 1..=3 {
        boot_with_hook(&img);
        syslog.push_str(&format!("failed boot {n}\n"));
        std::fs::write(live.join("var/log/syslog"), &syslog).unwrap();
        std::fs::write(live.join(format!("var/log/boot-{n}.log")), format!("boot {n}\n")).unwrap();
        std::fs::write(live.join("etc/app.conf"), format!("plan\nedited in failed boot {n}\n")).unwrap();
    }
    // The fourth boot falls back and is cut off in the middle of carrying back; the next one does it again.
    let name = img.subvolume_name().unwrap().to_path_buf();
    let mut cut = None;
    img.boot_again_with(|| {
        let env = [("SNAPINST_FAILPOINT", "boot-mid-carry-back")];
        cut = Some(snapinst_env(["boot", "--root", name.to_str().unwrap(), "--json"], &env))
    });
    let cut = cut.unwrap();
    assert!(killed_by_sigkill(&cut), "{}", show(&cut));
    let out = boot_with_hook(&img);
    let lines = json_lines(&out);
    let back = lines.iter().find(|v| v["event"] == "carried_back").expect("a carried_back event");
    assert_eq!(conflict_paths(&back["conflicts"]), ["/etc/app.conf"], "{}", show(&out));
    let kept = PathBuf::from(back["conflicts"][0]["kept"].as_str().unwrap());
    assert_eq!(std::fs::read(&kept).unwrap(), b"plan\nedited in failed boot 3\n");

    let mut want = Expect::new(&at_shutdown);
    want.file_content("/var/log/syslog", syslog.as_bytes());
    for n in 1..=3 {
        want.file(format!("/var/log/boot-{n}.log"), format!("boot {n}\n").as_bytes(), 0o644, 0, 0);
    }
    want.check(&manifest(&live));
    let st = status_json(&live);
    assert_eq!(st["current_generation"], json!(0), "{st}");
    // The restored generation boots fine; bless drops what was kept for its own fallback, and nothing is left.
    boot_with_hook(&img);
    assert_code(&snapinst(["bless", "--root", live.to_str().unwrap()]), 0);
    assert_no_leftovers(&img);
}

/// A directory target on btrfs: a process that keeps its working directory in the root goes on writing to the tree
/// the commit replaced; `status` names it.
#[test]
fn privileged_status_names_a_process_left_in_the_replaced_tree() {
    let img = populated(Backend::Btrfs);
    let root = img.root();
    let mut sleeper = std::process::Command::new("sleep").arg("60").current_dir(root.join("etc")).spawn().unwrap();
    let pd = PlanDir::new(&plan("replace", vec![json!({"id": "d", "type": "dir", "path": "/opt/replace"})]), &[]);
    assert_code(&apply(&pd.path, &root, Backend::Btrfs, &[]), 0);
    let st = status_json(&root);
    let held = st["in_kept_trees"].as_array().unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let me = held.iter().find(|p| p["pid"] == sleeper.id()).unwrap_or_else(|| panic!("sleep not named: {st}"));
    assert_eq!(me["command"], "sleep");
    assert!(me["path"].as_str().unwrap().ends_with("gens/0/etc"), "{me}");
}

/// The tree `before` with, in each part's `live/`, the running system's changes (`keep.cfg` appended to, `new.txt`
/// made, `gone.cfg` removed), `both.cfg` holding `both` and `plan-only.cfg` holding `plan_only` (None: absent).
fn want_on_parts(before: &Manifest, parts: &[&str], both: &[u8], plan_only: Option<&[u8]>) -> Expect {
    let mut want = Expect::new(before);
    for p in parts {
        let at = |f: &str| format!("/{p}/live/{f}");
        want.spec(format!("/{p}/live"), Spec { kind: Some(Kind::Dir), ..Spec::default() })
            .file_content(at("keep.cfg"), b"old\nlive\n")
            .file_content(at("new.txt"), b"live\n")
            .remove(at("gone.cfg"))
            .file_content(at("both.cfg"), both);
        if let Some(content) = plan_only {
            want.file_content(at("plan-only.cfg"), content);
        }
    }
    want
}

/// The summary of `out` lists as conflicts exactly `live/<file>` of each part.
#[track_caller]
fn assert_conflicts_on_parts(out: &std::process::Output, parts: &[&str], file: &str) {
    let mut conflicts = conflict_paths(&summary(&json_lines(out))["conflicts"]);
    conflicts.sort();
    let mut expected: Vec<String> = parts.iter().map(|p| format!("/{p}/live/{file}")).collect();
    expected.sort();
    assert_eq!(conflicts, expected, "{}", show(out));
}

/// What the running system changes on the parts while the transaction runs stays beside the plan's changes, on
/// every kind of part: the ESP stand-in staged by copy, the ext4 `/boot` and the xfs `/srv/www` staged by overlays,
/// the btrfs `/home` staged by snapshots. The one path of each part both changed is its one conflict (the plan's
/// version in the tree). A keeping rollback after it lists as conflicts exactly the plan's paths the running system
/// changed after the commit. Compared whole, as the next boot sees the root.
fn live_changes_on_the_parts_stay(backend: Backend) {
    let WithParts { img, root, hello: _, before: _, host: _host } = WithParts::new(backend);
    let parts = ["boot", "boot/efi", "srv/www", "home"];
    for p in parts {
        let d = root.join(p).join("live");
        std::fs::create_dir_all(&d).unwrap();
        for f in ["keep.cfg", "both.cfg", "gone.cfg"] {
            std::fs::write(d.join(f), "old\n").unwrap();
        }
    }
    let before = img.booted_manifest();
    let script = parts
        .iter()
        .map(|p| {
            format!(
                "cd {r}/{p}/live && echo live >> keep.cfg && echo live >> both.cfg && rm gone.cfg && echo live > new.txt",
                r = root.display()
            )
        })
        .collect::<Vec<_>>()
        .join(" && ");
    let mut steps = vec![];
    for p in parts {
        for f in ["both.cfg", "plan-only.cfg"] {
            let path = format!("/{p}/live/{f}");
            steps.push(json!({"id": path, "type": "file", "path": path, "content": "plan\n"}));
        }
    }
    steps.push(
        json!({"id": "live", "type": "host", "do": ["/bin/sh", "-c", format!("set -e; {script}")], "undo": ["true"]}),
    );
    let pd = PlanDir::new(&plan("live-on-parts", steps), &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);

    want_on_parts(&before, &parts, b"plan\n", Some(b"plan\n")).check(&img.booted_manifest());
    assert_conflicts_on_parts(&out, &parts, "both.cfg");
    assert_no_leftovers(&img);

    // After the commit the running system edits one of the plan's files on each part. The rollback puts back what
    // the plan changed: the edited files are its conflicts (the running system's version kept), the rest none,
    // and every live change made during the transaction stays.
    for p in parts {
        let f = root.join(p).join("live/plan-only.cfg");
        std::fs::write(&f, "plan\nlater\n").unwrap();
    }
    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    assert_conflicts_on_parts(&out, &parts, "plan-only.cfg");
    want_on_parts(&before, &parts, b"old\nlive\n", None).check(&img.booted_manifest());
    assert_no_leftovers(&img);
}

for_staged_backends!(privileged_live_changes_on_the_parts_stay, live_changes_on_the_parts_stay);
