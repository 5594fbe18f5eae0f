//! The configuration (`/etc/snapinst/snapinst.toml` and `snapinst.d/*.toml`, here a directory of the test's named by
//! `SNAPINST_CONFIG_DIR`): `snapinst config` says each value and where it came from; the configured values act on
//! a transaction (the backend, the generations kept, a root's state area) and the command line wins over them; a
//! bad file stops a command before it does anything, naming the file, line and key.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;

fn config_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = d.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

fn env(d: &tempfile::TempDir) -> [(&'static str, String); 1] {
    [("SNAPINST_CONFIG_DIR", d.path().display().to_string())]
}

fn run(args: &[&str], d: &tempfile::TempDir) -> std::process::Output {
    let e = env(d);
    snapinst_env(args, &[(e[0].0, e[0].1.as_str())])
}

#[test]
fn config_says_each_value_and_where_it_came_from() {
    let d = config_dir(&[
        ("snapinst.toml", "keep = 3\nbackend = \"btrfs\"\n"),
        ("snapinst.d/10-site.toml", "keep = 4\n[roots.\"/srv/app\"]\nstate_dir = \"/var/lib/app-state\"\n"),
    ]);
    let out = run(&["config", "--json"], &d);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let main = d.path().join("snapinst.toml").display().to_string();
    let site = d.path().join("snapinst.d/10-site.toml").display().to_string();
    assert_eq!(v["settings"]["keep"], json!({"value": 4, "from": site}));
    assert_eq!(v["settings"]["backend"], json!({"value": "btrfs", "from": main}));
    assert_eq!(v["settings"]["boot_tries"], json!({"value": 3, "from": "built-in default"}));
    assert_eq!(v["settings"]["roots.\"/srv/app\".state_dir"]["value"], "/var/lib/app-state");
    let text = String::from_utf8(run(&["config"], &d).stdout).unwrap();
    assert!(text.contains(&format!("keep = 4  # {site}")), "{text}");
}

#[test]
fn a_bad_configuration_stops_a_command_before_anything() {
    let d = config_dir(&[("snapinst.d/20-bad.toml", "keep = 2\nkepp = 3\n")]);
    let pd = PlanDir::new(&plan("p", vec![json!({"id": "d", "type": "dir", "path": "/opt/p"})]), &[]);
    let root = tempfile::tempdir().unwrap();
    let out = run(&["apply", pd.path.to_str().unwrap(), "--root", root.path().to_str().unwrap()], &d);
    assert_code(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("20-bad.toml line 2 column 1: unknown field `kepp`"), "{err}");
    assert!(!root.path().join("opt").exists(), "nothing was done");
    assert_code(&run(&["config"], &d), 2);
}

/// The configured backend, generations kept and state area act; `--keep` on the command line wins.
#[test]
fn privileged_configured_values_act_and_flags_win() {
    let img = populated(Backend::Overlay);
    let root = img.root();
    let state = img.mountpoint().join("configured-state");
    let d = config_dir(&[(
        "snapinst.toml",
        &format!(
            "backend = \"overlay\"\nkeep = 2\n[roots.\"{}\"]\nstate_dir = \"{}\"\n",
            root.display(),
            state.display()
        ),
    )]);
    let apply_n = |n: usize, extra: &[&str]| {
        let pd = PlanDir::new(
            &plan("p", vec![json!({"id": "f", "type": "file", "path": format!("/opt/f{n}"), "content": "x\n"})]),
            &[],
        );
        let mut args = vec!["apply", pd.path.to_str().unwrap(), "--root", root.to_str().unwrap(), "--json"];
        args.extend(extra);
        let out = run(&args, &d);
        assert_code(&out, 0);
        json_lines(&out)
    };
    let first = apply_n(1, &[]);
    let started = first.iter().find(|l| l["event"] == "started").unwrap();
    assert_eq!(started["backend"], "overlay", "the configured backend");
    assert!(state.join("txns").is_dir(), "the configured state area {} is used", state.display());
    assert!(!img.state_dir().exists(), "the default state area {} is not made", img.state_dir().display());
    apply_n(2, &[]);
    apply_n(3, &[]);
    let list = |d: &tempfile::TempDir| -> Vec<u64> {
        let out = run(&["list", "--root", root.to_str().unwrap(), "--json"], d);
        assert_code(&out, 0);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["generations"].as_array().unwrap().iter().map(|g| g["generation"].as_u64().unwrap()).collect()
    };
    assert_eq!(list(&d), [2, 3], "keep = 2 from the configuration");
    apply_n(4, &["--keep", "3"]);
    apply_n(5, &["--keep", "3"]);
    assert_eq!(list(&d), [3, 4, 5], "--keep 3 on the command line wins");
    assert!(Path::new(&root.join("opt/f5")).exists());
}
