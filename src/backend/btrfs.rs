//! The btrfs backend: the stage is a writable snapshot of the root subvolume, taken after a sync with a read-only
//! one of the same instant (the base); before the commit record, what the live root received since is carried into
//! the stage (`btrfs_send` finds it, `carry` brings it); the commit point is one `renameat2(RENAME_EXCHANGE)` of
//! the stage and the root; the tree it replaces is kept read-only as a
//! generation. When the root is a mount point (the kernel refuses to rename it) every subvolume operation goes
//! through a private mount of the filesystem's top level, and the new tree is what the next mount sees.
//! Nothing here may delete a subvolume that is the root, is mounted, or was committed.

use super::{btrfs_send, carry};
use crate::conflicts::{CarryOver, Conflict};
use crate::fsutil;
use crate::mounts;
use crate::pathbytes::PathText;
use crate::state::{State, TxnKind, TxnRecord};
use anyhow::{bail, Context, Result};
use libbtrfsutil::{CreateSnapshotOptions, DeleteSubvolumeOptions, IterateSubvolume};
use nix::fcntl::{renameat2, RenameFlags};
use std::path::{Path, PathBuf};

mod handover;
mod keeping_rollback;
use handover::keep_handover;
pub(crate) use handover::HandedOver;
pub(super) use handover::{
    carry_back_failed_boots, drop_booted, hand_over, hand_over_now, keep_booted, keep_for_retry,
};
use keeping_rollback::stage_keeping_rollback;

pub(super) fn is_subvolume(path: &Path) -> bool {
    libbtrfsutil::is_subvolume(path).unwrap_or(false)
}

pub(super) fn check_usable(root: &Path, state_dir: &Path) -> Result<()> {
    if !is_subvolume(root) {
        bail!("{} is not a btrfs subvolume; the btrfs backend needs the root to be one", root.escaped());
    }
    let nested: Vec<PathBuf> = IterateSubvolume::new(root)
        .iter_with_id()
        .with_context(|| format!("listing subvolumes below {}", root.escaped()))?
        .map(|r| r.map(|(p, _)| p))
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing subvolumes below {}", root.escaped()))?;
    if !nested.is_empty() {
        let list: Vec<String> = nested.iter().map(|p| format!("/{}", p.escaped())).collect();
        bail!(
            "{} contains nested subvolumes ({}); a snapshot does not carry them, so snapinst refuses to stage it",
            root.escaped(),
            list.join(", ")
        );
    }
    let parent = state_dir.ancestors().find(|a| a.exists()).unwrap_or(state_dir);
    if mounts::mount_of(parent)?.fstype != "btrfs" {
        bail!("the state directory {} is not on a btrfs filesystem", state_dir.escaped());
    }
    Ok(())
}

/// Where the backend finds the root and its state for subvolume operations.
pub(super) struct Paths {
    /// The root as snapinst renames it (through the top-level view when the root is a mount point).
    root: PathBuf,
    /// The root as mounted on the host (what is live now).
    host_root: PathBuf,
    stage_dir: PathBuf,
    gens_dir: PathBuf,
}

impl Paths {
    pub(super) fn new(root: &Path, state_dir: &Path) -> Result<Paths> {
        let same_mount = mounts::mount_id(root)? == mounts::mount_id(state_dir)?;
        if same_mount && !mounts::is_mount_point(root)? {
            return Ok(Paths {
                root: root.to_path_buf(),
                host_root: root.to_path_buf(),
                stage_dir: state_dir.join("stage"),
                gens_dir: state_dir.join("gens"),
            });
        }
        let state_in_top = crate::topview::in_top(state_dir)?;
        Ok(Paths {
            root: crate::topview::root_in_top(root)?,
            host_root: root.to_path_buf(),
            stage_dir: state_in_top.join("stage"),
            gens_dir: state_in_top.join("gens"),
        })
    }

    fn stage(&self, rec: &TxnRecord) -> PathBuf {
        self.stage_dir.join(&rec.txn)
    }
    /// The transaction's carry-over snapshots: `base`, taken with the stage, and the live tree's at the commit.
    fn carry(&self, txn: &str) -> PathBuf {
        self.stage_dir.join(format!("{txn}{}", crate::state::CARRY_SUFFIX))
    }
    /// The read-only snapshot of the root taken with the stage: the stage's tree before any step ran.
    fn base(&self, txn: &str) -> PathBuf {
        self.carry(txn).join("base")
    }
    fn gen(&self, n: u64) -> PathBuf {
        self.gens_dir.join(n.to_string())
    }
    /// Generation `n`'s tree as its transaction committed it (read-only).
    fn committed(&self, n: u64) -> PathBuf {
        self.gens_dir.join(format!("{n}{}", crate::state::COMMITTED_SUFFIX))
    }
    /// Generation `n`'s tree as the commit that replaced it left it, while it stayed mounted (read-only).
    fn handover(&self, n: u64) -> PathBuf {
        self.gens_dir.join(format!("{n}{}", crate::state::HANDOVER_SUFFIX))
    }
    /// The tree as generation `n`'s commit found it, the carry-over's last look (read-only): what a keeping rollback
    /// compares `committed(n)` with to tell what `n`'s transaction changed.
    fn before(&self, n: u64) -> PathBuf {
        self.gens_dir.join(format!("{n}{}", crate::state::BEFORE_SUFFIX))
    }
    /// Pending generation `n`'s tree as its first counted boot found it (read-only).
    fn booted(&self, n: u64) -> PathBuf {
        self.gens_dir.join(format!("{n}{}", crate::state::BOOTED_SUFFIX))
    }
    /// A read-only view of the root taken by `hand_over` while it runs.
    fn handover_view(&self, n: u64) -> PathBuf {
        self.gens_dir.join(format!("{n}{}", crate::state::HANDOVER_VIEW_SUFFIX))
    }
}

fn subvol_id(path: &Path) -> Result<u64> {
    libbtrfsutil::subvolume_id(path).with_context(|| format!("reading the subvolume id of {}", path.escaped()))
}

/// A btrfs stage is a snapshot somewhere in the state area, and takes the root's subvolume name only at its commit,
/// so a tool that names the tree's subvolume (GRUB's `rootflags=subvol=` in its menu) would name the stage. Steps
/// are told the name instead: `SNAPINST_BTRFS_SUBVOL`, the subvolume path from the top level (`@`).
pub(super) fn stage_env(root: &Path) -> Result<Vec<(String, String)>> {
    let name = crate::topview::root_name(root)?;
    let name = name.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect::<PathBuf>();
    Ok(vec![("SNAPINST_BTRFS_SUBVOL".to_string(), name.to_string_lossy().into_owned())])
}

/// Take the stage: a read-only snapshot of the root (the base, kept to find what the live tree changes
/// meanwhile), and the stage as a writable snapshot of it, so both are the tree of one instant.
pub(super) fn prepare(p: &Paths, rec: &mut TxnRecord) -> Result<PathBuf> {
    libbtrfsutil::sync(&p.root).with_context(|| format!("syncing {}", p.root.escaped()))?;
    let stage = p.stage(rec);
    let carry = p.carry(&rec.txn);
    fsutil::create_dir_durable(&p.stage_dir)?;
    remove_snapshots_in(&carry)?;
    fsutil::create_dir_durable(&carry)?;
    let base = p.base(&rec.txn);
    snapshot_read_only(&p.root, &base)?;
    CreateSnapshotOptions::new()
        .create(&base, &stage)
        .with_context(|| format!("snapshotting {} to {}", base.escaped(), stage.escaped()))?;
    rec.root_subvol_before = Some(subvol_id(&p.root)?);
    rec.incoming_subvol = Some(subvol_id(&stage)?);
    Ok(stage)
}

/// At most this many carry-over rounds run while the live tree keeps changing.
const CARRY_ROUNDS: usize = 5;

/// Before the commit record: carry into the stage what the live root received since the stage was taken (rounds
/// until a round finds nothing new, at most `CARRY_ROUNDS`), keeping the live versions of paths the plan also
/// changed in `kept`; then make the stage durable. Returns how many paths were carried, and the conflicts.
pub(super) fn pre_commit(p: &Paths, rec: &TxnRecord, kept: &Path) -> Result<(CarryOver, Vec<Conflict>)> {
    let t0 = std::time::Instant::now();
    let carry = p.carry(&rec.txn);
    let base = p.base(&rec.txn);
    if !is_subvolume(&base) {
        bail!(
            "the snapshot taken with the stage ({}) is gone, so snapinst cannot tell what the running system changed meanwhile; nothing is committed",
            base.escaped()
        );
    }
    let stage = p.stage(rec);
    let mut planned = None;
    let mut before = base.clone();
    let (mut done_all, mut conflicts) = (CarryOver::default(), Vec::<Conflict>::new());
    let mut last_look = std::time::Instant::now();
    for round in 1..=CARRY_ROUNDS {
        if round == 1 {
            crate::failpoint::hit("apply-mid-carry-over");
        }
        last_look = std::time::Instant::now();
        if unchanged_since(&p.root, &before)? {
            break;
        }
        done_all.rounds = round;
        let live = carry.join(format!("live-{round}"));
        snapshot_read_only(&p.root, &live)?;
        let changed = btrfs_send::changes(&before, &live)?;
        if planned.is_none() {
            planned = Some(while_read_only(&stage, || btrfs_send::changes(&base, &stage))?);
        }
        let round = carry::Round {
            before: &before,
            live: &live,
            stage: &stage,
            planned: planned.as_ref().expect("set above"),
            kept,
            incoming_wins: false,
            live_stage: false,
            in_root: false,
        };
        let done = carry::carry(&round, &changed)?;
        done_all.paths += done.paths;
        merge_conflicts(&mut conflicts, done.conflicts);
        // (The round's snapshots stay until the transaction ends: deleting one commits a btrfs transaction, and
        // that would only lengthen the time between the last round and the exchange.)
        before = live;
        if changed.is_empty() {
            break;
        }
    }
    done_all.ms = t0.elapsed().as_millis() as u64;
    if fsutil::exists(kept) {
        fsutil::syncfs(kept)?;
    }
    if rec.kind == TxnKind::Apply {
        keep_committed(p, &stage, rec.to_generation)?;
    }
    fsutil::syncfs(&stage)?;
    done_all.tail_ms = last_look.elapsed().as_millis() as u64;
    Ok((done_all, conflicts))
}

/// Later conflicts on a path replace earlier ones.
fn merge_conflicts(all: &mut Vec<Conflict>, new: Vec<Conflict>) {
    for c in new {
        all.retain(|old| old.path != c.path);
        all.push(c);
    }
}

/// Keep the stage as it is committed, read-only, as `gens/<n>.committed`: what a later rollback compares with to
/// tell what generation `n`'s transaction changed from what the running system wrote after it.
fn keep_committed(p: &Paths, stage: &Path, n: u64) -> Result<()> {
    let at = p.committed(n);
    if fsutil::exists(&at) {
        delete_subvolume(&at)?;
    }
    fsutil::create_dir_durable(&p.gens_dir)?;
    CreateSnapshotOptions::new()
        .readonly(true)
        .create(stage, &at)
        .with_context(|| format!("keeping the committed tree as {}", at.escaped()))?;
    Ok(())
}

/// Whether the subvolume `root` is unchanged since the read-only snapshot `snap` was taken of it (or of a snapshot
/// of it): after a sync (cheap when nothing is dirty), the subvolume's last transaction is not after the
/// snapshot's. Costs no snapshot, so a commit with nothing to carry pays almost nothing.
fn unchanged_since(root: &Path, snap: &Path) -> Result<bool> {
    libbtrfsutil::sync(root).with_context(|| format!("syncing {}", root.escaped()))?;
    let info = |p: &Path| {
        libbtrfsutil::subvolume_info(p).with_context(|| format!("reading the subvolume information of {}", p.escaped()))
    };
    Ok(info(root)?.generation() <= info(snap)?.otransid())
}

/// Run `f` with the subvolume `path` read-only (the send ioctl reads only read-only snapshots).
fn while_read_only<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    libbtrfsutil::set_subvolume_read_only(path, true)
        .with_context(|| format!("making {} read-only to compare it", path.escaped()))?;
    let out = f();
    libbtrfsutil::set_subvolume_read_only(path, false)
        .with_context(|| format!("making {} writable again", path.escaped()))?;
    out
}

/// Whether the root's name already points at the incoming subvolume.
pub(super) fn exchanged(p: &Paths, rec: &TxnRecord) -> Result<bool> {
    let now = subvol_id(&p.root)?;
    match (rec.root_subvol_before, rec.incoming_subvol) {
        (_, Some(incoming)) if now == incoming => Ok(true),
        (Some(before), _) if now == before => Ok(false),
        _ => bail!("the root {} is subvolume {now}, neither the one before nor the one staged", p.root.escaped()),
    }
}

fn exchange(a: &Path, b: &Path) -> Result<()> {
    renameat2(None, a, None, b, RenameFlags::RENAME_EXCHANGE)
        .with_context(|| format!("exchanging {} and {}", a.escaped(), b.escaped()))?;
    libbtrfsutil::sync(b).with_context(|| format!("syncing {}", b.escaped()))
}

pub(super) fn commit(p: &Paths, rec: &TxnRecord) -> Result<()> {
    if !exchanged(p, rec)? {
        exchange(&p.stage(rec), &p.root)?;
    }
    Ok(())
}

/// A read-only snapshot of the subvolume `from` at `to`.
fn snapshot_read_only(from: &Path, to: &Path) -> Result<()> {
    CreateSnapshotOptions::new()
        .readonly(true)
        .create(from, to)
        .with_context(|| format!("snapshotting {} to {}", from.escaped(), to.escaped()))?;
    Ok(())
}

/// The carry-over's last look at the live tree (its last round's snapshot, or the base when no round ran), if it is
/// still there.
fn last_look(p: &Paths, txn: &str) -> Option<PathBuf> {
    let carry = p.carry(txn);
    (1..=CARRY_ROUNDS).rev().map(|r| carry.join(format!("live-{r}"))).chain([p.base(txn)]).find(|l| is_subvolume(l))
}

/// Keep the carry-over's last look at the live tree (the tree as the commit found it) as `gens/<to>.before`: moved,
/// not snapshotted (no btrfs commit of its own: the kept generation's sync commits it). Idempotent.
fn keep_before(p: &Paths, rec: &TxnRecord) -> Result<()> {
    let at = p.before(rec.to_generation);
    let Some(last) = last_look(p, &rec.txn) else { return Ok(()) };
    if fsutil::exists(&at) {
        return Ok(());
    }
    // (A read-only subvolume cannot be moved to another directory.)
    libbtrfsutil::set_subvolume_read_only(&last, false)
        .with_context(|| format!("making {} writable to move it", last.escaped()))?;
    std::fs::rename(&last, &at).with_context(|| format!("keeping {} as {}", last.escaped(), at.escaped()))?;
    libbtrfsutil::set_subvolume_read_only(&at, true).with_context(|| format!("making {} read-only", at.escaped()))
}

/// Keep the subvolume now at `from` (the replaced tree) read-only as generation `n`. Idempotent. (A read-only
/// subvolume cannot be moved to another directory, so it is moved first and made read-only after.)
fn keep_as_generation(p: &Paths, from: &Path, expected_id: Option<u64>, n: u64) -> Result<()> {
    let kept = p.gen(n);
    if fsutil::exists(from) {
        if expected_id.is_some_and(|id| subvol_id(from).ok() != Some(id)) {
            bail!("{} is not the subvolume the root held before; leaving it alone", from.escaped());
        }
        if fsutil::exists(&kept) {
            // A stale tree under the generation's name (one whose deletion a crash undid): the generation's tree
            // is the one at `from`.
            if subvol_id(&kept).ok() == subvol_id(&p.host_root).ok() {
                bail!("{} is the mounted root; leaving it alone", kept.escaped());
            }
            delete_subvolume_uncommitted(&kept)?;
        }
        if libbtrfsutil::subvolume_read_only(from).unwrap_or(false) {
            libbtrfsutil::set_subvolume_read_only(from, false)
                .with_context(|| format!("making {} writable to move it", from.escaped()))?;
        }
        fsutil::create_dir_durable(&p.gens_dir)?;
        std::fs::rename(from, &kept).with_context(|| format!("keeping {} as generation {n}", from.escaped()))?;
    }
    if is_subvolume(&kept) {
        // The tree the running system is mounted from (the root is a mount point, such as `/`) stays writable
        // while it is mounted: the read-only flag would make the running `/` read-only at once. `seal`, run by
        // `snapinst boot` before the root is mounted, makes it read-only then.
        let mounted = mounts::is_mount_point(&p.host_root).unwrap_or(false)
            && subvol_id(&kept).ok() == subvol_id(&p.host_root).ok();
        if !mounted {
            libbtrfsutil::set_subvolume_read_only(&kept, true)
                .with_context(|| format!("making {} read-only", kept.escaped()))?;
        }
    }
    // (This commit also makes durable what the caller deleted before, uncommitted.)
    libbtrfsutil::sync(&p.gens_dir).context("syncing the generations")
}

/// Make every kept generation read-only that is not (any more) the mounted root. Idempotent.
pub(super) fn seal(p: &Paths, state: &State) -> Result<()> {
    let mounted =
        if mounts::is_mount_point(&p.host_root).unwrap_or(false) { subvol_id(&p.host_root).ok() } else { None };
    let mut changed = false;
    for g in &state.generations {
        let path = p.gen(g.generation);
        if g.generation != state.current
            && is_subvolume(&path)
            && subvol_id(&path).ok() != mounted
            && !libbtrfsutil::subvolume_read_only(&path).unwrap_or(true)
        {
            libbtrfsutil::set_subvolume_read_only(&path, true)
                .with_context(|| format!("making {} read-only", path.escaped()))?;
            changed = true;
        }
    }
    if changed {
        libbtrfsutil::sync(&p.gens_dir).context("syncing the generations")?;
    }
    Ok(())
}

pub(super) fn finish(p: &Paths, rec: &TxnRecord, state: &mut State) -> Result<()> {
    keep_handover(p, rec)?;
    if rec.kind == TxnKind::Apply {
        keep_before(p, rec)?;
    }
    // Committed with the kept generation below (one btrfs commit for both, before the record says done; a crash
    // before it brings the snapshots back, and recovery runs this again).
    // (A directory target's keeping rollback leaves its last look for `hand_over_now`, which removes the rest.)
    match handover::look_for_now(p, rec).filter(|_| rec.kind != TxnKind::Apply) {
        None => remove_snapshots_uncommitted(&p.carry(&rec.txn))?,
        Some(look) => remove_snapshots_but(&p.carry(&rec.txn), &look)?,
    }
    keep_as_generation(p, &p.stage(rec), rec.root_subvol_before, rec.from_generation)?;
    state.current_subvol = rec.incoming_subvol;
    Ok(())
}

pub(super) fn discard(p: &Paths, rec: &TxnRecord) -> Result<()> {
    remove_snapshots_in(&p.carry(&rec.txn))?;
    if rec.kind == TxnKind::Apply && fsutil::exists(&p.committed(rec.to_generation)) {
        delete_subvolume(&p.committed(rec.to_generation))?;
    }
    let stage = p.stage(rec);
    if !fsutil::exists(&stage) {
        return Ok(());
    }
    if rec.incoming_subvol.is_some() && rec.incoming_subvol != subvol_id(&stage).ok() {
        bail!("{} is not the stage snapinst made; leaving it alone", stage.escaped());
    }
    delete_subvolume(&stage)
}

/// Delete every snapshot in `dir`, then `dir` itself (nothing when it does not exist), and commit the deletions.
pub(super) fn remove_snapshots_in(dir: &Path) -> Result<()> {
    if !fsutil::exists(dir) {
        return Ok(());
    }
    remove_snapshots_uncommitted(dir)?;
    // One commit for all of them, so a crash cannot bring one back.
    let parent = dir.parent().unwrap_or(dir);
    libbtrfsutil::sync(parent).with_context(|| format!("syncing {}", parent.escaped()))
}

/// `remove_snapshots_in` without the commit: the caller commits (or a crash brings them back, to be removed again).
/// Delete the snapshots in `dir` but `keep`, uncommitted.
fn remove_snapshots_but(dir: &Path, keep: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.escaped()))? {
        let path = e.with_context(|| format!("reading {}", dir.escaped()))?.path();
        if path != keep {
            delete_subvolume_uncommitted(&path)?;
        }
    }
    Ok(())
}

fn remove_snapshots_uncommitted(dir: &Path) -> Result<()> {
    if !fsutil::exists(dir) {
        return Ok(());
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.escaped()))? {
        delete_subvolume_uncommitted(&e.with_context(|| format!("reading {}", dir.escaped()))?.path())?;
    }
    fsutil::remove_any(dir)
}

/// Delete the subvolume at `path` (a plain directory there is removed), and commit the deletion.
pub(super) fn delete_subvolume(path: &Path) -> Result<()> {
    delete_subvolume_uncommitted(path)?;
    // Commit the deletion, so a crash cannot bring the subvolume back.
    let parent = path.parent().unwrap_or(path);
    libbtrfsutil::sync(parent).with_context(|| format!("syncing {}", parent.escaped()))
}

/// Delete the subvolume at `path` (a plain directory there is removed); the caller commits the deletion.
fn delete_subvolume_uncommitted(path: &Path) -> Result<()> {
    if libbtrfsutil::is_subvolume(path).unwrap_or(false) {
        let delete = || DeleteSubvolumeOptions::new().recursive(true).delete(path);
        // Root deletes a read-only subvolume as it is. Clearing the flag first would cost a btrfs commit of its
        // own, so that is only the fallback, for a kernel that refuses.
        if delete().is_err() && libbtrfsutil::subvolume_read_only(path).unwrap_or(false) {
            libbtrfsutil::set_subvolume_read_only(path, false)
                .with_context(|| format!("making {} writable to delete it", path.escaped()))?;
        }
        if libbtrfsutil::is_subvolume(path).unwrap_or(false) {
            delete().with_context(|| format!("deleting subvolume {}", path.escaped()))?;
        }
    } else {
        fsutil::remove_any(path)?;
    }
    Ok(())
}

pub(super) fn plan_rollback(p: &Paths, rec: &mut TxnRecord, state: &State, kept: &Path) -> Result<()> {
    // Back to the tree the running system is mounted from: that tree itself is what keeps every write.
    let to_mounted = mounts::is_mount_point(&p.host_root).unwrap_or(false)
        && subvol_id(&p.gen(rec.to_generation)).ok() == subvol_id(&p.host_root).ok();
    if to_mounted {
        rec.exact = true;
    }
    if !rec.exact {
        return stage_keeping_rollback(p, rec, state, kept);
    }
    let target = p.gen(rec.to_generation);
    if !is_subvolume(&target) {
        bail!("generation {} has no kept tree at {}", rec.to_generation, target.escaped());
    }
    rec.root_subvol_before = Some(subvol_id(&p.root)?);
    rec.incoming_subvol = Some(subvol_id(&target)?);
    Ok(())
}

pub(super) fn rollback(p: &Paths, rec: &TxnRecord) -> Result<()> {
    if exchanged(p, rec)? {
        return Ok(());
    }
    if !rec.exact {
        commit(p, rec)?;
        crate::failpoint::hit("rollback-after-exchange");
        return Ok(());
    }
    let target = p.gen(rec.to_generation);
    libbtrfsutil::set_subvolume_read_only(&target, false)
        .with_context(|| format!("making generation {} writable", rec.to_generation))?;
    exchange(&target, &p.root)?;
    crate::failpoint::hit("rollback-after-exchange");
    Ok(())
}

pub(super) fn finish_rollback(p: &Paths, rec: &TxnRecord, state: &mut State) -> Result<()> {
    if rec.exact {
        keep_as_generation(p, &p.gen(rec.to_generation), rec.root_subvol_before, rec.from_generation)?;
        handover::drop_handovers(p, state)?;
        state.current_subvol = rec.incoming_subvol;
        return Ok(());
    }
    // The root now holds the target generation with what was written since; its tree as it was kept goes.
    let target = p.gen(rec.to_generation);
    if is_subvolume(&target) && subvol_id(&target).ok() != rec.incoming_subvol {
        // Committed by `finish`, with the kept generation.
        delete_subvolume_uncommitted(&target)?;
    }
    finish(p, rec, state)
}

pub(super) fn abandon_rollback(p: &Paths, rec: &TxnRecord) -> Result<()> {
    if !rec.exact {
        return discard(p, rec);
    }
    let target = p.gen(rec.to_generation);
    if is_subvolume(&target) && rec.incoming_subvol == subvol_id(&target).ok() {
        libbtrfsutil::set_subvolume_read_only(&target, true)
            .with_context(|| format!("making generation {} read-only again", rec.to_generation))?;
    }
    Ok(())
}

/// Every kept generation but the current one, the one a rollback returns to (its parent) and the mounted one,
/// oldest first.
pub(super) fn prunable(p: &Paths, state: &State) -> Vec<u64> {
    let mounted = subvol_id(&p.host_root).ok();
    let parent = state.generation(state.current).and_then(|g| g.parent);
    let mut out: Vec<u64> = state
        .generations
        .iter()
        .map(|g| g.generation)
        .filter(|&n| n != state.current && Some(n) != parent && subvol_id(&p.gen(n)).ok() != mounted)
        // (A tree with writes still to hand over is kept until they are.)
        .filter(|&n| !is_subvolume(&p.handover(n)))
        .collect();
    out.sort();
    out
}

pub(super) fn drop_generation(p: &Paths, n: u64) -> Result<()> {
    for path in [p.gen(n), p.committed(n), p.before(n), p.handover(n), p.handover_view(n), p.booted(n)] {
        if fsutil::exists(&path) {
            delete_subvolume(&path)?;
        }
    }
    Ok(())
}

pub(super) fn next_boot_differs(root: &Path, state: &State) -> bool {
    match (state.current_subvol, libbtrfsutil::subvolume_id(root)) {
        (Some(current), Ok(mounted)) => current != mounted,
        _ => false,
    }
}

/// Delete a leftover stage or generation `name` in `dir` (a state-area directory), through the backend's view.
pub(super) fn remove_leftover(p: &Paths, dir: &Path, name: &str) -> Result<()> {
    let base = if dir.ends_with("stage") { &p.stage_dir } else { &p.gens_dir };
    let path = base.join(name);
    if name.ends_with(crate::state::CARRY_SUFFIX) {
        return remove_snapshots_in(&path);
    }
    if subvol_id(&path).ok() == subvol_id(&p.host_root).ok() {
        bail!("{} is the mounted root; leaving it alone", path.escaped());
    }
    delete_subvolume(&path)
}

fn checkpoints(p: &Paths, txn: &str) -> PathBuf {
    p.stage_dir.join(format!("{txn}{}", crate::state::CHECKPOINTS_SUFFIX))
}

/// Keep the stage as it is now as read-only checkpoint `n` (a snapshot: cheap, whatever the tree's size).
pub(super) fn take_checkpoint(p: &Paths, rec: &TxnRecord, n: usize) -> Result<()> {
    snapshot_as_checkpoint(&p.stage(rec), &checkpoints(p, &rec.txn), n)
}

/// Keep the subvolume `stage` as read-only checkpoint `n` in `dir` (replacing an older one of that number).
pub(super) fn snapshot_as_checkpoint(stage: &Path, dir: &Path, n: usize) -> Result<()> {
    fsutil::create_dir_durable(dir)?;
    let target = dir.join(n.to_string());
    if fsutil::exists(&target) {
        delete_subvolume(&target)?;
    }
    CreateSnapshotOptions::new()
        .readonly(true)
        .create(stage, &target)
        .with_context(|| format!("taking checkpoint {}", target.escaped()))?;
    Ok(())
}

/// Make the stage a writable snapshot of checkpoint `n` again (the stage as it was after step `n`).
pub(super) fn restore_checkpoint(p: &Paths, rec: &mut TxnRecord, n: usize) -> Result<PathBuf> {
    let source = checkpoints(p, &rec.txn).join(n.to_string());
    if !fsutil::exists(&source) {
        bail!("checkpoint {} is missing", source.escaped());
    }
    let stage = p.stage(rec);
    if fsutil::exists(&stage) {
        delete_subvolume(&stage)?;
    }
    CreateSnapshotOptions::new()
        .create(&source, &stage)
        .with_context(|| format!("restoring {} from {}", stage.escaped(), source.escaped()))?;
    rec.incoming_subvol = Some(subvol_id(&stage)?);
    Ok(stage)
}

/// Delete the checkpoints after `keep` (all of them when None), and their directory when none is left.
pub(super) fn drop_checkpoints(p: &Paths, txn: &str, keep: Option<usize>) -> Result<()> {
    drop_snapshot_checkpoints(&checkpoints(p, txn), keep)
}

/// Delete the checkpoint snapshots in `dir` after `keep` (all of them, and `dir`, when None).
pub(super) fn drop_snapshot_checkpoints(dir: &Path, keep: Option<usize>) -> Result<()> {
    for path in super::checkpoints_after(dir, keep)? {
        delete_subvolume(&path)?;
    }
    if keep.is_none() {
        fsutil::remove_any(dir)?;
    }
    Ok(())
}

/// The kept stage, to compare with the root.
pub(super) fn stage_of(p: &Paths, rec: &TxnRecord) -> PathBuf {
    p.stage(rec)
}
