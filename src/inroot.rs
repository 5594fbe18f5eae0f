//! Path resolution that cannot leave a root. Every file step resolves its path with `openat2(RESOLVE_IN_ROOT)`,
//! so `..` and symlinks (absolute or relative, including ones an earlier step or script made) are resolved as if
//! the root were `/`. Nothing here may resolve a plan path with plain path joins.

use crate::pathbytes::PathText;
use crate::plan::RootPath;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, FileStat, Mode};
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

/// How often a resolution that raced with a rename or mount elsewhere is tried again.
const RESOLVE_RETRIES: u32 = 1000;

/// An open directory that paths are resolved inside of.
pub(crate) struct Root {
    pub path: std::path::PathBuf,
    fd: OwnedFd,
}

impl Root {
    pub fn open(path: &Path) -> Result<Root> {
        let fd = nix::fcntl::open(path, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("opening root directory {}", path.escaped()))?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        Ok(Root { path: path.to_path_buf(), fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn resolve(&self, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // The kernel answers EAGAIN when a rename or a mount anywhere on the machine raced with a `..` in the
        // resolution (it cannot then prove the path stayed inside the root): try again, a bounded number of times.
        let mut tries = 0;
        loop {
            match openat2(self.fd.as_raw_fd(), rel, how) {
                Err(Errno::EAGAIN) if tries < RESOLVE_RETRIES => tries += 1,
                // SAFETY: `openat2` returned a fresh descriptor that nothing else owns.
                r => return r.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            }
        }
    }

    /// Open the directory at `rel` (symlinks followed, inside the root).
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd> {
        self.resolve(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY)
            .with_context(|| format!("opening directory /{} inside {}", rel.escaped(), self.path.escaped()))
    }

    /// The parent directory of `path` and the last component's name, ready for `*at` calls.
    pub fn parent_of<'p>(&self, path: &'p RootPath) -> Result<(OwnedFd, &'p OsStr)> {
        let parent = path.rel().parent().unwrap_or(Path::new(""));
        Ok((self.open_dir(parent)?, path.file_name()))
    }

    /// lstat of `path`'s last component (its parent resolved inside the root); None if it does not exist.
    pub fn lstat(&self, path: &RootPath) -> Result<Option<FileStat>> {
        let parent = path.rel().parent().unwrap_or(Path::new(""));
        let dir = match self.resolve(parent, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("resolving {path} inside {}", self.path.escaped())),
        };
        match fstatat(Some(dir.as_raw_fd()), path.file_name(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("inspecting {path} inside {}", self.path.escaped())),
        }
    }

    /// Whether `path` resolves (following symlinks inside the root) to a directory.
    pub fn is_dir(&self, path: &RootPath) -> bool {
        self.resolve(path.rel(), OFlag::O_DIRECTORY | OFlag::O_RDONLY).is_ok()
    }

    /// The missing directories on the way to `path` (itself included), outermost first.
    pub fn missing_dirs(&self, path: &RootPath) -> Result<Vec<RootPath>> {
        let mut missing = Vec::new();
        let mut cur = Some(path.clone());
        while let Some(p) = cur {
            match self.resolve(p.rel(), OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
                Ok(_) => break,
                Err(Errno::ENOENT) => {
                    cur = p.parent();
                    missing.push(p);
                }
                Err(Errno::ENOTDIR) => bail!("{p} exists and is not a directory"),
                Err(e) => return Err(e).with_context(|| format!("resolving {p} inside {}", self.path.escaped())),
            }
        }
        missing.reverse();
        Ok(missing)
    }

    /// Create one directory whose parent exists.
    pub fn mkdir(&self, path: &RootPath, mode: u32) -> Result<()> {
        let (dir, name) = self.parent_of(path)?;
        nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode))
            .with_context(|| format!("creating directory {path}"))
    }

    /// The contents of the file at `path` (symlinks followed inside the root); None if it does not exist.
    pub fn read(&self, path: &RootPath) -> Result<Option<Vec<u8>>> {
        let fd = match self.resolve(path.rel(), OFlag::O_RDONLY | OFlag::O_NOCTTY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {path} inside {}", self.path.escaped())),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut bytes)
            .with_context(|| format!("reading {path} inside {}", self.path.escaped()))?;
        Ok(Some(bytes))
    }

    /// The target of the symlink at `path`; None if there is no symlink there.
    pub fn readlink(&self, path: &RootPath) -> Result<Option<std::ffi::OsString>> {
        let (dir, name) = match self.parent_of(path) {
            Ok(p) => p,
            Err(_) => return Ok(None),
        };
        match nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name) {
            Ok(target) => Ok(Some(target)),
            Err(Errno::ENOENT) | Err(Errno::EINVAL) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading symlink {path} inside {}", self.path.escaped())),
        }
    }

    /// Whether `a` and `b` both resolve (following symlinks inside the root) to the same existing file.
    pub fn same_file(&self, a: &RootPath, b: &RootPath) -> bool {
        let id = |p: &RootPath| {
            let fd = self.resolve(p.rel(), OFlag::O_PATH).ok()?;
            nix::sys::stat::fstat(fd.as_raw_fd()).ok().map(|st| (st.st_dev, st.st_ino))
        };
        matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
    }

    /// Whether the directory at `path` (symlinks followed inside the root) has no entries.
    pub fn is_empty_dir(&self, path: &RootPath) -> Result<bool> {
        let fd = self
            .resolve(path.rel(), OFlag::O_DIRECTORY | OFlag::O_RDONLY)
            .with_context(|| format!("opening directory {path} inside {}", self.path.escaped()))?;
        let mut dir = nix::dir::Dir::from_fd(fd.into_raw_fd()).with_context(|| format!("reading {path}"))?;
        let empty = dir.iter().filter_map(|e| e.ok()).all(|e| [&b"."[..], b".."].contains(&e.file_name().to_bytes()));
        Ok(empty)
    }
}
