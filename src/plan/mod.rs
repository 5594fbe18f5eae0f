//! The validated plan: what `apply` installs. A plan file (JSON, YAML or TOML) is parsed and checked once, in [`parse`]; everything
//! downstream works on these types and never re-checks strings. Nothing here touches the filesystem but reading the
//! plan and its source files.

mod formats;
#[cfg(test)]
mod fuzzing;
mod locate;
mod parse;
mod schema_check;
pub(crate) mod spec;

use crate::pathbytes::PathText;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use parse::{from_value, load};

/// How many random cases a property test runs: `PROPTEST_CASES` when set, else `default`.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A validated install plan.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub name: String,
    pub version: Option<String>,
    pub steps: Vec<Step>,
    /// sha256 of the plan file, recorded in the journal.
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub id: String,
    pub action: Action,
}

/// A path inside the managed root, relative to it: absolute in the plan, no `.` or `..`, never the root itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RootPath(PathBuf);

impl RootPath {
    /// The path relative to the root (`etc/hello.conf`).
    pub fn rel(&self) -> &Path {
        &self.0
    }
    pub fn parent(&self) -> Option<RootPath> {
        self.0.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| RootPath(p.to_path_buf()))
    }
    pub fn file_name(&self) -> &std::ffi::OsStr {
        self.0.file_name().expect("a RootPath always has a last component")
    }
    pub fn from_rel(rel: &Path) -> RootPath {
        RootPath(rel.to_path_buf())
    }
}

impl std::fmt::Display for RootPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0.escaped())
    }
}

/// An owner or group: a name looked up in the staged root, or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    Name(String),
    Id(u32),
}

/// Mode and ownership asked for a created path.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attrs {
    pub mode: Option<u32>,
    pub owner: Option<Principal>,
    pub group: Option<Principal>,
}

#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
    /// A descriptor of snapinst's that the command gets open, under the same number (dpkg's `--status-fd`).
    pub pass_fd: Option<i32>,
}

#[derive(Debug, Clone)]
pub(crate) enum Action {
    Dir {
        path: RootPath,
        attrs: Attrs,
    },
    File {
        path: RootPath,
        content: Content,
        attrs: Attrs,
    },
    Symlink {
        path: RootPath,
        target: String,
    },
    Remove {
        path: RootPath,
        recursive: bool,
        missing_ok: bool,
    },
    /// `changes`: the paths the command writes (none nested in another), saved before it runs on the journal
    /// backend; `undo`: run in the root after they were restored, when the transaction fails (journal backend).
    Run {
        command: Command,
        changes: Vec<RootPath>,
        undo: Option<Command>,
    },
    Verify {
        command: Command,
        expect_exit: i32,
        expect_stdout: Option<String>,
    },
    Host {
        run: Command,
        undo: Command,
    },
    Group {
        group: GroupSpec,
    },
    User {
        user: UserSpec,
    },
    Service {
        unit: String,
        change: UnitChange,
    },
    Package {
        packages: PackageSpec,
    },
    Fetch {
        fetch: Fetch,
    },
    Playbook {
        playbook: Playbook,
    },
}

/// An Ansible playbook run against the staged root (`steps::playbook`).
#[derive(Debug, Clone)]
pub(crate) struct Playbook {
    /// The playbook, resolved against the plan's directory.
    pub path: PathBuf,
    /// `ansible-playbook` as found on the host's PATH when the plan was read.
    pub program: PathBuf,
    pub extra_vars: BTreeMap<String, serde_json::Value>,
    pub tags: Vec<String>,
    pub timeout: Duration,
}

/// A download the fetch step makes.
#[derive(Debug, Clone)]
pub(crate) struct Fetch {
    pub url: String,
    pub path: RootPath,
    /// Lowercase hex.
    pub sha256: String,
    pub extract: Option<spec::ArchiveKind>,
    pub attrs: Attrs,
    pub timeout: Duration,
}

/// A system group to ensure in the root's /etc/group and /etc/gshadow.
#[derive(Debug, Clone)]
pub(crate) struct GroupSpec {
    pub name: String,
    /// None: allocated from the root's system range.
    pub gid: Option<u32>,
}

/// A system user to ensure in the root's /etc/passwd and /etc/shadow (and its groups).
#[derive(Debug, Clone)]
pub(crate) struct UserSpec {
    pub name: String,
    /// None: allocated from the root's system range.
    pub uid: Option<u32>,
    /// The primary group; None: a group named like the user, made when missing.
    pub group: Option<String>,
    /// Supplementary groups, which must exist.
    pub groups: Vec<String>,
    /// Home, shell and comment: checked against an existing user only when given; defaults for a new user are
    /// /nonexistent, /usr/sbin/nologin and empty.
    pub home: Option<RootPath>,
    pub shell: Option<String>,
    pub comment: Option<String>,
    pub create_home: bool,
}

/// What a service step does to a systemd unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnitChange {
    Enable,
    Disable,
    Mask,
    Unmask,
}

/// A package step: removals, then local .deb files, then packages from the root's apt sources.
#[derive(Debug, Clone)]
pub(crate) struct PackageSpec {
    /// .deb files, resolved against the plan's directory.
    pub debs: Vec<PathBuf>,
    pub apt: Vec<String>,
    pub remove: Vec<String>,
    pub purge: bool,
    /// `apt-get update` and `apt-get full-upgrade`, last.
    pub upgrade: bool,
    pub timeout: Duration,
}

impl PackageSpec {
    /// The fields that need the root's own tool (`dpkg`, `apt-get`) to do their work.
    pub fn tools_needed(&self) -> Vec<(&'static str, &'static str)> {
        let mut needed = Vec::new();
        if !self.remove.is_empty() {
            needed.push(("remove", "usr/bin/dpkg"));
        }
        if !self.debs.is_empty() {
            needed.push(("debs", "usr/bin/dpkg"));
        }
        if !self.apt.is_empty() {
            needed.push(("apt", "usr/bin/apt-get"));
        }
        if self.upgrade {
            needed.push(("upgrade", "usr/bin/apt-get"));
        }
        needed
    }
}

/// A file step's content: inline text, or a source file (already resolved against the plan's directory).
#[derive(Debug, Clone)]
pub(crate) enum Content {
    Inline(Vec<u8>),
    Source(PathBuf),
}

impl Plan {
    /// Bytes the plan writes into the root, for the free-space check.
    pub fn bytes_written(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| match &s.action {
                Action::File { content: Content::Inline(b), .. } => b.len() as u64,
                Action::File { content: Content::Source(p), .. } => file_len(p),
                // Unpacked packages take several times their archive's size.
                Action::Package { packages } => packages.debs.iter().map(|p| 3 * file_len(p)).sum(),
                _ => 0,
            })
            .sum()
    }
}

impl Plan {
    /// What `apply --if-changed` compares with the current generation's: a SHA-256 of the plan's text and of every
    /// file it names (a `file` step's `source`, a `package` step's `debs`), by content, so that a changed source
    /// file changes it too. Reads those files whole.
    pub fn digest(&self) -> anyhow::Result<String> {
        use anyhow::Context;
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"snapinst plan digest v1\n");
        h.update(self.sha256.as_bytes());
        let named = self.steps.iter().flat_map(|s| match &s.action {
            Action::File { content: Content::Source(p), .. } => vec![p],
            Action::Package { packages } => packages.debs.iter().collect(),
            Action::Playbook { playbook } => vec![&playbook.path],
            _ => Vec::new(),
        });
        for p in named {
            let mut f = std::fs::File::open(p).with_context(|| format!("reading {}", p.escaped()))?;
            let mut file = Sha256::new();
            std::io::copy(&mut f, &mut file).with_context(|| format!("reading {}", p.escaped()))?;
            h.update(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()));
            h.update([0]);
            h.update(file.finalize());
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// `name` as the host's PATH finds it: an executable regular file.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

impl Action {
    /// Whether the step runs programs inside the root that change it in ways the journal backend cannot take back:
    /// a package or playbook step, or a run step that does not declare the paths it changes.
    pub fn changes_undeclared(&self) -> bool {
        match self {
            Action::Run { changes, .. } => changes.is_empty(),
            Action::Package { .. } | Action::Playbook { .. } => true,
            _ => false,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Action::Dir { .. } => "dir",
            Action::File { .. } => "file",
            Action::Symlink { .. } => "symlink",
            Action::Remove { .. } => "remove",
            Action::Run { .. } => "run",
            Action::Verify { .. } => "verify",
            Action::Host { .. } => "host",
            Action::Group { .. } => "group",
            Action::User { .. } => "user",
            Action::Service { .. } => "service",
            Action::Package { .. } => "package",
            Action::Fetch { .. } => "fetch",
            Action::Playbook { .. } => "playbook",
        }
    }
}
