//! Versioned machine output: every JSON object snapinst prints carries `"apiVersion": "snapinst/v1"` and its
//! `kind` (the events through `json_lines` in every test; the result objects here), and `--progress-fd N` sends the
//! events to descriptor N, leaving stdout only the result; a descriptor that is not open for writing is refused
//! before anything is done.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

fn one_step_plan() -> PlanDir {
    let step = json!({"id": "conf", "type": "file", "path": "/etc/output-test.conf", "content": "x\n", "mode": "0644"});
    PlanDir::new(&plan("output", vec![step]), &[])
}

/// `snapinst ARGS` with `file` open as descriptor 3.
fn with_fd3(args: &[&str], file: &std::fs::File) -> std::process::Output {
    let fd = file.as_raw_fd();
    let mut cmd = snapinst_cmd(args);
    // SAFETY: dup2 is async-signal-safe; `fd` stays open in the parent until the child has run.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would leave close-on-exec set.
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run_timeout(&mut cmd, CMD_TIMEOUT)
}

#[test]
fn progress_fd_takes_the_events_and_stdout_keeps_the_result() {
    require_root();
    let img = populated(Backend::Overlay);
    let root = img.root();
    let pd = one_step_plan();
    let events = tempfile::NamedTempFile::new().unwrap();
    let args = ["apply", pd.path.to_str().unwrap(), "--root", root.to_str().unwrap(), "--backend", "overlay"];
    let out = with_fd3(&[&args[..], &["--json", "--progress-fd", "3"]].concat(), events.as_file());
    assert_code(&out, 0);
    // stdout: the result only.
    let results = json_lines(&out);
    assert_eq!(results.len(), 1, "{}", show(&out));
    assert_eq!(results[0]["event"], "summary");
    assert_eq!(results[0]["outcome"], "committed");
    // The descriptor: every event, the summary last, each versioned.
    let text = std::fs::read_to_string(events.path()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = lines.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"started"), "{text}");
    assert!(names.contains(&"step_started") && names.contains(&"committed"), "{text}");
    assert_eq!(names.last(), Some(&"summary"), "{text}");
    for v in &lines {
        assert_eq!(
            (v["apiVersion"].as_str(), v["kind"].as_str(), &v["v"]),
            (Some("snapinst/v1"), Some("Event"), &json!(1))
        );
    }
    assert_eq!(std::fs::read_to_string(root.join("etc/output-test.conf")).unwrap(), "x\n");
}

#[test]
fn a_progress_fd_not_open_for_writing_is_refused_before_anything() {
    require_root();
    let img = populated(Backend::Overlay);
    let root = img.root();
    let before = manifest(&root);
    let pd = one_step_plan();
    let args = ["apply", pd.path.to_str().unwrap(), "--root", root.to_str().unwrap(), "--backend", "overlay"];
    let out = snapinst([&args[..], &["--progress-fd", "9"]].concat());
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--progress-fd 9: not an open file descriptor"), "{}", show(&out));
    let read_only = std::fs::File::open(pd.path.as_path()).unwrap();
    let out = with_fd3(&[&args[..], &["--progress-fd", "3"]].concat(), &read_only);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--progress-fd 3: the descriptor is open for reading only"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);
}

#[test]
fn result_objects_say_their_kind() {
    require_root();
    let img = populated(Backend::Overlay);
    let root = img.root();
    let pd = one_step_plan();
    assert_code(&apply(&pd.path, &root, Backend::Overlay, &[]), 0);
    let r = root.to_str().unwrap();
    for (args, kind) in [
        (vec!["status", "--root", r, "--json"], "Status"),
        (vec!["list", "--root", r, "--json"], "List"),
        (vec!["conflicts", "--root", r, "--json"], "Conflicts"),
        (vec!["config", "--json"], "Config"),
    ] {
        let out = snapinst(&args);
        assert_code(&out, 0);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", show(&out)));
        assert_eq!(
            (v["apiVersion"].as_str(), v["kind"].as_str(), &v["v"]),
            (Some("snapinst/v1"), Some(kind), &json!(1))
        );
    }
}

fn output_schema(which: &str) -> jsonschema::Validator {
    let out = snapinst(["schema", "--output", which]);
    assert_code(&out, 0);
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["properties"]["apiVersion"]["const"], "snapinst/v1", "{which}: {schema}");
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("the {which} schema is not a valid JSON Schema: {e}"))
}

fn assert_fits(v: &jsonschema::Validator, value: &Value, what: &str) {
    let errors: Vec<String> = v.iter_errors(value).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{what} does not fit its schema:\n{}\n{value}", errors.join("\n"));
}

/// The schemas `snapinst schema --output` generates from the output's types, checked by an independent validator
/// against real output: the events of an apply (dry run, commit, a failing step), a rollback and a recover, and
/// `status` and `list` before and after; and they are strict where they can be (an unknown event, a field `status`
/// does not have, a wrong type fail).
#[test]
fn real_output_fits_the_generated_schemas() {
    require_root();
    let (events, status, list) = (output_schema("events"), output_schema("status"), output_schema("list"));
    let img = populated(Backend::Overlay);
    let root = img.root();
    let r = root.to_str().unwrap();
    let check_views = || {
        for (args, v, what) in
            [(["status", "--root", r, "--json"], &status, "status"), (["list", "--root", r, "--json"], &list, "list")]
        {
            let out = snapinst(args);
            assert_code(&out, 0);
            assert_fits(v, &serde_json::from_slice(&out.stdout).unwrap(), what);
        }
    };
    check_views();
    let pd = one_step_plan();
    let failing =
        PlanDir::new(&plan("failing", vec![json!({"id": "fails", "type": "run", "command": sh("exit 3")})]), &[]);
    let mut outs = vec![
        apply(&pd.path, &root, Backend::Overlay, &["--dry-run"]),
        apply(&pd.path, &root, Backend::Overlay, &[]),
        apply(&failing.path, &root, Backend::Overlay, &[]),
    ];
    check_views();
    outs.push(rollback(&root, &[], &[]));
    outs.push(snapinst(["recover", "--root", r, "--json"]));
    let mut names = std::collections::BTreeSet::new();
    for out in &outs {
        for line in json_lines(out) {
            assert_fits(&events, &line, "an event");
            names.insert(line["event"].as_str().unwrap().to_string());
        }
    }
    for want in [
        "started",
        "step_started",
        "step_finished",
        "step_failed",
        "change",
        "changes",
        "committed",
        "rolled_back",
        "recovered",
        "summary",
    ] {
        assert!(names.contains(want), "no {want} event among {names:?}");
    }
    check_views();
    // Strict where it can be.
    assert!(!events.is_valid(&json!({"apiVersion": "snapinst/v1", "kind": "Event", "v": 1, "event": "no_such_event"})));
    assert!(!events.is_valid(&json!({"apiVersion": "snapinst/v2", "kind": "Event", "v": 1, "event": "summary"})));
    let mut s: Value = serde_json::from_slice(&snapinst(["status", "--root", r, "--json"]).stdout).unwrap();
    s["no_such_field"] = json!(1);
    assert!(!status.is_valid(&s), "status takes an unknown field");
    s.as_object_mut().unwrap().remove("no_such_field");
    s["current_generation"] = json!("one");
    assert!(!status.is_valid(&s), "status takes a wrong type");
    s["current_generation"] = json!(0);
    s["kind"] = json!("List");
    assert!(!status.is_valid(&s), "status takes another kind");
}
