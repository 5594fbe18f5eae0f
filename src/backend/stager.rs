//! One filesystem's way of staging and committing a transaction, behind one trait: a btrfs snapshot exchanged for
//! the subvolume, an overlay whose upper layer becomes a delta merged by renames, a copy of the tree (for FAT,
//! which overlayfs cannot layer) or a btrfs snapshot (for a part that is a subvolume) compared with the tree it was
//! taken from, which become such a delta too, or the journal's originals moved aside as the steps
//! go. Every part of a transaction (the root, and each filesystem staged inside it) has one; the
//! operations in `backend` call it for each part and never ask which it is. Each operation must be re-runnable
//! after a crash at any instant, and must act on its own part only.

use super::{btrfs, copy, delta_gens, journal, overlay, snapshot, Ctx};
use crate::state::{BackendKind, State, TxnRecord};
use crate::steps::ChangeGuard;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub(super) trait Stager: Sync {
    /// Refuse clearly when this stager cannot manage `root` with its state in `state_dir`.
    fn check_usable(&self, root: &Path, state_dir: &Path) -> Result<()>;
    /// Whether its stages live in the root's state area rather than on its own filesystem (the copy stager's).
    fn stages_off_its_filesystem(&self) -> bool {
        false
    }
    /// The bytes a stage takes (where its stages live) before any step runs (a copy of the tree, for the copy
    /// stager).
    fn staging_bytes(&self, _root: &Path, _state_dir: &Path) -> Result<u64> {
        Ok(0)
    }
    /// What the commands a step runs in the stage are told about it (environment variables), beyond `SNAPINST`
    /// and `SNAPINST_TXN`: what a tool there cannot see for itself, such as the name the tree is booted by.
    fn stage_env(&self, _ctx: &Ctx) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }
    /// Make the stage and return the directory the steps run in.
    fn prepare(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf>;
    /// What file steps report to before each change.
    fn guard(&self, _ctx: &Ctx, _rec: &TxnRecord) -> Result<Box<dyn ChangeGuard>> {
        Ok(Box::new(crate::steps::NoGuard))
    }
    /// Everything that must be durable before the commit record; what the live tree received meanwhile carried
    /// into the stage where the stager does so (counted in `rec.carried`, conflicts added to `rec.conflicts` with
    /// paths relative to this part).
    fn pre_commit(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<()>;
    /// Put the staged tree in place (idempotent roll-forward).
    fn commit(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()>;
    /// Whether the commit already took effect; where the commit record is itself the commit point, yes.
    fn commit_took_effect(&self, _ctx: &Ctx, _rec: &TxnRecord) -> Result<bool> {
        Ok(true)
    }
    /// Keep the previous tree as a generation and clean the stage.
    fn finish(&self, ctx: &Ctx, rec: &TxnRecord, state: &mut State) -> Result<()>;
    /// Throw the stage away; never touch a tree that was committed.
    fn discard(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()>;
    /// Keep the stage as it is after `n` steps.
    fn take_checkpoint(&self, ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()>;
    /// Put the stage back as it was at checkpoint `n`; returns where the steps run.
    fn restore_checkpoint(&self, ctx: &Ctx, rec: &mut TxnRecord, n: usize) -> Result<PathBuf>;
    /// Delete the checkpoints after `keep`, or all of them.
    fn drop_checkpoints(&self, ctx: &Ctx, txn: &str, keep: Option<usize>) -> Result<()>;
    /// A kept transaction's stage as a tree to read.
    fn stage_view(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf>;
    /// Plan a rollback to `rec.to_generation` (fills the record; changes nothing).
    fn plan_rollback(&self, ctx: &Ctx, rec: &mut TxnRecord, state: &State) -> Result<()>;
    /// Carry out the planned rollback from `*done` on, calling `on_progress` after each step of it. With
    /// `optional`, a generation that left nothing on this part has nothing to undo.
    fn rollback(
        &self,
        ctx: &Ctx,
        rec: &TxnRecord,
        done: &mut usize,
        optional: bool,
        on_progress: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<()>;
    /// Whether the planned rollback already took effect.
    fn rollback_took_effect(&self, _ctx: &Ctx, _rec: &TxnRecord) -> Result<bool> {
        Ok(true)
    }
    /// Keep the tree the rollback replaced under its generation number.
    fn finish_rollback(&self, _ctx: &Ctx, _rec: &TxnRecord, _state: &mut State) -> Result<()> {
        Ok(())
    }
    /// Undo the preparation of a rollback that never took effect.
    fn abandon_rollback(&self, _ctx: &Ctx, _rec: &TxnRecord) -> Result<()> {
        Ok(())
    }
    /// Generations that can be dropped now, oldest first.
    fn prunable(&self, ctx: &Ctx, state: &State) -> Vec<u64>;
    /// Drop generation `n`'s storage, given the state from before `n` was removed from it.
    fn drop_generation(&self, ctx: &Ctx, n: u64, before: &State) -> Result<()>;
    /// Whether generation storage is kept for a generation without a parent (a whole tree, not a delta).
    fn keeps_parentless_generation(&self) -> bool {
        false
    }
    /// Remove an orphaned entry `name` of the stage or generations directory `dir`.
    fn remove_leftover(&self, _ctx: &Ctx, dir: &Path, name: &str) -> Result<()> {
        crate::fsutil::remove_any(&dir.join(name))
    }
    /// Make kept generations read-only once they are no longer mounted.
    fn seal(&self, _ctx: &Ctx, _state: &State) -> Result<()> {
        Ok(())
    }
}

/// The stager of `kind`.
pub(super) fn of(kind: BackendKind) -> &'static dyn Stager {
    match kind {
        BackendKind::Btrfs => &Btrfs,
        BackendKind::Overlay => &Overlay,
        BackendKind::Journal => &Journal,
        BackendKind::Copy => &Copy,
        BackendKind::Snapshot => &Snapshot,
    }
}

struct Btrfs;
struct Overlay;
struct Copy;
struct Snapshot;
struct Journal;

impl Stager for Btrfs {
    fn check_usable(&self, root: &Path, state_dir: &Path) -> Result<()> {
        btrfs::check_usable(root, state_dir)
    }
    fn stage_env(&self, ctx: &Ctx) -> Result<Vec<(String, String)>> {
        btrfs::stage_env(&ctx.root)
    }
    fn prepare(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
        btrfs::prepare(ctx.btrfs(), rec)
    }
    fn pre_commit(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<()> {
        let (carried, mut conflicts) = btrfs::pre_commit(ctx.btrfs(), rec, &ctx.state.conflicts_path(&rec.txn))?;
        ctx.state.show_kept(&mut conflicts);
        rec.carried = Some(carried);
        rec.conflicts.extend(conflicts);
        Ok(())
    }
    fn commit(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        btrfs::commit(ctx.btrfs(), rec)
    }
    fn commit_took_effect(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<bool> {
        btrfs::exchanged(ctx.btrfs(), rec)
    }
    fn finish(&self, ctx: &Ctx, rec: &TxnRecord, state: &mut State) -> Result<()> {
        btrfs::finish(ctx.btrfs(), rec, state)
    }
    fn discard(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        btrfs::discard(ctx.btrfs(), rec)
    }
    fn take_checkpoint(&self, ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()> {
        btrfs::take_checkpoint(ctx.btrfs(), rec, n)
    }
    fn restore_checkpoint(&self, ctx: &Ctx, rec: &mut TxnRecord, n: usize) -> Result<PathBuf> {
        btrfs::restore_checkpoint(ctx.btrfs(), rec, n)
    }
    fn drop_checkpoints(&self, ctx: &Ctx, txn: &str, keep: Option<usize>) -> Result<()> {
        btrfs::drop_checkpoints(ctx.btrfs(), txn, keep)
    }
    fn stage_view(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf> {
        Ok(btrfs::stage_of(ctx.btrfs(), rec))
    }
    fn plan_rollback(&self, ctx: &Ctx, rec: &mut TxnRecord, state: &State) -> Result<()> {
        btrfs::plan_rollback(ctx.btrfs(), rec, state, &ctx.state.conflicts_path(&rec.txn))?;
        ctx.state.show_kept(&mut rec.conflicts);
        Ok(())
    }
    fn rollback(
        &self,
        ctx: &Ctx,
        rec: &TxnRecord,
        _done: &mut usize,
        _optional: bool,
        _on_progress: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        btrfs::rollback(ctx.btrfs(), rec)
    }
    fn rollback_took_effect(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<bool> {
        btrfs::exchanged(ctx.btrfs(), rec)
    }
    fn finish_rollback(&self, ctx: &Ctx, rec: &TxnRecord, state: &mut State) -> Result<()> {
        btrfs::finish_rollback(ctx.btrfs(), rec, state)
    }
    fn abandon_rollback(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        btrfs::abandon_rollback(ctx.btrfs(), rec)
    }
    fn prunable(&self, ctx: &Ctx, state: &State) -> Vec<u64> {
        btrfs::prunable(ctx.btrfs(), state)
    }
    fn drop_generation(&self, ctx: &Ctx, n: u64, _before: &State) -> Result<()> {
        btrfs::drop_generation(ctx.btrfs(), n)
    }
    fn keeps_parentless_generation(&self) -> bool {
        true
    }
    fn remove_leftover(&self, ctx: &Ctx, dir: &Path, name: &str) -> Result<()> {
        match name.strip_suffix(crate::state::CHECKPOINTS_SUFFIX) {
            Some(txn) => btrfs::drop_checkpoints(ctx.btrfs(), txn, None),
            None => btrfs::remove_leftover(ctx.btrfs(), dir, name),
        }
    }
    fn seal(&self, ctx: &Ctx, state: &State) -> Result<()> {
        btrfs::seal(ctx.btrfs(), state)
    }
}

/// What overlay and journal share: generations kept as deltas (see `delta_gens`).
macro_rules! delta_generations {
    () => {
        fn plan_rollback(&self, _ctx: &Ctx, rec: &mut TxnRecord, state: &State) -> Result<()> {
            delta_gens::plan_rollback(rec, state)
        }
        fn rollback(
            &self,
            ctx: &Ctx,
            rec: &TxnRecord,
            done: &mut usize,
            optional: bool,
            on_progress: &mut dyn FnMut(usize) -> Result<()>,
        ) -> Result<()> {
            delta_gens::rollback(ctx, &rec.swaps, done, optional, on_progress)
        }
        fn prunable(&self, _ctx: &Ctx, state: &State) -> Vec<u64> {
            delta_gens::prunable(state)
        }
        fn drop_generation(&self, ctx: &Ctx, n: u64, before: &State) -> Result<()> {
            delta_gens::drop_generation(ctx, n, before)
        }
    };
}

impl Stager for Overlay {
    fn check_usable(&self, root: &Path, state_dir: &Path) -> Result<()> {
        overlay::check_usable(root, state_dir)
    }
    fn prepare(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
        overlay::prepare(ctx, rec)
    }
    fn pre_commit(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<()> {
        let conflicts = overlay::pre_commit(ctx, rec)?;
        rec.conflicts.extend(conflicts);
        Ok(())
    }
    fn commit(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        delta_gens::commit(ctx, rec)
    }
    fn finish(&self, ctx: &Ctx, rec: &TxnRecord, _state: &mut State) -> Result<()> {
        overlay::finish(ctx, rec)
    }
    fn discard(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        overlay::discard(ctx, rec)
    }
    fn take_checkpoint(&self, ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()> {
        overlay::take_checkpoint(ctx, rec, n)
    }
    fn restore_checkpoint(&self, ctx: &Ctx, rec: &mut TxnRecord, n: usize) -> Result<PathBuf> {
        overlay::restore_checkpoint(ctx, rec, n)
    }
    fn drop_checkpoints(&self, ctx: &Ctx, txn: &str, keep: Option<usize>) -> Result<()> {
        super::drop_checkpoint_copies(ctx, txn, keep)
    }
    fn stage_view(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf> {
        overlay::stage_view(ctx, rec)
    }
    delta_generations!();
}

impl Stager for Copy {
    fn check_usable(&self, root: &Path, state_dir: &Path) -> Result<()> {
        copy::check_usable(root, state_dir)
    }
    fn stages_off_its_filesystem(&self) -> bool {
        true
    }
    fn staging_bytes(&self, root: &Path, state_dir: &Path) -> Result<u64> {
        copy::staging_bytes(root, state_dir)
    }
    fn prepare(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
        copy::prepare(ctx, rec)
    }
    fn pre_commit(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<()> {
        let conflicts = copy::pre_commit(ctx, rec)?;
        rec.conflicts.extend(conflicts);
        Ok(())
    }
    fn commit(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        delta_gens::commit(ctx, rec)
    }
    fn finish(&self, ctx: &Ctx, rec: &TxnRecord, _state: &mut State) -> Result<()> {
        copy::finish(ctx, rec)
    }
    fn discard(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        copy::discard(ctx, rec)
    }
    fn take_checkpoint(&self, ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()> {
        copy::take_checkpoint(ctx, rec, n)
    }
    fn restore_checkpoint(&self, ctx: &Ctx, rec: &mut TxnRecord, n: usize) -> Result<PathBuf> {
        copy::restore_checkpoint(ctx, rec, n)
    }
    fn drop_checkpoints(&self, ctx: &Ctx, txn: &str, keep: Option<usize>) -> Result<()> {
        super::drop_checkpoint_copies(ctx, txn, keep)
    }
    fn stage_view(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf> {
        copy::stage_view(ctx, rec)
    }
    delta_generations!();
}

impl Stager for Snapshot {
    fn check_usable(&self, root: &Path, state_dir: &Path) -> Result<()> {
        snapshot::check_usable(root, state_dir)
    }
    fn prepare(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
        snapshot::prepare(ctx, rec)
    }
    fn pre_commit(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<()> {
        let conflicts = snapshot::pre_commit(ctx, rec)?;
        rec.conflicts.extend(conflicts);
        Ok(())
    }
    fn commit(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        delta_gens::commit(ctx, rec)
    }
    fn finish(&self, ctx: &Ctx, rec: &TxnRecord, _state: &mut State) -> Result<()> {
        snapshot::finish(ctx, rec)
    }
    fn discard(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        snapshot::discard(ctx, rec)
    }
    fn take_checkpoint(&self, ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()> {
        snapshot::take_checkpoint(ctx, rec, n)
    }
    fn restore_checkpoint(&self, ctx: &Ctx, rec: &mut TxnRecord, n: usize) -> Result<PathBuf> {
        snapshot::restore_checkpoint(ctx, rec, n)
    }
    fn drop_checkpoints(&self, ctx: &Ctx, txn: &str, keep: Option<usize>) -> Result<()> {
        snapshot::drop_checkpoints(ctx, txn, keep)
    }
    fn stage_view(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf> {
        snapshot::stage_view(ctx, rec)
    }
    fn remove_leftover(&self, _ctx: &Ctx, dir: &Path, name: &str) -> Result<()> {
        snapshot::remove_leftover(dir, name)
    }
    delta_generations!();
}

impl Stager for Journal {
    fn check_usable(&self, root: &Path, state_dir: &Path) -> Result<()> {
        journal::check_usable(root, state_dir)
    }
    fn prepare(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
        journal::prepare(ctx, rec)
    }
    fn guard(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<Box<dyn ChangeGuard>> {
        journal::guard(ctx, rec)
    }
    fn pre_commit(&self, ctx: &Ctx, rec: &mut TxnRecord) -> Result<()> {
        journal::pre_commit(ctx, rec)
    }
    fn commit(&self, _ctx: &Ctx, _rec: &TxnRecord) -> Result<()> {
        Ok(()) // the steps changed the root itself
    }
    fn finish(&self, ctx: &Ctx, rec: &TxnRecord, _state: &mut State) -> Result<()> {
        journal::finish(ctx, rec)
    }
    fn discard(&self, ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
        journal::discard(ctx, rec)
    }
    fn take_checkpoint(&self, _ctx: &Ctx, _rec: &TxnRecord, _n: usize) -> Result<()> {
        bail!("the journal backend has no stage to checkpoint")
    }
    fn restore_checkpoint(&self, _ctx: &Ctx, _rec: &mut TxnRecord, _n: usize) -> Result<PathBuf> {
        bail!("the journal backend has no stage to restore")
    }
    fn drop_checkpoints(&self, _ctx: &Ctx, _txn: &str, _keep: Option<usize>) -> Result<()> {
        Ok(())
    }
    fn stage_view(&self, _ctx: &Ctx, _rec: &TxnRecord) -> Result<PathBuf> {
        bail!("the journal backend keeps no stage")
    }
    delta_generations!();
}
