//! A delta is the change between two trees, stored so that either side can be put in place by renames alone:
//! `index.json` lists the changed paths, `old/<k>` holds entry k's content before the change and `new/<k>` its
//! content after, whichever of the two is not in the tree at the moment. The overlay backend builds one from the
//! upper layer, the journal backend entry by entry as steps run; both commit, undo and roll back with [`Delta::swap`].
//!
//! Every swap is idempotent: running it again after a crash at any instant finishes it. That depends on two rules
//! that nothing may break: an entry's content is always in exactly one place (tree, `old/k` or `new/k`) or, when its
//! side says it does not exist, in none; and the index is written before the first rename that depends on it.

use crate::fsutil;
use crate::inroot::Root;
use crate::pathbytes::PathText;
use crate::plan::RootPath;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{renameat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Metadata of a directory whose contents changed: restored after its entries were moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    /// xattr name to hex-encoded value (`trusted.overlay.*` never included).
    pub xattrs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// The path is replaced whole: `before`/`after` say whether it exists on each side.
    Replace {
        #[serde(with = "crate::pathbytes::one")]
        path: PathBuf,
        before: bool,
        after: bool,
    },
    /// A directory that exists on both sides with changed contents or metadata.
    Meta {
        #[serde(with = "crate::pathbytes::one")]
        path: PathBuf,
        before: Meta,
        after: Meta,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Put the `after` side in the tree.
    Forward,
    /// Put the `before` side back.
    Backward,
}

/// A delta directory: `index.json`, `old/`, `new/`.
pub(crate) struct Delta {
    pub dir: PathBuf,
}

impl Delta {
    pub fn at(dir: &Path) -> Delta {
        Delta { dir: dir.to_path_buf() }
    }

    /// Create the directory layout (idempotent). It is made under a name of its own (`<dir>.building`) and renamed
    /// into place, so a crash never leaves a delta with one side only; one an older snapinst left half-made is
    /// completed.
    pub fn create(&self) -> Result<()> {
        if self.dir.is_dir() {
            return self.complete();
        }
        let building = self.building();
        let parent = self.dir.parent().unwrap_or(&self.dir);
        fsutil::create_dir_durable(parent)?;
        fsutil::remove_any(&building)?;
        for side in ["old", "new"] {
            std::fs::create_dir_all(building.join(side))
                .with_context(|| format!("creating {}", building.join(side).escaped()))?;
        }
        fsutil::sync_dir(&building)?;
        crate::failpoint::hit("apply-mid-delta-create");
        std::fs::rename(&building, &self.dir)
            .with_context(|| format!("renaming {} to {}", building.escaped(), self.dir.escaped()))?;
        fsutil::sync_dir(parent)
    }

    /// Make a side that is missing (an empty side, as a crash could leave it) exist.
    fn complete(&self) -> Result<()> {
        for side in ["old", "new"] {
            if !self.side(side).is_dir() {
                fsutil::create_dir_durable(&self.side(side))?;
            }
        }
        Ok(())
    }

    /// Where `create` builds the layout before renaming it into place.
    fn building(&self) -> PathBuf {
        let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.dir.with_file_name(format!("{name}.building"))
    }

    pub fn side(&self, which: &str) -> PathBuf {
        self.dir.join(which)
    }

    pub fn read_index(&self) -> Result<Vec<Entry>> {
        let path = self.dir.join("index.json");
        if !path.exists() {
            return Ok(Vec::new());
        }
        fsutil::read_json(&path)
    }

    pub fn write_index(&self, entries: &[Entry]) -> Result<()> {
        fsutil::write_json_atomic(&self.dir.join("index.json"), &entries)
    }

    /// Put one side of the delta in `tree`, moving the other into storage. Idempotent.
    pub fn swap(&self, tree: &Root, direction: Direction, mut after_each: impl FnMut()) -> Result<()> {
        let entries = self.read_index()?;
        let (src_name, stash_name) = match direction {
            Direction::Forward => ("new", "old"),
            Direction::Backward => ("old", "new"),
        };
        // A side missing from a delta made by an older snapinst before a crash has nothing in it.
        self.complete()?;
        let src = open_plain_dir(&self.side(src_name))?;
        let stash = open_plain_dir(&self.side(stash_name))?;
        let order: Vec<usize> = match direction {
            Direction::Forward => (0..entries.len()).collect(),
            Direction::Backward => (0..entries.len()).rev().collect(),
        };
        let bar =
            crate::events::Bar::start("merging", entries.iter().filter(|e| matches!(e, Entry::Replace { .. })).count());
        for k in order {
            let Entry::Replace { path, before, after } = &entries[k] else {
                continue;
            };
            bar.inc();
            let (want, had) = match direction {
                Direction::Forward => (*after, *before),
                Direction::Backward => (*before, *after),
            };
            swap_entry(tree, &RootPath::from_rel(path), &k.to_string(), want, had, &src, &stash)
                .with_context(|| format!("moving /{} ({src_name} -> tree, tree -> {stash_name})", path.escaped()))?;
            after_each();
        }
        let mut metas: Vec<(&PathBuf, &Meta)> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Meta { path, before, after } => {
                    Some((path, if direction == Direction::Forward { after } else { before }))
                }
                Entry::Replace { .. } => None,
            })
            .collect();
        metas.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, meta) in metas {
            apply_meta(tree, &RootPath::from_rel(path), meta)?;
        }
        fsutil::syncfs(&self.dir)?;
        Ok(())
    }

    /// Remove the delta's storage (and a layout a crash left half-built).
    pub fn remove(&self) -> Result<()> {
        fsutil::remove_any(&self.building())?;
        fsutil::remove_any(&self.dir)
    }
}

fn swap_entry(
    tree: &Root,
    path: &RootPath,
    k: &str,
    want: bool,
    had: bool,
    src: &OwnedFd,
    stash: &OwnedFd,
) -> Result<()> {
    let src_has = present(src, k)?;
    if want && !src_has {
        return Ok(()); // already moved in
    }
    let (dir, name) = match tree.parent_of(path) {
        Ok(p) => p,
        Err(_) if !want => return Ok(()), // no parent: nothing there to stash
        Err(e) => return Err(e),
    };
    if present(&dir, name)? {
        if !had {
            bail!("{path} exists in the tree where this side of the change has nothing");
        }
        if present(stash, k)? {
            bail!("{path} exists both in the tree and in storage");
        }
        renameat(Some(dir.as_raw_fd()), name, Some(stash.as_raw_fd()), k).context("moving the tree's version aside")?;
    }
    if want {
        renameat(Some(src.as_raw_fd()), k, Some(dir.as_raw_fd()), name).context("moving the stored version in")?;
    }
    Ok(())
}

fn present<P: ?Sized + nix::NixPath>(dir: &OwnedFd, name: &P) -> Result<bool> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e).context("inspecting an entry"),
    }
}

fn open_plain_dir(path: &Path) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(path, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("opening {}", path.escaped()))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Read a directory's metadata (through an open descriptor).
pub(crate) fn read_meta(dir: &File) -> Result<Meta> {
    use std::os::unix::fs::MetadataExt;
    let m = dir.metadata().context("reading directory metadata")?;
    let mut xattrs = BTreeMap::new();
    for name in xattr::FileExt::list_xattr(dir).context("listing xattrs")? {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        if let Some(v) = xattr::FileExt::get_xattr(dir, &name).context("reading an xattr")? {
            xattrs.insert(name, hex::encode(v));
        }
    }
    Ok(Meta { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), mtime: (m.mtime(), m.mtime_nsec()), xattrs })
}

/// Give the directory at `path` exactly the metadata `meta`.
pub(crate) fn apply_meta(tree: &Root, path: &RootPath, meta: &Meta) -> Result<()> {
    let Ok(fd) = tree.open_dir(path.rel()) else {
        return Ok(());
    };
    let dir = File::from(fd);
    set_meta(&dir, meta).with_context(|| format!("restoring the metadata of {path}"))
}

pub(crate) fn set_meta(dir: &File, meta: &Meta) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for name in xattr::FileExt::list_xattr(dir)? {
        let n = name.to_string_lossy();
        if !n.starts_with("trusted.overlay.") && !meta.xattrs.contains_key(n.as_ref()) {
            xattr::FileExt::remove_xattr(dir, &name)?;
        }
    }
    for (name, value) in &meta.xattrs {
        xattr::FileExt::set_xattr(dir, name, &hex::decode(value).context("decoding an xattr value")?)?;
    }
    nix::unistd::fchown(dir.as_raw_fd(), Some(meta.uid.into()), Some(meta.gid.into()))?;
    dir.set_permissions(std::fs::Permissions::from_mode(meta.mode))?;
    let ts = nix::sys::time::TimeSpec::new(meta.mtime.0, meta.mtime.1);
    nix::sys::stat::futimens(dir.as_raw_fd(), &nix::sys::time::TimeSpec::UTIME_OMIT, &ts)?;
    Ok(())
}
