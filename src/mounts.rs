//! Mount facts and the private mount namespace. snapinst does its mounting (overlay stages, the btrfs top-level
//! view) in a mount namespace of its own, made a slave of the host's first (as systemd's `PrivateMounts=` does): a
//! mount of snapinst's can never leak into the host's namespace, not even when the process is killed, and what the
//! host mounts or unmounts while snapinst runs reaches snapinst's namespace too, so a filesystem the administrator
//! unmounts is released at once rather than kept busy by snapinst's copy of the mount. This module must never
//! mount anything in the host's namespace.

use crate::pathbytes::PathText;
use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

static ENTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The mount table of the namespace snapinst was started in, opened before it entered its own: reading it again
/// shows that namespace as it is now (what the machine has mounted), without snapinst's own mounts.
static HOST_MOUNTINFO: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// Enter a new mount namespace, a slave of the host's (once per process). Must be called before the process starts
/// any thread.
pub(crate) fn enter_private_namespace() -> Result<()> {
    if ENTERED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    let host = std::fs::File::open("/proc/self/mountinfo").context("opening /proc/self/mountinfo")?;
    let _ = HOST_MOUNTINFO.set(host);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("creating a private mount namespace")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .context("making the mount namespace a slave of the host's")
}

/// The kernel's id of the mount that holds `path` (statx `STATX_MNT_ID`), without following a final symlink.
pub(crate) fn mount_id(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).context("path contains a NUL byte")?;
    // SAFETY: `statx` writes into the zeroed buffer we own; `c` is a valid NUL-terminated string.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), libc::AT_SYMLINK_NOFOLLOW, libc::STATX_MNT_ID, &mut buf) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statx {}", path.escaped()));
    }
    if buf.stx_mask & libc::STATX_MNT_ID == 0 {
        bail!("the kernel did not report the mount id of {}", path.escaped());
    }
    Ok(buf.stx_mnt_id)
}

/// Whether `path` is the top of a mount.
pub(crate) fn is_mount_point(path: &Path) -> Result<bool> {
    let parent = path.parent().unwrap_or(path);
    if parent == path {
        return Ok(true);
    }
    Ok(mount_id(path)? != mount_id(parent)?)
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub(crate) struct MountInfo {
    pub id: u64,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    /// Mounted read-only (the per-mount `ro` flag).
    pub read_only: bool,
    /// The filesystem's own options (`fmask=0077,codepage=437,...` for vfat), as a mount of the same kind needs them.
    pub super_options: String,
}

/// The mountinfo entry of the mount that holds `path`.
pub(crate) fn mount_of(path: &Path) -> Result<MountInfo> {
    let id = mount_id(path)?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    text.lines()
        .filter_map(parse_mountinfo_line)
        .find(|m| m.id == id)
        .with_context(|| format!("finding the mount of {} in /proc/self/mountinfo", path.escaped()))
}

/// Every mount of this namespace, in the kernel's order (a mount comes after the one it is mounted on).
pub(crate) fn all() -> Result<Vec<MountInfo>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// Every mount of the machine (the namespace snapinst was started in), as it is now.
pub(crate) fn host_all() -> Result<Vec<MountInfo>> {
    let Some(file) = HOST_MOUNTINFO.get() else { return all() };
    let mut text = String::new();
    let mut reader = file;
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(0)).context("rewinding the host's mountinfo")?;
    std::io::Read::read_to_string(&mut reader, &mut text).context("reading the host's mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// The mount points at or below `dir` in this namespace.
pub(crate) fn mounted_below(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(all()?.into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(dir)).collect())
}

/// Unmount everything mounted at or below `dir`, deepest first.
pub(crate) fn unmount_below(dir: &Path) -> Result<()> {
    let mut points = mounted_below(dir)?;
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        // A path mounted over twice shows twice; after the first unmount the second may already be gone.
        match nix::mount::umount2(&p, nix::mount::MntFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", p.escaped())),
        }
    }
    Ok(())
}

fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let _parent = fields.next()?;
    let _devno = fields.next()?;
    let _fs_root = fields.next()?;
    let mount_point = unescape(fields.next()?);
    let read_only = fields.next()?.split(',').any(|o| o == "ro");
    let rest: Vec<&str> = fields.collect();
    let sep = rest.iter().position(|f| *f == "-")?;
    let fstype = rest.get(sep + 1)?.to_string();
    let source = unescape(rest.get(sep + 2)?).to_string_lossy().into_owned();
    let super_options = rest.get(sep + 3).map_or(String::new(), |o| o.to_string());
    Some(MountInfo { id, mount_point, fstype, source: source.to_string(), read_only, super_options })
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse() {
        let m = parse_mountinfo_line(
            "36 35 0:32 /root /mnt/my\\040root rw,relatime shared:1 - btrfs /dev/loop0 rw,subvolid=256",
        )
        .unwrap();
        assert_eq!(m.id, 36);
        assert_eq!(m.mount_point, PathBuf::from("/mnt/my root"));
        assert_eq!(m.fstype, "btrfs");
        assert_eq!(m.source, "/dev/loop0");
        assert!(!m.read_only);
    }
}
