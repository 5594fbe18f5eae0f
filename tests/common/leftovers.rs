//! What a finished transaction must not leave behind: mounts, stages, held locks, processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
    pub line: String,
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of this process's namespace.
pub fn mounts() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    let mut v = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < sep + 4 || fields.len() < 5 {
            continue;
        }
        v.push(MountInfo {
            mount_point: PathBuf::from(unescape_mountinfo(fields[4])),
            fstype: fields[sep + 1].to_string(),
            source: unescape_mountinfo(fields[sep + 2]),
            super_opts: unescape_mountinfo(fields[sep + 3]),
            line: line.to_string(),
        });
    }
    v
}

/// Mounts below the image other than the image itself and the filesystems the test mounted inside
/// the root, overlay mounts that use its paths, and loop devices whose backing file is on it (a
/// scratch layer left attached).
pub fn leaked_mounts(img: &LoopImage) -> Vec<String> {
    let mnt = img.mountpoint();
    // The image's mount, and the root when it is mounted elsewhere (a subvolume mounted on its own).
    let root = img.root();
    let places: Vec<&Path> = if root.starts_with(mnt) { vec![mnt] } else { vec![mnt, root.as_path()] };
    let ours: Vec<&Path> = img.mounted_inside().iter().map(|s| s.mountpoint()).collect();
    let mut leaks: Vec<String> = mounts()
        .into_iter()
        .filter(|m| {
            places.iter().any(|p| {
                (m.mount_point != *p && m.mount_point.starts_with(p) && !ours.contains(&m.mount_point.as_path()))
                    || (m.fstype == "overlay" && m.super_opts.contains(&*p.to_string_lossy()))
            })
        })
        .map(|m| m.line)
        .collect();
    for e in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else { continue };
        if places.iter().any(|p| Path::new(backing.trim()).starts_with(p)) {
            leaks.push(format!("loop device {} still backed by {}", e.file_name().to_string_lossy(), backing.trim()));
        }
    }
    leaks
}

/// Paths in the state dir that look like an unfinished transaction: a non-empty directory (or
/// a file) named `stage*` or `upper`. An empty one is a place for the next transaction.
fn stage_leftovers(state: &Path) -> Vec<String> {
    let mut found = Vec::new();
    fn rec(p: &Path, depth: usize, found: &mut Vec<String>) {
        if depth > 3 {
            return;
        }
        let Ok(rd) = fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let container = name.starts_with("stage") || name == "upper";
            if container && !is_dir {
                found.push(path.display().to_string());
            } else if container {
                let children: Vec<String> = fs::read_dir(&path)
                    .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                if !children.is_empty() {
                    found.push(format!("{} contains {children:?}", path.display()));
                }
            } else if is_dir {
                rec(&path, depth + 1, found);
            }
        }
    }
    rec(state, 0, &mut found);
    found
}

/// Who holds a lock on `p` (flock or POSIX/OFD), if anyone.
pub fn lock_holder(p: &Path) -> Option<String> {
    use std::os::fd::AsRawFd;
    let f = fs::OpenOptions::new().read(true).open(p).ok()?;
    let fd = f.as_raw_fd();
    // SAFETY: fd is a valid open descriptor owned by `f` for the duration of these calls.
    let r = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Some(format!("flock held on {}", p.display()));
    }
    // SAFETY: as above; we release the lock we just took.
    unsafe { libc::flock(fd, libc::LOCK_UN) };
    if p.is_file() {
        if let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(p) {
            // SAFETY: zeroed flock struct is a valid initial value; fd is open.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as _;
            fl.l_whence = libc::SEEK_SET as _;
            let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
            if r == 0 && fl.l_type as i32 != libc::F_UNLCK {
                return Some(format!("POSIX lock held on {} by pid {}", p.display(), fl.l_pid));
            }
        }
    }
    None
}

/// Nothing of a transaction is left: no mount, no stage, no non-empty upper layer, no held
/// lock, no stage subvolume, and `status` reports nothing in progress.
#[track_caller]
pub fn assert_no_leftovers(img: &LoopImage) {
    let mut problems = Vec::new();
    for m in leaked_mounts(img) {
        problems.push(format!("mount left: {m}"));
    }
    let state = img.state_dir();
    for s in stage_leftovers(&state) {
        problems.push(format!("stage left: {s}"));
    }
    for sub in img.mounted_inside() {
        for s in stage_leftovers(&sub.mountpoint().join(".snapinst")) {
            problems.push(format!("stage of a part left: {s}"));
        }
    }
    let mut lockish = vec![state.clone(), img.root()];
    fn collect_locks(p: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if depth > 2 {
            return;
        }
        let Ok(rd) = fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let ft = e.file_type().ok();
            let name = e.file_name().to_string_lossy().to_lowercase();
            if ft.map(|t| t.is_file()).unwrap_or(false) && name.contains("lock") {
                out.push(e.path());
            } else if ft.map(|t| t.is_dir()).unwrap_or(false) {
                collect_locks(&e.path(), depth + 1, out);
            }
        }
    }
    collect_locks(&state, 0, &mut lockish);
    for p in lockish {
        if p.exists() {
            if let Some(h) = lock_holder(&p) {
                problems.push(format!("lock left: {h}"));
            }
        }
    }
    if img.kind() == FsKind::Btrfs {
        let out = run_ok(Command::new(require_tool("btrfs")).args(["subvolume", "list"]).arg(img.mountpoint()));
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if l.to_lowercase().contains("stage") {
                problems.push(format!("stage subvolume left: {l}"));
            }
        }
    }
    let st = status_json(&img.root());
    if !st["in_progress"].is_null() {
        problems.push(format!("status reports a transaction in progress: {}", st["in_progress"]));
    }
    if !st["recovery_failed"].is_null() {
        problems.push(format!("status reports recovery_failed: {}", st["recovery_failed"]));
    }
    assert!(problems.is_empty(), "transaction leftovers:\n  {}", problems.join("\n  "));
}

/// The names in a directory (sorted), e.g. to prove nothing appeared next to the root.
pub fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fresh image for the backend with the standard tree in its root.
pub fn populated(backend: Backend) -> LoopImage {
    populated_in(backend, Layout::Plain)
}

/// A fresh image laid out as `layout` with the standard tree in its root (the filesystems mounted
/// inside come after the tree, which has hard links across the root's directories).
pub fn populated_in(backend: Backend, layout: Layout) -> LoopImage {
    let base = if layout == Layout::WithMounts { Layout::Top } else { layout };
    let img = backend.image_in(base);
    populate_tree(&img.root(), TREE_FILES);
    match (layout, backend) {
        (Layout::WithMounts, Backend::Btrfs) => img.mounted_subvolume().with_mounts(),
        (Layout::WithMounts, _) => img.with_mounts(),
        _ => img,
    }
}

/// Canonical string form of a path, for comparing with paths the binary prints.
pub fn canon(p: &Path) -> String {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).to_string_lossy().into_owned()
}

/// Every live descendant of `pid` (children, grandchildren, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
            // The command name is in parentheses and may contain spaces: parse after the last ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.len() > 1 && fields[0] != "Z" {
                if let Ok(ppid) = fields[1].parse::<u32>() {
                    parent_of.push((p, ppid));
                }
            }
        }
    }
    let mut found = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &parent_of {
            if *parent == p && !found.contains(child) {
                found.push(*child);
                frontier.push(*child);
            }
        }
    }
    found
}

/// The pids of `pids` still alive (not zombies), with their command lines.
pub fn still_alive(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .filter_map(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string))?;
            if state == "Z" {
                return None;
            }
            let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            Some(format!("pid {p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect()
}

/// A root of `backend` with an ext4 `/boot`, an xfs `/srv/www` and a btrfs `/home` mounted inside it
/// ([`Layout::WithMounts`]), and the hello plan, writing into both as well, prepared in it.
pub struct WithParts {
    pub img: LoopImage,
    pub root: PathBuf,
    pub hello: Hello,
    /// The root's manifest before any transaction, as the next boot sees it.
    pub before: Manifest,
    /// The host directory of the plan's host step (bind it, as `host: _host`, for as long as the plan runs).
    pub host: tempfile::TempDir,
}

impl WithParts {
    pub fn new(backend: Backend) -> WithParts {
        let img = populated_in(backend, Layout::WithMounts);
        let root = img.root();
        let host = host_tempdir();
        let hello = Hello::new(backend, "", host.path()).writing_into(&["/boot", "/home", "/boot/efi", "/srv/www"]);
        hello.prepare(&root);
        let before = img.booted_manifest();
        WithParts { img, root, hello, before, host }
    }
}
