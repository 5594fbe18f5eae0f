//! The overlay backend: the stage is an overlayfs mount with the root as its lower layer, mounted with
//! `redirect_dir=off,metacopy=off,index=off,xino=off` in snapinst's private mount namespace. The upper and work
//! directories are in the state area when it is outside the root (same filesystem, outside the merged view); when
//! the state area is inside the root (the root is the top of its filesystem, such as an ext4 `/`), they are on a
//! loop-mounted scratch filesystem (see `scratch`), and the state area is hidden in the stage under an empty
//! read-only tmpfs. Before the commit record the mount is taken down, a scratch upper layer is copied into the state
//! area, and the upper layer is turned into a delta (see `delta`): whiteouts become deletions, opaque directories
//! replace whole, `trusted.overlay.*` is stripped; the commit moves it in by renames on the root's filesystem.
//! Nothing here may write to the root before the commit record; the merge itself is `delta::swap`.
//!
//! With syncs suppressed (the default) the overlay is mounted `volatile` where the kernel has it: no sync reaches
//! the upper layer, the kernel's own on copy-up included. Before the commit the overlay's `syncfs` reports any
//! writeback error the upper filesystem had since the mount; after unmounting, the upper filesystem is synced and
//! the kernel's mark (`work/work/incompat/volatile`) cleared. A stage found with the mark was not unmounted
//! cleanly: within the same boot it is synced and mounted again; after a restart it cannot be trusted and is never
//! mounted again (recovery discards a stage before the commit record anyway).

use super::scratch::Scratch;
use super::Ctx;
use crate::delta::{self, Entry};
use crate::fsutil;
use crate::inroot::Root;
use crate::mounts;
use crate::pathbytes::PathText;
use crate::plan::RootPath;
use crate::state::TxnRecord;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const OPTIONS: &str = "redirect_dir=off,metacopy=off,index=off,xino=off";

/// Whether this kernel has overlayfs. On a stock Debian it is a module that nothing has loaded yet (a mount would
/// have the kernel load it), so it is loaded first when /proc/filesystems does not list it.
pub(super) fn available() -> bool {
    let listed = || fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.ends_with("\toverlay")));
    listed() || {
        let _ = std::process::Command::new("modprobe")
            .args(["-q", "overlay"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        listed()
    }
}

pub(super) fn check_usable(root: &Path, state_dir: &Path) -> Result<()> {
    if !available() {
        bail!("this kernel has no overlayfs (not in /proc/filesystems)");
    }
    if std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str()).iter().any(|b| b",:\\".contains(b)) {
        bail!("{} contains a ',', ':' or '\\', which overlayfs mount options cannot carry", root.escaped());
    }
    super::require_same_mount(root, state_dir, "the overlay merge needs renames")
}

struct StagePaths {
    dir: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
    /// Where the upper and work directories live when the state area is inside the root.
    scratch: Option<Scratch>,
    /// Where a scratch upper layer is copied, on the root's filesystem, before the delta is made from it.
    copied: PathBuf,
    /// The boot that mounted the stage `volatile` (its boot id), while it may be so mounted.
    volatile_boot: PathBuf,
}

fn stage_paths(ctx: &Ctx, rec: &TxnRecord) -> StagePaths {
    let dir = ctx.state.stage_path(&rec.txn);
    let scratch = ctx.state_area.is_some().then(|| Scratch::of(&dir));
    let layers = scratch.as_ref().map_or(dir.clone(), |s| s.mnt.clone());
    StagePaths {
        upper: layers.join("upper"),
        work: layers.join("work"),
        merged: dir.join("merged"),
        copied: dir.join("copied"),
        volatile_boot: dir.join("volatile-boot"),
        scratch,
        dir,
    }
}

pub(super) fn prepare(ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
    let s = stage_paths(ctx, rec);
    if let Some(scratch) = &s.scratch {
        scratch.create()?;
    }
    for d in [&s.upper, &s.work, &s.merged] {
        fsutil::create_dir_durable(d)?;
    }
    // The upper root takes the root's own metadata, so an unchanged root directory merges as unchanged.
    let root_meta = delta::read_meta(&fs::File::open(&ctx.root).context("opening the root")?)?;
    delta::set_meta(&fs::File::open(&s.upper).context("opening the upper layer")?, &root_meta)?;
    mount(ctx, &s, rec.suppress_sync)
}

/// Mount the stage, `volatile` when asked and the kernel has it (5.10 and later).
fn mount(ctx: &Ctx, s: &StagePaths, volatile: bool) -> Result<PathBuf> {
    settle_volatile(s)?;
    // The options carry the paths' bytes as they are (a name need not be UTF-8).
    let mut data = std::ffi::OsString::new();
    for (key, path) in [("lowerdir=", &ctx.root), (",upperdir=", &s.upper), (",workdir=", &s.work)] {
        data.push(key);
        data.push(path.as_os_str());
    }
    data.push(format!(",{OPTIONS}"));
    let source = stage_source(&ctx.root);
    let try_mount = |data: &std::ffi::OsStr| {
        nix::mount::mount(Some(source.as_str()), &s.merged, Some("overlay"), nix::mount::MsFlags::empty(), Some(data))
    };
    let mut mounted = Err(nix::errno::Errno::EINVAL);
    if volatile {
        fsutil::write_atomic(&s.volatile_boot, current_boot()?.as_bytes())?;
        let mut with = data.clone();
        with.push(",volatile");
        mounted = try_mount(&with);
        if mounted.is_err() {
            fsutil::remove_any(&s.volatile_boot)?; // an older kernel: mounted as before, syncs and all
        }
    }
    if mounted.is_err() {
        mounted = try_mount(&data);
    }
    mounted.with_context(|| format!("mounting overlay on {} ({})", s.merged.escaped(), data.escaped()))?;
    if let Some(area) = &ctx.state_area {
        super::hide_state_area(&s.merged.join(area))?;
    }
    Ok(s.merged.clone())
}

/// The overlay's mount source: the device of the filesystem it stages, so that a tool in the stage asking which
/// device holds `/` or `/boot` (`grub-probe` for `update-grub`) is told the real one, as on the live tree.
fn stage_source(root: &Path) -> String {
    match mounts::mount_of(root) {
        Ok(m) if m.source.starts_with("/dev/") => m.source,
        _ => "snapinst".to_string(),
    }
}

/// Take the stage's mounts down (the overlay and what is mounted in it), deepest first.
fn unmount(s: &StagePaths) -> Result<()> {
    mounts::unmount_below(&s.merged).context("unmounting the overlay stage")
}

/// [`unmount`], for the commit, then one sync of the upper layer's filesystem; a writeback error a `volatile`
/// stage had is reported first, and its mark is cleared after the sync.
fn unmount_durably(s: &StagePaths) -> Result<()> {
    let volatile = volatile_mark(s).exists();
    if volatile && !mounts::mounted_below(&s.merged)?.is_empty() {
        // A volatile overlay's syncfs syncs nothing and fails if the upper filesystem lost a write since the mount.
        fsutil::syncfs(&s.merged).context("the upper layer's filesystem failed a write while the stage was mounted")?;
    }
    unmount(s)?;
    if s.scratch.is_some() {
        // A scratch upper layer is copied out next, in this process, and never used after a crash: syncing it
        // would only write every file to the disk a first time (see `scratch`).
        return Ok(());
    }
    if volatile {
        settle_volatile(s)
    } else {
        fsutil::syncfs(&s.upper)
    }
}

/// The kernel's mark in the work directory of an overlay mounted `volatile`.
fn volatile_mark(s: &StagePaths) -> PathBuf {
    s.work.join("work/incompat/volatile")
}

fn current_boot() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id").context("reading this boot's id")?.trim().to_string())
}

/// An unmounted stage that was mounted `volatile`: within the boot that mounted it, sync its upper filesystem and
/// clear the kernel's mark; after a restart, refuse it (its upper layer may have lost writes).
fn settle_volatile(s: &StagePaths) -> Result<()> {
    if !volatile_mark(s).exists() || !mounts::mounted_below(&s.merged)?.is_empty() {
        return Ok(());
    }
    let mounted_in = fs::read_to_string(&s.volatile_boot).unwrap_or_default();
    if mounted_in.trim() != current_boot()? {
        bail!(
            "the stage {} was mounted without syncs (overlay volatile) and the machine has restarted since: its upper \
             layer may have lost writes and cannot be used; abort the transaction (snapinst abort)",
            s.dir.escaped()
        );
    }
    fsutil::syncfs(&s.upper)?;
    fsutil::remove_any(&s.work.join("work"))?;
    fsutil::sync_dir(&s.work)?;
    fsutil::remove_any(&s.volatile_boot)
}

/// Unmount everything of the stage, the scratch filesystem included, and remove its directory.
fn remove_stage(s: &StagePaths) -> Result<()> {
    unmount(s)?;
    if let Some(scratch) = &s.scratch {
        scratch.remove()?;
    }
    fsutil::remove_any(&s.dir)
}

/// Returns the paths the running system also changed meanwhile (conflicts).
pub(super) fn pre_commit(ctx: &Ctx, rec: &TxnRecord) -> Result<Vec<crate::conflicts::Conflict>> {
    let s = stage_paths(ctx, rec);
    unmount_durably(&s)?;
    // The delta must be on the root's filesystem, so the commit is renames: copy a scratch upper layer there.
    let upper = match &s.scratch {
        None => s.upper.clone(),
        Some(scratch) => {
            let tmp = s.dir.join("copied.tmp");
            fsutil::remove_any(&tmp)?;
            fsutil::remove_any(&s.copied)?;
            fsutil::copy_tree(&s.upper, &tmp).context("copying the upper layer to the root's filesystem")?;
            fs::rename(&tmp, &s.copied).with_context(|| format!("renaming {} into place", tmp.escaped()))?;
            scratch.remove()?;
            s.copied.clone()
        }
    };
    let tree = Root::open(&ctx.root)?;
    let mut entries = Vec::new();
    index_dir(&upper, &tree, Path::new(""), ctx.state_area.as_deref(), &mut entries)?;
    // Move each replaced entry's new version out of the upper layer into the delta, cleaned of overlay xattrs.
    super::delta_gens::write_staged_delta(ctx, rec, &entries, super::delta_gens::Put::Renamed, |path, dest| {
        let src = upper.join(path);
        sanitize(&src)?;
        fs::rename(&src, dest).with_context(|| format!("moving {} into the delta", src.escaped()))
    })
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn xattr_is(path: &Path, name: &str, value: &[u8]) -> bool {
    xattr::get(path, name).ok().flatten().is_some_and(|v| v == value)
}

/// Turn the upper directory `upper/rel` into delta entries against the tree. Nothing may replace the state area
/// (`guarded`) or what holds it.
fn index_dir(upper: &Path, tree: &Root, rel: &Path, guarded: Option<&Path>, entries: &mut Vec<Entry>) -> Result<()> {
    let dir = upper.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.escaped()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let up = upper.join(&path);
        let m = fs::symlink_metadata(&up)?;
        for bad in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
            if xattr::get(&up, bad).ok().flatten().is_some() {
                bail!("the upper layer has {bad} on /{}; snapinst cannot merge it", path.escaped());
            }
        }
        let rp = RootPath::from_rel(&path);
        let in_tree = tree.lstat(&rp)?;
        let tree_is_dir = in_tree.as_ref().is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let descend = m.is_dir() && tree_is_dir && !xattr_is(&up, "trusted.overlay.opaque", b"y") && !is_whiteout(&m);
        if let Some(area) = guarded {
            if path.starts_with(area) || (area.starts_with(&path) && !descend) {
                bail!(
                    "the stage replaces /{}, which is or holds snapinst's state area /{}",
                    path.escaped(),
                    area.escaped()
                );
            }
        }
        if is_whiteout(&m) {
            if in_tree.is_some() {
                entries.push(Entry::Replace { path, before: true, after: false });
            }
        } else if descend {
            index_dir(upper, tree, &path, guarded, entries)?;
            let before = delta::read_meta(&fs::File::from(tree.open_dir(&path)?))?;
            let after = delta::read_meta(&fs::File::open(&up)?)?;
            if before != after {
                entries.push(Entry::Meta { path, before, after });
            }
        } else {
            entries.push(Entry::Replace { path, before: in_tree.is_some(), after: true });
        }
    }
    Ok(())
}

/// Strip `trusted.overlay.*` xattrs and whiteouts from a subtree moving in whole.
fn sanitize(path: &Path) -> Result<()> {
    let m = fs::symlink_metadata(path)?;
    if is_whiteout(&m) {
        return fsutil::remove_any(path);
    }
    if !m.file_type().is_symlink() {
        for name in xattr::list(path)? {
            if name.to_string_lossy().starts_with("trusted.overlay.") {
                xattr::remove(path, &name)
                    .with_context(|| format!("stripping overlay xattrs of {}", path.escaped()))?;
            }
        }
    }
    if m.is_dir() {
        for e in fs::read_dir(path)? {
            sanitize(&e?.path())?;
        }
    }
    Ok(())
}

pub(super) fn finish(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    remove_stage(&stage_paths(ctx, rec))
}

pub(super) fn discard(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    remove_stage(&stage_paths(ctx, rec))?;
    super::delta_gens::drop_staged_delta(ctx, rec)
}

/// Keep a copy of the upper layer as it is now as checkpoint `n` (its cost grows with what the steps changed).
pub(super) fn take_checkpoint(ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<()> {
    super::copy_as_checkpoint(ctx, rec, &stage_paths(ctx, rec).upper, n)
}

/// Make the upper layer a copy of checkpoint `n` again, with a fresh work directory, and mount the stage.
pub(super) fn restore_checkpoint(ctx: &Ctx, rec: &TxnRecord, n: usize) -> Result<PathBuf> {
    let s = stage_paths(ctx, rec);
    let source = super::checkpoint_copy(ctx, rec, n)?;
    unmount(&s)?;
    match &s.scratch {
        // A new scratch filesystem: the old one may come from a process that died.
        Some(scratch) => scratch.create()?,
        None => {
            fsutil::remove_any(&s.upper)?;
            fsutil::remove_any(&s.work)?;
        }
    }
    fsutil::copy_tree(&source, &s.upper)?;
    fsutil::create_dir_durable(&s.work)?;
    fsutil::create_dir_durable(&s.merged)?;
    mount(ctx, &s, rec.suppress_sync)
}

/// The kept stage as a merged tree (mounted in snapinst's private namespace when it is not already).
pub(super) fn stage_view(ctx: &Ctx, rec: &TxnRecord) -> Result<PathBuf> {
    let s = stage_paths(ctx, rec);
    if let Some(scratch) = &s.scratch {
        scratch.mount()?;
    }
    if mounts::mounted_below(&s.merged)?.is_empty() {
        mount(ctx, &s, rec.suppress_sync)
    } else {
        Ok(s.merged)
    }
}
