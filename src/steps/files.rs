//! The file steps: dir, file, symlink, remove. Every path is resolved inside the root; a file or symlink is written
//! under a temporary name and renamed into place (never written into, so a hard link elsewhere never changes);
//! the guard hears of each change before it happens.

use super::{accounts, ChangeGuard};
use crate::inroot::Root;
use crate::pathbytes::PathText;
use crate::plan::{Attrs, Content, Principal, RootPath};
use anyhow::{bail, Context, Result};
use nix::fcntl::{renameat, AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const DEFAULT_DIR_MODE: u32 = 0o755;
const DEFAULT_FILE_MODE: u32 = 0o644;

fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Create the missing directories on the way to `dir` (itself included), telling the guard first.
fn make_dirs(root: &Root, guard: &mut dyn ChangeGuard, dir: &RootPath) -> Result<()> {
    for missing in root.missing_dirs(dir)? {
        if root.lstat(&missing)?.is_some() {
            bail!("{missing} is a symlink whose target does not exist in the root; no directory is made through it");
        }
        guard.before_replace(root, &missing, false)?;
        root.mkdir(&missing, DEFAULT_DIR_MODE)?;
    }
    Ok(())
}

fn make_parents(root: &Root, guard: &mut dyn ChangeGuard, path: &RootPath) -> Result<()> {
    match path.parent() {
        Some(parent) => make_dirs(root, guard, &parent),
        None => Ok(()),
    }
}

/// The uid/gid asked by `attrs` (None where not asked).
fn owner_ids(root: &Root, attrs: &Attrs) -> Result<(Option<u32>, Option<u32>)> {
    let uid = attrs.owner.as_ref().map(|p| accounts::uid(root, p)).transpose()?;
    let gid = attrs.group.as_ref().map(|p| accounts::gid(root, p)).transpose()?;
    Ok((uid, gid))
}

pub(super) fn dir(root: &Root, guard: &mut dyn ChangeGuard, path: &RootPath, attrs: &Attrs) -> Result<()> {
    let (uid, gid) = owner_ids(root, attrs)?;
    let existed = match root.lstat(path)? {
        Some(st) if is_dir(&st) => Some(st),
        Some(_) if root.is_dir(path) => {
            bail!("{path} is a symlink to a directory, not a directory")
        }
        Some(_) => bail!("{path} exists and is not a directory"),
        None => None,
    };
    if existed.is_none() {
        make_dirs(root, guard, path)?;
    }
    let st = root.lstat(path)?.context("the directory just made is missing")?;
    let mode = attrs.mode.unwrap_or(if existed.is_some() { st.st_mode & 0o7777 } else { DEFAULT_DIR_MODE });
    let changes =
        st.st_mode & 0o7777 != mode || uid.is_some_and(|u| u != st.st_uid) || gid.is_some_and(|g| g != st.st_gid);
    if !changes {
        return Ok(());
    }
    if existed.is_some() {
        guard.before_meta(root, path)?;
    }
    let (parent, name) = root.parent_of(path)?;
    set_owner_mode(&parent, name, uid, gid, mode, attrs.mode.is_some())
        .with_context(|| format!("setting mode and owner of {path}"))
}

/// chown (without following) then chmod (chown clears setuid bits, so the mode comes last). On a filesystem whose
/// modes come from its mount options (FAT, exfat: an EFI system partition), a default mode the plan did not ask
/// for (`asked` false) is left as the filesystem gives it, and one it asked for is refused clearly.
fn set_owner_mode(
    parent: &OwnedFd,
    name: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
    asked: bool,
) -> Result<()> {
    if uid.is_some() || gid.is_some() {
        fchownat(
            Some(parent.as_raw_fd()),
            name,
            uid.map(Uid::from_raw),
            gid.map(Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    let changed = nix::sys::stat::fchmodat(
        Some(parent.as_raw_fd()),
        name,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    );
    match changed {
        Err(nix::errno::Errno::EPERM) if modes_fixed_by_mount(parent) => {
            if asked {
                bail!("mode {mode:04o} cannot be given on this filesystem: its modes come from its mount options");
            }
            Ok(())
        }
        other => Ok(other?),
    }
}

/// Whether `dir` is on FAT or exfat, whose file modes are set by mount options and cannot be changed per file.
fn modes_fixed_by_mount(dir: &OwnedFd) -> bool {
    const MSDOS_SUPER_MAGIC: i64 = 0x4d44;
    const EXFAT_SUPER_MAGIC: i64 = 0x2011_bab0;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `dir` is an open descriptor and `st` is a buffer of the size fstatfs writes.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it filled `st`.
    #[allow(clippy::unnecessary_cast)] // f_type is not i64 on every target
    let f_type = unsafe { st.assume_init() }.f_type as i64;
    [MSDOS_SUPER_MAGIC, EXFAT_SUPER_MAGIC].contains(&f_type)
}

/// Where a new version of a path is prepared: the guard's scratch directory, or the parent itself, under a short
/// name of its own (a name built from the path's could pass the 255 bytes a file name may have).
fn temp_place(guard: &dyn ChangeGuard, parent: &OwnedFd) -> Result<(OwnedFd, OsString)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = OsString::from(format!(".snapinst-{}.{n}", std::process::id()));
    match guard.scratch() {
        Some(dir) => {
            let fd = nix::fcntl::open(dir, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .with_context(|| format!("opening {}", dir.escaped()))?;
            // SAFETY: `open` just returned this descriptor and nothing else owns it.
            Ok((unsafe { OwnedFd::from_raw_fd(fd) }, name))
        }
        None => Ok((nix::unistd::dup(parent.as_raw_fd()).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })?, name)),
    }
}

/// Refuse to replace a directory with a file or symlink.
fn refuse_dir(root: &Root, path: &RootPath) -> Result<()> {
    if root.lstat(path)?.is_some_and(|st| is_dir(&st)) {
        bail!("{path} is a directory; remove it first with a remove step (recursive)");
    }
    Ok(())
}

/// Put a new version of `path` in place: made by `create` under a temporary name, then renamed over the path.
fn replace_with(
    root: &Root,
    guard: &mut dyn ChangeGuard,
    path: &RootPath,
    create: impl FnOnce(&OwnedFd, &OsStr) -> Result<()>,
) -> Result<()> {
    make_parents(root, guard, path)?;
    refuse_dir(root, path)?;
    let (parent, name) = root.parent_of(path)?;
    let (tmp_dir, tmp) = temp_place(guard, &parent)?;
    let _ = unlinkat(Some(tmp_dir.as_raw_fd()), tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    create(&tmp_dir, &tmp)?;
    guard.before_replace(root, path, false)?;
    renameat(Some(tmp_dir.as_raw_fd()), tmp.as_os_str(), Some(parent.as_raw_fd()), name)
        .with_context(|| format!("putting {path} in place"))
}

pub(super) fn file(
    root: &Root,
    guard: &mut dyn ChangeGuard,
    path: &RootPath,
    content: &Content,
    attrs: &Attrs,
) -> Result<()> {
    file_written(root, guard, path, attrs, |f| match content {
        Content::Inline(bytes) => f.write_all(bytes).with_context(|| format!("writing {path}")),
        Content::Source(src) => {
            let mut s = std::fs::File::open(src).with_context(|| format!("opening source {}", src.escaped()))?;
            std::io::copy(&mut s, f).with_context(|| format!("copying {} to {path}", src.escaped()))?;
            Ok(())
        }
    })
}

/// A new file at `path` whose contents `write` writes (into a temporary file, renamed into place when it is done).
pub(super) fn file_written(
    root: &Root,
    guard: &mut dyn ChangeGuard,
    path: &RootPath,
    attrs: &Attrs,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let (uid, gid) = owner_ids(root, attrs)?;
    replace_with(root, guard, path, |dir, tmp| {
        let fd = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("creating a temporary file for {path}"))?;
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        write(&mut f)?;
        drop(f);
        set_owner_mode(dir, tmp, uid, gid, attrs.mode.unwrap_or(DEFAULT_FILE_MODE), attrs.mode.is_some())
            .with_context(|| format!("setting mode and owner of {path}"))
    })
}

/// A directory at `path` that `fill` fills (given the host path of a new, empty temporary directory, with a free
/// name beside it for its own temporary file), then renamed into place; a directory already at `path` is replaced
/// whole. The directory gets the mode (default 0755) and owner of `attrs`.
pub(super) fn dir_filled(
    root: &Root,
    guard: &mut dyn ChangeGuard,
    path: &RootPath,
    attrs: &Attrs,
    fill: impl FnOnce(&std::path::Path, &std::path::Path) -> Result<()>,
) -> Result<()> {
    let (uid, gid) = owner_ids(root, attrs)?;
    make_parents(root, guard, path)?;
    let existing = root.lstat(path)?;
    if existing.as_ref().is_some_and(|st| !is_dir(st)) {
        bail!("{path} exists and is not a directory");
    }
    let (parent, name) = root.parent_of(path)?;
    let (tmp_dir, tmp) = temp_place(guard, &parent)?;
    let (_, beside) = temp_place(guard, &parent)?;
    nix::sys::stat::mkdirat(Some(tmp_dir.as_raw_fd()), tmp.as_os_str(), Mode::from_bits_truncate(0o700))
        .with_context(|| format!("creating a temporary directory for {path}"))?;
    // This process's own descriptor, so that a child process (or a library) reaches it by path.
    let fd_dir = std::path::Path::new("/proc").join(std::process::id().to_string()).join("fd");
    let at = fd_dir.join(tmp_dir.as_raw_fd().to_string());
    let filled = fill(&at.join(&tmp), &at.join(&beside));
    let _ = unlinkat(Some(tmp_dir.as_raw_fd()), beside.as_os_str(), UnlinkatFlags::NoRemoveDir);
    if let Err(e) = filled {
        let _ = remove_tree(&tmp_dir, &tmp);
        return Err(e);
    }
    set_owner_mode(&tmp_dir, &tmp, uid, gid, attrs.mode.unwrap_or(DEFAULT_DIR_MODE), attrs.mode.is_some())
        .with_context(|| format!("setting mode and owner of {path}"))?;
    guard.before_replace(root, path, false)?;
    if root.lstat(path)?.is_some() {
        remove_tree(&parent, name).with_context(|| format!("removing the directory {path} replaces"))?;
    }
    renameat(Some(tmp_dir.as_raw_fd()), tmp.as_os_str(), Some(parent.as_raw_fd()), name)
        .with_context(|| format!("putting {path} in place"))
}

/// Replace the contents of the existing file `path`, keeping its mode and owner (account databases).
pub(super) fn rewrite(root: &Root, guard: &mut dyn ChangeGuard, path: &RootPath, bytes: &[u8]) -> Result<()> {
    let st = root.lstat(path)?.with_context(|| format!("{path} disappeared while it was being edited"))?;
    let attrs = Attrs {
        mode: Some(st.st_mode & 0o7777),
        owner: Some(Principal::Id(st.st_uid)),
        group: Some(Principal::Id(st.st_gid)),
    };
    file(root, guard, path, &Content::Inline(bytes.to_vec()), &attrs)
}

pub(super) fn symlink(root: &Root, guard: &mut dyn ChangeGuard, path: &RootPath, target: &str) -> Result<()> {
    replace_with(root, guard, path, |dir, tmp| {
        nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), tmp).with_context(|| format!("creating symlink {path}"))
    })
}

pub(super) fn remove(
    root: &Root,
    guard: &mut dyn ChangeGuard,
    path: &RootPath,
    recursive: bool,
    missing_ok: bool,
) -> Result<()> {
    let Some(st) = root.lstat(path)? else {
        if missing_ok {
            return Ok(());
        }
        bail!("{path} does not exist (set \"missing_ok\": true to allow that)");
    };
    let (parent, name) = root.parent_of(path)?;
    if is_dir(&st) && !recursive && !root.is_empty_dir(path)? {
        bail!("{path} is a directory that is not empty (set \"recursive\": true to remove it with its contents)");
    }
    guard.before_replace(root, path, true)?;
    match root.lstat(path)? {
        None => Ok(()),
        Some(st) if is_dir(&st) => remove_tree(&parent, name).with_context(|| format!("removing {path}")),
        Some(_) => unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
            .with_context(|| format!("removing {path}")),
    }
}

/// Remove a directory tree below an open parent, without following symlinks.
fn remove_tree(parent: &OwnedFd, name: &OsStr) -> Result<()> {
    let path = std::path::Path::new("/proc/self/fd").join(parent.as_raw_fd().to_string()).join(name);
    std::fs::remove_dir_all(&path)?;
    Ok(())
}
