//! The configuration: built-in defaults, then `/etc/snapinst/snapinst.toml`, then `/etc/snapinst/snapinst.d/*.toml`
//! in name order (a key in a later file replaces the same key of an earlier one), then the command line, which wins.
//! `SNAPINST_CONFIG_DIR` names another directory than `/etc/snapinst` (tests, a chroot). Every value remembers where
//! it came from, which `snapinst config` prints. A file that cannot be read or parsed, an unknown key and a bad value
//! are each an error naming the file, the line and column, and the key. The configuration is read once, at the
//! start of a command ([`init`]), and read from anywhere after ([`get`]).

use crate::pathbytes::PathText;
use crate::state::BackendKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use toml::Spanned;

/// Where a configured value came from.
pub(crate) const BUILT_IN: &str = "built-in default";
pub(crate) const COMMAND_LINE: &str = "command line";

/// A value and where it came from (a file's path, [`BUILT_IN`] or [`COMMAND_LINE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting<T> {
    pub value: T,
    pub from: String,
}

impl<T> Setting<T> {
    fn built_in(value: T) -> Setting<T> {
        Setting { value, from: BUILT_IN.into() }
    }

    /// This value, or the command line's when it gave one.
    pub fn or_flag(&self, flag: Option<T>) -> Setting<T>
    where
        T: Clone,
    {
        match flag {
            Some(value) => Setting { value, from: COMMAND_LINE.into() },
            None => self.clone(),
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Generations to keep.
    pub keep: Setting<u64>,
    /// Boots a pending generation of a running root gets before the previous one is restored.
    pub boot_tries: Setting<u32>,
    /// The backend (None: chosen by the root's filesystem).
    pub backend: Setting<Option<BackendKind>>,
    /// Whether steps run with their syncs suppressed and overlay stages are mounted `volatile`.
    pub suppress_sync: Setting<bool>,
    /// Filesystems mounted inside a root that transactions leave out (paths inside the root).
    pub exclude_mounts: Setting<Vec<PathBuf>>,
    /// The state area of a root, by the root's path.
    pub state_dirs: BTreeMap<PathBuf, Setting<PathBuf>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            keep: Setting::built_in(5),
            boot_tries: Setting::built_in(3),
            backend: Setting::built_in(None),
            suppress_sync: Setting::built_in(true),
            exclude_mounts: Setting::built_in(Vec::new()),
            state_dirs: BTreeMap::new(),
        }
    }
}

/// One file's keys, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeys {
    keep: Option<Spanned<u64>>,
    boot_tries: Option<Spanned<u32>>,
    backend: Option<Spanned<BackendName>>,
    suppress_sync: Option<bool>,
    exclude_mounts: Option<Spanned<Vec<Spanned<PathBuf>>>>,
    #[serde(default)]
    roots: BTreeMap<Spanned<String>, RootKeys>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootKeys {
    state_dir: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum BackendName {
    Auto,
    Btrfs,
    Overlay,
    Journal,
}

/// One file being read: its path and text, for messages.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn problem(&self, span: std::ops::Range<usize>, key: &str, why: impl std::fmt::Display) -> String {
        let (line, column) = crate::textpos::line_column(self.text, span.start);
        let key = if key.is_empty() { String::new() } else { format!("{key}: ") };
        format!("{} line {line} column {column}: {key}{why}", self.path.escaped())
    }

    fn absolute(&self, p: &Spanned<PathBuf>, key: &str) -> Result<PathBuf, String> {
        if p.get_ref().is_absolute() {
            Ok(p.get_ref().clone())
        } else {
            Err(self.problem(p.span(), key, format!("{} is not an absolute path", p.get_ref().escaped())))
        }
    }
}

impl Config {
    /// Lay the keys of the file at `path` (whose text is `text`) over this configuration.
    fn apply(&mut self, path: &Path, text: &str) -> Result<(), String> {
        let src = Source { path, text };
        let keys: FileKeys = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            src.problem(span, "", e.message())
        })?;
        let from = || path.escaped().to_string();
        if let Some(k) = keys.keep {
            if *k.get_ref() < 1 {
                return Err(src.problem(k.span(), "keep", "must be at least 1"));
            }
            self.keep = Setting { value: *k.get_ref(), from: from() };
        }
        if let Some(k) = keys.boot_tries {
            if *k.get_ref() < 1 {
                return Err(src.problem(k.span(), "boot_tries", "must be at least 1"));
            }
            self.boot_tries = Setting { value: *k.get_ref(), from: from() };
        }
        if let Some(b) = keys.backend {
            let kind = match b.get_ref() {
                BackendName::Auto => None,
                BackendName::Btrfs => Some(BackendKind::Btrfs),
                BackendName::Overlay => Some(BackendKind::Overlay),
                BackendName::Journal => Some(BackendKind::Journal),
            };
            self.backend = Setting { value: kind, from: from() };
        }
        if let Some(s) = keys.suppress_sync {
            self.suppress_sync = Setting { value: s, from: from() };
        }
        if let Some(list) = keys.exclude_mounts {
            let paths = list.get_ref().iter().map(|p| src.absolute(p, "exclude_mounts")).collect::<Result<_, _>>()?;
            self.exclude_mounts = Setting { value: paths, from: from() };
        }
        for (root, r) in keys.roots {
            let root_path = PathBuf::from(root.get_ref());
            if !root_path.is_absolute() {
                return Err(src.problem(root.span(), "roots", format!("{:?} is not an absolute path", root.get_ref())));
            }
            if let Some(dir) = r.state_dir {
                let key = format!("roots.\"{}\".state_dir", root.get_ref());
                let dir = src.absolute(&dir, &key)?;
                self.state_dirs.insert(root_path, Setting { value: dir, from: from() });
            }
        }
        Ok(())
    }

    /// The configured state area of `root` (a canonical path), if any.
    pub fn state_dir_for(&self, root: &Path) -> Option<PathBuf> {
        self.state_dirs
            .iter()
            .find(|(r, _)| r.as_path() == root || r.canonicalize().is_ok_and(|c| c == root))
            .map(|(_, s)| s.value.clone())
    }

    /// Every setting as (key, value as shown, where it came from).
    pub fn rows(&self) -> Vec<(String, serde_json::Value, String)> {
        use serde_json::json;
        let backend = self.backend.value.map_or("auto".to_string(), |k| k.to_string());
        let mut rows = vec![
            ("keep".to_string(), json!(self.keep.value), self.keep.from.clone()),
            ("boot_tries".to_string(), json!(self.boot_tries.value), self.boot_tries.from.clone()),
            ("backend".to_string(), json!(backend), self.backend.from.clone()),
            ("suppress_sync".to_string(), json!(self.suppress_sync.value), self.suppress_sync.from.clone()),
            (
                "exclude_mounts".to_string(),
                crate::pathbytes::json_list(&self.exclude_mounts.value),
                self.exclude_mounts.from.clone(),
            ),
        ];
        for (root, s) in &self.state_dirs {
            rows.push((
                format!("roots.\"{}\".state_dir", root.escaped()),
                crate::pathbytes::json(&s.value),
                s.from.clone(),
            ));
        }
        rows
    }
}

/// The directory the configuration is read from.
pub(crate) fn dir() -> PathBuf {
    std::env::var_os("SNAPINST_CONFIG_DIR").map_or_else(|| PathBuf::from("/etc/snapinst"), PathBuf::from)
}

/// The files read, in order: `snapinst.toml`, then `snapinst.d/*.toml` by name; those that exist.
fn files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let main = dir.join("snapinst.toml");
    if main.exists() {
        out.push(main);
    }
    let drop_ins = dir.join("snapinst.d");
    match std::fs::read_dir(&drop_ins) {
        Ok(entries) => {
            let mut more = Vec::new();
            for e in entries {
                let p = e.map_err(|e| format!("{}: cannot read the directory: {e}", drop_ins.escaped()))?.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    more.push(p);
                }
            }
            more.sort();
            out.extend(more);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: cannot read the directory: {e}", drop_ins.escaped())),
    }
    Ok(out)
}

/// Read the configuration from `dir`.
pub(crate) fn load_from(dir: &Path) -> Result<Config, String> {
    let mut config = Config::default();
    for path in files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: cannot be read: {e}", path.escaped()))?;
        config.apply(&path, &text)?;
    }
    Ok(config)
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Read the configuration for this command (once; see the module's comment).
pub(crate) fn init() -> Result<&'static Config, String> {
    if let Some(c) = CONFIG.get() {
        return Ok(c);
    }
    let config = load_from(&dir())?;
    Ok(CONFIG.get_or_init(|| config))
}

/// Use the built-in defaults for this command (the configuration could not be read, and the command runs anyway).
pub(crate) fn init_defaults() -> &'static Config {
    CONFIG.get_or_init(Config::default)
}

/// The configuration read by [`init`] (the built-in defaults when none was).
pub(crate) fn get() -> &'static Config {
    CONFIG.get_or_init(Config::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_files(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Config, String>) {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let c = load_from(d.path());
        (d, c)
    }

    #[test]
    fn no_file_is_the_built_in_defaults() {
        let (_d, c) = with_files(&[]);
        let c = c.unwrap();
        assert_eq!((c.keep.value, c.boot_tries.value, c.backend.value, c.suppress_sync.value), (5, 3, None, true));
        assert!(c.rows().iter().all(|r| r.2 == BUILT_IN));
    }

    /// The file the package installs as /etc/snapinst/snapinst.toml shows every key commented out with its built-in
    /// default: it loads as the defaults, and with the keys uncommented it still does (the example root aside).
    #[test]
    fn the_shipped_file_states_the_built_in_defaults() {
        let shipped = include_str!("../config/snapinst.toml");
        let (_d, c) = with_files(&[("snapinst.toml", shipped)]);
        let as_is = c.unwrap();
        let uncommented: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix("# ").filter(|k| k.contains(" = ") || k.starts_with('[')))
            .map(|l| format!("{l}\n"))
            .collect();
        let keys = ["keep", "boot_tries", "backend", "suppress_sync", "exclude_mounts", "state_dir"];
        assert!(keys.iter().all(|k| uncommented.contains(&format!("{k} = "))), "{uncommented}");
        let (d, c) = with_files(&[("snapinst.toml", &uncommented)]);
        let set = c.unwrap();
        let defaults = Config::default();
        for c in [&as_is, &set] {
            assert_eq!(
                (c.keep.value, c.boot_tries.value, c.backend.value, c.suppress_sync.value, &c.exclude_mounts.value),
                (
                    defaults.keep.value,
                    defaults.boot_tries.value,
                    defaults.backend.value,
                    defaults.suppress_sync.value,
                    &defaults.exclude_mounts.value
                )
            );
        }
        assert!(set.keep.from.starts_with(&d.path().display().to_string()), "{:?}", set.keep);
    }

    #[test]
    fn drop_ins_win_over_the_main_file_in_name_order() {
        let (d, c) = with_files(&[
            ("snapinst.toml", "keep = 3\nbackend = \"btrfs\"\n"),
            ("snapinst.d/20-b.toml", "keep = 7\n"),
            ("snapinst.d/10-a.toml", "keep = 4\nsuppress_sync = false\n[roots.\"/srv/app\"]\nstate_dir = \"/var/s\"\n"),
            ("snapinst.d/ignored.conf", "keep = 99\n"),
        ]);
        let c = c.unwrap();
        assert_eq!(c.keep, Setting { value: 7, from: d.path().join("snapinst.d/20-b.toml").display().to_string() });
        assert_eq!(c.backend.value, Some(BackendKind::Btrfs));
        assert!(c.backend.from.ends_with("snapinst.toml"));
        assert!(!c.suppress_sync.value && c.suppress_sync.from.ends_with("10-a.toml"));
        assert_eq!(c.state_dir_for(Path::new("/srv/app")), Some(PathBuf::from("/var/s")));
        assert_eq!(c.keep.or_flag(Some(2)), Setting { value: 2, from: COMMAND_LINE.into() });
    }

    #[test]
    fn a_bad_file_names_the_file_line_and_key() {
        let cases = [
            ("keep = 3\ncolour = \"red\"\n", "line 2 column 1", "unknown field `colour`"),
            ("keep = 0\n", "line 1 column 8: keep: must be at least 1", ""),
            ("backend = \"zfs\"\n", "line 1 column 11", "zfs"),
            ("exclude_mounts = [\"/srv\", \"srv2\"]\n", "line 1 column 27: exclude_mounts", "not an absolute path"),
            ("[roots.\"app\"]\nstate_dir = \"/x\"\n", "line 1 column 8: roots", "not an absolute path"),
            ("keep = \n", "line 1 column ", "string"),
        ];
        for (text, place, why) in cases {
            let (_d, c) = with_files(&[("snapinst.toml", text)]);
            let e = c.unwrap_err();
            assert!(e.contains("snapinst.toml line ") && e.contains(place) && e.contains(why), "{text:?}: {e}");
        }
    }
}
