//! A census of a stage: the metadata of every path in it, so that two censuses taken before and after a step say
//! how many paths the step changed. `apply --keep-failed` takes one after each step, for `resume --list`. A path
//! counts as changed when it appeared, went, or changed type, inode, size, mode, owner, modification or change
//! time; a directory counts only for its own type, mode and owner, since adding an entry changes its times.

use crate::pathbytes::PathText;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What tells a non-directory's contents changed: inode, size, modification and change times.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Content {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    /// None for a directory.
    content: Option<Content>,
}

impl Seen {
    fn of(m: &std::fs::Metadata) -> Seen {
        let content = (!m.is_dir()).then(|| Content {
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        });
        Seen { kind: m.mode() & libc::S_IFMT, mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), content }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Census {
    seen: HashMap<PathBuf, Seen>,
}

impl Census {
    /// Every path below `tree` (relative to it), without the paths in `skip` and what is below them.
    pub fn take(tree: &Path, skip: &[PathBuf]) -> Result<Census> {
        let mut census = Census::default();
        census.walk(tree, Path::new(""), skip)?;
        Ok(census)
    }

    fn walk(&mut self, tree: &Path, rel: &Path, skip: &[PathBuf]) -> Result<()> {
        let dir = tree.join(rel);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.escaped()))? {
            let entry = entry.with_context(|| format!("reading {}", dir.escaped()))?;
            let path = rel.join(entry.file_name());
            if skip.contains(&path) {
                continue;
            }
            let m = entry.metadata().with_context(|| format!("reading {}", tree.join(&path).escaped()))?;
            self.seen.insert(path.clone(), Seen::of(&m));
            if m.is_dir() {
                self.walk(tree, &path, skip)?;
            }
        }
        Ok(())
    }

    /// How many paths differ between `earlier` and this census.
    pub fn changed_since(&self, earlier: &Census) -> usize {
        let changed_or_new = self.seen.iter().filter(|(p, s)| earlier.seen.get(*p) != Some(s)).count();
        let gone = earlier.seen.keys().filter(|p| !self.seen.contains_key(*p)).count();
        changed_or_new + gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_a_step_did_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        std::fs::create_dir_all(p.join("etc/skip")).unwrap();
        std::fs::write(p.join("etc/a"), "a").unwrap();
        std::fs::write(p.join("etc/b"), "b").unwrap();
        let skip = [PathBuf::from("etc/skip")];
        let before = Census::take(p, &skip).unwrap();
        assert_eq!(Census::take(p, &skip).unwrap().changed_since(&before), 0);
        std::fs::write(p.join("etc/new"), "n").unwrap();
        std::fs::remove_file(p.join("etc/b")).unwrap();
        std::fs::write(p.join("etc/a"), "longer").unwrap();
        std::fs::write(p.join("etc/skip/x"), "x").unwrap();
        assert_eq!(Census::take(p, &skip).unwrap().changed_since(&before), 3, "added, removed, modified");
    }
}
