//! The snapshot stager, for a part that is a btrfs subvolume (a `/home` on `@home`): the stage is a writable
//! snapshot of it, taken with a read-only one from the same instant (the base), both in the part's state area
//! (`stage/<txn>/tree` and `stage/<txn>/base`, so staging costs nothing whatever the tree's size). The state area
//! is hidden in the stage under an empty read-only tmpfs, as in an overlay stage. Before the commit record the base
//! is compared with the stage (`compared`): what the steps changed, and only that, is copied by reflink into the
//! generation's delta on the part, and synced. From there on it is the overlay's way: the commit, `recover` and every
//! rollback are renames on the part itself, so the part changes at the same moment as the rest of the transaction,
//! and whatever the running system writes to the part meanwhile, outside the paths the plan changed, stays.
//! A part with subvolumes of its own below it is staged by an overlay instead (a snapshot does not carry them).

use super::btrfs::{
    delete_subvolume, drop_snapshot_checkpoints, is_subvolume, remove_snapshots_in, snapshot_as_checkpoint,
};
use super::Ctx;
use crate::fsutil;
use crate::mounts;
use crate::pathbytes::PathText;
use crate::state::TxnRecord;
use anyhow::{Context, Result};
use libbtrfsutil::{CreateSnapshotOptions, IterateSubvolume};
use std::path::{Path, PathBuf};

/// Whether the part mounted at `root` can be staged by snapshots: it is the top of a btrfs subvolume, and no other
/// subvolume is below it (snapinst's own, in its state area `area`, aside).
pub(crate) fn can_stage(root: &Path, area: &Path) -> bool {
    if !is_subvolume(root) {
        return false;
    }
    let Ok(nested) = IterateSubvolume::new(root).iter_with_id() else {
        return false;
    };
    let mut nested = nested.map(|r| r.map(|(p, _)| p));
    nested.all(|p| p.is_ok_and(|p| p.starts_with(area)))
}

/// A transaction's snapshot stage: its directory in the part's state area, the base and the stage.
struct StagePaths {
    dir: PathBuf,
    base: PathBuf,
    tree: PathBuf,
}

fn stage_paths(ctx: &Ctx, rec: &TxnRecord) -> StagePaths {
    let dir = ctx.state.stage_path(&rec.txn);
    StagePaths { base: dir.join("base"), tree: dir.join("tree"), dir }
}

fn state_area(ctx: &Ctx) -> Result<&Path> {
    ctx.state_area.as_deref().context("a snapshot-staged part keeps its state area at its top")
}

pub(super) fn check_usable(root: &Path, state_dir: &Path) -> Result<()> {
    super::require_same_mount(root, state_dir, "the delta is put in place by renames")
}

pub(super) fn prepare(ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
    let s = stage_paths(ctx, rec);
    remove_stage(&s)?;
    fsutil::create_dir_durable(&s.dir)?;
    CreateSnapshotOptions::new()
        .readonly(true)
        .create(&ctx.root, &s.base)
        .with_context(|| format!("snapshotting {} to {}", ctx.root.escaped(), s.base.escaped()))?;
    CreateSnapshotOptions::new()
        .create(&s.base, &s.tree)
        .with_context(|| format!("snapshotting {} to {}", s.base.escaped(), s.tree.escaped()))?;
    super::hide_state_area(&s.tree.join(state_area(ctx)?))?;
    Ok(s.tree)
}

/// Take the stage's mounts down and delete its snapshots and directory. Idempotent.
fn remove_stage(s: &StagePaths) -> Result<()> {
    if !fsutil::exists(&s.dir) {
        return Ok(());
    }
    mounts::unmount_below(&s.tree)?;
    remove_snapshots_in(&s.dir)
}

/// Returns the paths the running system also changed meanwhile (conflicts).
pub(super) fn pre_commit(ctx: &Ctx, rec: &TxnRecord) -> Result<Vec<crate::conflicts::Conflict>> {
    let s = stage_paths(ctx, rec);
    mounts::unmount_below(&s.tree)?;
    super::compared::write_delta(ctx, rec, &s.base, &s.tree, state_area(ctx)?)
}

pub(super) fn finish(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    remove_stage(&stage_paths(ctx, rec))
}

pub(super) fn discard(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    remove_stage(&stage_paths(ctx, rec))?;
    super::delta_gens::drop_staged_delta(ctx, rec)
}

/// Keep the stage as it is now as read-only checkpoint `n` (a snapshot).
pub(super) fn take_checkpoint(ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()> {
    snapshot_as_checkpoint(&stage_paths(ctx, rec).tree, &ctx.state.checkpoints_path(&rec.txn), n)
}

/// Make the stage a writable snapshot of checkpoint `n` again.
pub(super) fn restore_checkpoint(ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<PathBuf> {
    let s = stage_paths(ctx, rec);
    let source = super::checkpoint_copy(ctx, rec, n)?;
    mounts::unmount_below(&s.tree)?;
    if fsutil::exists(&s.tree) {
        delete_subvolume(&s.tree)?;
    }
    CreateSnapshotOptions::new()
        .create(&source, &s.tree)
        .with_context(|| format!("restoring {} from {}", s.tree.escaped(), source.escaped()))?;
    super::hide_state_area(&s.tree.join(state_area(ctx)?))?;
    Ok(s.tree)
}

pub(super) fn drop_checkpoints(ctx: &Ctx, txn: &str, keep: Option<usize>) -> Result<()> {
    drop_snapshot_checkpoints(&ctx.state.checkpoints_path(txn), keep)
}

/// The kept stage's tree, its state area hidden (in snapinst's private namespace) when it is not already.
pub(super) fn stage_view(ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf> {
    let s = stage_paths(ctx, rec);
    let area = s.tree.join(state_area(ctx)?);
    if !mounts::is_mount_point(&area)? {
        super::hide_state_area(&area)?;
    }
    Ok(s.tree)
}

/// Remove a leftover stage or checkpoint directory `name` of `dir` and the snapshots in it.
pub(super) fn remove_leftover(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    mounts::unmount_below(&path)?;
    remove_snapshots_in(&path)
}
