//! The three ways to stage a transaction and commit it, behind one set of operations that the apply, rollback and
//! recover commands call: prepare a stage, say what guards file changes, flush before the commit record, commit
//! (idempotent roll-forward), finish (keep the previous tree as a generation), discard (idempotent), roll back to a
//! generation, and prune one. Every operation is re-runnable after a crash at any instant; that is what lets
//! `recover` finish or undo any interrupted transaction from its record alone.
//!
//! A transaction is a list of parts: the root, and every filesystem mounted inside it that is staged on its own
//! (see `submounts`). A part is managed as a root of its own, with its state area at the top of its filesystem, by
//! the overlay backend, by the snapshot stager where it is a btrfs subvolume, or by the copy stager where overlayfs
//! cannot layer the filesystem (FAT); its stage is mounted at its path inside the root's stage, so a step sees the
//! tree the machine sees. Each operation here does its work on every part, so the commands never ask how many there
//! are: all parts are prepared and made durable before the one commit record, and all are rolled forward after it.

mod appends;
mod btrfs;
mod btrfs_send;
mod carry;
mod compared;
mod copy;
mod delta_gens;
mod journal;
mod live_swap;
mod overlay;
mod scratch;
mod snapshot;
mod stager;

use crate::pathbytes::PathText;
use crate::state::{BackendKind, State, StateDir, TxnRecord};
use crate::steps::ChangeGuard;
use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// What the operations of a backend need to know about a root.
pub(crate) struct Ctx {
    pub kind: BackendKind,
    pub root: PathBuf,
    pub state: StateDir,
    /// The state area relative to the root, when it is inside the root (then a stage must hide it).
    pub state_area: Option<PathBuf>,
    /// The filesystems inside the root staged on their own, outermost first.
    pub parts: Vec<Part>,
    /// A part's mount (its type and options: the copy stager makes its scratch filesystem alike).
    pub mount: Option<crate::mounts::MountInfo>,
    btrfs: Option<btrfs::Paths>,
}

/// A filesystem mounted inside the root and staged on its own: `rel` is where (relative to the root), and `ctx`
/// manages it as a root of its own (overlay, or copy for FAT; state area at the top of its filesystem; no parts).
pub(crate) struct Part {
    pub rel: PathBuf,
    pub ctx: Ctx,
}

impl Ctx {
    /// Set up for `kind` (for btrfs this may mount the filesystem's top level privately).
    pub fn new(kind: BackendKind, root: &Path, state: &StateDir) -> Result<Ctx> {
        let btrfs = match kind {
            BackendKind::Btrfs => Some(btrfs::Paths::new(root, &state.dir)?),
            _ => None,
        };
        let state_area = state_area(root, &state.dir);
        Ok(Ctx {
            kind,
            root: root.to_path_buf(),
            state: state.clone(),
            state_area,
            parts: Vec::new(),
            mount: None,
            btrfs,
        })
    }

    /// The same root with the filesystems mounted at `rels` (relative to it, outermost first) as its parts, each
    /// staged as it would be now.
    pub fn with_parts(self, rels: &[PathBuf]) -> Result<Ctx> {
        self.with_parts_staged(rels, &Default::default())
    }

    /// The same root with the parts of the transaction `rec`, each staged as the record says it was.
    pub fn with_parts_of(self, rec: &TxnRecord) -> Result<Ctx> {
        self.with_parts_staged(&rec.parts, &rec.part_kinds)
    }

    /// How each part is staged, by its path relative to the root (for the transaction record).
    pub fn part_kinds(&self) -> std::collections::BTreeMap<String, BackendKind> {
        self.parts.iter().map(|p| (part_key(&p.rel), p.ctx.kind)).collect()
    }

    fn with_parts_staged(
        mut self,
        rels: &[PathBuf],
        recorded: &std::collections::BTreeMap<String, BackendKind>,
    ) -> Result<Ctx> {
        self.parts = rels
            .iter()
            .map(|rel| {
                let root = self.root.join(rel);
                if !crate::mounts::is_mount_point(&root).unwrap_or(false) {
                    bail!(
                        "nothing is mounted at {}, where the transaction's part /{} is: mount that filesystem first",
                        root.escaped(),
                        rel.escaped()
                    );
                }
                let mut state = StateDir::at(root.join(crate::submounts::PART_STATE_DIR));
                let mount = crate::mounts::mount_of(&root)?;
                let kind = match recorded.get(&part_key(rel)) {
                    Some(&kind) => kind,
                    None => crate::submounts::part_backend(&mount.fstype, &root),
                };
                if stager::of(kind).stages_off_its_filesystem() {
                    state.stages = Some(self.state.dir.join("part-stages").join(part_file_name(rel)));
                }
                let mut ctx = Ctx::new(kind, &root, &state)?;
                ctx.mount = Some(mount);
                Ok(Part { rel: rel.clone(), ctx })
            })
            .collect::<Result<_>>()?;
        Ok(self)
    }

    /// Where the parts are, relative to the root.
    pub fn part_rels(&self) -> Vec<PathBuf> {
        self.parts.iter().map(|p| p.rel.clone()).collect()
    }

    fn stager(&self) -> &'static dyn stager::Stager {
        stager::of(self.kind)
    }

    /// The root's own part, then every other one.
    fn all(&self) -> impl Iterator<Item = &Ctx> {
        std::iter::once(self).chain(self.parts.iter().map(|p| &p.ctx))
    }

    /// What is inside the root besides its tree, read from the mount table now; the parts are this context's.
    pub fn layout(&self) -> Result<crate::submounts::Layout> {
        let rels = self.part_rels();
        crate::submounts::Layout::read(
            &self.root,
            self.state_area.as_deref(),
            self.kind,
            crate::submounts::Selection::Exactly(&rels),
        )
    }

    fn btrfs(&self) -> &btrfs::Paths {
        self.btrfs.as_ref().expect("btrfs paths are set up for the btrfs backend")
    }
}

/// A part's place inside the root as one file name (`boot/efi` -> `boot%2Fefi`; a byte that is not UTF-8 as `%HH`).
fn part_file_name(rel: &Path) -> String {
    let mut name = String::new();
    for chunk in std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()).utf8_chunks() {
        name.push_str(&chunk.valid().replace('%', "%25").replace('/', "%2F"));
        chunk.invalid().iter().for_each(|b| name.push_str(&format!("%{b:02X}")));
    }
    name
}

/// A part's key in a record's maps: its path relative to the root, as text (lossless, see `pathbytes`).
pub(crate) fn part_key(rel: &Path) -> String {
    rel.escaped().to_string()
}

/// Whether the part mounted at `root` is staged by btrfs snapshots (see `snapshot`).
pub(crate) fn snapshot_can_stage(root: &Path) -> bool {
    snapshot::can_stage(root, Path::new(crate::submounts::PART_STATE_DIR))
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
            state_dir.escaped(),
            root.escaped()
        );
    }
    if root == state_dir {
        bail!("the state directory cannot be the root itself ({})", root.escaped());
    }
    stager::of(kind).check_usable(root, state_dir)
}

/// What staging the part `root` with `kind` takes before any step runs (beyond what the steps write): bytes on its
/// own filesystem, and bytes in the root's state area.
pub(crate) fn part_staging_bytes(kind: BackendKind, root: &Path, state_dir: &Path) -> Result<(u64, u64)> {
    let s = stager::of(kind);
    let bytes = s.staging_bytes(root, state_dir)?;
    Ok(if s.stages_off_its_filesystem() { (0, bytes) } else { (bytes, 0) })
}

/// Make the stage for `rec`, every part's mounted at its path in the root's, and return the directory the steps
/// run in.
pub(crate) fn prepare(ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
    rec.started_ns = Some(crate::fsutil::now_coarse_ns());
    let stage = ctx.stager().prepare(ctx, rec)?;
    for p in &ctx.parts {
        p.ctx.state.create()?;
        let part_stage =
            p.ctx.stager().prepare(&p.ctx, rec).with_context(|| format!("staging /{}", p.rel.escaped()))?;
        bind_part(&part_stage, &stage, p)?;
    }
    Ok(stage)
}

/// Mount a part's stage at its path inside the root's stage (in snapinst's private namespace), with what is
/// mounted in it (the tmpfs hiding its state area).
fn bind_part(part_stage: &Path, stage: &Path, p: &Part) -> Result<()> {
    let at = stage.join(&p.rel);
    nix::mount::mount(Some(part_stage), &at, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("mounting the stage of /{} at {}", p.rel.escaped(), at.escaped()))
}

/// Take the parts' stages off the root's stage, deepest first (idempotent: nothing is mounted after a crash).
fn unbind_parts(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    let Some(stage) = &rec.stage else { return Ok(()) };
    for p in ctx.parts.iter().rev() {
        crate::mounts::unmount_below(&stage.join(&p.rel))?;
    }
    Ok(())
}

/// What the commands run in the stage are told about it (environment variables): the root's stager's.
pub(crate) fn stage_env(ctx: &Ctx) -> Result<Vec<(String, String)>> {
    ctx.stager().stage_env(ctx)
}

/// The guard file steps report to (the root's: a part is never journaled).
pub(crate) fn guard(ctx: &Ctx, rec: &TxnRecord) -> Result<Box<dyn ChangeGuard>> {
    ctx.stager().guard(ctx, rec)
}

/// Everything that must be durable before the commit record is written, for every part.
pub(crate) fn pre_commit(ctx: &Ctx, rec: &mut TxnRecord) -> Result<()> {
    unbind_parts(ctx, rec)?;
    rec.conflicts.clear();
    ctx.stager().pre_commit(ctx, rec).with_context(|| format!("preparing the commit of {}", ctx.root.escaped()))?;
    for p in &ctx.parts {
        let mine = rec.conflicts.len();
        p.ctx
            .stager()
            .pre_commit(&p.ctx, rec)
            .with_context(|| format!("preparing the commit of {}", p.ctx.root.escaped()))?;
        for c in &mut rec.conflicts[mine..] {
            c.path = Path::new("/").join(&p.rel).join(c.path.strip_prefix("/").unwrap_or(&c.path));
        }
    }
    Ok(())
}

/// Put the staged tree of every part in place. Idempotent: recovery calls it again after a crash.
pub(crate) fn commit(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    for c in ctx.all() {
        c.stager().commit(c, rec).with_context(|| format!("committing {}", c.root.escaped()))?;
    }
    Ok(())
}

/// Whether the commit of `rec` has already taken effect (decides roll forward or back in recovery): the root's
/// commit decides, since every part commits after the commit record, which is the root's or before it.
pub(crate) fn commit_took_effect(ctx: &Ctx, rec: &TxnRecord) -> Result<bool> {
    ctx.stager().commit_took_effect(ctx, rec)
}

/// Keep the previous tree as a generation and clean the stages and any checkpoints, of every part. Idempotent.
pub(crate) fn finish(ctx: &Ctx, rec: &TxnRecord, state: &mut State) -> Result<()> {
    drop_checkpoints(ctx, rec, None)?;
    for c in ctx.all() {
        c.stager().finish(c, rec, state)?;
    }
    Ok(())
}

/// Throw the stages (and any checkpoints) of every part away. Idempotent, and never touches a tree that was
/// committed.
pub(crate) fn discard(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    unbind_parts(ctx, rec)?;
    drop_checkpoints(ctx, rec, None)?;
    for c in ctx.all() {
        c.stager().discard(c, rec)?;
    }
    Ok(())
}

/// `--keep-failed`: keep every part's stage as it is after `n` steps (btrfs: a read-only snapshot; overlay: a copy
/// of the upper layer).
pub(crate) fn take_checkpoint(ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()> {
    for c in ctx.all() {
        c.stager().take_checkpoint(c, rec, n)?;
    }
    Ok(())
}

/// Put every part's stage back as it was at checkpoint `n`, dropping the later checkpoints; returns where the
/// steps run.
pub(crate) fn restore_checkpoint(ctx: &Ctx, rec: &mut TxnRecord, n: usize) -> Result<PathBuf> {
    unbind_parts(ctx, rec)?;
    let stage = ctx.stager().restore_checkpoint(ctx, rec, n)?;
    for p in &ctx.parts {
        let part_stage = p.ctx.stager().restore_checkpoint(&p.ctx, rec, n)?;
        bind_part(&part_stage, &stage, p)?;
    }
    drop_checkpoints(ctx, rec, Some(n))?;
    Ok(stage)
}

/// Delete a transaction's checkpoints after `keep`, or all of them, in every part. Idempotent.
pub(crate) fn drop_checkpoints(ctx: &Ctx, rec: &TxnRecord, keep: Option<usize>) -> Result<()> {
    for c in ctx.all() {
        c.stager().drop_checkpoints(c, &rec.txn, keep)?;
    }
    Ok(())
}

/// Keep a copy of the directory `from` (the overlay's upper layer, the copy stage's tree) as checkpoint `n`.
fn copy_as_checkpoint(ctx: &Ctx, rec: &TxnRecord, from: &Path, n: usize) -> Result<()> {
    let dir = ctx.state.checkpoints_path(&rec.txn);
    crate::fsutil::create_dir_durable(&dir)?;
    let target = dir.join(n.to_string());
    crate::fsutil::remove_any(&target)?;
    let tmp = dir.join(format!(".{n}.tmp"));
    crate::fsutil::remove_any(&tmp)?;
    crate::fsutil::copy_tree(from, &tmp)?;
    // The copy is durable before its name is (cp syncs nothing; a volatile stage's upper layer neither).
    crate::fsutil::syncfs(&tmp)?;
    std::fs::rename(&tmp, &target).with_context(|| format!("putting checkpoint {} in place", target.escaped()))?;
    crate::fsutil::sync_dir(&dir)
}

/// Where checkpoint `n` kept by [`copy_as_checkpoint`] is; refused when it is missing.
fn checkpoint_copy(ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<PathBuf> {
    let source = ctx.state.checkpoints_path(&rec.txn).join(n.to_string());
    if !source.is_dir() {
        bail!("checkpoint {} is missing", source.escaped());
    }
    Ok(source)
}

/// Delete the checkpoint copies after `keep` (all of them, and their directory, when None).
fn drop_checkpoint_copies(ctx: &Ctx, txn: &str, keep: Option<usize>) -> Result<()> {
    let dir = ctx.state.checkpoints_path(txn);
    if keep.is_none() {
        return crate::fsutil::remove_any(&dir);
    }
    for path in checkpoints_after(&dir, keep)? {
        crate::fsutil::remove_any(&path)?;
    }
    Ok(())
}

/// The entries of a checkpoint directory numbered after `keep` (every entry when None; stray names too).
fn checkpoints_after(dir: &Path, keep: Option<usize>) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut stale = Vec::new();
    for e in entries {
        let path = e?.path();
        let n = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<usize>().ok());
        if keep.is_none() || n.is_none_or(|n| Some(n) > keep) {
            stale.push(path);
        }
    }
    Ok(stale)
}

/// A kept transaction's stage, its parts' mounted in it, as a tree to compare with the root (overlay: mounted
/// privately).
pub(crate) fn kept_stage(ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf> {
    let stage = ctx.stager().stage_view(ctx, rec)?;
    for p in &ctx.parts {
        if !crate::mounts::is_mount_point(&stage.join(&p.rel))? {
            bind_part(&p.ctx.stager().stage_view(&p.ctx, rec)?, &stage, p)?;
        }
    }
    Ok(stage)
}

/// Plan a rollback from the current generation to `rec.to_generation` (fills the record; changes nothing), for
/// every part: a btrfs root names the subvolumes to exchange, and the delta swaps are planned for the parts even
/// when some of them are not in `ctx` now (the failed-boot fallback carries those out once they are mounted).
pub(crate) fn plan_rollback(ctx: &Ctx, rec: &mut TxnRecord, state: &State) -> Result<()> {
    ctx.stager().plan_rollback(ctx, rec, state)?;
    if ctx.kind == BackendKind::Btrfs && !rec.parts.is_empty() {
        delta_gens::plan_rollback(rec, state)?;
    }
    // Every delta part (the root too, unless btrfs keeps its trees): what the rollback will put back over a path the
    // running system changed since.
    for c in ctx.all().filter(|c| c.kind != BackendKind::Btrfs) {
        let mut found = delta_gens::rollback_conflicts(c, rec, state)?;
        if c.root != ctx.root {
            let rel = c.root.strip_prefix(&ctx.root).unwrap_or(&c.root).to_path_buf();
            for x in &mut found {
                x.path = Path::new("/").join(&rel).join(x.path.strip_prefix("/").unwrap_or(&x.path));
            }
        }
        rec.conflicts.extend(found);
    }
    Ok(())
}

/// Carry out a planned rollback, on every part. Idempotent; `on_progress` persists the record after each delta.
pub(crate) fn rollback(
    ctx: &Ctx,
    rec: &mut TxnRecord,
    on_progress: &mut dyn FnMut(&TxnRecord) -> Result<()>,
) -> Result<()> {
    let mut done = rec.swaps_done;
    let plan = rec.clone();
    ctx.stager().rollback(ctx, &plan, &mut done, false, &mut |d| {
        rec.swaps_done = d;
        on_progress(rec)
    })?;
    for p in &ctx.parts {
        let key = part_key(&p.rel);
        let mut done = rec.part_swaps_done.get(&key).copied().unwrap_or(0);
        // A generation that was committed before this filesystem was a part has no delta on it.
        p.ctx
            .stager()
            .rollback(&p.ctx, &plan, &mut done, true, &mut |d| {
                rec.part_swaps_done.insert(key.clone(), d);
                on_progress(rec)
            })
            .with_context(|| format!("rolling back /{}", p.rel.escaped()))?;
    }
    Ok(())
}

/// Whether a planned rollback has taken effect (for btrfs: the exchange happened).
pub(crate) fn rollback_took_effect(ctx: &Ctx, rec: &TxnRecord) -> Result<bool> {
    ctx.stager().rollback_took_effect(ctx, rec)
}

/// Keep the tree the rollback replaced, under its generation number. Idempotent.
pub(crate) fn finish_rollback(ctx: &Ctx, rec: &TxnRecord, state: &mut State) -> Result<()> {
    ctx.stager().finish_rollback(ctx, rec, state)
}

/// Undo the preparation of a rollback whose exchange never happened.
pub(crate) fn abandon_rollback(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    ctx.stager().abandon_rollback(ctx, rec)
}

/// Generations that can be dropped now to keep at most `state.keep`, oldest first. Once any generation has parts,
/// the parts' deltas must stay a chain, so only what the delta order lets go can go (whichever parts are mounted).
pub(crate) fn prunable(ctx: &Ctx, state: &State) -> Vec<u64> {
    let mut out = ctx.stager().prunable(ctx, state);
    if !state.parts().is_empty() {
        let chain = delta_gens::prunable(state);
        out.retain(|n| chain.contains(n));
    }
    out
}

/// Drop generation `n`'s storage in every part (its record was already removed from state.json). Idempotent.
pub(crate) fn drop_generation(ctx: &Ctx, n: u64, state: &State) -> Result<()> {
    for c in ctx.all() {
        c.stager().drop_generation(c, n, state)?;
    }
    drop_conflict_copies(ctx, n)
}

/// The kept copies of the conflicts of the transactions that made generation `n` current go with it: each part's
/// `conflicts/<txn>/` is removed and the record says so (`pruned_with`).
fn drop_conflict_copies(ctx: &Ctx, n: u64) -> Result<()> {
    for mut rec in ctx.state.txns()? {
        if rec.to_generation != n || !rec.conflicts.iter().any(|c| c.kept.is_some()) {
            continue;
        }
        for c in ctx.all() {
            let dir = c.state.conflicts_path(&rec.txn);
            if crate::fsutil::exists(&dir) {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.escaped()))?;
            }
        }
        let gone = |c: &crate::conflicts::Conflict| c.kept.as_ref().is_some_and(|k| !crate::fsutil::exists(k));
        for conflict in rec.conflicts.iter_mut().filter(|c| gone(c)) {
            conflict.kept = None;
            conflict.pruned_with = Some(n);
        }
        ctx.state.write_txn(&rec)?;
    }
    Ok(())
}

/// Whether the next mount or boot of the root will see another tree than the one mounted now (btrfs mount points).
pub(crate) fn next_boot_differs(kind: BackendKind, root: &Path, state: &State) -> bool {
    kind == BackendKind::Btrfs && btrfs::next_boot_differs(root, state)
}

/// Remove what a crash left behind outside any transaction, in every part: stages (and checkpoints) of finished
/// transactions and storage of generations that state.json no longer keeps; a kept transaction's stage stays.
/// Call only with the lock held and no unfinished transaction.
pub(crate) fn sweep(ctx: &Ctx, state: &State) -> Result<Vec<PathBuf>> {
    let kept = ctx.state.kept()?.map(|t| t.txn);
    let mut removed = Vec::new();
    for c in ctx.all() {
        let stages = c.state.stages_dir();
        for dir in [stages.clone(), c.state.gens_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let path = e?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let txn_of_entry = crate::state::txn_of_stage_entry(&name);
                let orphan = if dir == stages {
                    kept.as_deref() != Some(txn_of_entry)
                } else {
                    let n = crate::state::generation_of_entry(&name);
                    match n.parse::<u64>().ok().and_then(|n| state.generation(n)) {
                        None => !name.starts_with('.'),
                        // A delta is needed only for a generation that has a parent.
                        Some(g) => !c.stager().keeps_parentless_generation() && g.parent.is_none(),
                    }
                };
                if orphan {
                    c.stager().remove_leftover(c, &dir, &name)?;
                    removed.push(path);
                }
            }
        }
    }
    Ok(removed)
}

/// btrfs: make the kept generations read-only once they are no longer mounted (see `btrfs::seal`).
pub(crate) fn seal(ctx: &Ctx, state: &State) -> Result<()> {
    ctx.stager().seal(ctx, state)
}

/// At boot, before the root is mounted (btrfs): carry into the current tree what the running system wrote to the
/// tree it was mounted from after the commit that replaced it (see `btrfs::hand_over`).
pub(crate) fn hand_over(ctx: &Ctx, state: &State) -> Result<Option<HandedOver>> {
    if ctx.kind != BackendKind::Btrfs {
        return Ok(None);
    }
    // The transaction that committed away from generation g last (an apply or a keeping rollback) gets the
    // conflicts.
    let kept_for = |g: u64| {
        let txn = ctx.state.txns().ok().and_then(|all| {
            all.into_iter()
                .filter(|t| t.from_generation == g && t.phase == crate::state::Phase::Done && !t.exact)
                .max_by_key(|t| t.time)
                .map(|t| t.txn)
        });
        let kept = ctx.state.conflicts_path(txn.as_deref().unwrap_or("boot"));
        (txn, kept)
    };
    btrfs::hand_over(ctx.btrfs(), state, &kept_for)
}

pub(crate) use btrfs::HandedOver;

/// Right after the commit of transaction `rec` (btrfs, a directory target, once `finish` kept the replaced tree):
/// carry into the root what the running system wrote to the replaced tree after the carry-over's last look (see
/// `btrfs::hand_over_now`), the conflicts' other versions kept with the transaction's.
pub(crate) fn hand_over_now(ctx: &Ctx, rec: &TxnRecord) -> Result<Option<HandedOver>> {
    if ctx.kind != BackendKind::Btrfs {
        return Ok(None);
    }
    let done = btrfs::hand_over_now(ctx.btrfs(), rec, &ctx.state.conflicts_path(&rec.txn))?;
    Ok(done.map(|h| HandedOver { txn: Some(rec.txn.clone()), ..h }))
}

/// `hand_over_now` failed for `rec`: keep what it needs for the next finishing to carry it (see
/// `btrfs::keep_for_retry`).
pub(crate) fn keep_for_retry(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    if ctx.kind != BackendKind::Btrfs {
        return Ok(());
    }
    btrfs::keep_for_retry(ctx.btrfs(), rec)
}

/// At a counted boot of pending generation `n` (btrfs, before the root is mounted): keep its tree as the first such
/// boot finds it, for the fallback (see `btrfs::keep_booted`).
pub(crate) fn keep_booted(ctx: &Ctx, n: u64) -> Result<()> {
    if ctx.kind != BackendKind::Btrfs {
        return Ok(());
    }
    btrfs::keep_booted(ctx.btrfs(), n)
}

/// Generation `n` booted fine: drop what `keep_booted` kept.
pub(crate) fn drop_booted(ctx: &Ctx, n: u64) -> Result<()> {
    if ctx.kind != BackendKind::Btrfs {
        return Ok(());
    }
    btrfs::drop_booted(ctx.btrfs(), n)
}

/// After the failed-boot fallback's rollback `txn` (btrfs, before the root is mounted): carry what the failed boots
/// of generation `failed` wrote into the restored tree (see `btrfs::carry_back_failed_boots`).
pub(crate) fn carry_back_failed_boots(ctx: &Ctx, failed: u64, txn: &str) -> Result<Option<HandedOver>> {
    if ctx.kind != BackendKind::Btrfs {
        return Ok(None);
    }
    let done = btrfs::carry_back_failed_boots(ctx.btrfs(), failed, &ctx.state.conflicts_path(txn))?;
    Ok(done.map(|h| HandedOver { txn: Some(txn.to_string()), ..h }))
}

/// Cover the state area in the stage with an empty read-only tmpfs: steps neither see nor change it.
fn hide_state_area(dir: &Path) -> Result<()> {
    use nix::mount::MsFlags;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(Some("snapinst-state"), dir, Some("tmpfs"), flags, Some("mode=0700,size=4k"))
        .with_context(|| format!("hiding the state area in the stage ({})", dir.escaped()))
}

/// Refuse a state area on another mount than the root: moving things between them must be a rename.
fn require_same_mount(root: &Path, state_dir: &Path, why: &str) -> Result<()> {
    let holder = state_dir.ancestors().find(|a| a.exists()).unwrap_or(state_dir);
    if crate::mounts::mount_of(holder)?.id != crate::mounts::mount_of(root)?.id {
        bail!(
            "the state directory {} is not on the same mount as the root {}; {why}",
            state_dir.escaped(),
            root.escaped()
        );
    }
    Ok(())
}
