//! The journal backend, the fallback when the root has neither btrfs nor overlayfs: steps write straight into the
//! root, and before each change the guard records the path in the transaction's delta (write-ahead) and moves the
//! original aside into it. A failure swaps the delta backwards; a commit keeps it as the generation. A `run` step is
//! accepted only with the paths it changes declared: each is moved aside the same way and an identical copy put in
//! its place for the command (what it writes elsewhere is not undone). This module must never let a change happen
//! before its entry is durable.

use super::Ctx;
use crate::delta::{self, Delta, Direction, Entry};
use crate::fsutil;
use crate::inroot::Root;
use crate::plan::RootPath;
use crate::state::TxnRecord;
use crate::steps::ChangeGuard;
use anyhow::{Context, Result};
use nix::fcntl::renameat;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub(super) fn check_usable(root: &Path, state_dir: &Path) -> Result<()> {
    super::require_same_mount(root, state_dir, "moving originals aside needs renames")
}

fn delta_of(ctx: &Ctx, rec: &TxnRecord) -> Delta {
    Delta::at(&ctx.state.gen_path(rec.to_generation))
}

pub(super) fn prepare(ctx: &Ctx, rec: &mut TxnRecord) -> Result<PathBuf> {
    let d = delta_of(ctx, rec);
    d.remove()?;
    d.create()?;
    fsutil::create_dir_durable(&d.dir.join("scratch"))?;
    d.write_index(&[])?;
    Ok(ctx.root.clone())
}

pub(super) fn guard(ctx: &Ctx, rec: &TxnRecord) -> Result<Box<dyn ChangeGuard>> {
    let d = delta_of(ctx, rec);
    let entries = d.read_index()?;
    let seen = entries
        .iter()
        .enumerate()
        .map(|(k, e)| match e {
            Entry::Replace { path, .. } | Entry::Meta { path, .. } => (path.clone(), k),
        })
        .collect();
    Ok(Box::new(JournalGuard { scratch: d.dir.join("scratch"), delta: d, entries, seen }))
}

struct JournalGuard {
    delta: Delta,
    scratch: PathBuf,
    entries: Vec<Entry>,
    seen: HashMap<PathBuf, usize>,
}

impl JournalGuard {
    fn record(&mut self, entry: Entry) -> Result<usize> {
        let path = match &entry {
            Entry::Replace { path, .. } | Entry::Meta { path, .. } => path.clone(),
        };
        self.entries.push(entry);
        self.delta.write_index(&self.entries)?;
        let k = self.entries.len() - 1;
        self.seen.insert(path, k);
        Ok(k)
    }
}

impl ChangeGuard for JournalGuard {
    fn before_replace(&mut self, root: &Root, path: &RootPath, removing: bool) -> Result<()> {
        if let Some(&k) = self.seen.get(path.rel()) {
            match &mut self.entries[k] {
                // Already saved: a later change to the same path only updates whether it exists after.
                Entry::Replace { after, .. } => {
                    if removing && *after {
                        let (dir, name) = root.parent_of(path)?;
                        let victim = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
                        fsutil::remove_any(&victim)?;
                    }
                    *after = !removing;
                    return self.delta.write_index(&self.entries);
                }
                // A directory whose metadata was saved is now replaced whole: fall through to a new entry.
                Entry::Meta { .. } => {}
            }
        }
        let existed = root.lstat(path)?.is_some();
        let k = self.record(Entry::Replace { path: path.rel().to_path_buf(), before: existed, after: !removing })?;
        if existed {
            let old = crate::inroot::Root::open(&self.delta.side("old"))?;
            let (dir, name) = root.parent_of(path)?;
            let old_fd = old.open_dir(Path::new(""))?;
            renameat(Some(dir.as_raw_fd()), name, Some(old_fd.as_raw_fd()), k.to_string().as_str())
                .with_context(|| format!("moving the original {path} aside"))?;
        }
        Ok(())
    }

    fn before_meta(&mut self, root: &Root, path: &RootPath) -> Result<()> {
        if self.seen.contains_key(path.rel()) {
            return Ok(());
        }
        let before = delta::read_meta(&std::fs::File::from(root.open_dir(path.rel())?))?;
        self.record(Entry::Meta { path: path.rel().to_path_buf(), after: before.clone(), before })?;
        Ok(())
    }

    fn scratch(&self) -> Option<&Path> {
        Some(&self.scratch)
    }

    fn save_in_place(&mut self, root: &Root, path: &RootPath) -> Result<()> {
        // What a missing path's command creates starts at its outermost missing ancestor.
        let mut target = path.clone();
        for above in path.rel().ancestors().skip(1).take_while(|a| !a.as_os_str().is_empty()) {
            let above = RootPath::from_rel(above);
            if root.lstat(&above)?.is_some() {
                break;
            }
            target = above;
        }
        let covered = |p: &Path| self.seen.get(p).is_some_and(|&k| matches!(self.entries[k], Entry::Replace { .. }));
        if target.rel().ancestors().any(covered) {
            return Ok(()); // saved whole already, by this step or an earlier one
        }
        let existed = root.lstat(&target)?.is_some();
        self.before_replace(root, &target, false)?;
        crate::failpoint::hit("apply-mid-save");
        if existed {
            let k = self.seen[target.rel()];
            let original = self.delta.side("old").join(k.to_string());
            let (dir, name) = root.parent_of(&target)?;
            // cp reaches the parent through this process's descriptor (its own /proc/self is cp's).
            let place = Path::new("/proc").join(std::process::id().to_string()).join("fd");
            let place = place.join(dir.as_raw_fd().to_string()).join(name);
            fsutil::copy_tree(&original, &place).with_context(|| format!("giving {target} back to the command"))?;
        }
        Ok(())
    }
}

pub(super) fn pre_commit(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    let d = delta_of(ctx, rec);
    let tree = Root::open(&ctx.root)?;
    let mut entries = d.read_index()?;
    for e in &mut entries {
        if let Entry::Meta { path, after, .. } = e {
            *after = delta::read_meta(&std::fs::File::from(tree.open_dir(path)?))?;
        }
    }
    d.write_index(&entries)?;
    fsutil::remove_any(&d.dir.join("scratch"))?;
    fsutil::syncfs(&ctx.root)
}

pub(super) fn finish(_ctx: &Ctx, _rec: &TxnRecord) -> Result<()> {
    Ok(())
}

pub(super) fn discard(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    let d = delta_of(ctx, rec);
    if d.dir.exists() {
        let tree = Root::open(&ctx.root)?;
        d.swap(&tree, Direction::Backward, || crate::failpoint::hit("apply-mid-discard"))?;
        d.remove()?;
        fsutil::sync_dir(&ctx.state.gens_dir())?;
    }
    Ok(())
}
