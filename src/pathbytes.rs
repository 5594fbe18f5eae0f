//! Paths are byte strings. Linux allows every byte in a file name but `/` and NUL, and a package or a user's data
//! may hold a name that is not UTF-8 or that holds a newline. This module is the one place where a path becomes
//! text, both ways lossless:
//! - in JSON (records, deltas, events, manifests, `--json` output) a path is a string when it is valid UTF-8, and
//!   otherwise `{"hex": "<its bytes in hex>"}`;
//! - in text for people (messages, change lists, conflicts) it is escaped so that one line holds one path and two
//!   paths never read alike: `\\` for a backslash, `\n` and `\t`, and `\xHH` for every other control character and
//!   every byte that is not part of valid UTF-8.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// A path shown to people: see the module's rules.
pub(crate) struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\t' => f.write_str("\\t")?,
                    c if c.is_control() => {
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            write!(f, "\\x{b:02x}")?;
                        }
                    }
                    c => write!(f, "{c}")?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// `.escaped()`: a path (or a file name) as text for people.
pub(crate) trait PathText {
    fn escaped(&self) -> Escaped<'_>;
}

impl PathText for Path {
    fn escaped(&self) -> Escaped<'_> {
        Escaped(self.as_os_str().as_bytes())
    }
}

impl PathText for OsStr {
    fn escaped(&self) -> Escaped<'_> {
        Escaped(self.as_bytes())
    }
}

#[cfg(test)]
/// The bytes of a path that [`Escaped`] showed (the inverse, for paths a user copies from a message). None when
/// `text` is not something `Escaped` writes.
pub(crate) fn unescape(text: &str) -> Option<PathBuf> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next()? {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hi = bytes.next()?;
                let lo = bytes.next()?;
                out.push(u8::from_str_radix(std::str::from_utf8(&[hi, lo]).ok()?, 16).ok()?);
            }
            _ => return None,
        }
    }
    Some(PathBuf::from(OsString::from_vec(out)))
}

/// A path as JSON: see the module's rules.
pub(crate) struct Json<'a>(pub &'a Path);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => Hex { hex: hex::encode(self.0.as_os_str().as_bytes()) }.serialize(s),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hex {
    hex: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Hex(Hex),
}

impl Repr {
    fn into_path<E: serde::de::Error>(self) -> Result<PathBuf, E> {
        match self {
            Repr::Text(text) => Ok(PathBuf::from(text)),
            Repr::Hex(Hex { hex }) => {
                let bytes = hex::decode(&hex).map_err(|e| E::custom(format!("a path's \"hex\" is not hex: {e}")))?;
                Ok(PathBuf::from(OsString::from_vec(bytes)))
            }
        }
    }
}

/// A list of paths as JSON.
pub(crate) struct JsonList<'a, P: AsRef<Path>>(pub &'a [P]);

impl<P: AsRef<Path>> Serialize for JsonList<'_, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|p| Json(p.as_ref())))
    }
}

/// A path as a JSON value (for `json!`).
pub(crate) fn json(path: &Path) -> serde_json::Value {
    match path.to_str() {
        Some(text) => serde_json::Value::String(text.to_string()),
        None => serde_json::json!({"hex": hex::encode(path.as_os_str().as_bytes())}),
    }
}

/// A list of paths as a JSON value (for `json!`).
pub(crate) fn json_list<P: AsRef<Path>>(paths: &[P]) -> serde_json::Value {
    serde_json::Value::Array(paths.iter().map(|p| json(p.as_ref())).collect())
}

/// `#[serde(with = "crate::pathbytes::one")]` on a `PathBuf` field.
pub(crate) mod one {
    use super::*;

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        Json(path).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Repr::deserialize(d)?.into_path()
    }
}

/// `#[serde(default, with = "crate::pathbytes::maybe")]` on an `Option<PathBuf>` field.
pub(crate) mod maybe {
    use super::*;

    pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        path.as_deref().map(Json).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Option::<Repr>::deserialize(d)?.map(Repr::into_path).transpose()
    }
}

/// `#[serde(default, with = "crate::pathbytes::many")]` on a `Vec<PathBuf>` field.
pub(crate) mod many {
    use super::*;

    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        JsonList(paths).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Vec::<Repr>::deserialize(d)?.into_iter().map(Repr::into_path).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_name_byte() -> PathBuf {
        let bytes: Vec<u8> = (1..=255u8).filter(|b| *b != b'/').collect();
        PathBuf::from(OsString::from_vec(bytes))
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Record {
        #[serde(with = "one")]
        path: PathBuf,
        #[serde(default, with = "maybe")]
        kept: Option<PathBuf>,
        #[serde(default, with = "many")]
        parts: Vec<PathBuf>,
    }

    #[test]
    fn every_byte_survives_json_and_text() {
        let odd = Path::new("etc").join(every_name_byte());
        let record = Record { path: odd.clone(), kept: Some(odd.clone()), parts: vec![odd.clone(), "boot".into()] };
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), record);
        assert_eq!(serde_json::from_value::<PathBuf>(json(&odd)).map_err(|_| ()), Err(()), "plain serde refuses it");
        let shown = odd.escaped().to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert_eq!(unescape(&shown), Some(odd));
    }

    #[test]
    fn utf8_paths_stay_plain_strings() {
        let record = Record { path: "etc/a\nb".into(), kept: None, parts: vec![] };
        assert_eq!(serde_json::to_string(&record).unwrap(), r#"{"path":"etc/a\nb","kept":null,"parts":[]}"#);
        assert_eq!(Path::new("etc/é x").escaped().to_string(), "etc/é x");
        assert_eq!(Path::new("a\\nb").escaped().to_string(), "a\\\\nb");
        assert_eq!(Path::new("a\nb").escaped().to_string(), "a\\nb");
        let bad = PathBuf::from(OsString::from_vec(b"etc/\xff".to_vec()));
        assert_eq!(serde_json::to_string(&Json(&bad)).unwrap(), r#"{"hex":"6574632fff"}"#);
        assert_eq!(bad.escaped().to_string(), "etc/\\xff");
    }

    #[test]
    fn a_bad_hex_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<Record>(r#"{"path":{"hex":"zz"}}"#).is_err());
        assert!(serde_json::from_str::<Record>(r#"{"path":{"hex":"61","x":1}}"#).is_err());
        assert_eq!(unescape("a\\q"), None);
        assert_eq!(unescape("a\\x4"), None);
    }
}
