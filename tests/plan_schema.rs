//! `snapinst schema`: the JSON Schema generated from the plan types, checked with an independent JSON Schema
//! validator. Every example plan must pass it (as it passes `snapinst validate`), and plans with structural
//! mistakes (unknown field or step type, missing field, wrong JSON type) must fail both.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;

fn schema() -> Value {
    let out = snapinst(["schema"]);
    assert_code(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("`snapinst schema` is not JSON: {e}\n{}", show(&out)))
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the generated schema is a valid JSON Schema")
}

#[test]
fn schema_names_every_step_type() {
    let s = schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    let types: Vec<&str> = s["$defs"]["StepSpec"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alt| alt["properties"]["type"]["const"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "dir", "file", "symlink", "remove", "run", "verify", "host", "group", "user", "service", "package",
            "fetch", "playbook"
        ]
    );
}

#[test]
fn every_example_plan_fits_the_schema() {
    let v = validator();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let plan = entry.unwrap().path().join("plan.json");
        let value: Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path)).collect();
        assert!(errors.is_empty(), "{} does not fit the schema:\n{}", plan.display(), errors.join("\n"));
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} example plans found");
}

#[test]
fn structural_mistakes_fail_the_schema_and_validate() {
    let v = validator();
    let good = json!({"id": "d", "type": "dir", "path": "/opt/x"});
    let mistakes = [
        ("unknown step type", json!({"id": "x", "type": "frobnicate", "path": "/opt/y"})),
        ("unknown field", json!({"id": "x", "type": "dir", "path": "/opt/y", "colour": "red"})),
        ("missing field", json!({"id": "x", "type": "symlink", "path": "/opt/y"})),
        ("wrong type", json!({"id": "x", "type": "remove", "path": "/opt/y", "recursive": "yes"})),
        ("out of range", json!({"id": "x", "type": "group", "name": "g", "gid": 70000})),
        ("empty command", json!({"id": "x", "type": "run", "command": []})),
        ("missing id", json!({"type": "dir", "path": "/opt/y"})),
    ];
    assert!(v.is_valid(&plan("good", vec![good.clone()])), "the good plan must fit");
    for (what, step) in mistakes {
        let p = plan("bad", vec![good.clone(), step]);
        assert!(!v.is_valid(&p), "{what}: the schema accepts {p}");
        let pd = PlanDir::new(&p, &[]);
        let out = snapinst([std::ffi::OsStr::new("validate"), pd.path.as_os_str()]);
        assert_code(&out, 2);
    }
}
