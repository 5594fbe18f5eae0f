//! Generations kept as deltas (overlay and journal backends). Generation n's delta, in `gens/<n>`, is the change
//! from its parent generation to n; the deltas on the path from the oldest kept generation to the current one are
//! applied, all others are not. Going to another generation swaps deltas backwards up to the common ancestor and
//! forwards down to the target, one delta at a time, recording progress after each so a crash resumes exactly.

use super::Ctx;
use crate::conflicts::{Conflict, Version};
use crate::delta::{Delta, Direction};
use crate::inroot::Root;
use crate::state::{PlannedSwap, State, TxnRecord};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub(super) fn commit(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    let tree = Root::open(&ctx.root)?;
    let mut first = true;
    let delta = Delta::at(&ctx.state.gen_path(rec.to_generation));
    delta.swap(&tree, Direction::Forward, || {
        if std::mem::take(&mut first) {
            crate::failpoint::hit("apply-mid-merge");
        }
    })?;
    record_swapped_in(ctx, &delta)
}

/// The name, in a delta's directory, of what its forward swap put in the tree (see `record_swapped_in`).
const SWAPPED_IN: &str = "swapped-in.json";

/// Each path a delta's forward swap put in the tree, as it was right after (its `identity`, by entry index): a
/// rollback tells the running system's later changes from it exactly. (A change time against the commit's time is
/// ambiguous within a clock tick, and on kernels with fine-grained change times a coarse commit time can be earlier
/// than the commit's own changes.)
fn record_swapped_in(ctx: &Ctx, delta: &Delta) -> Result<()> {
    let mut seen = std::collections::BTreeMap::new();
    for (k, e) in delta.read_index()?.iter().enumerate() {
        let crate::delta::Entry::Replace { path, after: true, .. } = e else { continue };
        let at = ctx.root.join(path);
        if let Ok(m) = std::fs::symlink_metadata(&at) {
            seen.insert(k, identity(ctx, &at, &m));
        }
    }
    crate::fsutil::write_json_atomic(&delta.dir.join(SWAPPED_IN), &seen)
}

/// What tells a path's version from any later one: its inode number and change time; on FAT and exfat (the copy
/// stager's), whose inode numbers are made afresh at every mount and whose change time is not kept, its
/// modification time and a digest of its content (a FAT part is an ESP: a few small files).
fn identity(ctx: &Ctx, path: &Path, m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    if ctx.kind != crate::state::BackendKind::Copy {
        return (m.ino(), crate::fsutil::ctime_ns(m));
    }
    let mtime_ns = (m.mtime() as u64).wrapping_mul(1_000_000_000).wrapping_add(m.mtime_nsec() as u64);
    (mtime_ns, content_digest(path, m))
}

/// The first 8 bytes of the SHA-256 of a regular file's content and its size (0 for anything else, or a file that
/// cannot be read).
fn content_digest(path: &Path, m: &std::fs::Metadata) -> u64 {
    use sha2::Digest;
    if !m.is_file() {
        return 0;
    }
    let Ok(mut f) = std::fs::File::open(path) else { return 0 };
    let mut h = sha2::Sha256::new();
    h.update(m.len().to_le_bytes());
    if std::io::copy(&mut f, &mut h).is_err() {
        return 0;
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

/// How the new versions get into a staged delta, which decides what makes them durable before its index.
pub(super) enum Put {
    /// Renamed in from a stage on the same filesystem: syncing the directory is enough.
    Renamed,
    /// Written afresh (copied): their data must reach the disk first.
    Written,
}

/// Make the delta of `rec`'s generation from `entries`: `put(path, dest)` puts the new version of each entry that
/// exists after the change at `dest`; then everything is synced, the index last, before the commit record.
pub(super) fn write_staged_delta(
    ctx: &Ctx,
    rec: &TxnRecord,
    entries: &[crate::delta::Entry],
    how: Put,
    mut put: impl FnMut(&Path, &Path) -> Result<()>,
) -> Result<Vec<Conflict>> {
    let mut conflicts = live_changed(ctx, rec, entries)?;
    let d = Delta::at(&ctx.state.gen_path(rec.to_generation));
    d.remove()?;
    d.create()?;
    let new = d.side("new");
    for (k, e) in entries.iter().enumerate() {
        if let crate::delta::Entry::Replace { path, after: true, .. } = e {
            put(path, &new.join(k.to_string()))?;
        }
    }
    for (k, c) in &mut conflicts {
        c.plan = Version::of(&std::fs::symlink_metadata(new.join(k.to_string())).ok());
    }
    match how {
        Put::Renamed => crate::fsutil::sync_dir(&new)?,
        Put::Written => crate::fsutil::syncfs(&new)?,
    }
    d.write_index(entries)?;
    crate::fsutil::syncfs(&d.dir)?;
    Ok(conflicts.into_iter().map(|(_, c)| c).collect())
}

/// The paths the delta replaces that the running system changed during the transaction (their change time is not
/// before the stage was taken), each with its index: conflicts. The delta's version goes into the tree at the
/// commit; the running system's is what the commit's swap moves out of the tree into the delta's old side
/// (`gens/<n>/old/<k>`, whole, every write until that instant), which is where the conflict says it is kept (and
/// where a rollback of the generation takes it back from). (A directory the delta only merges into is not one.)
fn live_changed(ctx: &Ctx, rec: &TxnRecord, entries: &[crate::delta::Entry]) -> Result<Vec<(usize, Conflict)>> {
    let Some(started) = rec.started_ns else { return Ok(Vec::new()) };
    let old = Delta::at(&ctx.state.gen_path(rec.to_generation)).side("old");
    let mut out = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        let crate::delta::Entry::Replace { path, .. } = e else { continue };
        let live = ctx.root.join(path);
        let Ok(m) = std::fs::symlink_metadata(&live) else { continue };
        if crate::fsutil::ctime_ns(&m) < started {
            continue;
        }
        let path = Path::new("/").join(path);
        let kept = Some(old.join(k.to_string()));
        out.push((
            k,
            Conflict { path, plan: Version::of(&None), live: Version::of(&Some(m)), kept, pruned_with: None },
        ));
    }
    Ok(out)
}

/// Remove the delta a transaction that will not commit made for its generation (idempotent).
pub(super) fn drop_staged_delta(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    Delta::at(&ctx.state.gen_path(rec.to_generation)).remove()?;
    // A part's first transaction may stop before its state area is made: then there is nothing to make durable.
    let gens = ctx.state.gens_dir();
    if crate::fsutil::exists(&gens) {
        crate::fsutil::sync_dir(&gens)?;
    }
    Ok(())
}

pub(super) fn plan_rollback(rec: &mut TxnRecord, state: &State) -> Result<()> {
    let from = state.ancestors(rec.from_generation);
    let to = state.ancestors(rec.to_generation);
    let Some(common) = from.iter().find(|g| to.contains(g)).copied() else {
        bail!("generations {} and {} share no kept ancestor", rec.from_generation, rec.to_generation);
    };
    let mut swaps: Vec<PlannedSwap> =
        from.iter().take_while(|&&g| g != common).map(|&g| PlannedSwap { generation: g, forward: false }).collect();
    let down: Vec<u64> = to.iter().take_while(|&&g| g != common).copied().collect();
    swaps.extend(down.into_iter().rev().map(|g| PlannedSwap { generation: g, forward: true }));
    rec.swaps = swaps;
    rec.swaps_done = 0;
    Ok(())
}

/// Before a rollback changes anything: each path that a generation swapped back replaces (its newest swap only)
/// and that the running system changed after that generation's commit is a conflict. The rollback's version goes
/// into the tree; the running system's is what the swap moves into the delta's storage (`new/<k>`), kept there,
/// which is where the conflict says it is.
pub(super) fn rollback_conflicts(ctx: &Ctx, rec: &TxnRecord, state: &State) -> Result<Vec<Conflict>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for s in rec.swaps.iter().take_while(|s| !s.forward) {
        let delta = Delta::at(&ctx.state.gen_path(s.generation));
        if !delta.dir.exists() {
            continue;
        }
        // What the commit put in the tree, exactly; a delta committed by an older snapinst has only its time.
        let swapped_in: Option<std::collections::BTreeMap<usize, (u64, u64)>> =
            crate::fsutil::read_json(&delta.dir.join(SWAPPED_IN)).ok();
        let committed = state.generation(s.generation).and_then(|g| g.committed_ns);
        if swapped_in.is_none() && committed.is_none() {
            continue;
        }
        for (k, e) in delta.read_index()?.iter().enumerate() {
            let crate::delta::Entry::Replace { path, .. } = e else { continue };
            if !seen.insert(path.clone()) {
                continue;
            }
            let at = ctx.root.join(path);
            let Ok(m) = std::fs::symlink_metadata(&at) else { continue };
            let unchanged = match (&swapped_in, committed) {
                (Some(seen), _) => seen.get(&k) == Some(&identity(ctx, &at, &m)),
                (None, Some(t)) => crate::fsutil::ctime_ns(&m) <= t,
                (None, None) => true,
            };
            if unchanged {
                continue;
            }
            let back = std::fs::symlink_metadata(delta.side("old").join(k.to_string())).ok();
            out.push(Conflict {
                path: Path::new("/").join(path),
                plan: Version::of(&back),
                live: Version::of(&Some(m)),
                kept: Some(delta.side("new").join(k.to_string())),
                pruned_with: None,
            });
        }
    }
    Ok(out)
}

/// Carry out `swaps` from `*done` on, recording progress with `on_progress(done)` after each delta. With
/// `optional`, a generation without a delta here (a part that was not staged then) has nothing to swap.
pub(super) fn rollback(
    ctx: &Ctx,
    swaps: &[PlannedSwap],
    done: &mut usize,
    optional: bool,
    on_progress: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<()> {
    let tree = Root::open(&ctx.root)?;
    while *done < swaps.len() {
        let s = &swaps[*done];
        let direction = if s.forward { Direction::Forward } else { Direction::Backward };
        let delta = Delta::at(&ctx.state.gen_path(s.generation));
        if !optional || delta.dir.exists() {
            let mut first = true;
            delta
                .swap(&tree, direction, || {
                    if std::mem::take(&mut first) {
                        crate::failpoint::hit("rollback-mid-swap");
                    }
                })
                .with_context(|| {
                    format!("swapping generation {}'s changes {}", s.generation, if s.forward { "in" } else { "out" })
                })?;
            if s.forward {
                record_swapped_in(ctx, &delta)?;
            }
        }
        *done += 1;
        on_progress(*done)?;
    }
    Ok(())
}

fn children(state: &State, n: u64) -> Vec<u64> {
    state.generations.iter().filter(|g| g.parent == Some(n)).map(|g| g.generation).collect()
}

/// A generation can go when it is not current and is either a leaf (its delta is not applied) or the oldest
/// with a single child (which then becomes the oldest, its delta no longer needed).
pub(super) fn prunable(state: &State) -> Vec<u64> {
    let mut out: Vec<u64> = state
        .generations
        .iter()
        .filter(|g| g.generation != state.current)
        .filter(|g| {
            let kids = children(state, g.generation);
            kids.is_empty() || (g.parent.is_none() && kids.len() == 1)
        })
        .map(|g| g.generation)
        .collect();
    out.sort();
    out
}

/// Drop the storage of generation `n`, given the state as it was before `n` was removed from it.
pub(super) fn drop_generation(ctx: &Ctx, n: u64, before: &State) -> Result<()> {
    let kids = children(before, n);
    let is_root = before.generation(n).is_some_and(|g| g.parent.is_none());
    let doomed = if is_root && kids.len() == 1 { kids[0] } else { n };
    Delta::at(&ctx.state.gen_path(doomed)).remove()
}
