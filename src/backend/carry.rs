//! Carry-over: bring into a stage what the live tree received while the transaction ran, for the paths the plan
//! did not change. Given a read-only snapshot of the tree from before (`before`), one of the live tree now
//! (`live`), the paths the kernel says differ between them and the paths the plan changed, each such path of the
//! stage is made what the live tree has: created, replaced or removed, with its mode, owner, times and xattrs, a
//! file's content cloned (`FICLONE`, never copied), a hard link made again as a link. A path both sides changed
//! is a conflict: the plan's version stays in the stage, the live version is cloned into `kept` (outside the tree)
//! and listed. A keeping rollback uses the same walk the other way round: the "incoming" tree is the generation
//! before, `before` the rolled-back generation as committed, and the incoming side wins a conflict (the running
//! system's version, in the stage, is the one kept). Only the stage is written; a failure leaves the live tree as
//! it was.

use super::appends;
use super::btrfs_send::Changes;
use crate::conflicts::{Conflict, Version};
use crate::pathbytes::PathText;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, Metadata, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How the carry's temporary entries are named, next to the path they are for.
const TMP_PREFIX: &str = ".snapinst-carry.";

/// One carry-over round's trees and what is known about them.
pub(super) struct Round<'a> {
    /// The live tree as it was when the stage (or the previous round) was taken: read-only.
    pub before: &'a Path,
    /// The live tree now: read-only.
    pub live: &'a Path,
    pub stage: &'a Path,
    /// What the plan changed in the stage.
    pub planned: &'a Changes,
    /// Where the versions of conflicting paths that the new tree does not hold are kept.
    pub kept: &'a Path,
    /// Which side a conflict gives the tree: the stage's (the plan's, at a commit: the running system's version is
    /// kept) or, when true, the incoming one (a rollback's: the running system's version, in the stage, is kept).
    pub incoming_wins: bool,
    /// The stage is a tree the running system writes to (a directory target right after its commit): any path
    /// whose entry there differs from `before` counts as changed on the stage's side, whatever `planned` says, and
    /// each entry is replaced by a checked exchange (`live_swap`), so a write made after the look is never undone.
    pub live_stage: bool,
    /// The stage is the root itself, after its commit: a carry that a crash cut off left its temporary entries
    /// (`.snapinst-carry.*`, next to the paths it was carrying) in it, and no discard removes them. The carry done
    /// again removes them from each directory it visits, before it makes any of its own there.
    pub in_root: bool,
}

/// What a round did.
#[derive(Debug, Default)]
pub(super) struct Carried {
    /// Paths of the stage made what the live tree has.
    pub paths: usize,
    pub conflicts: Vec<Conflict>,
}

/// Carry `changed` (the paths that differ from `round.before` to `round.live`) into the stage.
pub(super) fn carry(round: &Round, changed: &Changes) -> Result<Carried> {
    let mut w = Worker {
        r: round,
        out: Carried::default(),
        made: HashMap::new(),
        times: Vec::new(),
        tmp: 0,
        siblings: Vec::new(),
        visited: HashSet::new(),
        swept: HashSet::new(),
    };
    let mut whole_done: Option<PathBuf> = None;
    for rel in &changed.paths {
        if whole_done.as_ref().is_some_and(|w| rel.starts_with(w)) {
            continue;
        }
        let whole = changed.whole.contains(rel);
        w.path(rel, whole, changed.links.get(rel))
            .with_context(|| format!("carrying /{} over into the stage", rel.escaped()))?;
        if whole {
            whole_done = Some(rel.clone());
        }
    }
    // The other names of hard-linked files that changed: the kernel names a changed file by one of its names.
    while let Some(rel) = w.siblings.pop() {
        if !w.visited.contains(&rel) {
            w.path(&rel, false, None).with_context(|| format!("carrying /{} over into the stage", rel.escaped()))?;
        }
    }
    // Directory times last: making entries in a directory changes its mtime.
    for (rel, m) in w.times.iter().rev() {
        set_times(&round.stage.join(rel), m)?;
    }
    Ok(w.out)
}

struct Worker<'a> {
    r: &'a Round<'a>,
    out: Carried,
    /// Live inode number to the path made for it in this round (to make hard links again).
    made: HashMap<u64, PathBuf>,
    /// Directories whose times are set at the end.
    times: Vec<(PathBuf, Metadata)>,
    tmp: u64,
    /// Other names of hard-linked files met, still to look at.
    siblings: Vec<PathBuf>,
    visited: HashSet<PathBuf>,
    /// The directories of an `in_root` stage swept of a cut-off carry's leftovers.
    swept: HashSet<PathBuf>,
}

fn lstat(path: &Path) -> Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.escaped())),
    }
}

/// Whether the entry changed between two snapshots (a snapshot keeps inode numbers and ctimes).
fn differs(a: &Option<Metadata>, b: &Option<Metadata>) -> bool {
    match (a, b) {
        (None, None) => false,
        (Some(a), Some(b)) => {
            (a.ino(), a.mode(), a.uid(), a.gid(), a.size(), a.nlink())
                != (b.ino(), b.mode(), b.uid(), b.gid(), b.size(), b.nlink())
                || (a.mtime(), a.mtime_nsec(), a.ctime(), a.ctime_nsec())
                    != (b.mtime(), b.mtime_nsec(), b.ctime(), b.ctime_nsec())
        }
        _ => true,
    }
}

/// The same mtime and number of names (what `same_entry` leaves out).
fn same_mtime_and_links(a: &Option<Metadata>, b: &Option<Metadata>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a.mtime(), a.mtime_nsec(), a.nlink()) == (b.mtime(), b.mtime_nsec(), b.nlink()),
        (a, b) => a.is_none() && b.is_none(),
    }
}

fn is_dir(m: &Option<Metadata>) -> bool {
    m.as_ref().is_some_and(|m| m.is_dir())
}

impl Worker<'_> {
    fn path(&mut self, rel: &Path, whole: bool, link_hint: Option<&PathBuf>) -> Result<()> {
        let before = lstat(&self.r.before.join(rel))?;
        let live = lstat(&self.r.live.join(rel))?;
        if self.r.in_root {
            self.sweep(rel.parent().unwrap_or(Path::new("")))?;
        }
        let staged = lstat(&self.r.stage.join(rel))?;
        self.visited.insert(rel.to_path_buf());
        // The kernel compares inodes, so a clone (a file the carry-over made, compared with its original in a
        // rollback or at boot) shows as changed: the same bytes, mode, owner, mtime and number of names are no change.
        let changed = differs(&before, &live)
            && !(!is_dir(&live)
                && same_mtime_and_links(&before, &live)
                && same_entry(&self.r.before.join(rel), &before, &self.r.live.join(rel), &live)?);
        if changed {
            for (tree, m) in [(self.r.before, &before), (self.r.live, &live)] {
                if let Some(m) = m.as_ref().filter(|m| m.is_file() && m.nlink() > 1) {
                    self.siblings.extend(other_names(tree, m.ino())?.into_iter().filter(|n| n != rel));
                }
            }
        }
        let mut descend = whole && is_dir(&live);
        if changed
            && self.r.live_stage
            && !is_dir(&live)
            && same_mtime_and_links(&live, &staged)
            && same_entry(&self.r.live.join(rel), &live, &self.r.stage.join(rel), &staged)?
        {
            // Carried already (a finishing done again after a crash): the running system's file stays as it is.
            return Ok(());
        }
        if changed {
            // Changed on the stage's side too (and not to what it was: a rollback step puts back files as clones),
            // and not to what the live side has (the same change on both sides, or one carried already: a carry cut
            // off and done again).
            let both = (self.r.planned.paths.contains(rel) || self.r.live_stage)
                && !same_entry(&self.r.before.join(rel), &before, &self.r.stage.join(rel), &staged)?
                && (is_dir(&live) || !same_entry(&self.r.live.join(rel), &live, &self.r.stage.join(rel), &staged)?);
            if both && is_dir(&live) && is_dir(&staged) {
                // A directory both changed: the entries merge below it; its own metadata stays the stage's.
            } else if both && !self.r.incoming_wins {
                if self.r.live_stage && self.merge_appends(rel, &before, &live, &staged)? {
                    return Ok(());
                }
                return self.conflict(rel, &staged, Side::Incoming, &live);
            } else {
                if both {
                    self.conflict(rel, &live, Side::Stage, &staged)?;
                }
                match self.make_like_live(rel, &live, &staged, link_hint)? {
                    Some(made_dir) => descend |= made_dir,
                    None => return Ok(()),
                }
            }
        }
        if descend {
            for name in self.child_names(rel)? {
                let child = rel.join(name);
                self.path(&child, true, None).with_context(|| format!("carrying /{} over", child.escaped()))?;
            }
        }
        Ok(())
    }

    /// The names in `rel` on any side.
    fn child_names(&self, rel: &Path) -> Result<std::collections::BTreeSet<std::ffi::OsString>> {
        let mut names = std::collections::BTreeSet::new();
        for root in [self.r.before, self.r.live, self.r.stage] {
            let dir = root.join(rel);
            if !is_dir(&lstat(&dir)?) {
                continue;
            }
            for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.escaped()))? {
                names.insert(e.with_context(|| format!("reading {}", dir.escaped()))?.file_name());
            }
        }
        Ok(names)
    }

    /// Make the stage's `rel` what the live tree has. Returns Some(true) when it made a directory (whose contents
    /// must follow), Some(false) when done, None when it recorded a conflict instead.
    fn make_like_live(
        &mut self,
        rel: &Path,
        live: &Option<Metadata>,
        staged: &Option<Metadata>,
        link_hint: Option<&PathBuf>,
    ) -> Result<Option<bool>> {
        let target = self.r.stage.join(rel);
        let parent_ok = match rel.parent() {
            Some(p) => is_dir(&lstat(&self.r.stage.join(p))?),
            None => true,
        };
        let replaces_planned = is_dir(staged) && !is_dir(live) && self.r.planned.touches_below(rel);
        if !parent_ok || (replaces_planned && !self.r.incoming_wins) {
            // The stage's side removed the directory this is in, or changed something below what the incoming side
            // replaced.
            self.conflict(rel, staged, Side::Incoming, live)?;
            return Ok(None);
        }
        if replaces_planned {
            self.conflict(rel, live, Side::Stage, staged)?;
        }
        let Some(live) = live else {
            if !self.put(rel, None, staged)? {
                return Ok(None);
            }
            self.out.paths += 1;
            return Ok(Some(false));
        };
        let source = self.r.live.join(rel);
        if live.is_dir() {
            let fresh = !is_dir(staged);
            if fresh {
                let tmp = self.tmp_name(&target);
                fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.escaped()))?;
                if !self.put(rel, Some(&tmp), staged)? {
                    return Ok(None);
                }
            }
            copy_attributes(&source, &target, live)?;
            self.times.push((rel.to_path_buf(), live.clone()));
            self.out.paths += 1;
            return Ok(Some(fresh));
        }
        let tmp = self.tmp_name(&target);
        if let Some(existing) = self.existing_link(live, link_hint) {
            fs::hard_link(self.r.stage.join(&existing), &tmp)
                .with_context(|| format!("linking {} to /{}", tmp.escaped(), existing.escaped()))?;
        } else {
            make_entry(&source, &tmp, live)?;
            copy_attributes(&source, &tmp, live)?;
            set_times(&tmp, live)?;
        }
        if !self.put(rel, Some(&tmp), staged)? {
            return Ok(None);
        }
        if crate::fsutil::exists(&tmp) {
            // Renaming a link onto another link of the same file leaves both names.
            fs::remove_file(&tmp).with_context(|| format!("removing {}", tmp.escaped()))?;
        }
        if live.nlink() > 1 {
            self.made.entry(live.ino()).or_insert_with(|| rel.to_path_buf());
        }
        self.out.paths += 1;
        Ok(Some(false))
    }

    /// Put the entry at `new` (None: nothing) in the stage at `rel`, which was `staged` when looked at. In a live
    /// stage, a checked exchange: when the running system changed the entry since, `new` is removed and this
    /// returns false, the two versions merged when both only appended (counted), else the running system's entry
    /// left in place and the incoming version kept as a conflict.
    fn put(&mut self, rel: &Path, new: Option<&Path>, staged: &Option<Metadata>) -> Result<bool> {
        let target = self.r.stage.join(rel);
        if self.r.in_root && new.is_some() {
            crate::failpoint::hit("handover-mid-put");
        }
        if !self.r.live_stage {
            match new {
                None => crate::fsutil::remove_any(&target)?,
                Some(new) => {
                    if is_dir(staged) || is_dir(&lstat(new)?) {
                        crate::fsutil::remove_any(&target)?;
                    }
                    fs::rename(new, &target)
                        .with_context(|| format!("renaming {} to {}", new.escaped(), target.escaped()))?;
                }
            }
            return Ok(true);
        }
        let aside = self.tmp_name(&target);
        let swap = super::live_swap::replace(&target, new, &aside, staged)?;
        if let super::live_swap::Swap::Straggler(out) = &swap {
            self.keep_straggler(rel, out)?;
        }
        if matches!(swap, super::live_swap::Swap::Done | super::live_swap::Swap::Straggler(_)) {
            return Ok(true);
        }
        if let Some(new) = new {
            crate::fsutil::remove_any(new)?;
        }
        // Written since the look: appends on both sides still merge.
        let (before, incoming, now) =
            (lstat(&self.r.before.join(rel))?, lstat(&self.r.live.join(rel))?, lstat(&target)?);
        if swap == super::live_swap::Swap::Changed && self.merge_appends(rel, &before, &incoming, &now)? {
            return Ok(false);
        }
        self.conflict(rel, &now, Side::Incoming, &incoming)?;
        Ok(false)
    }

    /// In a live stage, a file that both the incoming tree and the stage only appended to since `before` gets both
    /// appends, the incoming one first (`appends::merge`), by a checked exchange, tried again while the running
    /// system keeps appending. Returns false when the two do not merge (a conflict, for the caller).
    fn merge_appends(
        &mut self,
        rel: &Path,
        before: &Option<Metadata>,
        incoming: &Option<Metadata>,
        staged: &Option<Metadata>,
    ) -> Result<bool> {
        use super::live_swap::{replace, Swap};
        const TRIES: usize = 20;
        let (Some(bm), Some(im), Some(sm)) = (before, incoming, staged) else { return Ok(false) };
        let target = self.r.stage.join(rel);
        let (base_at, incoming_at) = (self.r.before.join(rel), self.r.live.join(rel));
        let mut seen = sm.clone();
        for _ in 0..TRIES {
            if seen.nlink() != 1 {
                return Ok(false);
            }
            let tmp = self.tmp_name(&target);
            let base = appends::Side { path: &base_at, meta: bm };
            let earlier = appends::Side { path: &incoming_at, meta: im };
            let later = appends::Side { path: &target, meta: &seen };
            match appends::merge(&base, &earlier, &later, &tmp)? {
                appends::Merge::Apart => return Ok(false),
                appends::Merge::Holds => return Ok(true),
                appends::Merge::Written => {}
            }
            copy_attributes(&target, &tmp, &seen)?;
            set_times(&tmp, &seen)?;
            let aside = self.tmp_name(&target);
            let swap = replace(&target, Some(&tmp), &aside, &Some(seen))?;
            match swap {
                Swap::Done => {}
                Swap::Straggler(out) => self.keep_straggler(rel, &out)?,
                Swap::InUse | Swap::Changed => {
                    crate::fsutil::remove_any(&tmp)?;
                    if swap == Swap::InUse {
                        return Ok(false);
                    }
                    match lstat(&target)? {
                        Some(now) => seen = now,
                        None => return Ok(false),
                    }
                    continue;
                }
            }
            self.out.paths += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// The running system's file at `rel`, moved out to `out` by a replacement while a process was opening it for
    /// writing (`live_swap::Swap::Straggler`): kept beside the new entry as `<name>.snapinst-kept` (numbered when
    /// taken), by a rename, so that what the process writes to it is kept too, and reported as a conflict. (The
    /// conflicts' directory is on another subvolume, out of a rename's reach.)
    fn keep_straggler(&mut self, rel: &Path, out: &Path) -> Result<()> {
        let target = self.r.stage.join(rel);
        let name = target.file_name().expect("a carried path has a name").to_string_lossy().into_owned();
        let kept = (0..)
            .map(|n| match n {
                0 => target.with_file_name(format!("{name}.snapinst-kept")),
                n => target.with_file_name(format!("{name}.snapinst-kept.{n}")),
            })
            .find_map(|kept| {
                match nix::fcntl::renameat2(None, out, None, &kept, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
                    Err(nix::errno::Errno::EEXIST) => None,
                    done => Some(done.map(|()| kept.clone()).with_context(|| {
                        format!("keeping the running system's /{} as {}", rel.escaped(), kept.escaped())
                    })),
                }
            })
            .expect("some numbered name is free")?;
        let path = Path::new("/").join(rel);
        self.out.conflicts.retain(|c| c.path != path);
        self.out.conflicts.push(Conflict {
            path,
            plan: Version::of(&lstat(&target)?),
            live: Version::of(&lstat(&kept)?),
            kept: Some(kept),
            pruned_with: None,
        });
        Ok(())
    }

    /// A path of the stage that already holds the live inode (made earlier this round, or the link's target left
    /// as it was), to link to.
    fn existing_link(&self, live: &Metadata, hint: Option<&PathBuf>) -> Option<PathBuf> {
        if live.nlink() < 2 {
            return None;
        }
        if let Some(made) = self.made.get(&live.ino()) {
            return Some(made.clone());
        }
        // The link's target where it is unchanged since `before` and the stage holds that very file. Inode numbers
        // alone do not say "the same file" across two subvolumes (both number new files from the same point); an
        // inode's number with its generation does, and snapshots keep both. Otherwise the stage gets a clone, and
        // an edited target links to it when its turn comes.
        let hint = hint?;
        let at = |root: &Path| lstat(&root.join(hint)).ok().flatten();
        let unchanged = at(self.r.before).is_some_and(|b| {
            (b.ino(), b.size(), b.mtime(), b.mtime_nsec()) == (live.ino(), live.size(), live.mtime(), live.mtime_nsec())
        });
        let theirs = identity(&self.r.live.join(hint));
        let same_file = live.is_file() && theirs.is_some() && theirs == identity(&self.r.stage.join(hint));
        (unchanged && same_file && !self.r.planned.paths.contains(hint)).then(|| hint.clone())
    }

    fn tmp_name(&mut self, target: &Path) -> PathBuf {
        self.tmp += 1;
        target.with_file_name(format!("{TMP_PREFIX}{}.{}", std::process::id(), self.tmp))
    }

    /// Remove from the stage's directory `dir` (once a round) the temporary entries a carry cut off by a crash left
    /// there: a merged or cloned file not yet put in place (the path keeps the running system's version, and this
    /// carry puts it again), or the version an exchange moved out (replaced already).
    fn sweep(&mut self, dir: &Path) -> Result<()> {
        if !self.swept.insert(dir.to_path_buf()) {
            return Ok(());
        }
        let at = self.r.stage.join(dir);
        let entries = match fs::read_dir(&at) {
            Ok(e) => e,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", at.escaped())),
        };
        for e in entries {
            let name = e.with_context(|| format!("reading {}", at.escaped()))?.file_name();
            if name.as_encoded_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                crate::fsutil::remove_any(&at.join(&name))?;
            }
        }
        Ok(())
    }

    /// List a conflict on `rel`: `in_tree` is the version the new tree holds, and the other version (`kept`, from
    /// `side`) is cloned outside the tree.
    fn conflict(&mut self, rel: &Path, in_tree: &Option<Metadata>, side: Side, kept: &Option<Metadata>) -> Result<()> {
        let copy = self.r.kept.join(rel);
        crate::fsutil::remove_any(&copy)?;
        let from = match side {
            Side::Incoming => self.r.live,
            Side::Stage => self.r.stage,
        };
        let kept_at = match kept {
            None => None,
            Some(_) => {
                fs::create_dir_all(copy.parent().expect("a kept path has a parent"))
                    .with_context(|| format!("making room for {}", copy.escaped()))?;
                clone_tree(&from.join(rel), &copy)
                    .with_context(|| format!("keeping the running system's version of /{}", rel.escaped()))?;
                Some(copy)
            }
        };
        let path = Path::new("/").join(rel);
        self.out.conflicts.retain(|c| c.path != path);
        self.out.conflicts.push(Conflict {
            path,
            plan: Version::of(in_tree),
            live: Version::of(kept),
            kept: kept_at,
            pruned_with: None,
        });
        Ok(())
    }
}

/// Which tree a conflict's kept version comes from.
#[derive(Clone, Copy)]
enum Side {
    Incoming,
    Stage,
}

/// Whether two entries are the same: kind, mode, owner, and a file's bytes, a link's target or a device's number.
fn same_entry(a: &Path, am: &Option<Metadata>, b: &Path, bm: &Option<Metadata>) -> Result<bool> {
    let (Some(am), Some(bm)) = (am, bm) else {
        return Ok(am.is_none() && bm.is_none());
    };
    if (am.mode(), am.uid(), am.gid()) != (bm.mode(), bm.uid(), bm.gid()) {
        return Ok(false);
    }
    let t = am.file_type();
    Ok(if t.is_file() {
        am.size() == bm.size() && crate::treediff::same_content(a, b)?
    } else if t.is_symlink() {
        fs::read_link(a).ok() == fs::read_link(b).ok()
    } else if t.is_dir() {
        true
    } else {
        am.rdev() == bm.rdev()
    })
}

/// Copy the tree `from` to the new path `to`, contents cloned, with modes, owners, xattrs and times (no `cp`: this
/// runs in the initramfs too).
fn clone_tree(from: &Path, to: &Path) -> Result<()> {
    let m = fs::symlink_metadata(from).with_context(|| format!("inspecting {}", from.escaped()))?;
    if m.is_dir() {
        fs::create_dir(to).with_context(|| format!("creating {}", to.escaped()))?;
        for e in fs::read_dir(from).with_context(|| format!("reading {}", from.escaped()))? {
            let name = e.with_context(|| format!("reading {}", from.escaped()))?.file_name();
            clone_tree(&from.join(&name), &to.join(&name))?;
        }
    } else {
        make_entry(from, to, &m)?;
    }
    copy_attributes(from, to, &m)?;
    set_times(to, &m)
}

/// Make a new entry at `to` like the one at `from`: a file cloned, a symlink, a device, a fifo or a socket.
fn make_entry(from: &Path, to: &Path, m: &Metadata) -> Result<()> {
    let t = m.file_type();
    if t.is_file() {
        let src = File::open(from).with_context(|| format!("opening {}", from.escaped()))?;
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .with_context(|| format!("creating {}", to.escaped()))?;
        clone_file(&src, &dst).with_context(|| format!("cloning {} to {}", from.escaped(), to.escaped()))?;
    } else if t.is_symlink() {
        let target = fs::read_link(from).with_context(|| format!("reading the link {}", from.escaped()))?;
        std::os::unix::fs::symlink(&target, to).with_context(|| format!("creating the link {}", to.escaped()))?;
    } else if t.is_fifo() || t.is_char_device() || t.is_block_device() || t.is_socket() {
        let kind = nix::sys::stat::SFlag::from_bits_truncate(m.mode() & libc::S_IFMT);
        let perm = nix::sys::stat::Mode::from_bits_truncate(0o600);
        nix::sys::stat::mknod(to, kind, perm, m.rdev()).with_context(|| format!("creating {}", to.escaped()))?;
    } else {
        bail!("{} is of a type snapinst cannot make", from.escaped());
    }
    Ok(())
}

nix::ioctl_write_int!(ficlone, 0x94, 9);

/// `struct btrfs_ioctl_ino_path_args`.
#[repr(C)]
struct InoPathArgs {
    inum: u64,
    size: u64,
    reserved: [u64; 4],
    fspath: u64,
}
nix::ioctl_readwrite!(btrfs_ioc_ino_paths, 0x94, 35, InoPathArgs);

/// Every name of inode `ino` in the subvolume `tree` (`BTRFS_IOC_INO_PATHS`), relative to it.
fn other_names(tree: &Path, ino: u64) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    const SIZE: usize = 64 * 1024;
    let dir = File::open(tree).with_context(|| format!("opening {}", tree.escaped()))?;
    let mut buf = vec![0u64; SIZE / 8];
    let mut args = InoPathArgs { inum: ino, size: SIZE as u64, reserved: [0; 4], fspath: buf.as_mut_ptr() as u64 };
    // SAFETY: `args` points at `buf`, SIZE bytes that outlive the call; the kernel writes at most `size` bytes.
    unsafe { btrfs_ioc_ino_paths(dir.as_raw_fd(), &mut args) }
        .with_context(|| format!("asking the kernel the names of inode {ino} in {}", tree.escaped()))?;
    // `struct btrfs_data_container`: four u32 counters, then `elem_cnt` offsets (from the first one) to C strings.
    let count = (buf[1] & 0xffff_ffff) as usize;
    let bytes: &[u8] = // SAFETY: `buf` is SIZE initialised bytes, viewed as bytes.
        unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, SIZE) };
    let mut names = Vec::new();
    for i in 0..count.min(SIZE / 8 - 2) {
        let at = 16 + buf[2 + i] as usize;
        let Some(rest) = bytes.get(at..) else { break };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        names.push(PathBuf::from(std::ffi::OsStr::from_bytes(&rest[..end])));
    }
    Ok(names)
}
nix::ioctl_read!(fs_ioc_getversion, b'v', 1, libc::c_long);

/// A regular file's inode number and generation (`FS_IOC_GETVERSION`): which file it is, across snapshots.
fn identity(path: &Path) -> Option<(u64, libc::c_long)> {
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() {
        return None;
    }
    let mut generation: libc::c_long = 0;
    // SAFETY: the descriptor is open and `generation` is a valid place for the kernel to write a long.
    unsafe { fs_ioc_getversion(f.as_raw_fd(), &mut generation) }.ok()?;
    Some((m.ino(), generation))
}

nix::ioctl_read!(fs_ioc_getflags, b'f', 1, libc::c_long);
nix::ioctl_write_ptr!(fs_ioc_setflags, b'f', 2, libc::c_long);
/// `FS_NOCOW_FL` (`chattr +C`): btrfs clones only between files that agree on it.
const FS_NOCOW_FL: libc::c_long = 0x0080_0000;

/// Share `src`'s extents with `dst` (new and empty) with `FICLONE`: no data is copied. btrfs refuses to clone between
/// a no-copy-on-write file and an ordinary one, and a new file takes that flag from its directory (systemd marks its
/// journal directory `chattr +C`, and takes the flag off the journals it archives), so `dst` is first given
/// `src`'s no-copy-on-write flag, as it must be while a file is empty.
fn clone_file(src: &File, dst: &File) -> Result<()> {
    let nocow = |f: &File| -> Option<libc::c_long> {
        let mut flags: libc::c_long = 0;
        // SAFETY: the descriptor is open and `flags` outlives the call (the kernel writes an int into it).
        unsafe { fs_ioc_getflags(f.as_raw_fd(), &mut flags) }.ok().map(|_| flags)
    };
    if let (Some(want), Some(has)) = (nocow(src), nocow(dst)) {
        if (want ^ has) & FS_NOCOW_FL != 0 {
            let set = (has & !FS_NOCOW_FL) | (want & FS_NOCOW_FL);
            // SAFETY: as above; the kernel reads an int from `set`.
            unsafe { fs_ioc_setflags(dst.as_raw_fd(), &set) }
                .context("giving the copy the no-copy-on-write flag (chattr +C) of the original")?;
        }
    }
    // SAFETY: both descriptors are open for the duration of the call.
    unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) }
        .context("FICLONE (both trees must be on one btrfs filesystem)")?;
    Ok(())
}

/// Give `to` the owner, mode and xattrs of `from` (whose metadata is `m`); times are set apart.
fn copy_attributes(from: &Path, to: &Path, m: &Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(to, Some(m.uid()), Some(m.gid())).with_context(|| format!("chown {}", to.escaped()))?;
    let symlink = m.file_type().is_symlink();
    if !symlink {
        fs::set_permissions(to, fs::Permissions::from_mode(m.mode() & 0o7777))
            .with_context(|| format!("chmod {}", to.escaped()))?;
    }
    let names = |p: &Path| -> Result<Vec<std::ffi::OsString>> {
        match xattr::list(p) {
            Ok(l) => Ok(l.collect()),
            Err(e) if symlink && e.raw_os_error() == Some(libc::EPERM) => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("listing the xattrs of {}", p.escaped())),
        }
    };
    let wanted = names(from)?;
    for name in names(to)? {
        if !wanted.contains(&name) {
            xattr::remove(to, &name).with_context(|| format!("removing an xattr of {}", to.escaped()))?;
        }
    }
    for name in &wanted {
        if let Some(value) =
            xattr::get(from, name).with_context(|| format!("reading an xattr of {}", from.escaped()))?
        {
            xattr::set(to, name, &value).with_context(|| format!("setting an xattr of {}", to.escaped()))?;
        }
    }
    Ok(())
}

fn set_times(path: &Path, m: &Metadata) -> Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let atime = TimeSpec::new(m.atime(), m.atime_nsec());
    let mtime = TimeSpec::new(m.mtime(), m.mtime_nsec());
    utimensat(None, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .with_context(|| format!("setting the times of {}", path.escaped()))
}
