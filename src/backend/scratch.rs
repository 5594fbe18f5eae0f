//! A scratch filesystem, a sparse image file in a transaction's stage directory loop-mounted in snapinst's private
//! mount namespace, for a stage that may not live on the filesystem it stages. Two kinds:
//! - an overlay upper layer, when the root is the top of its filesystem (an ext4 `/`): every directory of that
//!   filesystem is inside the lower layer, and the kernel refuses an upper layer there. Formatted ext4 (no journal:
//!   it never outlives a crash), mounted with `discard`, so it takes only the blocks the steps write and gives back
//!   what they delete, and `nobarrier`, never synced: what the steps write to it is copied out of the page cache
//!   and never reaches the disk twice; sized to the free space of the filesystem it is on, all a delta copied out of it can use;
//! - a copy stage of a FAT part (see `copy`): a filesystem of the part's own type, made and mounted with the part's
//!   own options (the same modes and name rules), twice as large as the part (the stage and its base), so that
//!   staging writes nothing to the part.
//!
//! Nothing here mounts in the host's namespace, and nothing in the image is needed once its content is copied out.

use crate::pathbytes::PathText;
use crate::{fsutil, mounts};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The smallest scratch image made, whatever the free space says.
const MIN_SIZE: u64 = 256 << 20;
/// The largest: an ext4 host's largest file, with room to spare.
const MAX_SIZE: u64 = 8 << 40;
/// The smallest scratch filesystem made like a part (FAT needs some clusters to choose its kind).
const MIN_LIKE_SIZE: u64 = 64 << 20;

pub(super) struct Scratch {
    image: PathBuf,
    /// Where the image is mounted; the stage's directories are inside it.
    pub mnt: PathBuf,
    /// None: an overlay upper layer's ext4; else a filesystem like this mount.
    like: Option<Like>,
}

/// A filesystem to make like a mounted one: its type, its own options, and where it is mounted (its size is read
/// there when the scratch filesystem is made).
struct Like {
    fstype: String,
    options: String,
    mount_point: PathBuf,
}

impl Scratch {
    /// The scratch filesystem for an overlay upper layer of the stage in `stage_dir`.
    pub fn of(stage_dir: &Path) -> Scratch {
        Scratch { image: stage_dir.join("scratch.img"), mnt: stage_dir.join("scratch"), like: None }
    }

    /// The scratch filesystem of the stage in `stage_dir` made like `mount` (type, options, size).
    pub fn like(stage_dir: &Path, mount: &mounts::MountInfo) -> Scratch {
        let options: Vec<&str> = mount.super_options.split(',').filter(|o| !matches!(*o, "rw" | "ro" | "")).collect();
        let like =
            Like { fstype: mount.fstype.clone(), options: options.join(","), mount_point: mount.mount_point.clone() };
        Scratch { like: Some(like), ..Scratch::of(stage_dir) }
    }

    fn is_mounted(&self) -> Result<bool> {
        Ok(self.mnt.is_dir() && mounts::is_mount_point(&self.mnt)?)
    }

    /// Make a new, empty scratch filesystem and mount it (an old one is thrown away first).
    pub fn create(&self) -> Result<()> {
        self.remove()?;
        fsutil::create_dir_durable(&self.mnt)?;
        let size = match &self.like {
            // Room for two copies of the tree (the copy stager's stage and its base); the image is sparse.
            Some(like) => (2 * fsutil::total_bytes(&like.mount_point)?).max(MIN_LIKE_SIZE),
            None => fsutil::free_bytes(self.mnt.parent().unwrap_or(&self.mnt))?.clamp(MIN_SIZE, MAX_SIZE),
        } & !((1 << 20) - 1);
        std::fs::File::create(&self.image)
            .and_then(|f| f.set_len(size))
            .with_context(|| format!("creating the sparse scratch image {}", self.image.escaped()))?;
        let (program, args): (String, &[&str]) = match &self.like {
            None => (
                "mkfs.ext4".into(),
                &[
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-O",
                    "^has_journal,^resize_inode,sparse_super2",
                    "-E",
                    "lazy_itable_init=1,nodiscard",
                ],
            ),
            Some(like) if like.fstype.starts_with("ext") => (format!("mkfs.{}", like.fstype), &["-q", "-F"]),
            Some(like) => (format!("mkfs.{}", like.fstype), &[]),
        };
        let out = std::process::Command::new(&program)
            .args(args)
            .arg(&self.image)
            .output()
            .with_context(|| format!("running {program} for a scratch filesystem of the stage"))?;
        if !out.status.success() {
            bail!("{program} {} failed: {}", self.image.escaped(), String::from_utf8_lossy(&out.stderr).trim());
        }
        self.mount()
    }

    /// Mount the existing image (a kept transaction's, in a later process) unless it is mounted already.
    pub fn mount(&self) -> Result<()> {
        if self.is_mounted()? {
            return Ok(());
        }
        if !self.image.is_file() {
            bail!("the scratch image {} is missing", self.image.escaped());
        }
        let device = attach(&self.image)?;
        let path = device.path().context("the loop device has no path")?;
        let (fstype, options) = match &self.like {
            // No flushes: nothing in it is ever needed after a crash, and its content is copied out (and synced
            // there) before it goes; its writes stay in the page cache of an image that is deleted.
            None => ("ext4", "discard,nobarrier"),
            Some(like) => (like.fstype.as_str(), like.options.as_str()),
        };
        nix::mount::mount(Some(&path), &self.mnt, Some(fstype), nix::mount::MsFlags::MS_NOATIME, Some(options))
            .with_context(|| {
                format!(
                    "mounting the scratch image {} ({}) at {}",
                    self.image.escaped(),
                    path.escaped(),
                    self.mnt.escaped()
                )
            })?;
        // The mount holds the device now; autoclear detaches it when the mount goes.
        drop(device);
        Ok(())
    }

    /// Unmount (and so detach) the scratch filesystem if it is mounted.
    pub fn unmount(&self) -> Result<()> {
        if self.is_mounted()? {
            mounts::unmount_below(&self.mnt)?;
        }
        Ok(())
    }

    /// Unmount it and delete the image. Idempotent.
    pub fn remove(&self) -> Result<()> {
        self.unmount()?;
        fsutil::remove_any(&self.image)?;
        fsutil::remove_any(&self.mnt)
    }
}

/// Attach `image` to a free loop device with autoclear, retrying when another process takes the device first.
fn attach(image: &Path) -> Result<loopdev::LoopDevice> {
    let mut last = String::new();
    for _ in 0..10 {
        let control = loopdev::LoopControl::open().map_err(|e| {
            anyhow::anyhow!(
                "no loop device can be had for the overlay's scratch layer: opening /dev/loop-control: {e} \
                 (load the loop module, or pass --state-dir outside the root on the same filesystem)"
            )
        })?;
        let device = match control.next_free() {
            Ok(d) => d,
            Err(e) => {
                last = format!("finding a free loop device: {e}");
                continue;
            }
        };
        match device.with().autoclear(true).attach(image) {
            Ok(()) => return Ok(device),
            Err(e) => last = format!("attaching {}: {e}", image.escaped()),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("no loop device can be had for the overlay's scratch layer ({last})")
}
