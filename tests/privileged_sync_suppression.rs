//! Sync suppression in the stage. A static probe program (`tests/fixtures/syncprobe.c`) run by a step fsyncs a file
//! 200 times, calls every other member of the sync family once, calls `fsync(-1)` and opens the file with `O_SYNC`
//! and `O_DSYNC`. In a staged root, on every backend: every call returns 0, `fsync(-1)` still fails with EBADF,
//! the descriptors `O_SYNC` and `O_DSYNC` gave are open without the flag, and the root's disk (the loop device's
//! flush count) sees none of the 200 fsyncs. A `host` step's syncs, and a staged step's under `--no-suppress-sync`,
//! do reach the disk and keep their flags. Each committed tree is compared whole.

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
                               "command": sh(&format!("/syncprobe /var/lib/probe.txt {n} > /var/lib/probe.out"))});
            if backend == Backend::Journal {
                s["changes"] = json!(["/var/lib/probe.txt", "/var/lib/probe.out"]);
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
    assert!(
        suppressed < baseline + 20,
        "{}: {suppressed} flushes with {FSYNCS} fsyncs suppressed, {baseline} with none",
        backend.name()
    );
    // Each run of the probe appends its fsynced bytes, then one through O_SYNC.
    let grown = |before: &str| format!("{before}{}s", "x".repeat(FSYNCS));
    let mut want = Expect::new(&before);
    want.file_content("/var/lib/probe.txt", grown("s").as_bytes()).file_content("/var/lib/probe.out", out.as_bytes());
    want.check(&img.booted_manifest());
    before = img.booted_manifest();

    // --no-suppress-sync: every fsync reaches the disk, and O_SYNC stays.
    let kept = flushes_during(&img, &probe_plan(backend, FSYNCS, None), backend, &["--no-suppress-sync"]);
    let out = std::fs::read_to_string(in_root(&root, "/var/lib/probe.out")).unwrap();
    assert_report(&out, true, "a run step under --no-suppress-sync");
    assert!(kept >= baseline + FSYNCS as u64, "{}: only {kept} flushes for {FSYNCS} fsyncs kept", backend.name());
    let mut want = Expect::new(&before);
    want.file_content("/var/lib/probe.txt", grown(&grown("s")).as_bytes())
        .file_content("/var/lib/probe.out", out.as_bytes());
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
