//! Checked replacement of an entry in a tree the running system is writing to. A carry into such a tree (what a
//! directory target's running system wrote to the replaced tree in the commit's last instant, carried into the new
//! tree right after the commit) decides from what it saw that an entry is its to replace; between that look and the
//! replacement the running system may write the entry again. So the replacement is made by an exchange
//! (`renameat2(RENAME_EXCHANGE)`, or `RENAME_NOREPLACE` where nothing was), and the entry it moved out is compared
//! with what was seen: unchanged, it is dropped; changed, the exchange is undone and the caller is told, so that
//! the running system's entry stays and nothing it wrote is lost. An entry that a replacement would take from
//! under the running system is never replaced: a file some process holds open for writing (a logger that keeps
//! its log open would go on writing to the dropped file), or a directory with anything in it (what is below it
//! cannot be checked entry by entry in one step).
//!
//! A regular file is held under a read lease from the check to the drop. No process holds it open for writing
//! (the kernel refuses the lease then), and none can open it for writing unseen: the kernel holds the opener back
//! and marks the lease broken. So the file is checked before the exchange, and it cannot change between that check
//! and its drop. A process that found the file by its path just before the exchange and opens it just after (a
//! straggler) shows itself in the moment waited after the exchange. The new entry, held under a lease of its own,
//! is then moved out again when nobody opened it (the straggler writes to the file back in place, and the caller
//! is told `Changed`); when it was opened too, it stays, and the file moved out is left to the caller
//! (`Swap::Straggler`) with what the straggler writes, to keep as a conflict. A straggler that shows itself after
//! that moment, in the instant of the drop, is an error naming the file, never passed over.

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
    /// `target` holds the new entry, but a process was opening the file moved out for writing as it was replaced:
    /// that file is at this path (a name of the caller's), receiving what the process writes, for the caller to keep.
    Straggler(std::path::PathBuf),
}

/// How many times `replace` asks for a lease on a file before it counts the file as in use.
const IN_USE_TRIES: usize = 10;

/// How long an exchanged-out file stays under its lease before it is dropped: time for a process that found it by
/// its path before the exchange to reach its open and show itself.
const GRACE: std::time::Duration = std::time::Duration::from_millis(2);

/// A read lease on a file: while it is held, nobody can open the file for writing unseen (the kernel holds the
/// opener back until the lease is given up, and `broken` says so). Given up when dropped.
struct Lease(std::fs::File);

impl Lease {
    /// A lease on the regular file at `target`; None when a process holds it open for writing (the kernel refuses a
    /// read lease then) or it cannot be opened.
    fn take(target: &Path) -> Option<Lease> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        quiet_lease_breaks();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(target)
            .ok()?;
        // SAFETY: F_SETLEASE on a descriptor we own, with an integer argument.
        (unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) } == 0).then_some(Lease(f))
    }

    /// Whether a process has begun to open the file for writing since the lease was taken.
    fn broken(&self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETLEASE on a descriptor we own.
        unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_GETLEASE) != libc::F_RDLCK }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `take`; closing the descriptor would give the lease up too.
        unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
}

/// A broken lease signals its holder (SIGIO, which would end snapinst): catch it and do nothing, `broken` asks.
/// A handler, not SIG_IGN, so that the programs snapinst runs do not inherit an ignored signal.
fn quiet_lease_breaks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handler does nothing, which is async-signal-safe.
        let _ = unsafe { signal_hook::low_level::register(signal_hook::consts::SIGIO, || {}) };
    });
}

/// An entry held for `replace`: a regular file under a lease (from then on it cannot change unseen), any other
/// entry as it is.
struct Held(Option<Lease>);

impl Held {
    /// Whether a process began to open the held file for writing since it was held.
    fn broken(&self) -> bool {
        self.0.as_ref().is_some_and(Lease::broken)
    }
}

/// Hold the entry at `target`, seen as `seen` (None: absent), for `replace`. None when it is in use: a regular file
/// a process holds open for writing (asked a few times: a process that opens the file by its path for each write
/// holds it for microseconds), a directory that is not empty, or an entry whose state cannot be told.
fn hold(target: &Path, seen: &Option<Metadata>) -> Option<Held> {
    let Some(seen) = seen else { return Some(Held(None)) };
    if seen.is_dir() {
        let empty = std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_none());
        return empty.then_some(Held(None));
    }
    if !seen.is_file() {
        return Some(Held(None));
    }
    for i in 0..IN_USE_TRIES {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(lease) = Lease::take(target) {
            return Some(Held(Some(lease)));
        }
    }
    None
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

/// After the exchange moved the entry seen as `seen` out to `out`: whether it may be dropped (`Done`), is not what
/// was seen (`Changed`: an entry not under a lease, renamed over since the look), or a process was opening it for
/// writing meanwhile (a held file, after a moment's grace). Such a straggler gets the file back in place when the
/// new entry can be moved out again without taking anything from anyone (`Changed`: the new entry is a file under
/// `incoming`'s lease that nobody opened, or nothing was put in place), else it is left to the caller
/// (`Straggler`).
fn moved_out(out: &Path, seen: &Option<Metadata>, held: &Held, incoming: &Option<Incoming>) -> Result<Swap> {
    if held.0.is_some() {
        std::thread::sleep(GRACE);
        if held.broken() {
            let back = match incoming {
                None => true,
                Some(Incoming::Leased(lease)) => !lease.broken(),
                Some(Incoming::Other) => false,
            };
            return Ok(if back { Swap::Changed } else { Swap::Straggler(out.to_path_buf()) });
        }
    }
    Ok(if unchanged(seen, &lstat(out)?) { Swap::Done } else { Swap::Changed })
}

/// The new entry `replace` puts in place of a held file: a regular file under a lease of its own (so that whether
/// anybody opened it once in place can be told), or any other entry.
enum Incoming {
    Leased(Lease),
    Other,
}

/// Drop the entry moved out to `out`, held by `held`; a process that began opening it for writing in the instant
/// between the last look and the drop is an error: what it writes goes to the dropped file.
fn drop_moved_out(target: &Path, out: &Path, held: Held) -> Result<()> {
    crate::fsutil::remove_any(out)?;
    if held.broken() {
        bail!(
            "a process opened {} for writing in the instant snapinst replaced it: what it writes now goes to the \
             replaced version, which is gone",
            target.escaped()
        );
    }
    Ok(())
}

/// Put the entry at `new` in place of `target`, which was `seen` when the caller looked (None: absent). With `new`
/// None, remove `target`, setting it aside at `aside` first. A file is held under a lease and checked against
/// `seen` before it is moved (while held it cannot change unseen); any other entry after it is moved, and put back
/// on a difference (`Swap::Changed`).
pub(super) fn replace(target: &Path, new: Option<&Path>, aside: &Path, seen: &Option<Metadata>) -> Result<Swap> {
    let Some(held) = hold(target, seen) else { return Ok(Swap::InUse) };
    let named = |what: &str| format!("{what} {}", target.escaped());
    if held.0.is_some() && (held.broken() || !unchanged(seen, &lstat(target)?)) {
        return Ok(Swap::Changed);
    }
    let incoming = match new {
        Some(new) if held.0.is_some() => Some(Lease::take(new).map_or(Incoming::Other, Incoming::Leased)),
        _ => None,
    };
    let out = match (new, seen) {
        (None, None) => return Ok(Swap::Done),
        (Some(new), None) => {
            return match rename(new, target, RenameFlags::RENAME_NOREPLACE) {
                Ok(()) => Ok(Swap::Done),
                Err(Errno::EEXIST) => Ok(Swap::Changed),
                Err(e) => Err(e).with_context(|| named("putting in place")),
            };
        }
        (Some(new), Some(_)) => match rename(new, target, RenameFlags::RENAME_EXCHANGE) {
            // `new` now names the entry moved out.
            Ok(()) => new,
            Err(Errno::ENOENT) => return Ok(Swap::Changed),
            Err(e) => return Err(e).with_context(|| named("exchanging in")),
        },
        (None, Some(_)) => match rename(target, aside, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => aside,
            Err(Errno::ENOENT) => return Ok(Swap::Done),
            Err(e) => return Err(e).with_context(|| named("setting aside")),
        },
    };
    let swap = moved_out(out, seen, &held, &incoming)?;
    match swap {
        Swap::Done => drop_moved_out(target, out, held)?,
        Swap::Changed if new.is_some() => rename(out, target, RenameFlags::RENAME_EXCHANGE)
            .with_context(|| named("putting back the running system's"))?,
        Swap::Changed => rename(out, target, RenameFlags::RENAME_NOREPLACE).map_err(|e| {
            anyhow::anyhow!(
                "{} changed while snapinst removed it, and could not be put back ({e}); the running system's version is at {}",
                target.escaped(),
                out.escaped()
            )
        })?,
        Swap::InUse | Swap::Straggler(_) => {}
    }
    Ok(swap)
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
    fn an_open_for_writing_under_the_lease_is_held_back_and_seen() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::write(&t, "log\n").unwrap();
        let lease = Lease::take(&t).expect("nobody writes it");
        assert!(!lease.broken());
        let path = t.clone();
        let opener = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(b"more\n").unwrap();
        });
        let began = std::time::Instant::now();
        while !lease.broken() {
            assert!(began.elapsed().as_secs() < 10, "the opener never showed itself");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(fs::read_to_string(&t).unwrap(), "log\n", "the opener waits for the lease");
        drop(lease);
        opener.join().unwrap();
        assert_eq!(fs::read_to_string(&t).unwrap(), "log\nmore\n");
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
