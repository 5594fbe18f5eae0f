//! The state area of one managed root: where its generations, transaction records, stage and lock live, and the
//! two durable records: `state.json` (which generation is current, which are kept) and `txns/<id>.json` (one
//! write-ahead record per transaction, replaced atomically at each phase, never edited in place). The state
//! machine of a record is described in docs/transactions.md. This module only reads and writes records; it never
//! touches the root.

use crate::fsutil;
use crate::pathbytes::PathText;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BackendKind {
    Btrfs,
    Overlay,
    Journal,
    /// A part only (a FAT filesystem such as the EFI system partition): staged as a copy, never a root's backend.
    #[value(skip)]
    Copy,
    /// A part only (a btrfs subvolume such as `@home`): staged by snapshots, committed as a delta.
    #[value(skip)]
    Snapshot,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Btrfs => "btrfs",
            BackendKind::Overlay => "overlay",
            BackendKind::Journal => "journal",
            BackendKind::Copy => "copy",
            BackendKind::Snapshot => "snapshot",
        })
    }
}

/// One kept tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Generation {
    pub generation: u64,
    /// The generation this one was made from (None for the oldest kept).
    pub parent: Option<u64>,
    pub time: u64,
    pub plan: Option<String>,
    pub txn: Option<String>,
    /// The filesystems inside the root (relative to it) that this generation's transaction staged as parts.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "crate::pathbytes::many")]
    pub parts: Vec<PathBuf>,
    /// The generation this one's transaction started from was pruned: `parent` is an older one, so what the
    /// transaction changed can no longer be told from the two trees alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parent_pruned: bool,
    /// When its commit was done (nanoseconds since the epoch, the clock file times are set from): a path its delta
    /// replaced whose change time is after it was changed since by the running system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_ns: Option<u64>,
    /// The digest of the plan and the files it names (`Plan::digest`), when it was applied with `--if-changed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_digest: Option<String>,
}

/// `state.json`: the generations of a root and which one is current.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub v: u32,
    #[serde(with = "crate::pathbytes::one")]
    pub root: PathBuf,
    pub backend: BackendKind,
    pub current: u64,
    pub next: u64,
    pub keep: usize,
    pub generations: Vec<Generation>,
    /// btrfs: the id of the subvolume that is current (what the root's name points at).
    #[serde(default)]
    pub current_subvol: Option<u64>,
    /// A generation committed to a running root that has not yet been seen to boot (see `snapinst boot`).
    #[serde(default)]
    pub pending: Option<Pending>,
    /// Boots a pending generation gets to reach boot-complete.target before the previous one is restored.
    #[serde(default = "default_boot_tries")]
    pub boot_tries: u32,
    /// What the last boot check did, for `status`.
    #[serde(default)]
    pub boot_note: Option<String>,
}

fn exact_by_default() -> bool {
    true
}

fn default_boot_tries() -> u32 {
    3
}

/// A generation waiting to prove that it boots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub generation: u64,
    /// Where to go back to if it does not boot; None when it is itself a fallback (then nothing further is tried).
    pub fallback: Option<u64>,
    pub boots_left: u32,
    /// Set by a fallback until what the failed boots wrote is carried into the restored tree: a boot cut off before
    /// that does it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carry_back: Option<CarryBack>,
}

/// What a fallback still has to carry back: the failed generation, and the fallback's rollback (its record gets the
/// conflicts).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CarryBack {
    pub generation: u64,
    pub txn: String,
}

impl State {
    pub fn new(root: &Path, backend: BackendKind, keep: usize) -> State {
        State {
            v: 1,
            root: root.to_path_buf(),
            backend,
            current: 0,
            next: 1,
            keep,
            generations: vec![Generation {
                generation: 0,
                parent: None,
                time: fsutil::now(),
                plan: None,
                txn: None,
                parts: Vec::new(),
                parent_pruned: false,
                committed_ns: None,
                plan_digest: None,
            }],
            current_subvol: None,
            pending: None,
            boot_tries: default_boot_tries(),
            boot_note: None,
        }
    }

    pub fn generation(&self, n: u64) -> Option<&Generation> {
        self.generations.iter().find(|g| g.generation == n)
    }

    /// Every filesystem (relative to the root) that a kept generation staged as a part, outermost first.
    pub fn parts(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = self.generations.iter().flat_map(|g| g.parts.iter().cloned()).collect();
        all.sort_by_key(|p| (p.components().count(), p.clone()));
        all.dedup();
        all
    }

    /// The chain of generations from `n` up to the oldest kept ancestor, `n` first.
    pub fn ancestors(&self, mut n: u64) -> Vec<u64> {
        let mut chain = vec![n];
        while let Some(p) = self.generation(n).and_then(|g| g.parent) {
            chain.push(p);
            n = p;
        }
        chain
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TxnKind {
    Apply,
    Rollback,
}

/// Where a transaction is. Before `Committing` a crash is undone; from `Committing` on it is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Record written, stage being made.
    Preparing,
    /// Stage made; steps running in it.
    Staged,
    /// Commit record: the change is being put in place; recovery finishes it.
    Committing,
    /// The change is in place; the previous tree is being kept and old generations pruned.
    Finishing,
    /// The stage is being thrown away; recovery finishes that.
    Discarding,
    /// A step failed under `apply --keep-failed`: the stage and its checkpoints are kept for `resume` or `abort`.
    /// Not interrupted: recovery leaves it alone.
    Kept,
    /// Nothing left to do.
    Done,
}

/// A delta swap planned by a rollback over overlay or journal generations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlannedSwap {
    pub generation: u64,
    pub forward: bool,
}

/// A step's undo, recorded before the step runs: a host step's (run on the host), or a journal run step's (run
/// chrooted in the root, after the restore).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepUndo {
    pub step: String,
    pub argv: Vec<String>,
    pub timeout_s: u64,
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_root: bool,
}

/// A step a kept transaction ran, and how many paths of the stage it changed (None: they could not be counted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepRun {
    pub step: String,
    pub failed: bool,
    pub changed: Option<usize>,
}

/// The write-ahead record of one transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TxnRecord {
    pub v: u32,
    pub txn: String,
    pub kind: TxnKind,
    pub plan: Option<String>,
    pub plan_sha256: Option<String>,
    /// `apply --if-changed`: the digest of the plan and its files, recorded in the generation it commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_digest: Option<String>,
    pub backend: BackendKind,
    #[serde(with = "crate::pathbytes::one")]
    pub root: PathBuf,
    /// Where the steps run (the stage subvolume, the overlay mount, or the root itself for journal).
    #[serde(default, with = "crate::pathbytes::maybe")]
    pub stage: Option<PathBuf>,
    pub phase: Phase,
    pub pid: u32,
    pub time: u64,
    pub from_generation: u64,
    pub to_generation: u64,
    /// btrfs: subvolume id at the root's name before the exchange, and of the subvolume swapped in.
    #[serde(default)]
    pub root_subvol_before: Option<u64>,
    #[serde(default)]
    pub incoming_subvol: Option<u64>,
    /// overlay/journal rollback: the swaps to make, and how many are complete.
    #[serde(default)]
    pub swaps: Vec<PlannedSwap>,
    #[serde(default)]
    pub swaps_done: usize,
    /// The rollback's progress in each part (by its path relative to the root), as `swaps_done` is the root's.
    #[serde(default)]
    pub part_swaps_done: std::collections::BTreeMap<String, usize>,
    /// The filesystems inside the root (relative to it) staged as parts of this transaction, outermost first.
    #[serde(default, with = "crate::pathbytes::many")]
    pub parts: Vec<PathBuf>,
    /// How each part was staged (by its path relative to the root), so that recovery treats its stage as it was
    /// made. A record without it is from before the snapshot stager: its parts were staged as their type says.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub part_kinds: std::collections::BTreeMap<String, BackendKind>,
    /// Whether the steps run with their syncs suppressed and an overlay stage is mounted `volatile` (a record from
    /// before sync suppression: no); `resume` goes on as the transaction began.
    #[serde(default)]
    pub suppress_sync: bool,
    /// The undos of the steps run so far (a record from before run-step undos calls them `host_undo`).
    #[serde(default, alias = "host_undo")]
    pub undos: Vec<StepUndo>,
    /// rollback: restore the target generation's tree exactly (btrfs), dropping what was written since; without
    /// it a rollback reverts only what the rolled-back generations changed. Records from before are exact.
    #[serde(default = "exact_by_default")]
    pub exact: bool,
    /// The root is running (mounted on its own): the new generation must prove it boots.
    #[serde(default)]
    pub boot_pending: bool,
    #[serde(default)]
    pub failed_step: Option<String>,
    /// `--keep-failed`: the plan file (absolute), to read again on resume.
    #[serde(default, with = "crate::pathbytes::maybe")]
    pub plan_file: Option<PathBuf>,
    /// `--keep-failed`: how many of the plan's steps are done; checkpoints 0..=steps_done exist.
    #[serde(default)]
    pub checkpoints: Option<usize>,
    /// `--keep-failed`: the steps run in the stage, in order (the last one may have failed), for `resume --list`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps_run: Vec<StepRun>,
    /// When the stage was taken (nanoseconds since the epoch, by the clock file times are set from): a path of the
    /// tree whose change time is not before it was changed by the running system during the transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ns: Option<u64>,
    /// What the carry-over brought from the live tree into the stage before the commit (btrfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried: Option<crate::conflicts::CarryOver>,
    /// Paths both the plan and the running system changed (see `conflicts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<crate::conflicts::Conflict>,
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl TxnRecord {
    /// A new record in phase `Preparing`, going from generation `from` to `to`.
    pub fn new(kind: TxnKind, backend: BackendKind, root: &Path, from: u64, to: u64) -> TxnRecord {
        TxnRecord {
            v: 1,
            txn: new_txn_id(),
            kind,
            plan: None,
            plan_sha256: None,
            plan_digest: None,
            backend,
            root: root.to_path_buf(),
            stage: None,
            phase: Phase::Preparing,
            pid: std::process::id(),
            time: fsutil::now(),
            from_generation: from,
            to_generation: to,
            root_subvol_before: None,
            incoming_subvol: None,
            swaps: Vec::new(),
            swaps_done: 0,
            part_swaps_done: Default::default(),
            parts: Vec::new(),
            part_kinds: Default::default(),
            steps_run: Vec::new(),
            suppress_sync: crate::nosync::suppressed(),
            undos: Vec::new(),
            exact: false,
            boot_pending: false,
            failed_step: None,
            plan_file: None,
            checkpoints: None,
            started_ns: None,
            carried: None,
            conflicts: Vec::new(),
            outcome: None,
            error: None,
        }
    }
}

/// The suffix of a transaction's checkpoint directory beside its stage (`stage/<txn>.checkpoints`).
pub(crate) const CHECKPOINTS_SUFFIX: &str = ".checkpoints";

/// The suffix of a transaction's carry-over snapshots beside its stage (`stage/<txn>.carry`: btrfs).
pub(crate) const CARRY_SUFFIX: &str = ".carry";

/// The suffix of a btrfs generation's tree as its transaction committed it (`gens/<n>.committed`).
pub(crate) const COMMITTED_SUFFIX: &str = ".committed";

/// The suffix of a btrfs generation's tree as the commit that replaced it left it while it stayed mounted
/// (`gens/<n>.handover`): what the running system wrote to it after that is carried over at the next boot.
pub(crate) const HANDOVER_SUFFIX: &str = ".handover";

/// The suffix of the read-only view of the root that the boot-time handover compares with (`gens/<n>.handover-view`).
pub(crate) const HANDOVER_VIEW_SUFFIX: &str = ".handover-view";

/// The suffix of the tree as a btrfs generation's commit found it (`gens/<n>.before`).
pub(crate) const BEFORE_SUFFIX: &str = ".before";

/// The suffix of a pending btrfs generation's tree as its first counted boot found it (`gens/<n>.booted`): what
/// the failed-boot fallback compares with to carry the failed boots' writes back.
pub(crate) const BOOTED_SUFFIX: &str = ".booted";

/// The generation an entry of a generations directory belongs to (its tree, or one of its snapshots above).
pub(crate) fn generation_of_entry(name: &str) -> &str {
    [COMMITTED_SUFFIX, BEFORE_SUFFIX, HANDOVER_SUFFIX, HANDOVER_VIEW_SUFFIX, BOOTED_SUFFIX]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The transaction an entry of a stages directory belongs to (its stage, checkpoints or carry-over snapshots).
pub(crate) fn txn_of_stage_entry(name: &str) -> &str {
    [CHECKPOINTS_SUFFIX, CARRY_SUFFIX].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// The state area of one root.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    pub dir: PathBuf,
    /// Where the stages (and checkpoints) live when not in `<dir>/stage`: a copy-staged part keeps them in the
    /// root's state area, off its own filesystem.
    pub stages: Option<PathBuf>,
    /// The state area reached through a private mount of a filesystem's top level: that mount's path, and how a
    /// user names the top level (`DEVICE:`), for the paths snapinst reports (see `shown`).
    pub shown_as: Option<(PathBuf, String)>,
}

impl StateDir {
    pub fn at(dir: PathBuf) -> StateDir {
        StateDir { dir, stages: None, shown_as: None }
    }

    /// A path in the state area as a user can find it: itself, or `DEVICE:/PATH` from the filesystem's top level
    /// when snapinst reaches the area through a private mount (a btrfs `/`), whose path means nothing outside.
    pub fn shown(&self, path: &Path) -> PathBuf {
        match &self.shown_as {
            Some((top, device)) => match path.strip_prefix(top) {
                Ok(rest) => {
                    let mut shown = std::ffi::OsString::from(format!("{device}:/"));
                    shown.push(rest);
                    PathBuf::from(shown)
                }
                Err(_) => path.to_path_buf(),
            },
            None => path.to_path_buf(),
        }
    }

    /// `shown` for the kept copies of `conflicts`.
    pub fn show_kept(&self, conflicts: &mut [crate::conflicts::Conflict]) {
        for c in conflicts {
            if let Some(k) = &c.kept {
                c.kept = Some(self.shown(k));
            }
        }
    }

    /// The directory of the stages.
    pub fn stages_dir(&self) -> PathBuf {
        self.stages.clone().unwrap_or_else(|| self.dir.join("stage"))
    }

    /// The default state area: a sibling of the root, `<parent>/.snapinst-<name>`.
    pub fn default_for(root: &Path) -> Result<PathBuf> {
        let (Some(parent), Some(name)) = (root.parent(), root.file_name()) else {
            bail!(
                "{} has no parent directory to hold the state area; pass --state-dir DIR (outside the root, on the same filesystem)",
                root.escaped()
            );
        };
        let mut area = std::ffi::OsString::from(".snapinst-");
        area.push(name);
        Ok(parent.join(area))
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn txns_dir(&self) -> PathBuf {
        self.dir.join("txns")
    }
    pub fn txn_path(&self, txn: &str) -> PathBuf {
        self.txns_dir().join(format!("{txn}.json"))
    }
    pub fn gens_dir(&self) -> PathBuf {
        self.dir.join("gens")
    }
    pub fn gen_path(&self, n: u64) -> PathBuf {
        self.gens_dir().join(n.to_string())
    }
    /// Where a transaction's stage lives.
    pub fn stage_path(&self, txn: &str) -> PathBuf {
        self.stages_dir().join(txn)
    }
    /// Where a `--keep-failed` transaction keeps its checkpoints (one per completed step, and 0 for the start).
    /// Where the live versions of the paths transaction `txn` found in conflict are kept.
    pub fn conflicts_path(&self, txn: &str) -> PathBuf {
        self.dir.join("conflicts").join(txn)
    }

    pub fn checkpoints_path(&self, txn: &str) -> PathBuf {
        self.stages_dir().join(format!("{txn}{CHECKPOINTS_SUFFIX}"))
    }

    pub fn create(&self) -> Result<()> {
        for d in [self.dir.clone(), self.txns_dir(), self.gens_dir(), self.stages_dir()] {
            fsutil::create_dir_durable(&d)?;
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.txns_dir().is_dir()
    }

    pub fn load(&self) -> Result<Option<State>> {
        if !self.state_path().exists() {
            return Ok(None);
        }
        fsutil::read_json(&self.state_path()).map(Some)
    }

    pub fn save(&self, state: &State) -> Result<()> {
        fsutil::write_json_atomic(&self.state_path(), state)
    }

    pub fn write_txn(&self, rec: &TxnRecord) -> Result<()> {
        fsutil::write_json_atomic(&self.txn_path(&rec.txn), rec)
    }

    /// All transaction records, oldest first.
    pub fn txns(&self) -> Result<Vec<TxnRecord>> {
        let dir = self.txns_dir();
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd {
            let e = e.with_context(|| format!("listing {}", dir.escaped()))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".json") && !name.starts_with('.') {
                out.push(fsutil::read_json::<TxnRecord>(&e.path())?);
            }
        }
        out.sort_by(|a, b| a.txn.cmp(&b.txn));
        Ok(out)
    }

    /// The transactions that are not done (normally none, or one that a crash interrupted).
    pub fn unfinished(&self) -> Result<Vec<TxnRecord>> {
        Ok(self.txns()?.into_iter().filter(|t| t.phase != Phase::Done && t.phase != Phase::Kept).collect())
    }

    /// The transaction kept by `apply --keep-failed`, if there is one.
    pub fn kept(&self) -> Result<Option<TxnRecord>> {
        Ok(self.txns()?.into_iter().find(|t| t.phase == Phase::Kept))
    }
}

/// A new transaction id: sortable by time, unique per process.
fn new_txn_id() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:010}.{:06}-{}", t.as_secs(), t.subsec_micros(), std::process::id())
}
