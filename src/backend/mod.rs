//! The three ways to stage a transaction and commit it, behind one set of operations that the apply, rollback and
//! recover commands call: prepare a stage, say what guards file changes, flush before the commit record, commit
//! (idempotent roll-forward), finish (keep the previous tree as a generation), discard (idempotent), roll back to a
//! generation, and prune one. Every operation is re-runnable after a crash at any instant; that is what lets
//! `recover` finish or undo any interrupted transaction from its record alone.

mod btrfs;
mod delta_gens;
mod journal;
mod overlay;
mod scratch;

use crate::state::{BackendKind, State, StateDir, TxnRecord};
use crate::steps::ChangeGuard;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// What the operations of a backend need to know about a root.
pub(crate) struct Ctx {
    pub kind: BackendKind,
    pub root: PathBuf,
    pub state: StateDir,
    /// The state area relative to the root, when it is inside the root (then a stage must hide it).
    pub state_area: Option<PathBuf>,
    btrfs: Option<btrfs::Paths>,
}

impl Ctx {
    /// Set up for `kind` (for btrfs this may mount the filesystem's top level privately).
    pub fn new(kind: BackendKind, root: &Path, state: &StateDir) -> Result<Ctx> {
        let btrfs = match kind {
            BackendKind::Btrfs => Some(btrfs::Paths::new(root, &state.dir)?),
            _ => None,
        };
        let state_area = state_area(root, &state.dir);
        Ok(Ctx { kind, root: root.to_path_buf(), state: state.clone(), state_area, btrfs })
    }

    /// What is inside the root besides its tree, read from the mount table now.
    pub fn layout(&self) -> Result<crate::submounts::Layout> {
        crate::submounts::Layout::read(&self.root, self.state_area.as_deref())
    }

    fn btrfs(&self) -> &btrfs::Paths {
        self.btrfs.as_ref().expect("btrfs paths are set up for the btrfs backend")
    }
}

/// Pick the backend for `root`: btrfs if it is a btrfs subvolume, else overlay if the kernel has it, else journal.
pub(crate) fn detect(root: &Path) -> BackendKind {
    if btrfs::is_subvolume(root) {
        BackendKind::Btrfs
    } else if overlay::available() {
        BackendKind::Overlay
    } else {
        BackendKind::Journal
    }
}

/// The state area relative to the root, when it is inside the root's tree.
pub(crate) fn state_area(root: &Path, state_dir: &Path) -> Option<PathBuf> {
    state_dir.strip_prefix(root).ok().filter(|r| !r.as_os_str().is_empty()).map(Path::to_path_buf)
}

/// Refuse clearly when `kind` cannot manage `root` with its state in `state_dir`.
pub(crate) fn check_usable(kind: BackendKind, root: &Path, state_dir: &Path) -> Result<()> {
    // A state area inside the root's tree is hidden from the overlay stage and left out of the journal's changes;
    // a btrfs snapshot would carry it into the stage. (On another mount inside the root it is not in the tree.)
    let holder = state_dir.ancestors().find(|a| a.exists()).unwrap_or(state_dir);
    if kind == BackendKind::Btrfs
        && state_area(root, state_dir).is_some()
        && crate::mounts::mount_id(holder)? == crate::mounts::mount_id(root)?
    {
        bail!(
            "the state directory {} is inside the root {}; for the btrfs backend it must be outside it (on the same filesystem)",
            state_dir.display(),
            root.display()
        );
    }
    if root == state_dir {
        bail!("the state directory cannot be the root itself ({})", root.display());
    }
    match kind {
        BackendKind::Btrfs => btrfs::check_usable(root, state_dir),
        BackendKind::Overlay => overlay::check_usable(root, state_dir),
        BackendKind::Journal => journal::check_usable(root, state_dir),
    }
}

/// Make the stage for `rec` and return the directory the steps run in.
pub(crate) fn prepare(ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::prepare(ctx.btrfs(), rec),
        BackendKind::Overlay => overlay::prepare(ctx, rec),
        BackendKind::Journal => journal::prepare(ctx, rec),
    }
}

/// The guard file steps report to.
pub(crate) fn guard(ctx: &Ctx, rec: &TxnRecord) -> Result<Box<dyn ChangeGuard>> {
    match ctx.kind {
        BackendKind::Journal => journal::guard(ctx, rec),
        _ => Ok(Box::new(crate::steps::NoGuard)),
    }
}

/// Everything that must be durable before the commit record is written.
pub(crate) fn pre_commit(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::pre_commit(ctx.btrfs(), rec),
        BackendKind::Overlay => overlay::pre_commit(ctx, rec),
        BackendKind::Journal => journal::pre_commit(ctx, rec),
    }
}

/// Put the staged tree in place. Idempotent: recovery calls it again after a crash.
pub(crate) fn commit(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::commit(ctx.btrfs(), rec),
        BackendKind::Overlay => delta_gens::commit(ctx, rec),
        BackendKind::Journal => Ok(()),
    }
}

/// Whether the commit of `rec` has already taken effect (decides roll forward or back in recovery).
pub(crate) fn commit_took_effect(ctx: &Ctx, rec: &TxnRecord) -> Result<bool> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::exchanged(ctx.btrfs(), rec),
        // For the others the commit record itself is the commit point.
        _ => Ok(true),
    }
}

/// Keep the previous tree as a generation and clean the stage and any checkpoints. Idempotent.
pub(crate) fn finish(ctx: &Ctx, rec: &TxnRecord, state: &mut State) -> Result<()> {
    drop_checkpoints(ctx, rec, None)?;
    match ctx.kind {
        BackendKind::Btrfs => btrfs::finish(ctx.btrfs(), rec, state),
        BackendKind::Overlay => overlay::finish(ctx, rec),
        BackendKind::Journal => journal::finish(ctx, rec),
    }
}

/// Throw the stage (and any checkpoints) away. Idempotent, and never touches a tree that was committed.
pub(crate) fn discard(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    drop_checkpoints(ctx, rec, None)?;
    match ctx.kind {
        BackendKind::Btrfs => btrfs::discard(ctx.btrfs(), rec),
        BackendKind::Overlay => overlay::discard(ctx, rec),
        BackendKind::Journal => journal::discard(ctx, rec),
    }
}

/// `--keep-failed`: keep the stage as it is after `n` steps (btrfs: a read-only snapshot; overlay: a copy of the
/// upper layer).
pub(crate) fn take_checkpoint(ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::take_checkpoint(ctx.btrfs(), rec, n),
        BackendKind::Overlay => overlay::take_checkpoint(ctx, rec, n),
        BackendKind::Journal => bail!("the journal backend has no stage to checkpoint"),
    }
}

/// Put the stage back as it was at checkpoint `n`, dropping the later checkpoints; returns where the steps run.
pub(crate) fn restore_checkpoint(ctx: &Ctx, rec: &mut TxnRecord, n: usize) -> Result<PathBuf> {
    let stage = match ctx.kind {
        BackendKind::Btrfs => btrfs::restore_checkpoint(ctx.btrfs(), rec, n)?,
        BackendKind::Overlay => overlay::restore_checkpoint(ctx, rec, n)?,
        BackendKind::Journal => bail!("the journal backend has no stage to restore"),
    };
    drop_checkpoints(ctx, rec, Some(n))?;
    Ok(stage)
}

/// Delete a transaction's checkpoints after `keep`, or all of them. Idempotent.
pub(crate) fn drop_checkpoints(ctx: &Ctx, rec: &TxnRecord, keep: Option<usize>) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::drop_checkpoints(ctx.btrfs(), &rec.txn, keep),
        BackendKind::Overlay => overlay::drop_checkpoints(ctx, rec, keep),
        BackendKind::Journal => Ok(()),
    }
}

/// The entries of a checkpoint directory numbered after `keep` (every entry when None; stray names too).
fn checkpoints_after(dir: &Path, keep: Option<usize>) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut stale = Vec::new();
    for e in entries {
        let path = e?.path();
        let n = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<usize>().ok());
        if keep.is_none() || n.map_or(true, |n| Some(n) > keep) {
            stale.push(path);
        }
    }
    Ok(stale)
}

/// A kept transaction's stage as a tree to compare with the root (overlay: mounted privately).
pub(crate) fn kept_stage(ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf> {
    match ctx.kind {
        BackendKind::Btrfs => Ok(btrfs::stage_of(ctx.btrfs(), rec)),
        BackendKind::Overlay => overlay::stage_view(ctx, rec),
        BackendKind::Journal => bail!("the journal backend keeps no stage"),
    }
}

/// Plan a rollback from the current generation to `rec.to_generation` (fills the record; changes nothing).
pub(crate) fn plan_rollback(ctx: &Ctx, rec: &mut TxnRecord, state: &State) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::plan_rollback(ctx.btrfs(), rec),
        _ => delta_gens::plan_rollback(rec, state),
    }
}

/// Carry out a planned rollback. Idempotent; `on_progress` persists the record after each part.
pub(crate) fn rollback(
    ctx: &Ctx,
    rec: &mut TxnRecord,
    on_progress: &mut dyn FnMut(&TxnRecord) -> Result<()>,
) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::rollback(ctx.btrfs(), rec),
        _ => delta_gens::rollback(ctx, rec, on_progress),
    }
}

/// Whether a planned rollback has taken effect (for btrfs: the exchange happened).
pub(crate) fn rollback_took_effect(ctx: &Ctx, rec: &TxnRecord) -> Result<bool> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::exchanged(ctx.btrfs(), rec),
        _ => Ok(true),
    }
}

/// Keep the tree the rollback replaced, under its generation number. Idempotent.
pub(crate) fn finish_rollback(ctx: &Ctx, rec: &TxnRecord, state: &mut State) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::finish_rollback(ctx.btrfs(), rec, state),
        _ => Ok(()),
    }
}

/// Undo the preparation of a rollback whose exchange never happened.
pub(crate) fn abandon_rollback(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::abandon_rollback(ctx.btrfs(), rec),
        _ => Ok(()),
    }
}

/// Generations that can be dropped now to keep at most `state.keep`, oldest first.
pub(crate) fn prunable(ctx: &Ctx, state: &State) -> Vec<u64> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::prunable(ctx.btrfs(), state),
        _ => delta_gens::prunable(state),
    }
}

/// Drop generation `n`'s storage (its record was already removed from state.json). Idempotent.
pub(crate) fn drop_generation(ctx: &Ctx, n: u64, state: &State) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::drop_generation(ctx.btrfs(), n),
        _ => delta_gens::drop_generation(ctx, n, state),
    }
}

/// Whether the next mount or boot of the root will see another tree than the one mounted now (btrfs mount points).
pub(crate) fn next_boot_differs(kind: BackendKind, root: &Path, state: &State) -> bool {
    kind == BackendKind::Btrfs && btrfs::next_boot_differs(root, state)
}

/// Remove what a crash left behind outside any transaction: stages (and checkpoints) of finished transactions and
/// storage of generations that state.json no longer keeps; a kept transaction's stage stays. Call only with the
/// lock held and no unfinished transaction.
pub(crate) fn sweep(ctx: &Ctx, state: &State) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let kept = ctx.state.kept()?.map(|t| t.txn);
    for dir in [ctx.state.dir.join("stage"), ctx.state.gens_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let txn_of_entry = name.strip_suffix(crate::state::CHECKPOINTS_SUFFIX).unwrap_or(&name);
            let orphan = if dir.ends_with("stage") {
                kept.as_deref() != Some(txn_of_entry)
            } else {
                match name.parse::<u64>().ok().and_then(|n| state.generation(n)) {
                    None => !name.starts_with('.'),
                    // A delta is needed only for a generation that has a parent.
                    Some(g) => ctx.kind != BackendKind::Btrfs && g.parent.is_none(),
                }
            };
            if orphan {
                match ctx.kind {
                    BackendKind::Btrfs if name.ends_with(crate::state::CHECKPOINTS_SUFFIX) => {
                        btrfs::drop_checkpoints(ctx.btrfs(), txn_of_entry, None)?
                    }
                    BackendKind::Btrfs => btrfs::remove_leftover(ctx.btrfs(), &dir, &name)?,
                    _ => crate::fsutil::remove_any(&path)?,
                }
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

/// btrfs: make the kept generations read-only once they are no longer mounted (see `btrfs::seal`).
pub(crate) fn seal(ctx: &Ctx, state: &State) -> Result<()> {
    match ctx.kind {
        BackendKind::Btrfs => btrfs::seal(ctx.btrfs(), state),
        _ => Ok(()),
    }
}

/// Refuse a state area on another mount than the root: moving things between them must be a rename.
fn require_same_mount(root: &Path, state_dir: &Path, why: &str) -> Result<()> {
    let holder = state_dir.ancestors().find(|a| a.exists()).unwrap_or(state_dir);
    if crate::mounts::mount_of(holder)?.id != crate::mounts::mount_of(root)?.id {
        bail!(
            "the state directory {} is not on the same mount as the root {}; {why}",
            state_dir.display(),
            root.display()
        );
    }
    Ok(())
}
