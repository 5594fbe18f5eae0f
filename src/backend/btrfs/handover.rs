//! The handover of the writes a commit's carry-over could not see: the running system goes on writing to the tree
//! the commit replaces after the carry-over's last look at it. The commit keeps that last look
//! (`gens/<from>.handover`), and what was written to the replaced tree since is carried into the new tree by the
//! commit's conflict rule:
//! - a running root (a btrfs `/`) stays mounted from the replaced tree until the shutdown, so `snapinst boot`, before
//!   the root is mounted, carries it (`hand_over`);
//! - a directory target's running system writes through paths, which name the new tree from the exchange on, so
//!   the commit's finishing carries at once what was written in between, into the tree it is writing to, each
//!   entry by a checked exchange (`hand_over_now`).
//!
//! An exact rollback drops the handovers: it restores a tree exactly, without what was written since.

use super::*;
use crate::pathbytes::PathText;

/// A root that is a directory of its filesystem, not mounted on its own.
fn directory_target(p: &Paths) -> bool {
    !mounts::is_mount_point(&p.host_root).unwrap_or(true)
}

/// When the tree the commit replaced is the one the running system is mounted from, keep the carry-over's last look
/// at it (read-only, as `gens/<from>.handover`): what the running system writes to it from then until the shutdown
/// is what `hand_over` brings into the new tree at the next boot. Idempotent. (A commit without a carry-over, an
/// exact rollback, keeps nothing. A directory target's look stays where it is for `hand_over_now`: see
/// `look_for_now`.)
pub(super) fn keep_handover(p: &Paths, rec: &TxnRecord) -> Result<()> {
    let at = p.handover(rec.from_generation);
    // The replaced tree is the running system's when the root is mounted from it; and when the root is mounted from
    // the new tree already, the machine was rebooted after the exchange (a crash before the transaction was done,
    // finished now by `snapinst recover`): until then it ran on the replaced tree, and wrote to it.
    let mounted =
        if mounts::is_mount_point(&p.host_root).unwrap_or(false) { subvol_id(&p.host_root).ok() } else { None };
    let running = mounted.is_some() && (mounted == rec.root_subvol_before || mounted == rec.incoming_subvol);
    let Some(last) = last_look(p, &rec.txn) else { return Ok(()) };
    if !running || fsutil::exists(&at) {
        return Ok(());
    }
    CreateSnapshotOptions::new()
        .readonly(true)
        .create(&last, &at)
        .with_context(|| format!("keeping {} as {}", last.escaped(), at.escaped()))?;
    Ok(())
}

/// Drop every pending handover (an exact rollback: what the running system writes from now on stays in the tree
/// it is mounted from, kept as its generation, and is not carried).
pub(super) fn drop_handovers(p: &Paths, state: &State) -> Result<()> {
    for g in &state.generations {
        for path in [p.handover(g.generation), p.handover_view(g.generation)] {
            if is_subvolume(&path) {
                delete_subvolume(&path)?;
            }
        }
    }
    Ok(())
}

/// What `hand_over` did at a boot.
pub(crate) struct HandedOver {
    pub generation: u64,
    pub paths: usize,
    pub conflicts: Vec<Conflict>,
    /// The transaction whose commit left the handover (its record gets the conflicts).
    pub txn: Option<String>,
}

/// At boot, before the root is mounted: the tree the last boot ran on (generation `g`, kept, sealed read-only by
/// now) received writes after the commit that replaced it, until the shutdown. Carry them into the current tree
/// (which nothing has mounted yet), with the conflict rule of a commit against what the transactions since then
/// changed (the current tree against the handover, through a read-only view of it), then drop
/// `gens/<g>.handover`. A crash here is harmless: the next boot does it again, and carrying is idempotent.
/// `kept_for(g)` names the transaction that committed away from generation `g` and where the conflicts' live
/// versions go.
pub(in crate::backend) fn hand_over(
    p: &Paths,
    state: &State,
    kept_for: &dyn Fn(u64) -> (Option<String>, PathBuf),
) -> Result<Option<HandedOver>> {
    let Some(g) = state.generations.iter().map(|x| x.generation).find(|&g| is_subvolume(&p.handover(g))) else {
        return Ok(None);
    };
    let (handover, replaced) = (p.handover(g), p.gen(g));
    if state.current == g || !is_subvolume(&replaced) {
        // The machine is back on that tree, which holds every write itself.
        drop_handovers(p, state)?;
        return Ok(None);
    }
    if !libbtrfsutil::subvolume_read_only(&replaced).unwrap_or(false) {
        bail!(
            "{} is still writable (mounted?); the writes made to it after the commit are not carried",
            replaced.escaped()
        );
    }
    let (txn, kept) = kept_for(g);
    let done = carry_into_root(p, &handover, &replaced, &p.handover_view(g), &kept, Some("boot-mid-handover"), false)?;
    delete_subvolume(&handover)?;
    Ok(Some(HandedOver { generation: g, paths: done.paths, conflicts: done.conflicts, txn }))
}

/// Right after the commit `rec` replaced generation `from`'s tree of a directory target (once `finish` kept that
/// tree, read-only): carry into the root, while the running system goes on writing to it, what was written to the
/// replaced tree after the carry-over's last look (an apply's `gens/<to>.before`, a keeping rollback's handover),
/// by the commit's conflict rule against everything the root holds differently from that look (the plan's changes,
/// and what was written since the exchange), the versions it does not take kept in `kept`; then drop the handover.
/// Handovers an earlier finishing could not carry (`keep_for_retry`) are carried first. When nothing was written
/// (the usual case), this costs one comparison of two read-only trees and no btrfs commit. Idempotent: a crash
/// leaves the look, and the recovery's finishing carries again (what was carried already is left as it is, and an
/// append merged already is not appended twice). None when there is nothing to hand over (a root mounted on its own
/// waits for the boot).
pub(in crate::backend) fn hand_over_now(p: &Paths, rec: &TxnRecord, kept: &Path) -> Result<Option<HandedOver>> {
    if !directory_target(p) {
        return Ok(None);
    }
    let from = rec.from_generation;
    let mut done: Option<HandedOver> = None;
    let mut add = |h: Option<HandedOver>| {
        if let Some(h) = h {
            match &mut done {
                None => done = Some(h),
                Some(d) => {
                    d.paths += h.paths;
                    d.conflicts.retain(|c| h.conflicts.iter().all(|n| n.path != c.path));
                    d.conflicts.extend(h.conflicts);
                }
            }
        }
    };
    for g in left_to_hand_over(p)?.into_iter().filter(|&g| g != from) {
        add(hand_over_generation(p, g, &p.handover(g), kept)?);
    }
    let handover = p.handover(from);
    let look = if is_subvolume(&handover) { Some(handover) } else { look_for_now(p, rec) };
    if let Some(look) = look {
        add(hand_over_generation(p, from, &look, kept)?);
    }
    // A keeping rollback's look was its last carry-over snapshot, left by `finish`; deleted with the next btrfs
    // commit (a crash before it brings it back, and the sweep of leftovers removes it).
    remove_snapshots_uncommitted(&p.carry(&rec.txn))?;
    Ok(done)
}

/// Where the last look of the commit `rec` at a directory target is, for `hand_over_now`: an apply's is kept as
/// `gens/<to>.before`; a keeping rollback's is its last carry-over snapshot, which `finish` leaves in place (no
/// snapshot of it is taken: that would cost a btrfs commit on every rollback).
pub(super) fn look_for_now(p: &Paths, rec: &TxnRecord) -> Option<PathBuf> {
    if !directory_target(p) {
        return None;
    }
    let look = match rec.kind {
        TxnKind::Apply => p.before(rec.to_generation),
        _ if rec.exact => return None,
        _ => last_look(p, &rec.txn)?,
    };
    is_subvolume(&look).then_some(look)
}

/// The generations whose handover is still in the state area.
fn left_to_hand_over(p: &Paths) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&p.gens_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.gens_dir.escaped())),
    };
    for e in entries {
        let name = e.with_context(|| format!("reading {}", p.gens_dir.escaped()))?.file_name();
        if let Some(g) = name.to_str().and_then(|n| n.strip_suffix(".handover")).and_then(|n| n.parse().ok()) {
            out.push(g);
        }
    }
    out.sort();
    Ok(out)
}

/// Carry into the root what generation `g`'s kept tree received after `look`; drop `g`'s handover.
fn hand_over_generation(p: &Paths, g: u64, look: &Path, kept: &Path) -> Result<Option<HandedOver>> {
    let replaced = p.gen(g);
    if !is_subvolume(&replaced) || !libbtrfsutil::subvolume_read_only(&replaced).unwrap_or(false) {
        bail!("generation {g}'s kept tree {} is missing or writable", replaced.escaped());
    }
    let done = if btrfs_send::changes(look, &replaced)?.is_empty() {
        None
    } else {
        Some(carry_into_root(p, look, &replaced, &p.handover_view(g), kept, None, true)?)
    };
    if is_subvolume(&p.handover(g)) {
        // With the next btrfs commit: a crash before it brings the handover back, and carrying it again is
        // harmless.
        delete_subvolume_uncommitted(&p.handover(g))?;
    }
    Ok(done.map(|d| HandedOver { generation: g, paths: d.paths, conflicts: d.conflicts, txn: None }))
}

/// After `hand_over_now` failed for the commit `rec`: keep its look as `gens/<from>.handover` (an apply's look goes
/// with its generation, a rollback's with the transaction), so that the next finishing carries it and generation
/// `from` is not pruned until then.
pub(in crate::backend) fn keep_for_retry(p: &Paths, rec: &TxnRecord) -> Result<()> {
    let at = p.handover(rec.from_generation);
    match look_for_now(p, rec) {
        Some(look) if !is_subvolume(&at) => snapshot_read_only(&look, &at),
        _ => Ok(()),
    }
}

/// Carry into the root what `source` received since `reference` (both read-only), with the conflict rule of a
/// commit against what the root holds differently from `reference` (seen through the read-only snapshot `view`,
/// made and dropped here); then sync. `live`: the running system writes to the root meanwhile (see
/// `carry::Round::live_stage`); otherwise nothing has it mounted (at boot).
fn carry_into_root(
    p: &Paths,
    reference: &Path,
    source: &Path,
    view: &Path,
    kept: &Path,
    crash_point: Option<&str>,
    live: bool,
) -> Result<carry::Carried> {
    if is_subvolume(view) {
        delete_subvolume(view)?;
    }
    snapshot_read_only(&p.root, view)?;
    let planned = btrfs_send::changes(reference, view)?;
    let written = btrfs_send::changes(reference, source)?;
    let round = carry::Round {
        before: reference,
        live: source,
        stage: &p.root,
        planned: &planned,
        kept,
        incoming_wins: false,
        live_stage: live,
        in_root: true,
    };
    let done = carry::carry(&round, &written)?;
    if let Some(point) = crash_point {
        crate::failpoint::hit(point);
    }
    fsutil::syncfs(&p.root)?;
    delete_subvolume(view)?;
    Ok(done)
}

/// At a counted boot of pending generation `n`, before the root is mounted: keep its tree as the first such boot
/// finds it, read-only (`gens/<n>.booted`, once): what a fallback compares with to tell what the failed boots
/// wrote.
pub(in crate::backend) fn keep_booted(p: &Paths, n: u64) -> Result<()> {
    let at = p.booted(n);
    if is_subvolume(&at) {
        return Ok(());
    }
    CreateSnapshotOptions::new()
        .readonly(true)
        .create(&p.root, &at)
        .with_context(|| format!("keeping {} as {}", p.root.escaped(), at.escaped()))?;
    Ok(())
}

/// The generation booted fine (or is no longer pending): its first boot's tree is not needed any more.
pub(in crate::backend) fn drop_booted(p: &Paths, n: u64) -> Result<()> {
    let at = p.booted(n);
    if is_subvolume(&at) {
        delete_subvolume(&at)?;
    }
    Ok(())
}

/// After the failed-boot fallback made the root the kept tree of an earlier generation again (before the root is
/// mounted): carry into it what the failed boots of generation `failed` wrote (their logs, among others), from its
/// first boot's tree to its tree now (kept, read-only). A path the fallback's tree holds differently from that first
/// boot (what `failed`'s transaction changed) stays as the fallback has it; the failed boots' version is kept in
/// `kept` and listed.
pub(in crate::backend) fn carry_back_failed_boots(p: &Paths, failed: u64, kept: &Path) -> Result<Option<HandedOver>> {
    let (booted, tree) = (p.booted(failed), p.gen(failed));
    if !is_subvolume(&booted) || !is_subvolume(&tree) {
        return Ok(None);
    }
    if !libbtrfsutil::subvolume_read_only(&tree).unwrap_or(false) {
        bail!("{} is still writable (mounted?); what its boots wrote is not carried", tree.escaped());
    }
    let done = carry_into_root(p, &booted, &tree, &p.handover_view(failed), kept, Some("boot-mid-carry-back"), false)?;
    delete_subvolume(&booted)?;
    Ok(Some(HandedOver { generation: failed, paths: done.paths, conflicts: done.conflicts, txn: None }))
}
