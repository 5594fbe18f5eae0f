//! The fetch step against a local HTTP server: a file and every archive kind (tar, tar.gz, tar.xz, zip) land in
//! the root exactly as the plan says, on every backend, and roll back; a checksum that does not match, a 404, a
//! server too slow for the timeout, and archives whose members are absolute or climb out with `..` each fail the
//! step with a message that says so, and leave the root (and everything outside it) as it was; a plan without a
//! `sha256`, with a URL that is not http(s), or an unknown archive kind is refused before anything runs.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::time::Duration;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A tar with a file, an executable in a directory and a symlink.
fn good_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("a.txt", 0o644, b"alpha\n");
    add("bin/run", 0o755, b"#!/bin/sh\necho run\n");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "link", "a.txt").unwrap();
    b.into_inner().unwrap()
}

/// A tar with one member whose raw name is `name` (the tar crate refuses to write such names itself).
fn evil_tar(name: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(5);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"evil\n"[..]).unwrap();
    b.into_inner().unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zip_of(members: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, mode, data) in members {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn good_zip() -> Vec<u8> {
    zip_of(&[("a.txt", 0o644, b"alpha\n"), ("bin/run", 0o755, b"#!/bin/sh\necho run\n")])
}

fn fetch_step(id: &str, url: &str, path: &str, sha256: &str, extra: Value) -> Value {
    let mut step = json!({"id": id, "type": "fetch", "url": url, "path": path, "sha256": sha256});
    step.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    step
}

fn fetches_everything(backend: Backend) {
    let tool = pseudo_bytes(3, 300_000);
    let tar = good_tar();
    let (tgz, txz, zip) = (gz(&tar), xz(&tar), good_zip());
    let server = TestServer::start(vec![
        ("/tool", Route::ok(&tool)),
        ("/a.tar", Route::ok(&tar)),
        ("/a.tar.gz", Route::ok(&tgz)),
        ("/a.tar.xz", Route::ok(&txz)),
        ("/a.zip", Route::ok(&zip)),
    ]);
    let img = populated(backend);
    let root = img.root();
    // A directory the archive replaces whole.
    write_file(&in_root(&root, "/opt/u-tar/old.txt"), b"old\n");
    let before = img.booted_manifest();
    let steps = vec![
        fetch_step("tool", &server.url("/tool"), "/opt/tool/tool.bin", &sha(&tool), json!({"mode": "0755"})),
        fetch_step("tar", &server.url("/a.tar"), "/opt/u-tar", &sha(&tar), json!({"extract": "tar"})),
        fetch_step(
            "tgz",
            &server.url("/a.tar.gz"),
            "/opt/u-tgz",
            &sha(&tgz),
            json!({"extract": "tar.gz", "mode": "0750"}),
        ),
        fetch_step("txz", &server.url("/a.tar.xz"), "/opt/u-txz", &sha(&txz), json!({"extract": "tar.xz"})),
        fetch_step("zip", &server.url("/a.zip"), "/opt/u-zip", &sha(&zip), json!({"extract": "zip"})),
    ];
    let pd = PlanDir::new(&plan("fetch", steps), &[]);
    let out = apply(&pd.path, &img.root(), backend, &[]);
    assert_code(&out, 0);

    let mut want = Expect::new(&before);
    want.dir_any("/opt/tool").file("/opt/tool/tool.bin", &tool, 0o755, 0, 0).remove("/opt/u-tar");
    for (dir, mode, tar_kind) in [
        ("/opt/u-tar", 0o755, true),
        ("/opt/u-tgz", 0o750, true),
        ("/opt/u-txz", 0o755, true),
        ("/opt/u-zip", 0o755, false),
    ] {
        want.dir(dir, mode, 0, 0)
            .file(format!("{dir}/a.txt"), b"alpha\n", 0o644, 0, 0)
            .dir_any(format!("{dir}/bin"))
            .file(format!("{dir}/bin/run"), b"#!/bin/sh\necho run\n", 0o755, 0, 0);
        if tar_kind {
            want.symlink(&format!("{dir}/link"), "a.txt");
        }
    }
    want.check(&img.booted_manifest());
    assert_no_leftovers(&img);
    assert_code(&rollback(&root, &[], &[]), 0);
    assert_manifest_eq(&before, &img.booted_manifest());
}

for_each_backend!(privileged_fetches_files_and_archives, fetches_everything);

fn failures_change_nothing(backend: Backend) {
    let body = b"the real thing\n".to_vec();
    let server = TestServer::start(vec![
        ("/file", Route::ok(&body)),
        ("/slow", Route { status: 200, body: body.clone(), delay: Duration::from_secs(8) }),
        ("/up.tar", Route::ok(&evil_tar(b"../evil-up"))),
        ("/abs.tar", Route::ok(&evil_tar(b"/evil-abs"))),
        ("/up.zip", Route::ok(&zip_of(&[("ok.txt", 0o644, b"ok\n"), ("../evil-zip", 0o644, b"evil\n")]))),
    ]);
    let img = populated(backend);
    let root = img.root();
    let before = img.booted_manifest();
    let outside = root.parent().unwrap().to_path_buf();
    let cases: Vec<(Value, &str)> = vec![
        (fetch_step("f", &server.url("/file"), "/opt/f", &sha(b"something else"), json!({})), "field \"sha256\""),
        (fetch_step("f", &server.url("/missing"), "/opt/f", &sha(&body), json!({})), "404"),
        (fetch_step("f", &server.url("/slow"), "/opt/f", &sha(&body), json!({"timeout_s": 1})), "timed out"),
        (
            fetch_step(
                "f",
                &server.url("/up.tar"),
                "/opt/x",
                &sha(&evil_tar(b"../evil-up")),
                json!({"extract": "tar"}),
            ),
            "climbs out with \"..\"",
        ),
        (
            fetch_step(
                "f",
                &server.url("/abs.tar"),
                "/opt/x",
                &sha(&evil_tar(b"/evil-abs")),
                json!({"extract": "tar"}),
            ),
            "absolute name",
        ),
        (
            fetch_step(
                "f",
                &server.url("/up.zip"),
                "/opt/x",
                &sha(&zip_of(&[("ok.txt", 0o644, b"ok\n"), ("../evil-zip", 0o644, b"evil\n")])),
                json!({"extract": "zip"}),
            ),
            "climbs out with \"..\"",
        ),
    ];
    for (step, says) in cases {
        let pd = PlanDir::new(&plan("bad-fetch", vec![step.clone()]), &[]);
        let out = apply(&pd.path, &root, backend, &[]);
        assert_code(&out, 1);
        let lines = json_lines(&out);
        let failed = events(&lines, "step_failed");
        assert_eq!(failed.len(), 1, "{}", show(&out));
        let error = failed[0]["error"].as_str().unwrap();
        assert!(error.contains(says), "{step}: the error says {says:?}: {error}");
        assert_manifest_eq_ctx(&before, &img.booted_manifest(), &step.to_string());
        for evil in ["evil-up", "evil-abs", "evil-zip"] {
            assert!(
                !outside.join(evil).exists()
                    && !root.join(evil).exists()
                    && !std::path::Path::new("/").join(evil).exists()
            );
        }
        assert_no_leftovers(&img);
    }
}

for_each_backend!(privileged_failed_fetches_change_nothing, failures_change_nothing);

#[test]
fn fetch_plans_are_checked_before_anything_runs() {
    let ok_sha = "a".repeat(64);
    let cases = [
        (json!({"id": "f", "type": "fetch", "url": "http://127.0.0.1/x", "path": "/opt/x"}), "sha256"),
        (
            json!({"id": "f", "type": "fetch", "url": "ftp://127.0.0.1/x", "path": "/opt/x", "sha256": ok_sha}),
            "field \"url\"",
        ),
        (
            json!({"id": "f", "type": "fetch", "url": "http://127.0.0.1/x", "path": "/opt/x", "sha256": "abc"}),
            "field \"sha256\"",
        ),
        (
            json!({"id": "f", "type": "fetch", "url": "http://127.0.0.1/x", "path": "opt/x", "sha256": ok_sha}),
            "field \"path\"",
        ),
        (
            json!({"id": "f", "type": "fetch", "url": "http://127.0.0.1/x", "path": "/opt/x", "sha256": ok_sha, "extract": "rar"}),
            "extract",
        ),
    ];
    for (step, says) in cases {
        let pd = PlanDir::new(&plan("bad", vec![step.clone()]), &[]);
        let out = snapinst(["validate", pd.path.to_str().unwrap()]);
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(err.contains("step \"f\"") && err.contains(says), "{step}: {err}");
    }
}
