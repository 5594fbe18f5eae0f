//! The root's package database belongs to snapinst while a transaction runs on it: snapinst holds dpkg's own
//! locks of the root (`var/lib/dpkg/lock-frontend`, then `lock`, the order apt and dpkg take them), so a live
//! `apt-get` or `dpkg` on that root waits or fails with its own message naming snapinst, and never changes the
//! database that the transaction's stage was taken from. A root without `var/lib/dpkg` has nothing to lock.
//!
//! dpkg's locks are POSIX record locks, which a process loses when it closes *any* descriptor of the file; so a
//! small child process of snapinst (`snapinst hold-dpkg-locks ROOT`) holds them, and nothing snapinst itself
//! reads can drop them. The child lives until snapinst closes its stdin or dies.

use crate::pathbytes::PathText;
use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Held while it lives.
pub(crate) struct DpkgLocks {
    holder: Option<Child>,
}

impl DpkgLocks {
    /// Take the root's dpkg locks without waiting; refuse, naming the holder, when a package manager holds them.
    pub fn acquire(root: &Path) -> Result<DpkgLocks> {
        if !root.join("var/lib/dpkg").is_dir() {
            return Ok(DpkgLocks { holder: None });
        }
        // By its own name, so that apt and dpkg name the holder "snapinst" (its name is what they show).
        let exe = std::env::current_exe().ok().filter(|p| p.exists()).unwrap_or_else(|| "/proc/self/exe".into());
        let mut child = Command::new(exe)
            .arg("hold-dpkg-locks")
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the process that holds dpkg's locks")?;
        let mut answer = String::new();
        let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut answer);
        if read.is_err() || answer.trim() != "held" {
            let _ = child.kill();
            let _ = child.wait();
            let answer = answer.trim();
            if let Some(why) = answer.strip_prefix("busy: ") {
                return Err(crate::lock::Busy(why.to_string()).into());
            }
            let why = answer.strip_prefix("refused: ").unwrap_or("the lock holder ended without a word");
            bail!("{why}");
        }
        Ok(DpkgLocks { holder: Some(child) })
    }
}

impl Drop for DpkgLocks {
    fn drop(&mut self) {
        if let Some(mut child) = self.holder.take() {
            drop(child.stdin.take()); // end of input: the holder exits, and the kernel drops its locks
            let _ = child.wait();
        }
    }
}

/// `snapinst hold-dpkg-locks ROOT` (the child): take the locks, say `held` (or `refused: WHY`), then hold them until
/// stdin ends or the parent dies.
pub(crate) fn hold(root: &Path) -> Result<crate::commands::Outcome> {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut out = std::io::stdout();
    let files = match take(root) {
        Ok(files) => files,
        Err(e) => {
            let word = if e.is::<crate::lock::Busy>() { "busy" } else { "refused" };
            let _ = writeln!(out, "{word}: {e:#}");
            return Ok(crate::commands::Outcome::Done);
        }
    };
    writeln!(out, "held").and_then(|()| out.flush()).context("answering the parent")?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(files);
    Ok(crate::commands::Outcome::Done)
}

fn take(root: &Path) -> Result<Vec<File>> {
    let dir = root.join("var/lib/dpkg");
    let mut files = Vec::new();
    for name in ["lock-frontend", "lock"] {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(&path)
            .with_context(|| format!("opening dpkg's lock {}", path.escaped()))?;
        let mut lock = whole_file_lock();
        if fcntl(file.as_raw_fd(), FcntlArg::F_SETLK(&lock)).is_err() {
            let holder = match fcntl(file.as_raw_fd(), FcntlArg::F_GETLK(&mut lock)) {
                Ok(_) if lock.l_type != libc::F_UNLCK as libc::c_short => format!("pid {}", lock.l_pid),
                _ => "another process".to_string(),
            };
            return Err(crate::lock::Busy(format!(
                "the package manager is using {} ({holder} holds {}): wait for it to finish, then run snapinst again",
                root.escaped(),
                path.escaped()
            ))
            .into());
        }
        files.push(file);
    }
    Ok(files)
}

/// A write lock over the whole file, as dpkg takes it.
fn whole_file_lock() -> libc::flock {
    // SAFETY: `flock` is a plain C struct; all zeroes is a valid value, and every field that matters is set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}
