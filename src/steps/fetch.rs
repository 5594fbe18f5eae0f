//! The fetch step: download a URL (http or https) into the root, checked against the SHA-256 the plan gives,
//! either as a file or unpacked (tar, tar.gz, tar.xz, zip) into a directory. The download goes to a temporary name
//! in the stage and is checked before anything is put in place or unpacked; an HTTP error, a timeout or a checksum
//! that does not match fails the step. An archive member whose name is absolute or climbs out with `..` (or, in a
//! tar, reaches outside through a symlink) fails the step: nothing is ever written outside the directory. Members
//! are owned by the step's owner (root by default), not by the uids the archive records.

use super::{files, ChangeGuard};
use crate::inroot::Root;
use crate::pathbytes::PathText;
use crate::plan::spec::ArchiveKind;
use crate::plan::Fetch;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Component, Path};

pub(super) fn fetch(root: &Root, guard: &mut dyn ChangeGuard, f: &Fetch) -> Result<()> {
    match f.extract {
        None => files::file_written(root, guard, &f.path, &f.attrs, |file| download_checked(f, file)),
        Some(kind) => files::dir_filled(root, guard, &f.path, &f.attrs, |dir, archive_path| {
            let mut archive = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(archive_path)
                .context("creating a temporary file for the download")?;
            download_checked(f, &mut archive)?;
            let archive = std::fs::File::open(archive_path).context("reading the download back")?;
            unpack(kind, archive, dir).with_context(|| format!("unpacking {} into {}", f.url, f.path))
        }),
    }
}

/// Download `f.url` into `sink`, failing unless its SHA-256 is `f.sha256`.
fn download_checked(f: &Fetch, sink: &mut std::fs::File) -> Result<()> {
    let agent = ureq::AgentBuilder::new().timeout(f.timeout).timeout_connect(f.timeout.min(CONNECT_TIMEOUT)).build();
    let response = match agent.get(&f.url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => bail!("{}: the server answered {code} {}", f.url, r.status_text()),
        Err(e) => bail!("{}: {}", f.url, timed_out_or(&e)),
    };
    let total = response.header("Content-Length").and_then(|v| v.parse::<u64>().ok());
    let bar = crate::events::download_progress(total, &f.url);
    let mut reader = response.into_reader();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                bail!("{}: the download broke off: {}", f.url, timed_out_or(&e));
            }
        };
        hash.update(&buf[..n]);
        sink.write_all(&buf[..n]).with_context(|| format!("writing the download of {}", f.url))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    sink.sync_all().context("syncing the download")?;
    let got = hex::encode(hash.finalize());
    if got != f.sha256 {
        bail!("{}: field \"sha256\" is {}, but what the server sent has SHA-256 {got}", f.url, f.sha256);
    }
    Ok(())
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An error's text, saying "timed out" plainly when that is what it was.
fn timed_out_or(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    if text.to_ascii_lowercase().contains("timed out") {
        format!("timed out ({text})")
    } else {
        text
    }
}

/// Unpack `archive` into the empty directory `dir`.
fn unpack(kind: ArchiveKind, archive: std::fs::File, dir: &Path) -> Result<()> {
    let reader = std::io::BufReader::new(archive);
    match kind {
        ArchiveKind::Tar => unpack_tar(reader, dir),
        ArchiveKind::TarGz => unpack_tar(flate2::read::GzDecoder::new(reader), dir),
        ArchiveKind::TarXz => unpack_tar(xz2::read::XzDecoder::new(reader), dir),
        ArchiveKind::Zip => unpack_zip(reader, dir),
    }
}

/// A member's name as a path inside the directory, or why it is not one.
fn member_path(name: &Path) -> Result<&Path> {
    for c in name.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                bail!("member {} has an absolute name: it would be written outside the directory", name.escaped())
            }
            Component::ParentDir => {
                bail!("member {} climbs out with \"..\": it would be written outside the directory", name.escaped())
            }
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(name)
}

fn unpack_tar(reader: impl Read, dir: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let name = entry.path().context("reading a member's name")?.into_owned();
        member_path(&name)?;
        if entry.header().entry_type().is_hard_link() {
            if let Some(target) = entry.link_name().context("reading a link's target")? {
                member_path(&target).with_context(|| format!("the hard link {}", name.escaped()))?;
            }
        }
        // `unpack_in` refuses (false) a member that would land outside `dir` through a symlink.
        if !entry.unpack_in(dir).with_context(|| format!("unpacking member {}", name.escaped()))? {
            bail!("member {} would be written outside the directory", name.escaped());
        }
    }
    Ok(())
}

fn unpack_zip(reader: impl Read + std::io::Seek, dir: &Path) -> Result<()> {
    let mut archive = zip::ZipArchive::new(reader).context("reading the archive")?;
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).context("reading the archive")?;
        let name = std::path::PathBuf::from(member.name());
        member_path(&name)?;
        if member.is_symlink() {
            bail!("member {} is a symlink, which snapinst does not unpack from a zip", name.escaped());
        }
        let place = dir.join(&name);
        if member.is_dir() {
            std::fs::create_dir_all(&place).with_context(|| format!("unpacking member {}", name.escaped()))?;
            continue;
        }
        if let Some(parent) = place.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("unpacking member {}", name.escaped()))?;
        }
        let mode = member.unix_mode().map_or(0o644, |m| m & 0o7777);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&place)
            .with_context(|| format!("unpacking member {}", name.escaped()))?;
        std::io::copy(&mut member, &mut out).with_context(|| format!("unpacking member {}", name.escaped()))?;
        use std::os::unix::fs::PermissionsExt;
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_stay_inside() {
        assert!(member_path(Path::new("a/b")).is_ok());
        assert!(member_path(Path::new("./a")).is_ok());
        let abs = member_path(Path::new("/etc/passwd")).unwrap_err().to_string();
        assert!(abs.contains("absolute"), "{abs}");
        let up = member_path(Path::new("a/../../x")).unwrap_err().to_string();
        assert!(up.contains(".."), "{up}");
    }
}
