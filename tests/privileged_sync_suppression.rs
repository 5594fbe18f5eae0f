//! Sync suppression in the stage. A static probe program (`tests/fixtures/syncprobe.c`) run by a step fsyncs a file
//! 200 times, calls every other member of the sync family once, calls `fsync(-1)` and opens the file with `O_SYNC`
//! and `O_DSYNC`. In a staged root, on every backend: every call returns 0, `fsync(-1)` still fails with EBADF,
//! the descriptors `O_SYNC` and `O_DSYNC` gave are open without the flag, and the root's disk (the loop device's
//! flush count) sees none of the 200 fsyncs. A `host` step's syncs, and a staged step's under `--no-suppress-sync`,
//! do reach the disk and keep their flags. An overlay stage is mounted `volatile`, and not under
//! `--no-suppress-sync`. Each committed tree is compared whole.

#[macro_use]
mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FSYNCS: usize = 200;

/// The probe, built static once (so that it runs in the busybox root, where no preloaded library could help).
fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let cc = require_tool("cc");
        let dir = std::env::temp_dir().join(format!("snapinst-syncprobe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("syncprobe");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/syncprobe.c");
        run_ok(std::process::Command::new(cc).args(["-static", "-O2", "-o"]).arg(&out).arg(&src));
        out
    })
}

/// Flush requests the block device has completed (/sys/block/<dev>/stat, field 16).
fn flushes(dev: &Path) -> u64 {
    let name = dev.file_name().unwrap().to_str().unwrap();
    let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
    let fields: Vec<u64> = stat.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert!(fields.len() >= 17, "/sys/block/{name}/stat has no flush counts: {stat}");
    fields[15]
}

/// What the probe printed: `key=value` pairs.
fn report(text: &str) -> std::collections::BTreeMap<String, i64> {
    text.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("probe output {text:?}"));
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// The probe's report says every call succeeded, `fsync(-1)` got EBADF, and the sync flags were dropped (or kept).
fn assert_report(text: &str, flags_kept: bool, ctx: &str) {
    let r = report(text);
    let want = |k: &str, v: i64| assert_eq!(r.get(k), Some(&v), "{ctx}: {k} in {text:?}");
    want("fsync_failures", 0);
    want("others", 0);
    want("badfd_errno", libc::EBADF as i64);
    want("osync_written", 1);
    want("osync_kept", flags_kept as i64);
    want("odsync_kept", flags_kept as i64);
}

/// A plan whose step runs the probe `n` times over in the root (or, `host`, on the host with `host_dir`).
fn probe_plan(backend: Backend, n: usize, host_dir: Option<&Path>) -> PlanDir {
    let step = match host_dir {
        None => {
            let mut s = json!({"id": "probe", "type": "run",
                               "command": sh(&format!("/syncprobe /var/lib/probe.txt {n} > /var/lib/probe.out; \
                                   grep -c ' - overlay .*volatile' /proc/self/mountinfo > /var/lib/volatile.out \
                                   || true"))});
            if backend == Backend::Journal {
                s["changes"] = json!(["/var/lib/probe.txt", "/var/lib/probe.out", "/var/lib/volatile.out"]);
            }
            s
        }
        Some(dir) => json!({"id": "probe", "type": "host", "undo": sh("true"), "do": sh(&format!(
            "{} {}/probe.txt {n} > {}/probe.out", probe().display(), dir.display(), dir.display()))}),
    };
    PlanDir::new(&plan("probe", vec![step]), &[])
}

/// Apply `pd`; returns how many flushes the root's disk completed meanwhile.
fn flushes_during(img: &LoopImage, pd: &PlanDir, backend: Backend, extra: &[&str]) -> u64 {
    let dev = img.loop_device().to_path_buf();
    let before = flushes(&dev);
    assert_code(&apply(&pd.path, &img.root(), backend, extra), 0);
    flushes(&dev) - before
}

fn suppressed_in_the_stage(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    std::fs::copy(probe(), in_root(&root, "/syncprobe")).unwrap();
    chmod(&in_root(&root, "/syncprobe"), 0o755);

    // The transaction's own flushes, with a probe that fsyncs nothing.
    let baseline = flushes_during(&img, &probe_plan(backend, 0, None), backend, &[]);
    let mut before = img.booted_manifest();

    // Suppressed: 200 fsyncs and none of them reaches the disk.
    let suppressed = flushes_during(&img, &probe_plan(backend, FSYNCS, None), backend, &[]);
    let out = std::fs::read_to_string(in_root(&root, "/var/lib/probe.out")).unwrap();
    assert_report(&out, false, "a run step");
    let volatile = if backend == Backend::Overlay { "1\n" } else { "0\n" };
    assert!(
        suppressed < baseline + 20,
        "{}: {suppressed} flushes with {FSYNCS} fsyncs suppressed, {baseline} with none",
        backend.name()
    );
    // Each run of the probe appends its fsynced bytes, then one through O_SYNC.
    let grown = |before: &str| format!("{before}{}s", "x".repeat(FSYNCS));
    let mut want = Expect::new(&before);
    want.file_content("/var/lib/probe.txt", grown("s").as_bytes())
        .file_content("/var/lib/probe.out", out.as_bytes())
        .file_content("/var/lib/volatile.out", volatile.as_bytes());
    want.check(&img.booted_manifest());
    before = img.booted_manifest();

    // --no-suppress-sync: every fsync reaches the disk, and O_SYNC stays.
    let kept = flushes_during(&img, &probe_plan(backend, FSYNCS, None), backend, &["--no-suppress-sync"]);
    let out = std::fs::read_to_string(in_root(&root, "/var/lib/probe.out")).unwrap();
    assert_report(&out, true, "a run step under --no-suppress-sync");
    assert!(kept >= baseline + FSYNCS as u64, "{}: only {kept} flushes for {FSYNCS} fsyncs kept", backend.name());
    let mut want = Expect::new(&before);
    want.file_content("/var/lib/probe.txt", grown(&grown("s")).as_bytes())
        .file_content("/var/lib/probe.out", out.as_bytes())
        .file_content("/var/lib/volatile.out", b"0\n");
    want.check(&img.booted_manifest());
    before = img.booted_manifest();

    // A host step is never filtered: it writes on the root's disk beside the root, and each fsync gets there.
    let host_dir = img.mountpoint().join("host-probe");
    std::fs::create_dir_all(&host_dir).unwrap();
    let host = flushes_during(&img, &probe_plan(backend, FSYNCS, Some(&host_dir)), backend, &[]);
    assert_report(&std::fs::read_to_string(host_dir.join("probe.out")).unwrap(), true, "a host step");
    assert!(host >= FSYNCS as u64, "{}: only {host} flushes for a host step's {FSYNCS} fsyncs", backend.name());
    assert_manifest_eq(&before, &img.booted_manifest());
    eprintln!(
        "{}: disk flushes during an apply: no fsync {baseline}, {FSYNCS} suppressed {suppressed}, {FSYNCS} kept {kept}, \
         {FSYNCS} in a host step {host}",
        backend.name()
    );
    std::fs::remove_dir_all(&host_dir).unwrap();
    assert_no_leftovers(&img);
}

for_each_backend!(privileged_syncs_suppressed_in_the_stage, suppressed_in_the_stage);

/// Every file named `name` under `dir`.
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(dir, &mut |p, _| {
        if p.file_name().is_some_and(|n| n == name) {
            found.push(p.to_path_buf());
        }
    });
    found
}

/// A kept overlay stage was mounted `volatile`: in the same boot `diff` mounts it again (synced first); once the
/// machine has restarted (another boot id) it is refused with a message that says to abort it, and `abort` leaves
/// the root as it was.
#[test]
fn privileged_a_volatile_stage_is_not_used_after_a_restart() {
    let backend = Backend::Overlay;
    let img = populated(backend);
    let root = img.root();
    let r = root.to_str().unwrap();
    let before = img.booted_manifest();
    let steps = vec![
        json!({"id": "write", "type": "file", "path": "/etc/kept.conf", "content": "kept\n"}),
        json!({"id": "fail", "type": "verify", "command": sh("exit 1")}),
    ];
    let pd = PlanDir::new(&plan("kept", steps), &[]);
    assert_code(&apply(&pd.path, &root, backend, &["--keep-failed"]), 1);
    let out = snapinst(["diff", "--root", r]);
    assert_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("/etc/kept.conf"), "{}", show(&out));

    let marks = find_named(&img.state_dir(), "volatile-boot");
    assert_eq!(marks.len(), 1, "one stage mounted volatile: {marks:?}");
    std::fs::write(&marks[0], "00000000-0000-0000-0000-000000000000\n").unwrap();
    let out = snapinst(["diff", "--root", r]);
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("restarted since") && err.contains("snapinst abort"), "{err}");
    assert_manifest_eq(&before, &img.booted_manifest());

    assert_code(&snapinst(["abort", "--root", r]), 0);
    assert_manifest_eq(&before, &img.booted_manifest());
    assert_no_leftovers(&img);
}
