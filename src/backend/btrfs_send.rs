//! What changed between two read-only btrfs snapshots, found by the kernel in O(changed): the send ioctl
//! (`BTRFS_IOC_SEND` with `BTRFS_SEND_FLAG_NO_FILE_DATA`, the way snapper compares snapshots) between a parent and
//! a later snapshot, its stream read as it is written and reduced to the set of paths it names. The stream names
//! paths as a receiver would build them, so it also names temporary ("orphan") names and, for a renamed directory,
//! only the directory: a path named as the target of a rename or a link is marked `whole`, so that whoever uses
//! the set looks below it as well. Nothing here changes a file.

use crate::pathbytes::PathText;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The paths a send stream names, relative to the subvolume.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Every path a command of the stream names.
    pub paths: BTreeSet<PathBuf>,
    /// Paths made by a rename or a link: what is below a renamed directory is not named on its own.
    pub whole: BTreeSet<PathBuf>,
    /// A hard link made at a path (key), to the path it links to (value).
    pub links: BTreeMap<PathBuf, PathBuf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Whether `path` or anything below it is named.
    pub fn touches_below(&self, path: &Path) -> bool {
        self.paths.range(path.to_path_buf()..).next().is_some_and(|p| p.starts_with(path))
    }
}

const MAGIC: &[u8] = b"btrfs-stream\0";
const FLAG_NO_FILE_DATA: u64 = 0x1;

// Commands (send stream version 1).
const C_SUBVOL: u16 = 1;
const C_SNAPSHOT: u16 = 2;
const C_RENAME: u16 = 9;
const C_LINK: u16 = 10;
const C_END: u16 = 21;
const C_MAX_V1: u16 = 22;
// Attributes.
const A_PATH: u16 = 15;
const A_PATH_TO: u16 = 16;
const A_PATH_LINK: u16 = 17;

/// `struct btrfs_ioctl_send_args`.
#[repr(C)]
struct SendArgs {
    send_fd: i64,
    clone_sources_count: u64,
    clone_sources: *mut u64,
    parent_root: u64,
    flags: u64,
    version: u32,
    reserved: [u8; 28],
}

nix::ioctl_write_ptr!(btrfs_ioc_send, 0x94, 38, SendArgs);

/// The paths that differ from the read-only snapshot `parent` to the read-only snapshot `snapshot` (both on one
/// btrfs filesystem, `snapshot` taken from `parent`'s subvolume or from a snapshot of it).
pub(super) fn changes(parent: &Path, snapshot: &Path) -> Result<Changes> {
    let parent_id = libbtrfsutil::subvolume_id(parent)
        .with_context(|| format!("reading the subvolume id of {}", parent.escaped()))?;
    let dir = File::open(snapshot).with_context(|| format!("opening {}", snapshot.escaped()))?;
    let (reader, writer) = nix::unistd::pipe().context("making a pipe for the send stream")?;
    let parser = std::thread::spawn(move || parse(File::from(reader)));
    let args = SendArgs {
        send_fd: writer.as_raw_fd() as i64,
        clone_sources_count: 0,
        clone_sources: std::ptr::null_mut(),
        parent_root: parent_id,
        flags: FLAG_NO_FILE_DATA,
        version: 0,
        reserved: [0; 28],
    };
    // SAFETY: `args` is a valid `btrfs_ioctl_send_args` that outlives the call; the kernel only reads it.
    let sent = unsafe { btrfs_ioc_send(dir.as_raw_fd(), &args) };
    drop(writer);
    let parsed = parser.join().map_err(|_| anyhow::anyhow!("the send stream reader panicked"))?;
    sent.with_context(|| {
        format!("asking the kernel what changed from {} to {} (btrfs send)", parent.escaped(), snapshot.escaped())
    })?;
    parsed.with_context(|| format!("reading the send stream from {} to {}", parent.escaped(), snapshot.escaped()))
}

/// Read a version 1 send stream from `input` into the paths it names.
fn parse(mut input: impl Read) -> Result<Changes> {
    let mut header = [0u8; 17];
    input.read_exact(&mut header).context("the stream has no header")?;
    if &header[..13] != MAGIC {
        bail!("this is not a btrfs send stream");
    }
    let version = u32::from_le_bytes(header[13..17].try_into().expect("four bytes"));
    if version != 1 {
        bail!("send stream version {version}: snapinst reads version 1");
    }
    let mut out = Changes::default();
    loop {
        let mut cmd = [0u8; 10];
        match input.read_exact(&mut cmd) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => bail!("the stream ends without its end"),
            other => other.context("reading a command")?,
        }
        let len = u32::from_le_bytes(cmd[0..4].try_into().expect("four bytes")) as usize;
        let kind = u16::from_le_bytes(cmd[4..6].try_into().expect("two bytes"));
        let mut body = vec![0u8; len];
        input.read_exact(&mut body).with_context(|| format!("reading command {kind} ({len} bytes)"))?;
        if kind == C_END {
            return Ok(out);
        }
        if kind == 0 || kind > C_MAX_V1 {
            bail!("unknown command {kind} in the send stream");
        }
        record(&mut out, kind, &attributes(&body)?);
    }
}

/// The path attributes of one command's body.
fn attributes(mut body: &[u8]) -> Result<BTreeMap<u16, PathBuf>> {
    let mut out = BTreeMap::new();
    while !body.is_empty() {
        if body.len() < 4 {
            bail!("a truncated attribute in the send stream");
        }
        let kind = u16::from_le_bytes([body[0], body[1]]);
        let len = u16::from_le_bytes([body[2], body[3]]) as usize;
        let value = body.get(4..4 + len).context("an attribute longer than its command in the send stream")?;
        if matches!(kind, A_PATH | A_PATH_TO | A_PATH_LINK) {
            out.insert(kind, relative(value));
        }
        body = &body[4 + len..];
    }
    Ok(out)
}

fn relative(bytes: &[u8]) -> PathBuf {
    let p = Path::new(OsStr::from_bytes(bytes));
    p.strip_prefix("./").unwrap_or(p).to_path_buf()
}

fn record(out: &mut Changes, kind: u16, attrs: &BTreeMap<u16, PathBuf>) {
    if matches!(kind, C_SUBVOL | C_SNAPSHOT) {
        return; // names the subvolume itself, not a path in it
    }
    let path = attrs.get(&A_PATH);
    match (kind, path, attrs.get(&A_PATH_TO), attrs.get(&A_PATH_LINK)) {
        (C_RENAME, Some(from), Some(to), _) => {
            out.paths.insert(from.clone());
            out.paths.insert(to.clone());
            out.whole.insert(to.clone());
        }
        (C_LINK, Some(at), _, Some(target)) => {
            out.paths.insert(at.clone());
            out.whole.insert(at.clone());
            out.links.insert(at.clone(), target.clone());
        }
        (_, Some(p), _, _) if !p.as_os_str().is_empty() => {
            out.paths.insert(p.clone());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(kind: u16, attrs: &[(u16, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in attrs {
            body.extend(k.to_le_bytes());
            body.extend((v.len() as u16).to_le_bytes());
            body.extend(v.as_bytes());
        }
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend(kind.to_le_bytes());
        out.extend([0u8; 4]);
        out.extend(body);
        out
    }

    fn stream(commands: &[Vec<u8>]) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.extend(1u32.to_le_bytes());
        for c in commands {
            s.extend(c);
        }
        s
    }

    #[test]
    fn a_stream_gives_the_paths_it_names_and_marks_rename_and_link_targets() {
        let s = stream(&[
            command(2, &[(A_PATH, "snap")]),
            command(3, &[(A_PATH, "o257-7-0")]),
            command(C_RENAME, &[(A_PATH, "o257-7-0"), (A_PATH_TO, "var/lib/orders.db")]),
            command(C_LINK, &[(A_PATH, "etc/b"), (A_PATH_LINK, "etc/a")]),
            command(11, &[(A_PATH, "etc/old")]),
            command(20, &[(A_PATH, "")]),
            command(C_END, &[]),
        ]);
        let c = parse(&s[..]).unwrap();
        let names: Vec<_> = c.paths.iter().map(|p| p.escaped().to_string()).collect();
        assert_eq!(names, ["etc/b", "etc/old", "o257-7-0", "var/lib/orders.db"]);
        let whole: Vec<_> = c.whole.iter().map(|p| p.escaped().to_string()).collect();
        assert_eq!(whole, ["etc/b", "var/lib/orders.db"]);
        assert_eq!(c.links.get(Path::new("etc/b")), Some(&PathBuf::from("etc/a")));
        assert!(c.touches_below(Path::new("var")));
        assert!(!c.touches_below(Path::new("usr")));
    }

    #[test]
    fn a_stream_that_is_not_one_or_is_cut_short_is_refused_by_name() {
        assert!(format!("{:#}", parse(&b"not a stream at all"[..]).unwrap_err()).contains("not a btrfs send stream"));
        let mut v2 = MAGIC.to_vec();
        v2.extend(2u32.to_le_bytes());
        assert!(format!("{:#}", parse(&v2[..]).unwrap_err()).contains("version 2"));
        let cut = stream(&[command(3, &[(A_PATH, "a")])]);
        assert!(format!("{:#}", parse(&cut[..]).unwrap_err()).contains("ends without its end"));
        let unknown = stream(&[command(99, &[]), command(C_END, &[])]);
        assert!(format!("{:#}", parse(&unknown[..]).unwrap_err()).contains("unknown command 99"));
    }
}
