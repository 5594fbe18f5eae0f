//! The plan file's format as Rust types: what each step type's fields are called, which are required, and their JSON
//! types and ranges. `snapinst schema` prints the JSON Schema generated from these types (with their doc comments
//! as descriptions), and [`super::parse`] checks every plan against that same schema before deserializing it into
//! these types, so the schema editors use and the checks snapinst makes cannot drift apart. What the types cannot
//! say (a path must be absolute, a mode octal, a source file must exist) is checked in `parse`.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// An install plan for snapinst: steps applied to a root as one transaction.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(title = "snapinst plan", extend("additionalProperties" = false))]
pub(crate) struct PlanSpec {
    /// Where editors find this schema (`snapinst schema > plan.schema.json`); ignored by snapinst.
    #[serde(rename = "$schema")]
    #[allow(dead_code)] // only for editors
    pub schema: Option<String>,
    /// The plan's name, shown in `snapinst list` and in the JSON events.
    pub name: String,
    /// The plan's version.
    pub version: Option<String>,
    /// What the plan installs (for people; ignored by snapinst).
    #[allow(dead_code)] // only in the schema
    pub description: Option<String>,
    /// The steps, run in order.
    #[allow(dead_code)] // in the schema; `parse` reads the steps one by one, to report each step's problems
    pub steps: Vec<StepSpec>,
}

/// One step: an id unique in the plan, a type, and the type's fields.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("unevaluatedProperties" = false))]
pub(crate) struct StepSpec {
    /// Unique in the plan; used in messages, events and `resume --from`.
    #[schemars(length(min = 1))]
    #[allow(dead_code)] // checked by `parse` before the step is deserialized, to name the step in every message
    pub id: String,
    /// What the step is for (for people; ignored by snapinst).
    #[allow(dead_code)] // only in the schema
    pub description: Option<String>,
    #[serde(flatten)]
    pub kind: StepKind,
}

/// The step types, told apart by the `type` field.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum StepKind {
    Dir(DirSpec),
    File(FileSpec),
    Symlink(SymlinkSpec),
    Remove(RemoveSpec),
    Run(RunSpec),
    Verify(VerifySpec),
    Host(HostSpec),
    Group(GroupSpec),
    User(UserSpec),
    Service(ServiceSpec),
    Package(PackageSpec),
    Fetch(FetchSpec),
    Playbook(PlaybookSpec),
}

/// An owner or group: a name looked up in the root's /etc/passwd or /etc/group, or a number.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum PrincipalSpec {
    Id(u32),
    Name(String),
}

/// Create a directory (and its missing parents).
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct DirSpec {
    /// Absolute path inside the root.
    pub path: String,
    /// Octal mode, like "0755".
    pub mode: Option<String>,
    pub owner: Option<PrincipalSpec>,
    pub group: Option<PrincipalSpec>,
}

/// Write a file: inline `content` or a `source` file relative to the plan's directory (one of the two).
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct FileSpec {
    /// Absolute path inside the root.
    pub path: String,
    /// The text to write.
    pub content: Option<String>,
    /// A file on the host, relative to the plan file's directory.
    pub source: Option<String>,
    /// Octal mode, like "0644".
    pub mode: Option<String>,
    pub owner: Option<PrincipalSpec>,
    pub group: Option<PrincipalSpec>,
}

/// Create a symbolic link.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct SymlinkSpec {
    /// Absolute path inside the root.
    pub path: String,
    /// The link's target, stored as given.
    pub target: String,
}

/// Remove a path.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct RemoveSpec {
    /// Absolute path inside the root.
    pub path: String,
    /// Remove a non-empty directory with its contents (default false).
    pub recursive: Option<bool>,
    /// A missing path is not an error (default false).
    pub missing_ok: Option<bool>,
}

/// Download a URL into the root, checked against its SHA-256: as a file, or unpacked into a directory.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct FetchSpec {
    /// An http:// or https:// URL.
    pub url: String,
    /// Absolute path inside the root: the file, or with `extract` the directory that becomes the archive's
    /// contents (it replaces a directory already there).
    pub path: String,
    /// The SHA-256 of what the URL serves (the archive, with `extract`), 64 hex digits.
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: String,
    /// Unpack the download, an archive of this kind, into `path`.
    pub extract: Option<ArchiveKind>,
    /// Octal mode of the file (default 0644), or of the directory with `extract` (default 0755).
    pub mode: Option<String>,
    pub owner: Option<PrincipalSpec>,
    pub group: Option<PrincipalSpec>,
    /// Seconds the whole download may take (default 300).
    #[schemars(range(min = 1))]
    pub timeout_s: Option<u64>,
}

/// Run an Ansible playbook against the staged root, through Ansible's chroot connection
/// (`community.general.chroot`): what its tasks change is part of the transaction. Needs `ansible-playbook` on the
/// host, with the community.general collection, and Python in the root. The playbook's plays target `all`.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct PlaybookSpec {
    /// The playbook, relative to the plan file's directory.
    pub playbook: String,
    /// Variables passed with `--extra-vars`.
    pub extra_vars: Option<BTreeMap<String, serde_json::Value>>,
    /// Run only the tasks with these tags (`--tags`).
    #[schemars(length(min = 1))]
    pub tags: Option<Vec<String>>,
    /// Seconds before ansible-playbook is killed (default 1800).
    #[schemars(range(min = 1))]
    pub timeout_s: Option<u64>,
}

/// The archive kinds a fetch step unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub(crate) enum ArchiveKind {
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "tar.xz")]
    TarXz,
    #[serde(rename = "zip")]
    Zip,
}

/// A command: program and arguments.
type Argv = Vec<String>;

/// Run a command chrooted in the staged root.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct RunSpec {
    /// Program and arguments.
    #[schemars(length(min = 1))]
    pub command: Argv,
    /// Seconds before the command is killed (default 300).
    #[schemars(range(min = 1))]
    pub timeout_s: Option<u64>,
    /// Added to the command's environment.
    pub env: Option<BTreeMap<String, String>>,
    /// The paths the command writes (absolute inside the root; files, or directories with everything below them).
    /// The journal backend needs them: each is saved before the command runs and restored exactly when the
    /// transaction fails. Writes anywhere else are not undone. The staged backends discard the whole stage and do
    /// not need them.
    #[schemars(length(min = 1))]
    pub changes: Option<Vec<String>>,
    /// Journal backend: a command run chrooted in the root when the transaction fails, after the declared paths
    /// were restored (the undos of several steps run newest first), for effects the restore cannot take back.
    #[schemars(length(min = 1))]
    pub undo: Option<Argv>,
}

/// Run a check chrooted in the staged root; the transaction fails when it does not pass.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct VerifySpec {
    /// Program and arguments.
    #[schemars(length(min = 1))]
    pub command: Argv,
    /// Seconds before the command is killed (default 300).
    #[schemars(range(min = 1))]
    pub timeout_s: Option<u64>,
    /// Added to the command's environment.
    pub env: Option<BTreeMap<String, String>>,
    /// The exit status that passes (default 0).
    pub expect_exit: Option<u8>,
    /// Text that must appear in the standard output.
    pub expect_stdout: Option<String>,
}

/// A change on the host, outside the root, with the command that undoes it.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct HostSpec {
    /// The command that makes the change.
    #[serde(rename = "do")]
    #[schemars(length(min = 1))]
    pub run: Argv,
    /// The command that reverts it, run when the transaction is rolled back.
    #[schemars(length(min = 1))]
    pub undo: Argv,
    /// Seconds before a command is killed (default 300).
    #[schemars(range(min = 1))]
    pub timeout_s: Option<u64>,
    /// Added to the commands' environment.
    pub env: Option<BTreeMap<String, String>>,
}

/// Ensure a system group in /etc/group and /etc/gshadow.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct GroupSpec {
    /// The group's name.
    pub name: String,
    /// Its gid (default: the highest free one in the root's system range).
    #[schemars(range(max = 65533))]
    pub gid: Option<u32>,
}

/// Ensure a system user in /etc/passwd and /etc/shadow (and its groups).
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct UserSpec {
    /// The user's name.
    pub name: String,
    /// Its uid (default: the highest free one in the root's system range).
    #[schemars(range(max = 65533))]
    pub uid: Option<u32>,
    /// The primary group, which must exist (default: a group named like the user, made when missing).
    pub group: Option<String>,
    /// Supplementary groups, which must exist; the user is added to each.
    pub groups: Option<Vec<String>>,
    /// The home directory (default /nonexistent).
    pub home: Option<String>,
    /// Make the home directory when it is missing (default false).
    pub create_home: Option<bool>,
    /// The login shell (default /usr/sbin/nologin).
    pub shell: Option<String>,
    /// The comment (GECOS) field.
    pub comment: Option<String>,
}

/// Enable, disable, mask or unmask a systemd unit, as `systemctl --root` does (give `enable` or `mask`).
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ServiceSpec {
    /// The unit, like "hello.service".
    pub unit: String,
    /// true: enable the unit; false: disable it.
    pub enable: Option<bool>,
    /// true: mask the unit; false: unmask it.
    pub mask: Option<bool>,
}

/// Install, remove and upgrade Debian packages with the root's own dpkg and apt: `remove`, then `debs`, then `apt`,
/// then `upgrade`.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct PackageSpec {
    /// .deb files, relative to the plan file's directory.
    pub debs: Option<Vec<String>>,
    /// Packages to install from the root's apt sources.
    pub apt: Option<Vec<String>>,
    /// Packages to remove.
    pub remove: Option<Vec<String>>,
    /// Purge the removed packages (default false).
    pub purge: Option<bool>,
    /// Upgrade the whole system from the root's own apt sources (`apt-get update`, then `apt-get full-upgrade`),
    /// after the rest (default false).
    pub upgrade: Option<bool>,
    /// Seconds before each command is killed (default 300).
    #[schemars(range(min = 1))]
    pub timeout_s: Option<u64>,
}

/// The plan's JSON Schema.
pub(crate) fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PlanSpec)).expect("a schema is JSON")
}
