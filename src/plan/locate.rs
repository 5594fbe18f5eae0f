//! Where a plan's fields are in its file, so that a problem the checks find in a well-formed plan (a relative path,
//! a duplicate id) names its line and column as a syntax error does. The places come from a second read of the
//! text that keeps only positions: serde-saphyr's `Spanned` for YAML and for JSON (a JSON document is YAML flow
//! syntax), the toml crate's spans for TOML. A file whose shape that read cannot follow (`steps` not a list of
//! tables, say) simply has no places: its problems are still named by step and field.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::formats::Format;
use crate::textpos::line_column;

/// A line and a column, both 1-based.
pub(crate) type Place = (usize, usize);

/// The places of the plan's top-level fields and of each step and its fields.
#[derive(Default)]
pub(crate) struct Locations {
    top: BTreeMap<String, Place>,
    steps: Vec<(Place, BTreeMap<String, Place>)>,
}

#[derive(Deserialize)]
struct YamlTop(BTreeMap<String, serde_saphyr::Spanned<IgnoredAny>>);

#[derive(Deserialize)]
struct YamlSteps {
    #[serde(default)]
    steps: Vec<serde_saphyr::Spanned<BTreeMap<String, serde_saphyr::Spanned<IgnoredAny>>>>,
}

#[derive(Deserialize)]
struct TomlTop(BTreeMap<String, toml::Spanned<IgnoredAny>>);

#[derive(Deserialize)]
struct TomlSteps {
    #[serde(default)]
    steps: Vec<toml::Spanned<BTreeMap<String, toml::Spanned<IgnoredAny>>>>,
}

fn yaml_place<T>(s: &serde_saphyr::Spanned<T>) -> Place {
    (s.referenced.line() as usize, s.referenced.column() as usize)
}

impl Locations {
    /// The places in `text`, a plan file in `format`; none when the text cannot be followed.
    pub fn of(format: Format, text: &str) -> Locations {
        let mut l = Locations::default();
        match format {
            Format::Json | Format::Yaml => {
                if let Ok(YamlTop(top)) = serde_saphyr::from_str::<YamlTop>(text) {
                    l.top = top.iter().map(|(k, v)| (k.clone(), yaml_place(v))).collect();
                }
                if let Ok(s) = serde_saphyr::from_str::<YamlSteps>(text) {
                    l.steps = s
                        .steps
                        .iter()
                        .map(|step| {
                            (yaml_place(step), step.value.iter().map(|(k, v)| (k.clone(), yaml_place(v))).collect())
                        })
                        .collect();
                }
            }
            Format::Toml => {
                let at = |span: std::ops::Range<usize>| line_column(text, span.start);
                if let Ok(TomlTop(top)) = toml::from_str::<TomlTop>(text) {
                    l.top = top.iter().map(|(k, v)| (k.clone(), at(v.span()))).collect();
                }
                if let Ok(s) = toml::from_str::<TomlSteps>(text) {
                    l.steps = s
                        .steps
                        .iter()
                        .map(|step| {
                            (at(step.span()), step.get_ref().iter().map(|(k, v)| (k.clone(), at(v.span()))).collect())
                        })
                        .collect();
                }
            }
        }
        l
    }

    /// The place of `field` of the step at 0-based `index` (the step's own place when the field is not written, a
    /// missing one say), or of the top-level `field` when `index` is None.
    pub fn of_field(&self, index: Option<usize>, field: &str) -> Option<Place> {
        match index {
            Some(i) => self.steps.get(i).map(|(step, fields)| fields.get(field).copied().unwrap_or(*step)),
            None => self.top.get(field).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str =
        "name: t\nsteps:\n  - id: a\n    type: dir\n    path: /opt/x\n  - id: b\n    type: file\n    path: rel\n";
    const JSON: &str = "{\"name\": \"t\",\n \"steps\": [{\"id\": \"a\", \"type\": \"dir\", \"path\": \"/opt/x\"},\n   {\"id\": \"b\", \"type\": \"file\",\n    \"path\": \"rel\"}]}\n";
    const TOML: &str = "name = \"t\"\n\n[[steps]]\nid = \"a\"\ntype = \"dir\"\npath = \"/opt/x\"\n\n[[steps]]\nid = \"b\"\ntype = \"file\"\npath = \"rel\"\n";

    #[test]
    fn each_format_places_the_fields_of_each_step() {
        let y = Locations::of(Format::Yaml, YAML);
        assert_eq!(y.of_field(Some(1), "path"), Some((8, 11)));
        assert_eq!(y.of_field(None, "name"), Some((1, 7)));
        let j = Locations::of(Format::Json, JSON);
        assert_eq!(j.of_field(Some(1), "path").map(|p| p.0), Some(4));
        assert_eq!(j.of_field(Some(0), "type").map(|p| p.0), Some(2));
        let t = Locations::of(Format::Toml, TOML);
        assert_eq!(t.of_field(Some(1), "path"), Some((11, 8)));
        assert_eq!(t.of_field(Some(0), "id"), Some((4, 6)));
    }

    #[test]
    fn a_field_not_written_is_placed_at_its_step() {
        let y = Locations::of(Format::Yaml, YAML);
        assert_eq!(y.of_field(Some(1), "mode").map(|p| p.0), Some(6));
        assert_eq!(y.of_field(Some(7), "mode"), None);
    }

    #[test]
    fn a_shape_it_cannot_follow_has_no_places() {
        let l = Locations::of(Format::Yaml, "steps: 3\n");
        assert_eq!(l.of_field(Some(0), "path"), None);
        assert_eq!(Locations::of(Format::Json, "[1, 2]").of_field(None, "name"), None);
    }
}
