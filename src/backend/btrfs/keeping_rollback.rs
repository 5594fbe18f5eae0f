//! The keeping rollback (btrfs): a stage taken from the current tree, in which what each rolled-back generation's
//! transaction changed is put back (found by the send ioctl between `gens/<g>.committed` and the generation before
//! it), then the commit's carry-over; the running system's later writes stay. `rollback --exact` does not come
//! here: it exchanges the kept tree itself.

use super::*;
use crate::pathbytes::PathText;

/// The generations a keeping rollback from `from` to `to` reverts, newest first: `from`, its parent, and so on
/// down to (not including) `to`; None when `to` is not an ancestor of `from`.
fn reverted_generations(state: &State, from: u64, to: u64) -> Option<Vec<u64>> {
    let chain = state.ancestors(from);
    let at = chain.iter().position(|&g| g == to)?;
    Some(chain[..at].to_vec())
}

/// A rollback that keeps the data: a stage taken from the current tree (as for `apply`), in which what each
/// rolled-back generation's transaction changed is put back as the generation before it had it (a path the running
/// system changed since is a conflict: the generation's version goes in, the running system's is kept), then the
/// carry-over, and the exchange as the commit.
pub(super) fn stage_keeping_rollback(p: &Paths, rec: &mut TxnRecord, state: &State, kept: &Path) -> Result<()> {
    let (from, to) = (rec.from_generation, rec.to_generation);
    let Some(reverted) = reverted_generations(state, from, to) else {
        bail!(
            "generation {to} is not an ancestor of generation {from}, so there is nothing to revert on the way: `rollback --exact --to {to}` restores its tree exactly (and drops what was written since)"
        );
    };
    for &g in &reverted {
        let gen = state.generation(g).expect("a generation on the way back is kept");
        if is_subvolume(&p.before(g)) {
            // The tree as generation g's commit found it: all that is needed besides the committed one.
        } else if gen.parent_pruned {
            bail!(
                "the generation that generation {g} was made from was pruned, so what its transaction changed cannot be told apart from what was written since; `rollback --exact --to {to}` restores generation {to} exactly"
            );
        } else if !is_subvolume(&p.gen(gen.parent.expect("a reverted generation has a parent"))) {
            bail!(
                "generation {g} cannot be reverted alone: the tree it was made from is missing; `rollback --exact --to {to}` restores generation {to} exactly"
            );
        }
        if !is_subvolume(&p.committed(g)) {
            bail!(
                "generation {g} cannot be reverted alone: {} is missing (a generation committed by an older snapinst, or pruned); `rollback --exact --to {to}` restores generation {to} exactly",
                p.committed(g).escaped()
            );
        }
    }
    // The kept trees are compared by the send ioctl, which reads only read-only ones: a tree left writable because
    // the running system was mounted from it, and is no longer, is sealed now rather than at the next boot.
    seal(p, state)?;
    let stage = prepare(p, rec)?;
    let mut conflicts = Vec::new();
    for &g in &reverted {
        let committed = p.committed(g);
        // What g's transaction changed, and how it was before: against the tree as its commit found it (the
        // generation before g, kept, has also what the running system wrote to it after that commit, until the
        // reboot, which the handover carried into g and is not g's to revert). Generations committed by an older
        // snapinst have only the generation before.
        let before = if is_subvolume(&p.before(g)) {
            p.before(g)
        } else {
            let parent = state.generation(g).and_then(|x| x.parent).expect("checked above");
            read_only_view(&p.gen(parent), &p.carry(&rec.txn))?
        };
        let reverting = btrfs_send::changes(&committed, &before)?;
        // What the running system changed since g's commit. Until the first generation is reverted the stage is
        // the base snapshot's tree, which is read-only already; after, the stage itself is compared (making it
        // read-only and writable again costs two btrfs commits).
        let since = if g == reverted[0] {
            btrfs_send::changes(&committed, &p.base(&rec.txn))?
        } else {
            while_read_only(&stage, || btrfs_send::changes(&committed, &stage))?
        };
        let round = carry::Round {
            before: &committed,
            live: &before,
            stage: &stage,
            planned: &since,
            kept,
            incoming_wins: true,
            live_stage: false,
            in_root: false,
        };
        merge_conflicts(&mut conflicts, carry::carry(&round, &reverting)?.conflicts);
        crate::failpoint::hit("rollback-mid-revert");
    }
    let (carried, later) = pre_commit(p, rec, kept)?;
    merge_conflicts(&mut conflicts, later);
    rec.carried = Some(carried);
    rec.conflicts = conflicts;
    rec.stage = Some(stage);
    Ok(())
}

/// `tree` itself when it is read-only, else (the tree the running system is mounted from) a read-only snapshot of it
/// in `dir`.
fn read_only_view(tree: &Path, dir: &Path) -> Result<PathBuf> {
    if libbtrfsutil::subvolume_read_only(tree).unwrap_or(false) {
        return Ok(tree.to_path_buf());
    }
    let name = tree.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let view = dir.join(format!("view-{name}"));
    if fsutil::exists(&view) {
        delete_subvolume(&view)?;
    }
    snapshot_read_only(tree, &view)?;
    Ok(view)
}
