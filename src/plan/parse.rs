//! Reading a plan file and checking all of it at once. Every problem is collected (unknown type or field, missing
//! field, wrong JSON type, duplicate id, bad mode, missing source file, a path that is not absolute or leaves the
//! root) with the step and field it concerns, so an administrator fixes a plan in one pass. Nothing is changed on
//! disk here.

use super::{
    Action, Attrs, Command, Content, GroupSpec, PackageSpec, Plan, Principal, RootPath, Step, UnitChange, UserSpec,
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

const DEFAULT_TIMEOUT_S: u64 = 300;
const PLAN_FIELDS: &[&str] = &["name", "version", "description", "steps"];
const STEP_TYPES: &[&str] =
    &["dir", "file", "symlink", "remove", "run", "verify", "host", "group", "user", "service", "package"];
const COMMON_FIELDS: &[&str] = &["id", "type", "description"];

/// Every problem found in a plan; its Display prints one per line.
#[derive(Debug)]
pub(crate) struct PlanProblems {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl std::fmt::Display for PlanProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.file.display(), p)?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanProblems {}

/// Read and validate the plan at `file`.
pub(crate) fn load(file: &Path) -> Result<Plan, PlanProblems> {
    let fail = |p: String| PlanProblems { file: file.to_path_buf(), problems: vec![p] };
    let bytes = std::fs::read(file).map_err(|e| fail(format!("cannot read the plan: {e}")))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| fail(format!("not valid JSON at line {} column {}: {e}", e.line(), e.column())))?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    let mut checker = Checker { base, problems: Vec::new() };
    let plan = checker.plan(&value, hex::encode(Sha256::digest(&bytes)));
    match plan {
        Some(plan) if checker.problems.is_empty() => Ok(plan),
        _ => Err(PlanProblems { file: file.to_path_buf(), problems: checker.problems }),
    }
}

struct Checker {
    base: PathBuf,
    problems: Vec<String>,
}

/// Where a problem is: the plan itself, or one step (id and 1-based position).
#[derive(Clone, Copy)]
struct At<'a> {
    step: Option<(&'a str, usize)>,
}

impl At<'_> {
    fn describe(&self, field: &str) -> String {
        match self.step {
            Some((id, n)) => format!("step \"{id}\" (#{n}) field \"{field}\""),
            None => format!("field \"{field}\""),
        }
    }
}

impl Checker {
    fn problem(&mut self, at: At, field: &str, why: impl std::fmt::Display) {
        self.problems.push(format!("{}: {why}", at.describe(field)));
    }

    fn plan(&mut self, value: &Value, sha256: String) -> Option<Plan> {
        let top = At { step: None };
        let Some(obj) = value.as_object() else {
            self.problem(top, "(plan)", "the plan must be a JSON object");
            return None;
        };
        self.unknown_fields(top, obj, PLAN_FIELDS);
        let name = self.required_string(top, obj, "name");
        if name.as_deref() == Some("") {
            self.problem(top, "name", "must not be empty");
        }
        let version = self.optional_string(top, obj, "version");
        self.optional_string(top, obj, "description");
        let steps = match obj.get("steps") {
            None => {
                self.problem(top, "steps", "missing (a list of steps)");
                Vec::new()
            }
            Some(Value::Array(list)) => self.steps(list),
            Some(_) => {
                self.problem(top, "steps", "must be a list of steps");
                Vec::new()
            }
        };
        Some(Plan { name: name?, version, steps, sha256 })
    }

    fn steps(&mut self, list: &[Value]) -> Vec<Step> {
        let mut seen = HashSet::new();
        let mut steps = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let n = i + 1;
            let Some(obj) = v.as_object() else {
                self.problems.push(format!("step #{n}: must be a JSON object"));
                continue;
            };
            let id = match obj.get("id") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(_) => {
                    self.problems.push(format!("step #{n} field \"id\": must be a non-empty string"));
                    format!("#{n}")
                }
                None => {
                    self.problems.push(format!("step #{n} field \"id\": missing"));
                    format!("#{n}")
                }
            };
            let at = At { step: Some((&id, n)) };
            if !seen.insert(id.clone()) {
                self.problem(at, "id", format!("duplicate id \"{id}\" (ids must be unique)"));
            }
            if let Some(action) = self.action(at, obj) {
                steps.push(Step { id: id.clone(), action });
            }
        }
        steps
    }

    fn action(&mut self, at: At, obj: &Map<String, Value>) -> Option<Action> {
        let kind = match obj.get("type") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                self.problem(at, "type", "must be a string");
                return None;
            }
            None => {
                self.problem(at, "type", format!("missing (one of {})", STEP_TYPES.join(", ")));
                return None;
            }
        };
        let fields: &[&str] = match kind {
            "dir" => &["path", "mode", "owner", "group"],
            "file" => &["path", "content", "source", "mode", "owner", "group"],
            "symlink" => &["path", "target"],
            "remove" => &["path", "recursive", "missing_ok"],
            "run" => &["command", "timeout_s", "env"],
            "verify" => &["command", "timeout_s", "env", "expect_exit", "expect_stdout"],
            "host" => &["do", "undo", "timeout_s", "env"],
            "group" => &["name", "gid"],
            "user" => &["name", "uid", "group", "groups", "home", "shell", "comment", "create_home"],
            "service" => &["unit", "enable", "mask"],
            "package" => &["debs", "apt", "remove", "purge", "timeout_s"],
            other => {
                self.problem(
                    at,
                    "type",
                    format!("unknown step type \"{other}\" (expected one of {})", STEP_TYPES.join(", ")),
                );
                return None;
            }
        };
        let allowed: Vec<&str> = COMMON_FIELDS.iter().chain(fields).copied().collect();
        self.unknown_fields(at, obj, &allowed);
        match kind {
            "dir" => {
                let path = self.root_path(at, obj, "path");
                let attrs = self.attrs(at, obj);
                Some(Action::Dir { path: path?, attrs })
            }
            "file" => {
                let path = self.root_path(at, obj, "path");
                let content = self.content(at, obj);
                let attrs = self.attrs(at, obj);
                Some(Action::File { path: path?, content: content?, attrs })
            }
            "symlink" => {
                let path = self.root_path(at, obj, "path");
                let target = self.required_string(at, obj, "target");
                if target.as_deref() == Some("") {
                    self.problem(at, "target", "must not be empty");
                }
                Some(Action::Symlink { path: path?, target: target? })
            }
            "remove" => {
                let path = self.root_path(at, obj, "path");
                let recursive = self.optional_bool(at, obj, "recursive");
                let missing_ok = self.optional_bool(at, obj, "missing_ok");
                Some(Action::Remove { path: path?, recursive, missing_ok })
            }
            "run" => Some(Action::Run { command: self.command(at, obj, "command")? }),
            "verify" => {
                let command = self.command(at, obj, "command");
                let expect_exit = match obj.get("expect_exit") {
                    None => Some(0),
                    Some(v) => match v.as_i64().and_then(|n| i32::try_from(n).ok()) {
                        Some(n) if (0..=255).contains(&n) => Some(n),
                        _ => {
                            self.problem(at, "expect_exit", "must be an exit code from 0 to 255");
                            None
                        }
                    },
                };
                let expect_stdout = self.optional_string(at, obj, "expect_stdout");
                Some(Action::Verify { command: command?, expect_exit: expect_exit?, expect_stdout })
            }
            "host" => {
                let run = self.command(at, obj, "do");
                let undo = self.command(at, obj, "undo");
                Some(Action::Host { run: run?, undo: undo? })
            }
            "group" => {
                let name = self.account_name(at, obj, "name");
                let gid = self.optional_id(at, obj, "gid");
                Some(Action::Group { group: GroupSpec { name: name?, gid: gid? } })
            }
            "user" => self.user(at, obj),
            "service" => self.service(at, obj),
            "package" => self.package(at, obj),
            _ => unreachable!("step types are matched above"),
        }
    }

    fn user(&mut self, at: At, obj: &Map<String, Value>) -> Option<Action> {
        let name = self.account_name(at, obj, "name");
        let uid = self.optional_id(at, obj, "uid");
        let group = obj.get("group").is_some().then(|| self.account_name(at, obj, "group"));
        let groups = self.names(at, obj, "groups", is_account_name, "a group name");
        let home = obj.get("home").is_some().then(|| self.root_path(at, obj, "home"));
        let shell = self.optional_string(at, obj, "shell");
        if shell.as_deref().is_some_and(|s| !s.starts_with('/') || s.contains(':')) {
            self.problem(at, "shell", "must be an absolute path without \":\"");
        }
        let comment = self.optional_string(at, obj, "comment");
        if comment.as_deref().is_some_and(|c| c.contains([':', '\n'])) {
            self.problem(at, "comment", "must not contain \":\" or a line break");
        }
        let create_home = self.optional_bool(at, obj, "create_home");
        if create_home && home.is_none() {
            self.problem(at, "create_home", "needs \"home\"");
        }
        Some(Action::User {
            user: UserSpec {
                name: name?,
                uid: uid?,
                group: group.flatten(),
                groups: groups?,
                home: match home {
                    Some(h) => Some(h?),
                    None => None,
                },
                shell,
                comment,
                create_home,
            },
        })
    }

    fn service(&mut self, at: At, obj: &Map<String, Value>) -> Option<Action> {
        let unit = self.required_string(at, obj, "unit");
        if let Some(u) = &unit {
            if !is_unit_name(u) {
                self.problem(at, "unit", format!("\"{u}\" is not a systemd unit name (like \"hello.service\")"));
            }
        }
        let change = match self.either(at, obj, "enable", "mask")? {
            "enable" => {
                if self.optional_bool(at, obj, "enable") {
                    UnitChange::Enable
                } else {
                    UnitChange::Disable
                }
            }
            _ if self.optional_bool(at, obj, "mask") => UnitChange::Mask,
            _ => UnitChange::Unmask,
        };
        Some(Action::Service { unit: unit?, change })
    }

    fn package(&mut self, at: At, obj: &Map<String, Value>) -> Option<Action> {
        let debs = self.names(at, obj, "debs", |d| d.ends_with(".deb"), "a path to a .deb file");
        let debs: Option<Vec<PathBuf>> =
            debs.map(|list| list.iter().filter_map(|rel| self.host_file(at, "debs", rel)).collect());
        let apt = self.names(at, obj, "apt", is_package_name, "a package name");
        let remove = self.names(at, obj, "remove", is_package_name, "a package name");
        let purge = self.optional_bool(at, obj, "purge");
        let timeout = self.timeout(at, obj);
        let listed = |f: &str| obj.get(f).and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        if !listed("debs") && !listed("apt") && !listed("remove") {
            self.problem(at, "debs", "the step has nothing to do (give \"debs\", \"apt\" or \"remove\")");
        }
        if purge && !listed("remove") {
            self.problem(at, "purge", "only applies to \"remove\"");
        }
        let spec = PackageSpec { debs: debs?, apt: apt?, remove: remove?, purge, timeout: timeout? };
        Some(Action::Package { packages: spec })
    }

    /// An optional list of strings, each passing `ok`; missing is an empty list.
    fn names(
        &mut self,
        at: At,
        obj: &Map<String, Value>,
        field: &str,
        ok: fn(&str) -> bool,
        what: &str,
    ) -> Option<Vec<String>> {
        let Some(v) = obj.get(field) else { return Some(Vec::new()) };
        let Some(items) =
            v.as_array().and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>())
        else {
            self.problem(at, field, "must be a list of strings");
            return None;
        };
        let bad: Vec<&String> = items.iter().filter(|s| !ok(s)).collect();
        if !bad.is_empty() {
            self.problem(at, field, format!("{bad:?}: each must be {what}"));
            return None;
        }
        Some(items)
    }

    fn account_name(&mut self, at: At, obj: &Map<String, Value>, field: &str) -> Option<String> {
        let name = self.required_string(at, obj, field)?;
        if !is_account_name(&name) {
            self.problem(
                at,
                field,
                format!("\"{name}\" is not a valid user or group name (lower-case letters, digits, \"_\" and \"-\", not starting with a digit or \"-\", at most 32 characters)"),
            );
            return None;
        }
        Some(name)
    }

    /// An optional user or group id; the outer None means the field was bad.
    fn optional_id(&mut self, at: At, obj: &Map<String, Value>, field: &str) -> Option<Option<u32>> {
        match obj.get(field) {
            None => Some(None),
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n < 65534 => Some(Some(n)),
                _ => {
                    self.problem(at, field, "must be a number from 0 to 65533");
                    None
                }
            },
        }
    }

    fn timeout(&mut self, at: At, obj: &Map<String, Value>) -> Option<Duration> {
        match obj.get("timeout_s") {
            None => Some(Duration::from_secs(DEFAULT_TIMEOUT_S)),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Some(Duration::from_secs(n)),
                _ => {
                    self.problem(at, "timeout_s", "must be a positive whole number of seconds");
                    None
                }
            },
        }
    }

    fn unknown_fields(&mut self, at: At, obj: &Map<String, Value>, allowed: &[&str]) {
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                self.problem(at, key, format!("unknown field (allowed here: {})", allowed.join(", ")));
            }
        }
    }

    fn required_string(&mut self, at: At, obj: &Map<String, Value>, field: &str) -> Option<String> {
        match obj.get(field) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.problem(at, field, "must be a string");
                None
            }
            None => {
                self.problem(at, field, "missing");
                None
            }
        }
    }

    fn optional_string(&mut self, at: At, obj: &Map<String, Value>, field: &str) -> Option<String> {
        obj.get(field)?;
        self.required_string(at, obj, field)
    }

    fn optional_bool(&mut self, at: At, obj: &Map<String, Value>, field: &str) -> bool {
        match obj.get(field) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.problem(at, field, "must be true or false");
                false
            }
        }
    }

    fn root_path(&mut self, at: At, obj: &Map<String, Value>, field: &str) -> Option<RootPath> {
        let raw = self.required_string(at, obj, field)?;
        match parse_root_path(&raw) {
            Ok(p) => Some(p),
            Err(why) => {
                self.problem(at, field, format!("\"{raw}\" {why}"));
                None
            }
        }
    }

    fn attrs(&mut self, at: At, obj: &Map<String, Value>) -> Attrs {
        let mode = self.optional_string(at, obj, "mode").and_then(|m| match parse_mode(&m) {
            Ok(mode) => Some(mode),
            Err(why) => {
                self.problem(at, "mode", format!("\"{m}\" {why}"));
                None
            }
        });
        let owner = self.principal(at, obj, "owner");
        let group = self.principal(at, obj, "group");
        Attrs { mode, owner, group }
    }

    fn principal(&mut self, at: At, obj: &Map<String, Value>, field: &str) -> Option<Principal> {
        match obj.get(field)? {
            Value::String(s) if s.is_empty() => {
                self.problem(at, field, "must not be empty");
                None
            }
            Value::String(s) => Some(match s.parse::<u32>() {
                Ok(n) => Principal::Id(n),
                Err(_) => Principal::Name(s.clone()),
            }),
            Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Some(Principal::Id(n)),
                None => {
                    self.problem(at, field, "must be a name or a non-negative number");
                    None
                }
            },
            _ => {
                self.problem(at, field, "must be a name or a number");
                None
            }
        }
    }

    fn content(&mut self, at: At, obj: &Map<String, Value>) -> Option<Content> {
        match self.either(at, obj, "content", "source")? {
            "content" => self.required_string(at, obj, "content").map(|s| Content::Inline(s.into_bytes())),
            _ => {
                let rel = self.required_string(at, obj, "source")?;
                self.host_file(at, "source", &rel).map(Content::Source)
            }
        }
    }

    /// Which one of two exclusive fields the step gives; a problem when it gives both or neither.
    fn either(&mut self, at: At, obj: &Map<String, Value>, a: &'static str, b: &'static str) -> Option<&'static str> {
        match (obj.get(a), obj.get(b)) {
            (Some(_), Some(_)) => {
                self.problem(at, b, format!("give either \"{a}\" or \"{b}\", not both"));
                None
            }
            (None, None) => {
                self.problem(at, a, format!("missing (give \"{a}\" or \"{b}\")"));
                None
            }
            (Some(_), None) => Some(a),
            (None, Some(_)) => Some(b),
        }
    }

    /// A regular file on the host named relative to the plan's directory.
    fn host_file(&mut self, at: At, field: &str, rel: &str) -> Option<PathBuf> {
        let path = self.base.join(rel);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            Ok(_) => {
                self.problem(at, field, format!("\"{}\" is not a regular file", path.display()));
                None
            }
            Err(e) => {
                self.problem(at, field, format!("cannot read \"{}\": {e}", path.display()));
                None
            }
        }
    }

    fn command(&mut self, at: At, obj: &Map<String, Value>, field: &str) -> Option<Command> {
        let argv = match obj.get(field) {
            None => {
                self.problem(at, field, "missing (a list of strings: program and arguments)");
                None
            }
            Some(Value::Array(items)) if !items.is_empty() => {
                let argv: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_owned)).collect();
                if argv.is_none() {
                    self.problem(at, field, "every element must be a string");
                }
                argv
            }
            Some(_) => {
                self.problem(at, field, "must be a non-empty list of strings (program and arguments)");
                None
            }
        };
        let timeout = self.timeout(at, obj);
        let env = match obj.get("env") {
            None => Some(BTreeMap::new()),
            Some(Value::Object(m)) => {
                let env: Option<BTreeMap<String, String>> =
                    m.iter().map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect();
                if env.is_none() {
                    self.problem(at, "env", "every value must be a string");
                }
                env
            }
            Some(_) => {
                self.problem(at, "env", "must be an object of strings");
                None
            }
        };
        Some(Command { argv: argv?, timeout: timeout?, env: env? })
    }
}

/// A user or group name as Debian's adduser accepts for system accounts.
fn is_account_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    first_ok
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A systemd unit name: `name.suffix` with a known suffix, no `/`.
fn is_unit_name(unit: &str) -> bool {
    const SUFFIXES: &[&str] =
        &["service", "socket", "timer", "path", "target", "mount", "automount", "swap", "slice", "device", "scope"];
    let Some((stem, suffix)) = unit.rsplit_once('.') else { return false };
    SUFFIXES.contains(&suffix)
        && !stem.is_empty()
        && unit.len() <= 255
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b))
}

/// A Debian package name, optionally with `:arch` or `=version` (for apt).
fn is_package_name(name: &str) -> bool {
    let base = name.split([':', '=']).next().unwrap_or("");
    base.len() >= 2
        && base.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.:=~_".contains(&b))
}

/// Check a plan path: absolute, no `.`/`..` components, not the root itself, no NUL.
fn parse_root_path(raw: &str) -> Result<RootPath, &'static str> {
    if raw.contains('\0') {
        return Err("contains a NUL byte");
    }
    if !raw.starts_with('/') {
        return Err("is not absolute (paths are absolute inside the root, like /etc/x.conf)");
    }
    let mut rel = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(part) => rel.push(part),
            Component::ParentDir => return Err("contains \"..\" (a path may not leave the root)"),
            Component::CurDir | Component::Prefix(_) => return Err("contains \".\""),
        }
    }
    if raw.split('/').any(|part| part == ".") {
        return Err("contains \".\"");
    }
    if rel.as_os_str().is_empty() {
        return Err("is the root itself");
    }
    Ok(RootPath(rel))
}

/// Parse an octal mode string such as "0755" or "4755".
fn parse_mode(raw: &str) -> Result<u32, &'static str> {
    if raw.is_empty() || raw.len() > 5 || !raw.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("is not an octal mode (like \"0644\")");
    }
    let mode = u32::from_str_radix(raw, 8).map_err(|_| "is not an octal mode (like \"0644\")")?;
    if mode > 0o7777 {
        return Err("is larger than 07777");
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert_eq!(parse_root_path("/etc/x").unwrap().rel(), Path::new("etc/x"));
        assert!(parse_root_path("etc/x").is_err());
        assert!(parse_root_path("/etc/../x").is_err());
        assert!(parse_root_path("/").is_err());
        assert!(parse_root_path("/etc/./x").is_err());
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("rw").is_err());
        assert!(parse_mode("17777").is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let dir = std::env::temp_dir().join(format!("snapinst-plan-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plan.json");
        std::fs::write(
            &file,
            r#"{"name":"x","steps":[
                {"id":"a","type":"dir","path":"rel","mode":"999"},
                {"id":"a","type":"bogus"},
                {"id":"c","type":"file","path":"/x","source":"nope","extra":1}
            ]}"#,
        )
        .unwrap();
        let err = load(&file).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("step \"a\" (#1) field \"path\": \"rel\" is not absolute"), "{text}");
        assert!(text.contains("step \"a\" (#1) field \"mode\": \"999\" is not an octal mode"), "{text}");
        assert!(text.contains("step \"a\" (#2) field \"id\": duplicate id"), "{text}");
        assert!(text.contains("unknown step type \"bogus\""), "{text}");
        assert!(text.contains("step \"c\" (#3) field \"extra\": unknown field"), "{text}");
        assert!(text.contains("step \"c\" (#3) field \"source\": cannot read"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
