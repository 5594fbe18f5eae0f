//! Checking a JSON object against the plan's generated schema (see [`super::spec`]), field by field, so that every
//! unknown field, missing field and wrong JSON type is reported at once, in words an administrator reads: "must be
//! a list of strings", "must be a whole number from 0 to 65533". Only the parts of JSON Schema that the generated
//! schema uses are understood: `$ref`, `anyOf`, `type`, `properties`, `required`, `items`, `additionalProperties`,
//! `minimum`, `maximum`, `minLength`, `minItems`, `enum`.

use serde_json::{Map, Value};

/// The plan's schema, with `$ref`s resolved against its `$defs`.
pub(super) struct Schema {
    root: Value,
}

/// One problem: the field and why.
pub(super) type FieldProblem = (String, String);

impl Schema {
    pub fn new(root: Value) -> Schema {
        Schema { root }
    }

    /// The schema of the plan object itself.
    pub fn plan(&self) -> &Value {
        &self.root
    }

    /// A definition in `$defs` (`StepSpec`).
    pub fn def(&self, name: &str) -> &Value {
        &self.root["$defs"][name]
    }

    /// Follow a `$ref` (only local `#/$defs/NAME` ones exist).
    pub fn resolve<'a>(&'a self, s: &'a Value) -> &'a Value {
        match s.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
            Some(name) => self.def(name),
            None => s,
        }
    }

    /// The step types (the `type` constants of StepSpec's alternatives), in schema order.
    pub fn step_types(&self) -> Vec<&str> {
        self.alternatives().filter_map(|(t, _)| t).collect()
    }

    /// The schema of one step type's own fields, or None for an unknown type.
    pub fn step_type(&self, name: &str) -> Option<&Value> {
        self.alternatives().find(|(t, _)| *t == Some(name)).map(|(_, s)| s)
    }

    fn alternatives(&self) -> impl Iterator<Item = (Option<&str>, &Value)> {
        let list = self.def("StepSpec")["oneOf"].as_array().map(Vec::as_slice).unwrap_or_default();
        list.iter().map(|alt| (alt["properties"]["type"]["const"].as_str(), self.resolve(alt)))
    }

    /// Whether `field` is required by one of `schemas`.
    pub fn is_required(&self, schemas: &[&Value], field: &str) -> bool {
        schemas.iter().any(|s| self.resolve(s)["required"].as_array().is_some_and(|r| r.iter().any(|f| f == field)))
    }

    /// The field names an object schema allows.
    pub fn fields<'a>(&'a self, s: &'a Value) -> Vec<&'a str> {
        let s = self.resolve(s);
        s["properties"].as_object().map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default()
    }

    /// Check `obj` against the object schemas in `schemas` (their fields together), skipping `skip`: unknown
    /// fields, missing required fields, and each present field's value.
    pub fn check_object(&self, obj: &Map<String, Value>, schemas: &[&Value], skip: &[&str]) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        let mut allowed: Vec<&str> = skip.to_vec();
        for field in schemas.iter().flat_map(|s| self.fields(s)) {
            if !allowed.contains(&field) {
                allowed.push(field);
            }
        }
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                problems.push((key.clone(), format!("unknown field (allowed here: {})", allowed.join(", "))));
            }
        }
        for s in schemas.iter().map(|s| self.resolve(s)) {
            for req in s["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !obj.contains_key(req) && !skip.contains(&req) {
                    problems.push((req.to_string(), "missing".to_string()));
                }
            }
            for (name, field) in s["properties"].as_object().into_iter().flatten() {
                if skip.contains(&name.as_str()) {
                    continue;
                }
                if let Some(v) = obj.get(name) {
                    if let Some(why) = self.check_value(v, field) {
                        problems.push((name.clone(), why));
                    }
                }
            }
        }
        problems
    }

    /// Why `v` does not fit `s`, as "must be ..."; None when it fits.
    pub fn check_value(&self, v: &Value, s: &Value) -> Option<String> {
        if self.fits(v, s) {
            None
        } else if v.is_number() && self.fits(&Value::String(v.to_string()), s) {
            // An unquoted `mode: 0755` in YAML or TOML reads as a number.
            Some(format!("must be {} (it reads as a number here: quote it)", self.describe(s)))
        } else {
            Some(format!("must be {}", self.describe(s)))
        }
    }

    fn fits(&self, v: &Value, s: &Value) -> bool {
        let s = self.resolve(s);
        if let Some(alts) = s["anyOf"].as_array() {
            return alts.iter().any(|a| self.fits(v, a));
        }
        if let Some(allowed) = s["enum"].as_array() {
            return allowed.contains(v);
        }
        if !types(s).iter().any(|t| is_type(v, t)) {
            return false;
        }
        match v {
            Value::Number(n) => {
                let above = s["minimum"].as_f64().is_none_or(|min| n.as_f64().is_some_and(|x| x >= min));
                let below = s["maximum"].as_f64().is_none_or(|max| n.as_f64().is_some_and(|x| x <= max));
                above && below
            }
            Value::String(text) => s["minLength"].as_u64().is_none_or(|min| text.chars().count() as u64 >= min),
            Value::Array(items) => {
                s["minItems"].as_u64().is_none_or(|min| items.len() as u64 >= min)
                    && items.iter().all(|i| s.get("items").is_none_or(|is| self.fits(i, is)))
            }
            Value::Object(map) => match s.get("additionalProperties") {
                Some(each) if each.is_object() => map.values().all(|x| self.fits(x, each)),
                _ => true,
            },
            _ => true,
        }
    }

    /// "a string", "a list of strings", "a whole number from 0 to 65533", "true or false"...
    fn describe(&self, s: &Value) -> String {
        let s = self.resolve(s);
        if let Some(alts) = s["anyOf"].as_array() {
            let parts: Vec<String> = alts.iter().filter(|a| a["type"] != "null").map(|a| self.describe(a)).collect();
            return parts.join(" or ");
        }
        if let Some(allowed) = s["enum"].as_array() {
            let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return format!("one of {}", names.join(", "));
        }
        let parts: Vec<String> =
            types(s).into_iter().filter(|t| *t != "null").map(|t| self.describe_type(s, t)).collect();
        parts.join(" or ")
    }

    fn describe_type(&self, s: &Value, t: &str) -> String {
        match t {
            "string" if s["minLength"].as_u64().is_some_and(|n| n > 0) => "a non-empty string".into(),
            "string" => "a string".into(),
            "boolean" => "true or false".into(),
            "integer" | "number" => {
                let (min, max) = (s["minimum"].as_u64(), s["maximum"].as_u64());
                match (min, max) {
                    (Some(lo), Some(hi)) => format!("a whole number from {lo} to {hi}"),
                    (Some(0), None) => "a whole number (0 or more)".into(),
                    (Some(lo), None) => format!("a whole number ({lo} or more)"),
                    _ => "a whole number".into(),
                }
            }
            "array" => {
                let items = s.get("items").map(|i| self.describe(i)).unwrap_or_else(|| "anything".into());
                let items = items.strip_prefix("a ").map(|i| format!("{i}s")).unwrap_or(items);
                if s["minItems"].as_u64().is_some_and(|n| n > 0) {
                    format!("a non-empty list of {items}")
                } else {
                    format!("a list of {items}")
                }
            }
            "object" => match s.get("additionalProperties") {
                Some(each) if each.is_object() => format!("an object whose values are each {}", self.describe(each)),
                _ => "an object".into(),
            },
            other => format!("a JSON {other}"),
        }
    }
}

/// The JSON types a schema allows (`"type": "string"` or `"type": ["string", "null"]`).
fn types(s: &Value) -> Vec<&str> {
    match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec!["string", "integer", "number", "boolean", "array", "object", "null"],
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => false,
    }
}
