//! Reading a plan file (JSON, YAML or TOML: `super::formats`) and checking all of it at once. The plan is first checked against the schema generated from
//! [`super::spec`] (unknown fields, missing fields, wrong JSON types), then deserialized into those types and
//! checked for what a schema cannot say (duplicate ids, paths that are not absolute or leave the root, bad modes,
//! missing source files, bad names). Every problem is collected with the step and field it concerns, so an
//! administrator fixes a plan in one pass. Nothing is changed on disk here.

use super::locate::Locations;
use super::schema_check::Schema;
use super::spec::{self, PrincipalSpec, StepKind};
use super::{Action, Attrs, Command, Content, Plan, Principal, RootPath, Step, UnitChange};
use crate::pathbytes::PathText;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

const DEFAULT_TIMEOUT_S: u64 = 300;
/// A playbook step's default timeout: a playbook may install packages and much more.
const PLAYBOOK_TIMEOUT_S: u64 = 1800;

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
            write!(f, "{}: {}", self.file.escaped(), p)?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanProblems {}

/// Read and validate the plan at `file`.
pub(crate) fn load(file: &Path) -> Result<Plan, PlanProblems> {
    let fail = |p: String| PlanProblems { file: file.to_path_buf(), problems: vec![p] };
    let bytes = std::fs::read(file).map_err(|e| fail(format!("cannot read the plan: {e}")))?;
    let format = super::formats::Format::of(file);
    let value = super::formats::read(format, &bytes).map_err(fail)?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    // The text is UTF-8: read() refused it otherwise.
    let locations = Locations::of(format, std::str::from_utf8(&bytes).unwrap_or_default());
    check(&value, &bytes, base, file, locations)
}

/// Validate a plan snapinst made itself (`snapinst upgrade`), shown as `shown_as` in messages; its files (it has
/// none) would be relative to the working directory.
pub(crate) fn from_value(value: &Value, shown_as: &Path) -> Result<Plan, PlanProblems> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    check(value, &bytes, PathBuf::from("."), shown_as, Locations::default())
}

fn check(value: &Value, bytes: &[u8], base: PathBuf, file: &Path, locations: Locations) -> Result<Plan, PlanProblems> {
    let mut checker = Checker { base, problems: Vec::new(), schema: Schema::new(spec::schema()), locations };
    let plan = checker.plan(value, hex::encode(Sha256::digest(bytes)));
    match plan {
        Some(plan) if checker.problems.is_empty() => Ok(plan),
        _ => Err(PlanProblems { file: file.to_path_buf(), problems: checker.problems }),
    }
}

struct Checker {
    base: PathBuf,
    problems: Vec<String>,
    schema: Schema,
    /// Where the fields are in the file, for the messages (none for a plan snapinst made).
    locations: Locations,
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
        let what = at.describe(field);
        self.problems.push(match self.locations.of_field(at.step.map(|(_, n)| n - 1), field) {
            Some((line, column)) => format!("line {line} column {column}: {what}: {why}"),
            None => format!("{what}: {why}"),
        });
    }

    /// Report the schema's problems with `obj`, and return `obj` without the fields that had one, ready to
    /// deserialize; None when a required field is missing or bad (it cannot be deserialized then).
    fn structure(&mut self, at: At, obj: &Map<String, Value>, schemas: &[&Value], skip: &[&str]) -> Option<Value> {
        let found = self.schema.check_object(obj, schemas, skip);
        let mut rest = obj.clone();
        let mut usable = true;
        for (field, why) in found {
            usable &= !self.schema.is_required(schemas, &field);
            rest.remove(&field);
            self.problem(at, &field, why);
        }
        usable.then_some(Value::Object(rest))
    }

    fn plan(&mut self, value: &Value, sha256: String) -> Option<Plan> {
        let top = At { step: None };
        let Some(obj) = value.as_object() else {
            self.problem(top, "(plan)", "the plan must be an object (a JSON object, a YAML mapping or a TOML table)");
            return None;
        };
        let plan_schema = self.schema.plan().clone();
        let head = self.structure(top, obj, &[&plan_schema], &["steps"]);
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
        // The steps were read one by one above; the rest of the plan is read here.
        let mut head = head?;
        head["steps"] = Value::Array(Vec::new());
        let spec = match serde_json::from_value::<spec::PlanSpec>(head) {
            Ok(spec) => spec,
            Err(e) => {
                self.problem(top, "(plan)", e);
                return None;
            }
        };
        if spec.name.is_empty() {
            self.problem(top, "name", "must not be empty");
        }
        Some(Plan { name: spec.name, version: spec.version, steps, sha256 })
    }

    fn steps(&mut self, list: &[Value]) -> Vec<Step> {
        let mut seen = HashSet::new();
        let mut steps = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let n = i + 1;
            let Some(obj) = v.as_object() else {
                self.problems
                    .push(format!("step #{n}: must be an object (a JSON object, a YAML mapping or a TOML table)"));
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
            if let Some(action) = self.step(at, obj) {
                steps.push(Step { id: id.clone(), action });
            }
        }
        steps
    }

    /// One step: its type, the schema's checks for that type, then the checks a schema cannot make.
    fn step(&mut self, at: At, obj: &Map<String, Value>) -> Option<Action> {
        let types = self.schema.step_types().join(", ");
        let kind = match obj.get("type") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                self.problem(at, "type", format!("must be a string (one of {types})"));
                return None;
            }
            None => {
                self.problem(at, "type", format!("missing (one of {types})"));
                return None;
            }
        };
        let Some(own) = self.schema.step_type(kind).cloned() else {
            self.problem(at, "type", format!("unknown step type \"{kind}\" (expected one of {types})"));
            return None;
        };
        let common = self.schema.def("StepSpec").clone();
        let usable = self.structure(at, obj, &[&common, &own], &["id", "type"])?;
        match serde_json::from_value::<spec::StepSpec>(usable) {
            Ok(step) => self.action(at, step.kind),
            Err(e) => {
                self.problem(at, "(step)", e);
                None
            }
        }
    }

    fn action(&mut self, at: At, kind: StepKind) -> Option<Action> {
        match kind {
            StepKind::Dir(d) => {
                let path = self.root_path(at, "path", &d.path);
                let attrs = self.attrs(at, d.mode, d.owner, d.group);
                Some(Action::Dir { path: path?, attrs: attrs? })
            }
            StepKind::File(f) => {
                let path = self.root_path(at, "path", &f.path);
                let content = match self.either(at, "content", f.content, "source", f.source)? {
                    Either::First(text) => Some(Content::Inline(text.into_bytes())),
                    Either::Second(rel) => self.host_file(at, "source", &rel).map(Content::Source),
                };
                let attrs = self.attrs(at, f.mode, f.owner, f.group);
                Some(Action::File { path: path?, content: content?, attrs: attrs? })
            }
            StepKind::Symlink(l) => {
                let path = self.root_path(at, "path", &l.path);
                if l.target.is_empty() {
                    self.problem(at, "target", "must not be empty");
                }
                Some(Action::Symlink { path: path?, target: l.target })
            }
            StepKind::Remove(r) => {
                let path = self.root_path(at, "path", &r.path)?;
                Some(Action::Remove {
                    path,
                    recursive: r.recursive.unwrap_or(false),
                    missing_ok: r.missing_ok.unwrap_or(false),
                })
            }
            StepKind::Run(r) => {
                let changes = self.change_paths(at, r.changes)?;
                let undo = r.undo.map(|argv| command(argv, r.timeout_s, r.env.clone()));
                Some(Action::Run { command: command(r.command, r.timeout_s, r.env), changes, undo })
            }
            StepKind::Verify(v) => Some(Action::Verify {
                command: command(v.command, v.timeout_s, v.env),
                expect_exit: i32::from(v.expect_exit.unwrap_or(0)),
                expect_stdout: v.expect_stdout,
            }),
            StepKind::Host(h) => Some(Action::Host {
                run: command(h.run, h.timeout_s, h.env.clone()),
                undo: command(h.undo, h.timeout_s, h.env),
            }),
            StepKind::Group(g) => {
                let name = self.account_name(at, "name", g.name)?;
                Some(Action::Group { group: super::GroupSpec { name, gid: g.gid } })
            }
            StepKind::User(u) => self.user(at, u),
            StepKind::Service(s) => self.service(at, s),
            StepKind::Package(p) => self.package(at, p),
            StepKind::Fetch(f) => self.fetch(at, f),
            StepKind::Playbook(p) => self.playbook(at, p),
        }
    }

    fn playbook(&mut self, at: At, p: spec::PlaybookSpec) -> Option<Action> {
        let path = self.host_file(at, "playbook", &p.playbook);
        let tags = self.names(at, "tags", p.tags.unwrap_or_default(), is_tag, "a tag (no commas or spaces)");
        let program = super::find_program("ansible-playbook");
        if program.is_none() {
            self.problem(
                at,
                "playbook",
                "needs ansible-playbook on the host, and it is not on PATH (install ansible-core and the \
                 community.general collection, whose chroot connection the step uses)",
            );
        }
        let timeout = Duration::from_secs(p.timeout_s.unwrap_or(PLAYBOOK_TIMEOUT_S));
        Some(Action::Playbook {
            playbook: super::Playbook {
                path: path?,
                program: program?,
                extra_vars: p.extra_vars.unwrap_or_default(),
                tags: tags?,
                timeout,
            },
        })
    }

    fn user(&mut self, at: At, u: spec::UserSpec) -> Option<Action> {
        let name = self.account_name(at, "name", u.name);
        let group = u.group.map(|g| self.account_name(at, "group", g));
        let groups = self.names(at, "groups", u.groups.unwrap_or_default(), is_account_name, "a group name");
        let home = u.home.map(|h| self.root_path(at, "home", &h));
        if u.shell.as_deref().is_some_and(|s| !s.starts_with('/') || s.contains([':', '\n'])) {
            self.problem(at, "shell", "must be an absolute path without \":\"");
        }
        if u.comment.as_deref().is_some_and(|c| c.contains([':', '\n'])) {
            self.problem(at, "comment", "must not contain \":\" or a line break");
        }
        let create_home = u.create_home.unwrap_or(false);
        if create_home && home.is_none() {
            self.problem(at, "create_home", "needs \"home\"");
        }
        Some(Action::User {
            user: super::UserSpec {
                name: name?,
                uid: u.uid,
                group: given_and_valid(group)?,
                groups: groups?,
                home: given_and_valid(home)?,
                shell: u.shell,
                comment: u.comment,
                create_home,
            },
        })
    }

    fn service(&mut self, at: At, s: spec::ServiceSpec) -> Option<Action> {
        if !is_unit_name(&s.unit) {
            self.problem(at, "unit", format!("\"{}\" is not a systemd unit name (like \"hello.service\")", s.unit));
        }
        let change = match self.either(at, "enable", s.enable, "mask", s.mask)? {
            Either::First(true) => UnitChange::Enable,
            Either::First(false) => UnitChange::Disable,
            Either::Second(true) => UnitChange::Mask,
            Either::Second(false) => UnitChange::Unmask,
        };
        Some(Action::Service { unit: s.unit, change })
    }

    fn package(&mut self, at: At, p: spec::PackageSpec) -> Option<Action> {
        // Asked of what the plan gives, not of what is left once a .deb that cannot be read is reported.
        let given = |list: &Option<Vec<String>>| list.as_ref().is_some_and(|l| !l.is_empty());
        let upgrade = p.upgrade.unwrap_or(false);
        let nothing_given = !given(&p.debs) && !given(&p.apt) && !given(&p.remove) && !upgrade;
        let is_deb: fn(&str) -> bool = |d| d.ends_with(".deb");
        let debs = self.names(at, "debs", p.debs.unwrap_or_default(), is_deb, "a path to a .deb file");
        let debs: Option<Vec<PathBuf>> =
            debs.map(|list| list.iter().filter_map(|rel| self.host_file(at, "debs", rel)).collect());
        let apt = self.names(at, "apt", p.apt.unwrap_or_default(), is_package_name, "a package name");
        let remove = self.names(at, "remove", p.remove.unwrap_or_default(), is_package_name, "a package name");
        let purge = p.purge.unwrap_or(false);
        let (debs, apt, remove) = (debs?, apt?, remove?);
        if nothing_given {
            self.problem(
                at,
                "debs",
                "the step has nothing to do (give \"debs\", \"apt\", \"remove\" or \"upgrade\": true)",
            );
        }
        if purge && remove.is_empty() {
            self.problem(at, "purge", "only applies to \"remove\"");
        }
        let timeout = Duration::from_secs(p.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S));
        Some(Action::Package { packages: super::PackageSpec { debs, apt, remove, purge, upgrade, timeout } })
    }

    /// A list whose every element passes `ok`.
    fn names(
        &mut self,
        at: At,
        field: &str,
        items: Vec<String>,
        ok: fn(&str) -> bool,
        what: &str,
    ) -> Option<Vec<String>> {
        let bad: Vec<&String> = items.iter().filter(|s| !ok(s)).collect();
        if !bad.is_empty() {
            self.problem(at, field, format!("{bad:?}: each must be {what}"));
            return None;
        }
        Some(items)
    }

    fn account_name(&mut self, at: At, field: &str, name: String) -> Option<String> {
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

    /// Exactly one of two exclusive fields; a problem when both or neither are given.
    fn either<A, B>(&mut self, at: At, a: &str, first: Option<A>, b: &str, second: Option<B>) -> Option<Either<A, B>> {
        match (first, second) {
            (Some(_), Some(_)) => {
                self.problem(at, b, format!("give either \"{a}\" or \"{b}\", not both"));
                None
            }
            (None, None) => {
                self.problem(at, a, format!("missing (give \"{a}\" or \"{b}\")"));
                None
            }
            (Some(x), None) => Some(Either::First(x)),
            (None, Some(y)) => Some(Either::Second(y)),
        }
    }

    /// A regular file on the host named relative to the plan's directory.
    fn host_file(&mut self, at: At, field: &str, rel: &str) -> Option<PathBuf> {
        let path = self.base.join(rel);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            Ok(_) => {
                self.problem(at, field, format!("\"{}\" is not a regular file", path.escaped()));
                None
            }
            Err(e) => {
                self.problem(at, field, format!("cannot read \"{}\": {e}", path.escaped()));
                None
            }
        }
    }

    fn root_path(&mut self, at: At, field: &str, raw: &str) -> Option<RootPath> {
        match parse_root_path(raw) {
            Ok(p) => Some(p),
            Err(why) => {
                self.problem(at, field, format!("\"{raw}\" {why}"));
                None
            }
        }
    }

    fn fetch(&mut self, at: At, f: spec::FetchSpec) -> Option<Action> {
        let path = self.root_path(at, "path", &f.path);
        let scheme_ok = ["http://", "https://"].iter().any(|s| f.url.to_ascii_lowercase().starts_with(s));
        if !scheme_ok {
            self.problem(at, "url", format!("\"{}\" is not an http:// or https:// URL", f.url));
        }
        let sha_ok = f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !sha_ok {
            self.problem(at, "sha256", format!("\"{}\" is not a SHA-256 (64 hex digits)", f.sha256));
        }
        let attrs = self.attrs(at, f.mode, f.owner, f.group);
        let (path, attrs) = (path?, attrs?);
        if !scheme_ok || !sha_ok {
            return None;
        }
        Some(Action::Fetch {
            fetch: super::Fetch {
                url: f.url,
                path,
                sha256: f.sha256.to_ascii_lowercase(),
                extract: f.extract,
                attrs,
                timeout: Duration::from_secs(f.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S)),
            },
        })
    }

    /// A run step's `changes`: each an absolute path inside the root; one inside another declared path is dropped
    /// (saving the outer one saves it).
    fn change_paths(&mut self, at: At, raw: Option<Vec<String>>) -> Option<Vec<RootPath>> {
        let raw = raw.unwrap_or_default();
        let mut paths = Vec::new();
        let mut ok = true;
        for (k, p) in raw.iter().enumerate() {
            match self.root_path(at, &format!("changes[{k}]"), p) {
                Some(p) => paths.push(p),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let all = paths.clone();
        paths.retain(|p| !all.iter().any(|q| q.rel() != p.rel() && p.rel().starts_with(q.rel())));
        paths.sort_by(|a, b| a.rel().cmp(b.rel()));
        paths.dedup_by(|a, b| a.rel() == b.rel());
        Some(paths)
    }

    fn attrs(
        &mut self,
        at: At,
        mode: Option<String>,
        owner: Option<PrincipalSpec>,
        group: Option<PrincipalSpec>,
    ) -> Option<Attrs> {
        let mode = match mode.map(|m| (parse_mode(&m), m)) {
            None => Some(None),
            Some((Ok(mode), _)) => Some(Some(mode)),
            Some((Err(why), m)) => {
                self.problem(at, "mode", format!("\"{m}\" {why}"));
                None
            }
        };
        let owner = self.principal(at, "owner", owner);
        let group = self.principal(at, "group", group);
        Some(Attrs { mode: mode?, owner: owner?, group: group? })
    }

    /// A name, or a number (also written as a string of digits); the outer None means it was bad.
    fn principal(&mut self, at: At, field: &str, p: Option<PrincipalSpec>) -> Option<Option<Principal>> {
        match p {
            None => Some(None),
            Some(PrincipalSpec::Id(n)) => Some(Some(Principal::Id(n))),
            Some(PrincipalSpec::Name(s)) if s.is_empty() => {
                self.problem(at, field, "must not be empty");
                None
            }
            Some(PrincipalSpec::Name(s)) => Some(Some(match s.parse::<u32>() {
                Ok(n) => Principal::Id(n),
                Err(_) => Principal::Name(s),
            })),
        }
    }
}

/// An optional field that was checked: not given is fine (`Some(None)`), given and bad is not (`None`).
fn given_and_valid<T>(field: Option<Option<T>>) -> Option<Option<T>> {
    match field {
        None => Some(None),
        Some(checked) => checked.map(Some),
    }
}

/// The value of one of two exclusive fields.
enum Either<A, B> {
    First(A),
    Second(B),
}

fn command(argv: Vec<String>, timeout_s: Option<u64>, env: Option<BTreeMap<String, String>>) -> Command {
    Command {
        argv,
        timeout: Duration::from_secs(timeout_s.unwrap_or(DEFAULT_TIMEOUT_S)),
        env: env.unwrap_or_default(),
        pass_fd: None,
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
/// An Ansible tag as `--tags` takes it, one of a comma-separated list.
fn is_tag(tag: &str) -> bool {
    !tag.is_empty() && !tag.contains([',', ' ', '\n'])
}

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
