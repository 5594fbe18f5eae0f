//! Checked replacement of an entry in a tree the running system is writing to. A carry into such a tree (what a
//! directory target's running system wrote to the replaced tree in the commit's last instant, carried into the new
//! tree right after the commit) decides from what it saw that an entry is its to replace; between that look and the
//! replacement the running system may write the entry again. So the replacement is made by an exchange
//! (`renameat2(RENAME_EXCHANGE)`, or `RENAME_NOREPLACE` where nothing was), and the entry it moved out is compared
//! with what was seen: unchanged, it is dropped; changed, the exchange is undone and the caller is told, so that
//! the running system's entry stays and nothing it wrote is lost. An entry that a replacement would take from
//! under the running system is never replaced: a file some process holds open for writing (a logger that keeps
//! its log open would go on writing to the dropped file), or a directory with anything in it (what is below it
//! cannot be checked entry by entry in one step). What is left: a process that opens the file by its path in the
//! microseconds between the check and the drop writes to the dropped file.

use crate::pathbytes::PathText;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a checked replacement did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Swap {
    /// `target` now holds the new entry (or is gone); the old one was dropped.
    Done,
    /// `target` changed since it was seen: it is as the running system left it, and the new entry (if any) is
    /// still at its own name, for the caller to keep or remove.
    Changed,
    /// `target` is in use (a file open for writing, a directory that is not empty): left alone, as `Changed`.
    InUse,
}

/// How many times `replace` asks whether an entry is in use before it leaves it alone.
const IN_USE_TRIES: usize = 10;

/// Whether replacing the entry at `target` (seen as `seen`) would take it from under the running system: a regular
/// file that a process holds open for writing (the kernel refuses a read lease then), or a directory that is not
/// empty. An entry whose state cannot be told counts as in use.
fn in_use(target: &Path, seen: &Metadata) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if seen.is_dir() {
        return std::fs::read_dir(target).map_or(true, |mut d| d.next().is_some());
    }
    if !seen.is_file() {
        return false;
    }
    let Ok(f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(target)
    else {
        return true;
    };
    // SAFETY: F_SETLEASE on a descriptor we own, with an integer argument.
    let leased = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) } == 0;
    if leased {
        // SAFETY: as above; dropping the lease at once (it was only a question).
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
    !leased
}

/// Whether `now` is still the entry `seen` was: the same inode, type, mode, owner, size, number of names and
/// modification time. (Not the change time: the exchange itself sets it.)
fn unchanged(seen: &Option<Metadata>, now: &Option<Metadata>) -> bool {
    match (seen, now) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            (a.ino(), a.mode(), a.uid(), a.gid(), a.size(), a.nlink(), a.mtime(), a.mtime_nsec())
                == (b.ino(), b.mode(), b.uid(), b.gid(), b.size(), b.nlink(), b.mtime(), b.mtime_nsec())
        }
        _ => false,
    }
}

fn lstat(path: &Path) -> Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.escaped())),
    }
}

fn rename(from: &Path, to: &Path, flags: RenameFlags) -> nix::Result<()> {
    renameat2(None, from, None, to, flags)
}

/// Put the entry at `new` in place of `target`, which was `seen` when the caller looked (None: absent). With `new`
/// None, remove `target`, setting it aside at `aside` first. The entry moved out is checked against `seen`
/// afterwards; on a difference everything is put back and `Swap::Changed` returned.
pub(super) fn replace(target: &Path, new: Option<&Path>, aside: &Path, seen: &Option<Metadata>) -> Result<Swap> {
    let named = |what: &str| format!("{what} {}", target.escaped());
    if let Some(m) = seen {
        // A process that opens the file by its path for each write holds it for microseconds: ask a few times.
        let tries = if m.is_file() { IN_USE_TRIES } else { 1 };
        let busy = (0..tries).all(|i| {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            in_use(target, m)
        });
        if busy {
            return Ok(Swap::InUse);
        }
    }
    match (new, seen) {
        (Some(new), None) => match rename(new, target, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => Ok(Swap::Done),
            Err(Errno::EEXIST) => Ok(Swap::Changed),
            Err(e) => Err(e).with_context(|| named("putting in place")),
        },
        (Some(new), Some(_)) => {
            match rename(new, target, RenameFlags::RENAME_EXCHANGE) {
                Ok(()) => {}
                Err(Errno::ENOENT) => return Ok(Swap::Changed),
                Err(e) => return Err(e).with_context(|| named("exchanging in")),
            }
            // `new` now names the entry moved out.
            if unchanged(seen, &lstat(new)?) {
                crate::fsutil::remove_any(new)?;
                return Ok(Swap::Done);
            }
            rename(new, target, RenameFlags::RENAME_EXCHANGE)
                .with_context(|| named("putting back the running system's"))?;
            Ok(Swap::Changed)
        }
        (None, None) => Ok(Swap::Done),
        (None, Some(_)) => {
            match rename(target, aside, RenameFlags::RENAME_NOREPLACE) {
                Ok(()) => {}
                Err(Errno::ENOENT) => return Ok(Swap::Done),
                Err(e) => return Err(e).with_context(|| named("setting aside")),
            }
            if unchanged(seen, &lstat(aside)?) {
                crate::fsutil::remove_any(aside)?;
                return Ok(Swap::Done);
            }
            match rename(aside, target, RenameFlags::RENAME_NOREPLACE) {
                Ok(()) => Ok(Swap::Changed),
                Err(e) => bail!(
                    "{} changed while snapinst removed it, and could not be put back ({e}); the running system's version is at {}",
                    target.escaped(),
                    aside.escaped()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn meta(p: &Path) -> Option<Metadata> {
        lstat(p).unwrap()
    }

    #[test]
    fn replaces_an_unchanged_entry_and_drops_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        let (t, n, a) = (d.path().join("t"), d.path().join("n"), d.path().join("a"));
        fs::write(&t, "old").unwrap();
        let seen = meta(&t);
        fs::write(&n, "new").unwrap();
        assert_eq!(replace(&t, Some(&n), &a, &seen).unwrap(), Swap::Done);
        assert_eq!(fs::read_to_string(&t).unwrap(), "new");
        assert!(!n.exists() && !a.exists());
    }

    #[test]
    fn a_write_after_the_look_keeps_the_running_systems_entry() {
        let d = tempfile::tempdir().unwrap();
        let (t, n, a) = (d.path().join("t"), d.path().join("n"), d.path().join("a"));
        fs::write(&t, "old").unwrap();
        let seen = meta(&t);
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&t, "old and more").unwrap();
        fs::write(&n, "new").unwrap();
        assert_eq!(replace(&t, Some(&n), &a, &seen).unwrap(), Swap::Changed);
        assert_eq!(fs::read_to_string(&t).unwrap(), "old and more");
        assert_eq!(fs::read_to_string(&n).unwrap(), "new");
    }

    #[test]
    fn an_entry_made_after_the_look_is_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        let (t, n, a) = (d.path().join("t"), d.path().join("n"), d.path().join("a"));
        fs::write(&t, "theirs").unwrap();
        fs::write(&n, "new").unwrap();
        assert_eq!(replace(&t, Some(&n), &a, &None).unwrap(), Swap::Changed);
        assert_eq!(fs::read_to_string(&t).unwrap(), "theirs");
    }

    #[test]
    fn removal_checks_too() {
        let d = tempfile::tempdir().unwrap();
        let (t, a) = (d.path().join("t"), d.path().join("a"));
        fs::write(&t, "old").unwrap();
        let seen = meta(&t);
        assert_eq!(replace(&t, None, &a, &seen).unwrap(), Swap::Done);
        assert!(!t.exists() && !a.exists());
        fs::create_dir(&t).unwrap();
        let seen = meta(&t);
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(t.join("inside"), "x").unwrap();
        assert_ne!(replace(&t, None, &a, &seen).unwrap(), Swap::Done);
        assert!(t.join("inside").exists() && !a.exists());
    }

    #[test]
    fn a_file_open_for_writing_or_a_full_directory_is_in_use() {
        let d = tempfile::tempdir().unwrap();
        let (t, n, a) = (d.path().join("t"), d.path().join("n"), d.path().join("a"));
        fs::write(&t, "log\n").unwrap();
        let held = fs::OpenOptions::new().append(true).open(&t).unwrap();
        fs::write(&n, "new").unwrap();
        assert_eq!(replace(&t, Some(&n), &a, &meta(&t)).unwrap(), Swap::InUse);
        assert_eq!(fs::read_to_string(&t).unwrap(), "log\n");
        drop(held);
        let reader = fs::File::open(&t).unwrap();
        assert_eq!(replace(&t, Some(&n), &a, &meta(&t)).unwrap(), Swap::Done, "a reader is no writer");
        drop(reader);
        let dir = d.path().join("dir");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("x"), "x").unwrap();
        assert_eq!(replace(&dir, None, &a, &meta(&dir)).unwrap(), Swap::InUse);
        assert!(dir.join("x").exists());
    }
}
