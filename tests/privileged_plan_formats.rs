//! Plans in JSON, YAML and TOML: each example plan exists in the three forms, which validate alike; the hello
//! example applied from each form leaves the same whole tree.

#[macro_use]
mod common;

use common::*;
use std::path::{Path, PathBuf};

const FORMS: [&str; 3] = ["plan.json", "plan.yaml", "plan.toml"];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The manifest without modification times (each form is applied at another instant).
fn timeless(root: &Path) -> Manifest {
    let mut m = manifest(root);
    for e in m.values_mut() {
        e.mtime = None;
    }
    m
}

fn every_form_applies_alike(backend: Backend) {
    let mut trees = Vec::new();
    for form in FORMS {
        let img = populated(backend);
        let root = img.root();
        let before = timeless(&root);
        let out = apply(&examples().join("hello").join(form), &root, backend, &[]);
        assert_code(&out, 0);
        let after = timeless(&root);
        assert_ne!(before, after, "{form}: the plan changed nothing");
        let conf = after.get(Path::new("/etc/hello.conf")).unwrap_or_else(|| panic!("{form}: no /etc/hello.conf"));
        assert_eq!(conf.sha256.as_deref(), Some(sha256_bytes(b"greeting=hi\n").as_str()), "{form}");
        trees.push((form, after));
    }
    let (first, want) = &trees[0];
    for (form, got) in &trees[1..] {
        assert_manifest_eq_ctx(want, got, &format!("{form} against {first}"));
    }
}

for_staged_backends!(privileged_every_plan_form_applies_alike, every_form_applies_alike);

/// `text` with each "line N column M: " that names a place in a plan file taken out (the places differ between
/// the forms of a plan); also says how many it took out.
fn without_places(text: &str) -> (String, usize) {
    let mut out = String::new();
    let mut taken = 0;
    for line in text.lines() {
        let mut l = line.to_string();
        if let Some(i) = l.find(": line ") {
            let rest = &l[i + ": line ".len()..];
            let mut words = rest.splitn(3, ' ');
            let (n, col, m) = (words.next(), words.next(), words.next());
            let is_num = |w: Option<&str>| {
                w.is_some_and(|w| !w.is_empty() && w.trim_end_matches(':').bytes().all(|b| b.is_ascii_digit()))
            };
            if is_num(n) && col == Some("column") && m.is_some_and(|m| is_num(m.split(' ').next())) {
                let after = m.unwrap().split_once(": ").map_or("", |(_, a)| a);
                l = format!("{}: {after}", &l[..i]);
                taken += 1;
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    (out, taken)
}

/// Every example exists in the three forms, and `validate` says the same of each (the package examples name
/// .debs that a test run may not have: the same message, but for the file's name and its place in each form, which
/// every problem of a step names).
#[test]
fn every_example_validates_alike_in_each_form() {
    let mut checked = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let dir = entry.unwrap().path();
        let said: Vec<(i32, String)> = FORMS
            .iter()
            .map(|f| {
                let plan = dir.join(f);
                assert!(plan.is_file(), "{} is missing", plan.display());
                let out = snapinst_cmd(["validate"]).arg(&plan).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
                let (text, places) = without_places(&text.replace(&plan.display().to_string(), "PLAN"));
                let problems = text.lines().filter(|l| l.contains(": step \"")).count();
                assert_eq!(places, problems, "{}: every problem of a step names its place:\n{text}", plan.display());
                (out.status.code().unwrap_or(-1), text)
            })
            .collect();
        assert!(said.iter().all(|s| *s == said[0]), "{}: the forms differ: {said:#?}", dir.display());
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} examples");
}
