//! What a staged transaction changes: the live root and the stage are walked side by side (never following
//! symlinks) and every path is classed as added, removed, modified (content, type or symlink target) or
//! metadata-only (mode, owner or modification time). A regular file whose size, inode number, mtime and ctime are
//! unchanged (a file a btrfs snapshot shares untouched) is taken as unchanged without reading it; otherwise both contents are compared. Used by `apply --dry-run` and
//! `apply --confirm`, which are the only callers that pay for a walk of the whole tree.

use crate::pathbytes::PathText;
use anyhow::{Context, Result};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ChangeKind {
    Added,
    Removed,
    Modified,
    Metadata,
}

impl ChangeKind {
    pub fn word(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Modified => "modified",
            ChangeKind::Metadata => "metadata",
        }
    }
}

/// One changed path, absolute inside the root (`/etc/hello.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub kind: ChangeKind,
    pub path: PathBuf,
}

/// Every change from `old` (the live root) to `new` (the stage), sorted by path, leaving out the paths in `skip`
/// (relative to the roots: the state area and mount points, whose contents the stage does not carry).
pub(crate) fn diff(old: &Path, new: &Path, skip: &[PathBuf]) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    walk(old, new, Path::new("/"), skip, &mut changes)?;
    Ok(changes)
}

fn names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.escaped()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.escaped()))?;
    names.sort();
    Ok(names)
}

fn walk(old: &Path, new: &Path, at: &Path, skip: &[PathBuf], changes: &mut Vec<Change>) -> Result<()> {
    let (old_names, new_names) = (names(old)?, names(new)?);
    let mut all: Vec<&std::ffi::OsString> = old_names.iter().chain(&new_names).collect();
    all.sort();
    all.dedup();
    for name in all {
        let (o, n) = (old.join(name), new.join(name));
        let path = at.join(name);
        if skip.iter().any(|s| path.strip_prefix("/").is_ok_and(|rel| rel == s)) {
            continue;
        }
        let om = std::fs::symlink_metadata(&o).ok();
        let nm = std::fs::symlink_metadata(&n).ok();
        match (om, nm) {
            (Some(_), None) => everything_below(&o, &path, ChangeKind::Removed, changes)?,
            (None, Some(_)) => everything_below(&n, &path, ChangeKind::Added, changes)?,
            (Some(om), Some(nm)) if om.file_type() != nm.file_type() => {
                everything_below(&o, &path, ChangeKind::Removed, changes)?;
                everything_below(&n, &path, ChangeKind::Added, changes)?;
            }
            (Some(om), Some(nm)) => {
                if let Some(kind) = compare(&o, &om, &n, &nm)? {
                    changes.push(Change { kind, path: path.clone() });
                }
                if nm.is_dir() {
                    walk(&o, &n, &path, skip, changes)?;
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// `path` and, for a directory, everything below it, all as `kind`.
fn everything_below(real: &Path, path: &Path, kind: ChangeKind, changes: &mut Vec<Change>) -> Result<()> {
    changes.push(Change { kind, path: path.to_path_buf() });
    if std::fs::symlink_metadata(real).is_ok_and(|m| m.is_dir()) {
        for name in names(real)? {
            everything_below(&real.join(&name), &path.join(&name), kind, changes)?;
        }
    }
    Ok(())
}

/// How one path present on both sides, of the same type, changed.
fn compare(o: &Path, om: &Metadata, n: &Path, nm: &Metadata) -> Result<Option<ChangeKind>> {
    let owner_mode = om.mode() != nm.mode() || om.uid() != nm.uid() || om.gid() != nm.gid();
    if om.is_dir() {
        return Ok(owner_mode.then_some(ChangeKind::Metadata));
    }
    if om.file_type().is_symlink() {
        let changed = std::fs::read_link(o)? != std::fs::read_link(n)?;
        return Ok(if changed { Some(ChangeKind::Modified) } else { owner_mode.then_some(ChangeKind::Metadata) });
    }
    let times_same = om.mtime() == nm.mtime() && om.mtime_nsec() == nm.mtime_nsec();
    if om.is_file() {
        if om.size() != nm.size() {
            return Ok(Some(ChangeKind::Modified));
        }
        let untouched =
            times_same && om.ino() == nm.ino() && om.ctime() == nm.ctime() && om.ctime_nsec() == nm.ctime_nsec();
        if !untouched && !same_content(o, n)? {
            return Ok(Some(ChangeKind::Modified));
        }
    } else if om.rdev() != nm.rdev() {
        return Ok(Some(ChangeKind::Modified));
    }
    Ok((owner_mode || !times_same).then_some(ChangeKind::Metadata))
}

/// Whether the files `a` and `b` hold the same bytes.
pub(crate) fn same_content(a: &Path, b: &Path) -> Result<bool> {
    same_prefix(a, b, u64::MAX)
}

/// Whether the first `len` bytes of the files `a` and `b` are the same (false when either is shorter; `u64::MAX`: the
/// whole files).
pub(crate) fn same_prefix(a: &Path, b: &Path, len: u64) -> Result<bool> {
    let open = |p: &Path| std::fs::File::open(p).with_context(|| format!("opening {}", p.escaped()));
    let (mut fa, mut fb) = (open(a)?.take(len), open(b)?.take(len));
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = read_full(&mut fa, &mut ba).with_context(|| format!("reading {}", a.escaped()))?;
        let nb = read_full(&mut fb, &mut bb).with_context(|| format!("reading {}", b.escaped()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_every_kind_of_change() {
        let base = std::env::temp_dir().join(format!("snapinst-treediff-{}", std::process::id()));
        let (old, new) = (base.join("old"), base.join("new"));
        for root in [&old, &new] {
            std::fs::create_dir_all(root.join("etc/sub")).unwrap();
            std::fs::write(root.join("etc/same"), "x").unwrap();
            std::fs::write(root.join("etc/content"), "one").unwrap();
            std::fs::write(root.join("etc/sub/gone"), "g").unwrap();
        }
        // Every file starts with the same old mtime on both sides, so only what changes below looks changed.
        for root in [&old, &new] {
            for f in ["etc/same", "etc/content", "etc/sub/gone"] {
                let file = std::fs::File::options().write(true).open(root.join(f)).unwrap();
                file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
            }
        }
        std::fs::write(new.join("etc/content"), "two").unwrap();
        std::fs::remove_dir_all(new.join("etc/sub")).unwrap();
        std::fs::write(new.join("etc/new"), "n").unwrap();
        std::fs::write(new.join("etc/skipped"), "left out").unwrap();
        std::fs::set_permissions(new.join("etc/same"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let got: Vec<(ChangeKind, String)> = diff(&old, &new, &[PathBuf::from("etc/skipped")])
            .unwrap()
            .into_iter()
            .map(|c| (c.kind, c.path.escaped().to_string()))
            .collect();
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(
            got,
            [
                (ChangeKind::Modified, "/etc/content".to_string()),
                (ChangeKind::Added, "/etc/new".to_string()),
                (ChangeKind::Metadata, "/etc/same".to_string()),
                (ChangeKind::Removed, "/etc/sub".to_string()),
                (ChangeKind::Removed, "/etc/sub/gone".to_string()),
            ]
        );
    }
}
