//! Plan files in JSON, YAML or TOML, chosen by the file's extension (`.yaml`/`.yml`, `.toml`; JSON otherwise). Each
//! is read into the same JSON value, which the schema check and the plan types then take as they take a JSON plan,
//! so every format gets the same checks and the same messages. A syntax error names its line and column.

use crate::textpos::line_column;
use serde_json::Value;
use std::path::Path;

/// The format of a plan file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Yaml,
    Toml,
}

impl Format {
    /// The format of the plan file `file`, by its extension.
    pub fn of(file: &Path) -> Format {
        match file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("yaml" | "yml") => Format::Yaml,
            Some("toml") => Format::Toml,
            _ => Format::Json,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
            Format::Toml => "TOML",
        }
    }
}

/// Read the plan text `bytes` in `format` into a JSON value; the error says what is wrong and where.
pub(crate) fn read(format: Format, bytes: &[u8]) -> Result<Value, String> {
    let at = |line: usize, column: usize, e: &dyn std::fmt::Display| {
        let first = e.to_string();
        let first = first.lines().next().unwrap_or_default().to_string();
        format!("not valid {} at line {line} column {column}: {first}", format.name())
    };
    if format == Format::Json {
        return serde_json::from_slice(bytes).map_err(|e| at(e.line(), e.column(), &e));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_column(&String::from_utf8_lossy(bytes), e.valid_up_to());
        at(line, column, &"the file is not UTF-8")
    })?;
    match format {
        Format::Yaml => serde_saphyr::from_str::<Value>(text).map_err(|e| match e.location() {
            Some(l) => {
                // (The message starts with the place again: "error: line 2 column 8: ...".)
                let said = e.to_string();
                let said = said.lines().next().unwrap_or_default();
                let why = said.strip_prefix("error: line ").and_then(|w| w.split_once(": ")).map_or(said, |(_, w)| w);
                at(l.line() as usize, l.column() as usize, &why)
            }
            None => format!("not valid YAML: {}", e.to_string().lines().next().unwrap_or_default()),
        }),
        Format::Toml => toml::from_str::<Value>(text).map_err(|e| {
            let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
            at(line, column, &e.message())
        }),
        Format::Json => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAN: &str = r#"{"name": "p", "steps": [{"id": "d", "type": "dir", "path": "/opt/p", "mode": "0755"}]}"#;

    #[test]
    fn the_three_forms_read_the_same() {
        let yaml = "name: p\nsteps:\n  - id: d\n    type: dir\n    path: /opt/p\n    mode: \"0755\"\n";
        let toml = "name = \"p\"\n\n[[steps]]\nid = \"d\"\ntype = \"dir\"\npath = \"/opt/p\"\nmode = \"0755\"\n";
        let want: Value = serde_json::from_str(PLAN).unwrap();
        assert_eq!(read(Format::Json, PLAN.as_bytes()).unwrap(), want);
        assert_eq!(read(Format::Yaml, yaml.as_bytes()).unwrap(), want);
        assert_eq!(read(Format::Toml, toml.as_bytes()).unwrap(), want);
    }

    #[test]
    fn a_yaml_octal_mode_stays_a_number_for_the_schema_to_refuse() {
        let v = read(Format::Yaml, b"name: p\nsteps: [{id: d, type: dir, path: /x, mode: 0755}]\n").unwrap();
        assert!(v["steps"][0]["mode"].is_number(), "{v}");
        assert_eq!(v["name"], json!("p"));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = read(Format::Toml, b"name = \"p\"\nsteps = [\n  { id = \"d\", type = }\n]\n").unwrap_err();
        assert!(e.starts_with("not valid TOML at line 3 column "), "{e}");
        let e = read(Format::Yaml, b"name: p\nsteps:\n  - id: d\n   type: [dir\n").unwrap_err();
        assert!(e.starts_with("not valid YAML at line "), "{e}");
        let e = read(Format::Json, b"{\"name\": \"p\",\n \"steps\": [,]}").unwrap_err();
        assert!(e.starts_with("not valid JSON at line 2 column "), "{e}");
        let e = read(Format::Yaml, b"name: \xff\n").unwrap_err();
        assert!(e.contains("line 1 column 7") && e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn the_extension_chooses() {
        assert_eq!(Format::of(Path::new("a/plan.YML")), Format::Yaml);
        assert_eq!(Format::of(Path::new("plan.yaml")), Format::Yaml);
        assert_eq!(Format::of(Path::new("plan.toml")), Format::Toml);
        assert_eq!(Format::of(Path::new("plan.json")), Format::Json);
        assert_eq!(Format::of(Path::new("plan")), Format::Json);
    }
}
