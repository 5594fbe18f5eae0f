//! Small durable-filesystem helpers shared by the journal, the state area and the backends: atomic file
//! replacement (temp + fsync + rename + fsync of the directory), directory fsync, existence checks that do not
//! follow symlinks, and free space. Nothing here decides policy.

use crate::pathbytes::PathText;
use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replace `path` with `bytes` atomically and durably: a crash leaves the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a file to write has a parent directory")?;
    let name = path.file_name().context("a file to write has a name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.escaped()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", tmp.escaped()))?;
    f.sync_all().with_context(|| format!("syncing {}", tmp.escaped()))?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.escaped(), path.escaped()))?;
    sync_dir(dir)
}

pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).context("serialising a record")?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.escaped()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.escaped()))
}

/// fsync a directory, making the renames and creations inside it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", dir.escaped()))
}

/// Create a directory (and parents) and make its entry durable.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.escaped()))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Whether a path exists, without following a final symlink.
pub(crate) fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Remove a file, symlink or whole directory tree, if it exists.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.escaped())),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).with_context(|| format!("removing {}", path.escaped())),
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.escaped())),
    }
}

/// Bytes available to root on the filesystem holding `path`.
pub(crate) fn free_bytes(path: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).with_context(|| format!("reading free space of {}", path.escaped()))?;
    Ok(st.blocks_free() as u64 * st.fragment_size() as u64)
}

/// The size of the filesystem holding `path`, in bytes.
pub(crate) fn total_bytes(path: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).with_context(|| format!("reading the size of {}", path.escaped()))?;
    Ok(st.blocks() as u64 * st.fragment_size() as u64)
}

/// `syncfs` on the filesystem holding `path`.
pub(crate) fn syncfs(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.escaped()))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f))
        .with_context(|| format!("syncing the filesystem of {}", path.escaped()))
}

/// `cp -a` of the tree `from` to the new path `to`, staying on `from`'s filesystem: keeps whiteouts (character
/// devices), `trusted.overlay.*` xattrs, owners, modes and times.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .args(["-a", "-x", "--reflink=auto", "--"])
        .arg(from)
        .arg(to)
        .output()
        .context("running cp")?;
    if !out.status.success() {
        anyhow::bail!(
            "cp -a {} {} failed: {}",
            from.escaped(),
            to.escaped(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Nanoseconds since the epoch by the coarse clock, the one the kernel sets file times from.
pub(crate) fn now_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A file's change time in nanoseconds since the epoch.
pub(crate) fn ctime_ns(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.ctime() as u64 * 1_000_000_000 + m.ctime_nsec() as u64
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
