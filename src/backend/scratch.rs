//! A scratch filesystem for an overlay upper layer that may not live on the lower layer's filesystem: when the root
//! is the top of its filesystem (an ext4 `/`), every directory of that filesystem is inside the lower layer, and the
//! kernel refuses an upper layer there. The scratch filesystem is a sparse image file in the transaction's stage
//! directory, formatted ext4 (no journal: it never outlives a crash) and loop-mounted with `discard` in snapinst's
//! private mount namespace, so it takes only the blocks the steps write and gives back what they delete. It is sized
//! to the free space of the root's filesystem, which is all a delta copied out of it can use anyway. Nothing here
//! mounts in the host's namespace, and nothing in the image is needed after the delta is copied out.

use crate::{fsutil, mounts};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The smallest scratch image made, whatever the free space says.
const MIN_SIZE: u64 = 256 << 20;
/// The largest: an ext4 host's largest file, with room to spare.
const MAX_SIZE: u64 = 8 << 40;

pub(super) struct Scratch {
    image: PathBuf,
    /// Where the image is mounted; the upper and work directories are inside it.
    pub mnt: PathBuf,
}

impl Scratch {
    /// The scratch filesystem of the stage in `stage_dir`.
    pub fn of(stage_dir: &Path) -> Scratch {
        Scratch { image: stage_dir.join("scratch.img"), mnt: stage_dir.join("scratch") }
    }

    fn is_mounted(&self) -> Result<bool> {
        Ok(self.mnt.is_dir() && mounts::is_mount_point(&self.mnt)?)
    }

    /// Make a new, empty scratch filesystem and mount it (an old one is thrown away first).
    pub fn create(&self) -> Result<()> {
        self.remove()?;
        fsutil::create_dir_durable(&self.mnt)?;
        let free = fsutil::free_bytes(self.mnt.parent().unwrap_or(&self.mnt))?;
        let size = free.clamp(MIN_SIZE, MAX_SIZE) & !((1 << 20) - 1);
        std::fs::File::create(&self.image)
            .and_then(|f| f.set_len(size))
            .with_context(|| format!("creating the sparse scratch image {}", self.image.display()))?;
        let out = std::process::Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal,^resize_inode,sparse_super2",
                "-E",
                "lazy_itable_init=1,nodiscard",
            ])
            .arg(&self.image)
            .output()
            .context("running mkfs.ext4 (e2fsprogs) for the overlay's scratch layer")?;
        if !out.status.success() {
            bail!("mkfs.ext4 {} failed: {}", self.image.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        self.mount()
    }

    /// Mount the existing image (a kept transaction's, in a later process) unless it is mounted already.
    pub fn mount(&self) -> Result<()> {
        if self.is_mounted()? {
            return Ok(());
        }
        if !self.image.is_file() {
            bail!("the scratch image {} is missing", self.image.display());
        }
        let device = attach(&self.image)?;
        let path = device.path().context("the loop device has no path")?;
        nix::mount::mount(Some(&path), &self.mnt, Some("ext4"), nix::mount::MsFlags::MS_NOATIME, Some("discard"))
            .with_context(|| {
                format!(
                    "mounting the scratch image {} ({}) at {}",
                    self.image.display(),
                    path.display(),
                    self.mnt.display()
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
            Err(e) => last = format!("attaching {}: {e}", image.display()),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("no loop device can be had for the overlay's scratch layer ({last})")
}
