//! Any file name Linux allows goes through every operation of every backend unchanged: names that are not UTF-8
//! (every byte 1–255 but `/`), names with a newline, 255-byte names, paths of 4,000 bytes and a tree 1,000 levels
//! deep. The running system's tree holds them before the transaction; the plan changes and copies them (a `run`
//! step), removes some and writes files with such names. Dry-run, commit, a crash before
//! and after the commit point, rollback and recover are each compared by whole-tree manifests, and the change list
//! names each changed path exactly once: losslessly in JSON, escaped and one per line in text (`diff` of a kept
//! transaction too).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

fn name(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

/// Every byte a file name may hold, but `/` (and NUL, which no name holds).
fn every_byte() -> Vec<u8> {
    (1..=255u8).filter(|b| *b != b'/').collect()
}

/// A long path of 255-byte names, then a short name, `total` bytes from the root (`/opt/odd/...`).
fn long_path(total: usize) -> PathBuf {
    let mut p = PathBuf::from("/opt/odd/long");
    while p.as_os_str().len() + 256 + 10 < total {
        p.push(name(&[b'L'; 255]));
    }
    let rest = total - p.as_os_str().len() - 1;
    p.push(name(&vec![b'e'; rest]));
    assert_eq!(p.as_os_str().len(), total);
    p
}

/// A path `depth` directories deep below `/opt/odd/deep`.
fn deep_path(depth: usize) -> PathBuf {
    let mut p = PathBuf::from("/opt/odd/deep");
    for _ in 0..depth {
        p.push("d");
    }
    p.push("leaf");
    p
}

/// The odd tree the running system holds: `/opt/odd` with one file per byte (`n<byte>x`), one whose name is every
/// byte, a directory and a symlink whose names and target are not UTF-8, and the long and deep paths.
fn make_odd_tree(root: &Path) -> Vec<PathBuf> {
    let mut made = Vec::new();
    let mut file = |p: PathBuf, content: &[u8]| {
        write_file(&in_root_path(root, &p), content);
        made.push(p);
    };
    for b in every_byte() {
        let n = name(&[b'n', b, b'x']);
        file(Path::new("/opt/odd/bytes").join(&n), n.as_bytes());
    }
    file(Path::new("/opt/odd").join(name(&every_byte())), b"every byte\n");
    file(Path::new("/opt/odd").join(name(&[b'X'; 255])), b"255 bytes\n");
    file(Path::new("/opt/odd").join("a\nb"), b"newline\n");
    file(Path::new("/opt/odd").join(name(b"\xff\xfe dir")).join(name(b"in \xc3\x28 it")), b"not utf-8\n");
    file(long_path(4000), b"4000 bytes\n");
    file(deep_path(1000), b"deep\n");
    let link = Path::new("/opt/odd").join(name(b"link \xff"));
    std::os::unix::fs::symlink(OsStr::from_bytes(b"target \xfe\n"), in_root_path(root, &link)).unwrap();
    made.push(link);
    made
}

/// `root` joined with an absolute path inside it.
fn in_root_path(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap())
}

/// A path from JSON: a string, or `{"hex": ...}` for one that is not UTF-8.
fn json_path(v: &Value) -> PathBuf {
    match v {
        Value::String(s) => PathBuf::from(s),
        Value::Object(o) => PathBuf::from(name(&hex::decode(o["hex"].as_str().expect("hex is a string")).unwrap())),
        _ => panic!("not a path: {v}"),
    }
}

/// The text form of a path in snapinst's output: `\\`, `\n`, `\t`, `\xHH` escapes.
fn unescape(text: &str) -> PathBuf {
    let b = text.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b[i + 1] {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'x' => {
                out.push(u8::from_str_radix(&text[i + 2..i + 4], 16).unwrap());
                i += 2;
            }
            c => panic!("unknown escape \\{} in {text}", c as char),
        }
        i += 2;
    }
    PathBuf::from(name(&out))
}

/// The plan: append to every file of `/opt/odd/bytes` and copy the odd tree to `/etc/odd` (a run step that declares
/// what it changes, for the journal backend), remove the long and deep paths, and write files with odd names the
/// plan itself gives.
fn odd_plan() -> PlanDir {
    let mut steps = Vec::new();
    let script = "cp -a /opt/odd /etc/odd && for f in /opt/odd/bytes/*; do echo more >> \"$f\"; done";
    let changes = ["/etc/odd", "/opt/odd/bytes"];
    steps.push(json!({"id": "copy", "type": "run", "command": sh(script), "changes": changes}));
    steps.push(json!({"id": "drop-long", "type": "remove", "path": "/opt/odd/long", "recursive": true}));
    steps.push(json!({"id": "drop-deep", "type": "remove", "path": "/opt/odd/deep", "recursive": true}));
    steps.push(json!({"id": "nl", "type": "file", "path": "/srv/new\nline", "content": "plan 1\n", "mode": "0644"}));
    let long = format!("/srv/{}", "Y".repeat(255));
    steps.push(json!({"id": "long", "type": "file", "path": long, "content": "plan 2\n", "mode": "0644"}));
    let slash = "/srv/back\\slash\ttab";
    steps.push(json!({"id": "bs", "type": "file", "path": slash, "content": "plan 3\n", "mode": "0644"}));
    PlanDir::new(&plan("odd-names", steps), &[])
}

/// What the plan makes of `before`, the manifest of `root` (whose files the copies' contents are read from: `cp
/// -a` keeps mode, owner and contents, but not the nanoseconds of a modification time).
fn expected(before: &Manifest, root: &Path) -> Expect {
    let mut e = Expect::new(before);
    {
        for (k, v) in before.range(PathBuf::from("/opt/odd")..) {
            let Ok(rel) = k.strip_prefix("/opt/odd") else { break };
            let real = in_root_path(root, k);
            let content = (v.kind == Kind::File).then(|| std::fs::read(&real).unwrap());
            let spec = Spec {
                kind: Some(v.kind),
                mode: Some(v.mode),
                uid: Some(v.uid),
                gid: Some(v.gid),
                content: content.clone(),
                target: v.target.clone(),
                ..Spec::default()
            };
            e.spec(Path::new("/etc/odd").join(rel), spec);
            if k.starts_with("/opt/odd/bytes") && v.kind == Kind::File {
                let mut more = content.unwrap();
                more.extend_from_slice(b"more\n");
                e.file_content(k, &more);
            }
        }
    }
    e.remove("/opt/odd/long");
    e.remove("/opt/odd/deep");
    e.file("/srv/new\nline", b"plan 1\n", 0o644, 0, 0);
    e.file(format!("/srv/{}", "Y".repeat(255)), b"plan 2\n", 0o644, 0, 0);
    e.file("/srv/back\\slash\ttab", b"plan 3\n", 0o644, 0, 0);
    e
}

/// The paths that differ between two manifests (added, removed or changed), with the directories whose entries
/// changed, which a manifest does not tell apart.
fn differing(a: &Manifest, b: &Manifest) -> Vec<PathBuf> {
    let mut all: Vec<&PathBuf> = a.keys().chain(b.keys()).collect();
    all.sort();
    all.dedup();
    all.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

/// The dry-run's change list, from JSON and from text: each path once, the same in both, and exactly the paths the
/// commit then changes.
fn check_change_lists(plan: &Path, root: &Path, backend: Backend, before: &Manifest) -> Vec<PathBuf> {
    let out = apply(plan, root, backend, &["--dry-run"]);
    assert_code(&out, 0);
    let lines = json_lines(&out);
    let from_json: Vec<PathBuf> = events(&lines, "change").iter().map(|c| json_path(&c["path"])).collect();
    let mut args: Vec<&OsStr> = vec![OsStr::new("apply"), plan.as_os_str(), OsStr::new("--root"), root.as_os_str()];
    args.extend([OsStr::new("--backend"), OsStr::new(backend.name()), OsStr::new("--dry-run")]);
    let text_out = snapinst(args);
    assert_code(&text_out, 0);
    let text = String::from_utf8(text_out.stdout.clone()).expect("the text change list is UTF-8");
    let from_text: Vec<PathBuf> = text
        .lines()
        .map(|l| {
            let (kind, path) = l.split_once(' ').unwrap_or_else(|| panic!("not a change line: {l:?}"));
            assert!(["added", "removed", "modified", "metadata"].contains(&kind), "kind of {l:?}");
            unescape(path.trim_start())
        })
        .collect();
    assert_eq!(from_text, from_json, "the text and JSON change lists name the same paths");
    let mut unique = from_json.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), from_json.len(), "each path is listed once");
    assert_manifest_eq(before, &manifest(root));
    from_json
}

fn any_name_goes_everywhere(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let made = make_odd_tree(&root);
    let before = img.booted_manifest();
    for p in &made {
        assert!(before.contains_key(p), "the odd tree was made: {p:?}");
    }
    let plan = odd_plan();
    let want = expected(&before, &root);

    // Dry run: the change list, and nothing changed.
    let listed =
        if backend == Backend::Journal { Vec::new() } else { check_change_lists(&plan.path, &root, backend, &before) };
    assert_no_leftovers(&img);

    // A kept transaction (the plan, then a failing check): `diff` lists what the dry run listed; abort.
    if backend != Backend::Journal {
        let mut kept = serde_json::from_slice::<Value>(&std::fs::read(&plan.path).unwrap()).unwrap();
        kept["steps"].as_array_mut().unwrap().push(json!({"id": "fail", "type": "verify", "command": sh("exit 1")}));
        let kept_plan = PlanDir::new(&kept, &[]);
        assert_code(&apply(&kept_plan.path, &root, backend, &["--keep-failed"]), 1);
        let root_arg = root.to_str().unwrap();
        let out = snapinst(["diff", "--root", root_arg, "--json"]);
        assert_code(&out, 0);
        let lines = json_lines(&out);
        let diffed: Vec<PathBuf> = events(&lines, "change").iter().map(|c| json_path(&c["path"])).collect();
        assert_eq!(diffed, listed, "diff of the kept stage lists what the dry run listed");
        assert_code(&snapinst(["abort", "--root", root_arg]), 0);
        assert_manifest_eq(&before, &img.booted_manifest());
        assert_no_leftovers(&img);
    }

    // A crash short of the commit point, then recover: as before.
    let out = apply_env(&plan.path, &root, backend, &[], &[("SNAPINST_FAILPOINT", "apply-after-steps")]);
    assert!(killed_by_sigkill(&out), "{}", show(&out));
    assert_code(&recover(&root), 0);
    assert_manifest_eq(&before, &img.booted_manifest());
    assert_no_leftovers(&img);

    // A crash past it, then recover: the plan's tree.
    let out = apply_env(&plan.path, &root, backend, &[], &[("SNAPINST_FAILPOINT", "apply-after-exchange")]);
    assert!(killed_by_sigkill(&out), "{}", show(&out));
    assert_code(&recover(&root), 0);
    let after = img.booted_manifest();
    want.check(&after);
    assert_no_leftovers(&img);
    if backend != Backend::Journal {
        let mut changed = differing(&before, &after);
        let mut listed = listed.clone();
        listed.sort();
        // A manifest does not see a directory's own change when only its entries changed; the list names it.
        listed.retain(|p| changed.contains(p) || !after.get(p).is_some_and(|e| e.kind == Kind::Dir));
        changed.sort();
        assert_eq!(listed, changed, "the dry run listed exactly what the commit changed");
    }

    // status, list and the records read back with the odd paths in them.
    assert!(status_json(&root)["in_progress"].is_null());
    list_json(&root);

    // A crash in the rollback, recover, and the whole rollback: as before.
    let out = rollback(&root, &[], &[("SNAPINST_FAILPOINT", "rollback-after-record")]);
    assert!(killed_by_sigkill(&out), "{}", show(&out));
    assert_code(&recover(&root), 0);
    want.check(&img.booted_manifest());
    let out = rollback(&root, &[], &[]);
    assert_code(&out, 0);
    assert_manifest_eq(&before, &img.booted_manifest());
    assert_no_leftovers(&img);

    // And forward again, committed in one go.
    assert_code(&apply(&plan.path, &root, backend, &[]), 0);
    want.check(&img.booted_manifest());
    assert_no_leftovers(&img);
}

for_each_backend!(privileged_any_name_goes_everywhere, any_name_goes_everywhere);

/// The JSON the state area holds keeps the bytes: a record's path that is not UTF-8 is `{"hex": ...}`.
#[test]
fn privileged_records_hold_paths_losslessly() {
    require_root();
    let backend = Backend::Overlay;
    let img = populated(backend);
    let root = img.root();
    make_odd_tree(&root);
    let plan = odd_plan();
    assert_code(&apply(&plan.path, &root, backend, &[]), 0);
    let mut found = BTreeMap::new();
    walk(&img.state_dir(), &mut |p, m| {
        if m.is_file() && p.extension() == Some(OsStr::new("json")) {
            let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            collect_hex(&v, &mut found);
        }
    });
    let modified = Path::new("opt/odd/bytes").join(name(b"n\xffx"));
    assert!(
        found.contains_key(modified.as_os_str().as_bytes()),
        "a name that is not UTF-8 is in a record as hex: {found:?}"
    );
}

fn collect_hex(v: &Value, found: &mut BTreeMap<Vec<u8>, ()>) {
    match v {
        Value::Object(o) if o.len() == 1 && o.contains_key("hex") => {
            found.insert(json_path(v).into_os_string().into_vec(), ());
        }
        Value::Object(o) => o.values().for_each(|x| collect_hex(x, found)),
        Value::Array(a) => a.iter().for_each(|x| collect_hex(x, found)),
        _ => {}
    }
}
