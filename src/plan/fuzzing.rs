//! Plan parsing under random input: random JSON shaped like plans (the real step types and field names, with
//! values of every JSON type), and random bytes, never make validation panic; a refused plan gets at least one
//! problem, each naming where it is. `PROPTEST_CASES` sets how many inputs (CI runs the default, bounded count).

use super::{from_value, load};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::path::Path;

const TYPES: [&str; 13] = [
    "dir", "file", "symlink", "remove", "run", "verify", "host", "group", "user", "service", "package", "fetch", "nope",
];
const FIELDS: [&str; 28] = [
    "id",
    "path",
    "mode",
    "owner",
    "group",
    "content",
    "source",
    "target",
    "recursive",
    "missing_ok",
    "command",
    "timeout_s",
    "env",
    "changes",
    "undo",
    "expect_exit",
    "expect_stdout",
    "do",
    "name",
    "uid",
    "home",
    "unit",
    "enable",
    "debs",
    "apt",
    "upgrade",
    "url",
    "sha256",
];

/// Any JSON value, a few levels deep, strings biased to paths and plan words.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "[/a-z.\u{0}\u{7f}-\u{10ffff} ]{0,12}".prop_map(Value::String),
        prop_oneof![Just("/etc/x"), Just("0755"), Just("root"), Just(".."), Just(""), Just("tar.gz")]
            .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A step: a type (real or not) and some of the real field names with random values.
fn step() -> impl Strategy<Value = Value> {
    (0..TYPES.len(), proptest::collection::vec((0..FIELDS.len(), any_value()), 0..6)).prop_map(|(t, fields)| {
        let mut obj = Map::new();
        obj.insert("type".into(), json!(TYPES[t]));
        for (f, v) in fields {
            obj.insert(FIELDS[f].into(), v);
        }
        Value::Object(obj)
    })
}

fn plan() -> impl Strategy<Value = Value> {
    (any_value(), any_value(), proptest::collection::vec(step(), 0..5), any::<bool>()).prop_map(
        |(name, version, steps, plain)| {
            if plain {
                json!({"name": "p", "version": "1", "steps": steps})
            } else {
                json!({"name": name, "version": version, "steps": steps, "extra": null})
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: super::fuzz_cases(512), ..ProptestConfig::default() })]

    #[test]
    fn validating_any_plan_never_panics_and_says_where(value in plan()) {
        if let Err(problems) = from_value(&value, Path::new("fuzz.json")) {
            prop_assert!(!problems.problems.is_empty(), "refused without a problem: {}", value);
            for p in &problems.problems {
                prop_assert!(!p.trim().is_empty());
            }
        }
    }

    #[test]
    fn validating_any_value_never_panics(value in any_value()) {
        let _ = from_value(&value, Path::new("fuzz.json"));
    }

    #[test]
    fn loading_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plan.json");
        std::fs::write(&file, &bytes).unwrap();
        let _ = load(&file);
    }
}
