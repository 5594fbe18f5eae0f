//! The copy stager, for a filesystem that overlayfs cannot take as a lower layer: FAT (vfat, msdos) and exfat,
//! whose case-insensitive names overlayfs refuses, such as the EFI system partition at /boot/efi. It stages parts
//! only. FAT has no journal, and a power cut while it is being written leaves lost clusters that `fsck.fat` turns
//! into `FSCKnnnn.REC` files, so staging writes nothing to it: the stage is a copy of the part's tree on a scratch
//! filesystem of the part's own type, made and mounted with the part's own options (the same modes and name
//! rules; see `scratch`), whose image is in the root's state area (`part-stages/<place>/<txn>`). The scratch
//! filesystem holds a second copy, the base, left as the tree was when the stage was taken. Before the commit record
//! the stage is compared with the base (`treediff`), so what the running system changed on the part meanwhile is
//! not the plan's and stays; each entry the plan changed gets its new version copied into the generation's delta
//! on the part, and synced; from there on it is the overlay's way: the commit, `recover` and every rollback are
//! renames on the part itself (`delta::swap`), and a path both changed is a conflict. What FAT sees of a
//! transaction is the delta written just before the commit record, the renames after it, and the deletion of old
//! deltas.

use super::scratch::Scratch;
use super::Ctx;
use crate::delta;
use crate::fsutil;
use crate::pathbytes::PathText;
use crate::state::TxnRecord;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Room left free beyond the copy, so that staging never fills the filesystem to the last block.
const SPARE_BYTES: u64 = 1 << 20;

pub(super) fn check_usable(root: &Path, state_dir: &Path) -> Result<()> {
    super::require_same_mount(root, state_dir, "the delta is put in place by renames")
}

/// A transaction's copy stage: its directory (in the root's state area), the scratch filesystem there, the copy of
/// the tree on it that the steps change, and the base: the tree as the stage was taken.
struct StagePaths {
    dir: PathBuf,
    scratch: Scratch,
    tree: PathBuf,
    base: PathBuf,
}

fn stage_paths(ctx: &Ctx, rec: &TxnRecord) -> Result<StagePaths> {
    let mount = ctx.mount.as_ref().context("a copy-staged part knows its mount")?;
    let dir = ctx.state.stage_path(&rec.txn);
    let scratch = Scratch::like(&dir, mount);
    let (tree, base) = (scratch.mnt.join("tree"), scratch.mnt.join("base"));
    Ok(StagePaths { dir, scratch, tree, base })
}

/// The state area's name at the top of the part (it is never copied, compared or replaced).
fn state_area(ctx: &Ctx) -> Result<&Path> {
    ctx.state_area.as_deref().context("a copy-staged part keeps its state area at its top")
}

/// The copy of the tree at `root`, its state area left out.
pub(super) fn staging_bytes(root: &Path, state_dir: &Path) -> Result<u64> {
    tree_bytes(root, state_dir.strip_prefix(root).ok())
}

pub(super) fn prepare(ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
    let s = stage_paths(ctx, rec)?;
    let area = state_area(ctx)?;
    remove_stage(&s)?;
    fsutil::create_dir_durable(&s.dir)?;
    // The check before the transaction asked for this already; the tree may have grown since.
    // Two copies: the stage and the base.
    let needed = 2 * tree_bytes(&ctx.root, Some(area))? + SPARE_BYTES;
    let free = fsutil::free_bytes(&s.dir)?;
    if free < needed {
        bail!(
            "staging {} takes a copy of its tree ({} KiB) in {}, which has {} KiB free",
            ctx.root.escaped(),
            needed / 1024,
            s.dir.escaped(),
            free / 1024
        );
    }
    s.scratch.create()?;
    copy_without(&ctx.root, area, &s.base)?;
    fsutil::copy_tree(&s.base, &s.tree)?;
    Ok(s.tree)
}

/// Unmount the scratch filesystem, delete its image and the stage directory. Idempotent.
fn remove_stage(s: &StagePaths) -> Result<()> {
    s.scratch.remove()?;
    fsutil::remove_any(&s.dir)
}

/// Copy the tree at `root`, all but its entry `left_out`, to the new directory `to` (under a temporary name first).
fn copy_without(root: &Path, left_out: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    fsutil::remove_any(&tmp)?;
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.escaped()))?;
    for e in fs::read_dir(root).with_context(|| format!("reading {}", root.escaped()))? {
        let name = e?.file_name();
        if Path::new(&name) != left_out {
            fsutil::copy_tree(&root.join(&name), &tmp.join(&name))?;
        }
    }
    let root_meta = delta::read_meta(&fs::File::open(root).with_context(|| format!("opening {}", root.escaped()))?)?;
    delta::set_meta(&fs::File::open(&tmp)?, &root_meta).context("giving the copy the tree's own metadata")?;
    fs::rename(&tmp, to).with_context(|| format!("renaming {} into place", tmp.escaped()))
}

/// The bytes the tree at `dir` takes on disk, leaving out its entry `left_out`; never crosses into another mount.
fn tree_bytes(dir: &Path, left_out: Option<&Path>) -> Result<u64> {
    let dev = fs::symlink_metadata(dir).with_context(|| format!("inspecting {}", dir.escaped()))?.dev();
    let mut total = 0;
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.escaped()))? {
        let e = e?;
        if left_out.is_some_and(|l| Path::new(&e.file_name()) == l) {
            continue;
        }
        let m = fs::symlink_metadata(e.path())?;
        if m.dev() != dev {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir() {
            total += tree_bytes(&e.path(), None)?;
        }
    }
    Ok(total)
}

/// Returns the paths the running system also changed meanwhile (conflicts).
pub(super) fn pre_commit(ctx: &Ctx, rec: &TxnRecord) -> Result<Vec<crate::conflicts::Conflict>> {
    let s = stage_paths(ctx, rec)?;
    let area = state_area(ctx)?;
    if fsutil::exists(&s.tree.join(area)) {
        bail!("the stage creates /{}, which is snapinst's state area on {}", area.escaped(), ctx.root.escaped());
    }
    if !fsutil::exists(&s.base) {
        bail!(
            "the copy of {} taken with the stage ({}) is gone, so snapinst cannot tell what the plan changed from what the running system changed meanwhile; nothing is committed",
            ctx.root.escaped(),
            s.base.escaped()
        );
    }
    super::compared::write_delta(ctx, rec, &s.base, &s.tree, area)
}

pub(super) fn finish(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    remove_stage(&stage_paths(ctx, rec)?)
}

pub(super) fn discard(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    remove_stage(&stage_paths(ctx, rec)?)?;
    super::delta_gens::drop_staged_delta(ctx, rec)
}

/// Keep a copy of the staged tree as checkpoint `n` (in the root's state area, beside the stage).
pub(super) fn take_checkpoint(ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()> {
    super::copy_as_checkpoint(ctx, rec, &stage_paths(ctx, rec)?.tree, n)
}

/// Make the staged tree a copy of checkpoint `n` again (the base beside it stays as the stage was taken).
pub(super) fn restore_checkpoint(ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<PathBuf> {
    let s = stage_paths(ctx, rec)?;
    let source = super::checkpoint_copy(ctx, rec, n)?;
    s.scratch.mount()?;
    fsutil::remove_any(&s.tree)?;
    fsutil::copy_tree(&source, &s.tree)?;
    Ok(s.tree)
}

/// The kept stage's tree (its scratch filesystem mounted in snapinst's private namespace when it is not already).
pub(super) fn stage_view(ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf> {
    let s = stage_paths(ctx, rec)?;
    s.scratch.mount()?;
    Ok(s.tree)
}
