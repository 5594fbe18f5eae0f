//! Looking up owner and group names in the target root's own /etc/passwd and /etc/group (never the host's).

use crate::inroot::Root;
use crate::plan::Principal;
use anyhow::{bail, Context, Result};
use std::io::Read;

fn read_db(root: &Root, file: &str) -> Result<String> {
    let etc = root.open_dir(std::path::Path::new("etc"))?;
    let fd = nix::fcntl::openat(
        Some(std::os::fd::AsRawFd::as_raw_fd(&etc)),
        file,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening /etc/{file} in the root"))?;
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut s = String::new();
    f.read_to_string(&mut s).with_context(|| format!("reading /etc/{file} in the root"))?;
    Ok(s)
}

fn lookup(root: &Root, p: &Principal, file: &str, what: &str) -> Result<u32> {
    let name = match p {
        Principal::Id(n) => return Ok(*n),
        Principal::Name(n) => n,
    };
    for line in read_db(root, file)?.lines() {
        let mut f = line.split(':');
        if f.next() == Some(name.as_str()) {
            if let Some(id) = f.nth(1).and_then(|s| s.parse().ok()) {
                return Ok(id);
            }
        }
    }
    bail!("{what} \"{name}\" is not in the root's /etc/{file}")
}

pub(super) fn uid(root: &Root, p: &Principal) -> Result<u32> {
    lookup(root, p, "passwd", "owner")
}

pub(super) fn gid(root: &Root, p: &Principal) -> Result<u32> {
    lookup(root, p, "group", "group")
}
