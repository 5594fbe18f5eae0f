//! One transaction per root at a time: an exclusive `flock` on the state area's lock file, taken without waiting.
//! The holder writes its pid into the file so a second caller can name it. The kernel drops the lock when the
//! holder dies, so a lock left by a killed process never blocks anyone.

use crate::pathbytes::PathText;
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// Another process holds a lock snapinst needs (the root's, or dpkg's): nothing was changed, and trying again
/// later may work (exit 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Busy(pub String);

/// Held while it lives.
pub(crate) struct RootLock {
    _lock: Flock<File>,
}

impl RootLock {
    pub fn acquire(path: &Path, root: &Path) -> Result<RootLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.escaped()))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Busy(format!(
                    "another snapinst transaction on {} is running (pid {}); wait for it to finish",
                    root.escaped(),
                    if holder.is_empty() { "unknown" } else { holder }
                ))
                .into());
            }
        };
        file.set_len(0).context("clearing the lock file")?;
        file.rewind().context("rewinding the lock file")?;
        write!(file, "{}", std::process::id()).context("writing our pid into the lock file")?;
        Ok(RootLock { _lock: file })
    }
}

/// The pid holding the lock, if any process holds it.
pub(crate) fn holder(path: &Path) -> Option<u32> {
    let file = File::open(path).ok()?;
    let mut file = match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => return None,
        Err((file, _)) => file,
    };
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}
