//! Bad plans: every class of problem is reported as `plan.json: step "ID" (#N) field "F": WHY`
//! (or `plan.json: field "F": WHY`), all problems of a plan at once, exit 2, and `apply` of a
//! bad plan changes nothing. `validate` of a good plan exits 0.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};

/// One class of bad plan: the plan text, and for each expected problem the locator that must
/// appear in one stderr line together with one of the words.
struct Bad {
    name: &'static str,
    text: String,
    problems: Vec<(String, Vec<&'static str>)>,
}

fn good_steps() -> Vec<Value> {
    vec![
        json!({"id": "d", "type": "dir", "path": "/opt/x", "mode": "0755"}),
        json!({"id": "f", "type": "file", "path": "/opt/x/f", "content": "x\n", "mode": "0644"}),
    ]
}

fn with_step(step: Value) -> String {
    let mut steps = good_steps();
    steps.push(step);
    serde_json::to_string_pretty(&plan("bad", steps)).unwrap()
}

fn loc(id: &str, n: usize, field: &str) -> String {
    format!("step \"{id}\" (#{n}) field \"{field}\":")
}

fn bad_plans() -> Vec<Bad> {
    vec![
        Bad {
            name: "bad user and group names and ids",
            text: with_step(
                json!({"id": "x", "type": "user", "name": "Bad Name", "uid": -1, "groups": ["ok", "9bad"], "home": "var/x"}),
            ),
            problems: vec![
                (loc("x", 3, "name"), vec!["not a valid user or group name"]),
                (loc("x", 3, "uid"), vec!["0 to 65533"]),
                (loc("x", 3, "groups"), vec!["9bad"]),
                (loc("x", 3, "home"), vec!["not absolute"]),
            ],
        },
        Bad {
            name: "service: not a unit, both enable and mask",
            text: with_step(json!({"id": "x", "type": "service", "unit": "hello", "enable": true, "mask": true})),
            problems: vec![
                (loc("x", 3, "unit"), vec!["not a systemd unit name"]),
                (loc("x", 3, "mask"), vec!["not both"]),
            ],
        },
        Bad {
            name: "package: nothing to do, purge without remove",
            text: with_step(json!({"id": "x", "type": "package", "debs": [], "purge": true})),
            problems: vec![(loc("x", 3, "debs"), vec!["nothing to do"]), (loc("x", 3, "purge"), vec!["only applies"])],
        },
        Bad {
            name: "package: missing .deb, bad package name",
            text: with_step(
                json!({"id": "x", "type": "package", "debs": ["debs/missing_1.0_all.deb", "notadeb.txt"], "apt": ["-rf"]}),
            ),
            problems: vec![(loc("x", 3, "debs"), vec!["notadeb.txt"]), (loc("x", 3, "apt"), vec!["-rf"])],
        },
        Bad {
            name: "unknown step type",
            text: with_step(json!({"id": "x", "type": "frobnicate", "path": "/opt/y"})),
            problems: vec![(loc("x", 3, "type"), vec!["frobnicate"])],
        },
        Bad {
            name: "unknown field",
            text: with_step(json!({"id": "x", "type": "dir", "path": "/opt/y", "colour": "red"})),
            problems: vec![(loc("x", 3, "colour"), vec!["unknown", "unexpected", "not allowed"])],
        },
        Bad {
            name: "missing field",
            text: with_step(json!({"id": "x", "type": "file", "content": "x", "mode": "0644"})),
            problems: vec![(loc("x", 3, "path"), vec!["missing", "required"])],
        },
        Bad {
            name: "duplicate id",
            text: with_step(json!({"id": "d", "type": "dir", "path": "/opt/z", "mode": "0755"})),
            problems: vec![(loc("d", 3, "id"), vec!["duplicate", "twice", "already", "unique"])],
        },
        Bad {
            name: "bad mode 999",
            text: with_step(json!({"id": "x", "type": "dir", "path": "/opt/y", "mode": "999"})),
            problems: vec![(loc("x", 3, "mode"), vec!["999"])],
        },
        Bad {
            name: "bad mode rw",
            text: with_step(json!({"id": "x", "type": "file", "path": "/opt/y", "content": "", "mode": "rw"})),
            problems: vec![(loc("x", 3, "mode"), vec!["rw"])],
        },
        Bad {
            name: "missing source file",
            text: with_step(
                json!({"id": "x", "type": "file", "path": "/opt/y", "source": "files/nope.sh", "mode": "0644"}),
            ),
            problems: vec![(loc("x", 3, "source"), vec!["files/nope.sh"])],
        },
        Bad {
            name: "relative path",
            text: with_step(json!({"id": "x", "type": "dir", "path": "opt/y", "mode": "0755"})),
            problems: vec![(loc("x", 3, "path"), vec!["absolute", "relative"])],
        },
        Bad {
            name: "path with ..",
            text: with_step(
                json!({"id": "x", "type": "file", "path": "/opt/../../etc/shadow", "content": "", "mode": "0644"}),
            ),
            problems: vec![(loc("x", 3, "path"), vec!["..", "parent"])],
        },
        Bad {
            name: "missing plan name",
            text: serde_json::to_string_pretty(&json!({"version": "1", "steps": good_steps()})).unwrap(),
            problems: vec![("field \"name\":".to_string(), vec!["missing", "required"])],
        },
        Bad {
            name: "unknown plan field",
            text: serde_json::to_string_pretty(&json!({"name": "p", "steps": good_steps(), "colour": 1})).unwrap(),
            problems: vec![("field \"colour\":".to_string(), vec!["unknown", "unexpected", "not allowed"])],
        },
        Bad {
            name: "all problems at once",
            text: serde_json::to_string_pretty(&plan(
                "many",
                vec![
                    json!({"id": "a", "type": "frobnicate"}),
                    json!({"id": "b", "type": "dir", "path": "/opt/b", "mode": "rw"}),
                    json!({"id": "c", "type": "dir", "path": "relative/c", "mode": "0755"}),
                    json!({"id": "a", "type": "dir", "path": "/opt/a2", "mode": "0755"}),
                    json!({"id": "e", "type": "symlink", "path": "/opt/e"}),
                    json!({"id": "f", "type": "remove", "path": "/opt/../f", "bogus": true}),
                ],
            ))
            .unwrap(),
            problems: vec![
                (loc("a", 1, "type"), vec!["frobnicate"]),
                (loc("b", 2, "mode"), vec!["rw"]),
                (loc("c", 3, "path"), vec!["absolute", "relative"]),
                (loc("a", 4, "id"), vec!["duplicate", "twice", "already", "unique"]),
                (loc("e", 5, "target"), vec!["missing", "required"]),
                (loc("f", 6, "path"), vec!["..", "parent"]),
                (loc("f", 6, "bogus"), vec!["unknown", "unexpected", "not allowed"]),
            ],
        },
    ]
}

/// Checks stderr of a rejected plan against the expected problems.
fn check_problems(bad: &Bad, out: &std::process::Output) {
    assert_eq!(out.status.code(), Some(2), "{}: exit code\n{}", bad.name, show(out));
    let err = stderr(out);
    for (locator, words) in &bad.problems {
        let line = err
            .lines()
            .find(|l| l.contains(locator))
            .unwrap_or_else(|| panic!("{}: no stderr line contains `{locator}`\n{}", bad.name, show(out)));
        assert!(line.contains("plan.json:"), "{}: the line should start with the plan file: {line}", bad.name);
        let why = line.split_once(locator.as_str()).unwrap().1.to_lowercase();
        assert!(
            words.iter().any(|w| why.contains(&w.to_lowercase())),
            "{}: the reason after `{locator}` should mention one of {words:?}: {line}",
            bad.name
        );
    }
}

fn validate(pd: &PlanDir) -> std::process::Output {
    snapinst([std::ffi::OsStr::new("validate"), pd.path.as_os_str()])
}

macro_rules! validate_case {
    ($test:ident, $name:expr) => {
        #[test]
        fn $test() {
            let bad = bad_plans().into_iter().find(|b| b.name == $name).unwrap();
            let pd = PlanDir::raw(&bad.text, &[]);
            check_problems(&bad, &validate(&pd));
        }
    };
}

validate_case!(validate_unknown_step_type, "unknown step type");
validate_case!(validate_bad_accounts, "bad user and group names and ids");
validate_case!(validate_bad_service, "service: not a unit, both enable and mask");
validate_case!(validate_package_nothing_to_do, "package: nothing to do, purge without remove");
validate_case!(validate_package_bad_debs_and_names, "package: missing .deb, bad package name");
validate_case!(validate_unknown_field, "unknown field");

/// One message per problem: a .deb that cannot be read is that one problem, not also "the step has nothing to do".
#[test]
fn validate_missing_deb_is_one_problem() {
    let pd = PlanDir::raw(&with_step(json!({"id": "x", "type": "package", "debs": ["debs/missing_1.0_all.deb"]})), &[]);
    let out = validate(&pd);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("step \"x\"")).collect();
    assert_eq!(lines.len(), 1, "one message for the one problem:\n{}", show(&out));
    assert!(lines[0].contains("cannot read") && lines[0].contains("missing_1.0_all.deb"), "{}", lines[0]);
}
validate_case!(validate_missing_field, "missing field");
validate_case!(validate_duplicate_id, "duplicate id");
validate_case!(validate_bad_mode_999, "bad mode 999");
validate_case!(validate_bad_mode_rw, "bad mode rw");
validate_case!(validate_missing_source_file, "missing source file");
validate_case!(validate_relative_path, "relative path");
validate_case!(validate_path_with_dotdot, "path with ..");
validate_case!(validate_missing_plan_name, "missing plan name");
validate_case!(validate_unknown_plan_field, "unknown plan field");
validate_case!(validate_reports_all_problems_at_once, "all problems at once");

#[test]
fn validate_invalid_json_names_line_and_column() {
    let text = "{\n  \"name\": \"broken\",\n  \"steps\": [\n    {\"id\": \"a\",, \"type\": \"dir\"}\n  ]\n}\n";
    let pd = PlanDir::raw(text, &[]);
    let out = validate(&pd);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("plan.json"), "the message should name the file:\n{err}");
    assert!(err.contains("line 4") && err.contains("column"), "the message should name line 4 and the column:\n{err}");
}

#[test]
fn validate_good_plan_exits_0() {
    let host = tempfile::tempdir().unwrap();
    for backend in Backend::ALL {
        let hello = Hello::new(backend, "", host.path());
        let pd = hello.plan_dir(&hello.plan());
        let out = validate(&pd);
        assert_code(&out, 0);
    }
}

#[test]
fn validate_missing_plan_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = snapinst([std::ffi::OsStr::new("validate"), dir.path().join("nope.json").as_os_str()]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("nope.json"), "{}", show(&out));
}

#[test]
fn failpoints_command_lists_names() {
    let out = snapinst(["failpoints"]);
    assert_code(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    if cfg!(feature = "failpoints") {
        assert!(text.lines().any(|l| !l.trim().is_empty()), "no failpoint names listed");
    }
    // One name per line (as its first field): a name is a plain identifier.
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let name = l.split_whitespace().next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "not a failpoint name: {l:?}");
    }
}

/// `apply` of each bad plan: exit 2, the same messages, `summary` outcome `invalid`, nothing
/// changed in the root.
fn apply_bad_plans_changes_nothing(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    for bad in bad_plans() {
        let pd = PlanDir::raw(&bad.text, &[]);
        let out = apply(&pd.path, &root, backend, &[]);
        check_problems(&bad, &out);
        let lines = json_lines(&out);
        if let Some(last) = lines.last() {
            assert_eq!(last["event"], "summary", "{}: {}", bad.name, show(&out));
            assert_eq!(last["outcome"], "invalid", "{}: {}", bad.name, show(&out));
        }
        assert_manifest_eq_ctx(&before, &manifest(&root), bad.name);
    }
    let pd = PlanDir::raw("{ not json", &[]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 2);
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);
}
for_each_backend!(privileged_apply_bad_plans_changes_nothing, apply_bad_plans_changes_nothing);
