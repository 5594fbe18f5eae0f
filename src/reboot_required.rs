//! Debian's "a restart is needed" mark: `/run/reboot-required`, with the packages asking for it listed in
//! `/run/reboot-required.pkgs` (what update-notifier, unattended-upgrades and monitoring read). snapinst marks it
//! while a generation committed to a running root waits for its boot, and takes its own entry back when that is no
//! longer so. Only a root whose `run` is a mounted filesystem (the tmpfs of a running system) is marked.

use crate::pathbytes::PathText;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

const WHO: &str = "snapinst";

fn paths(root: &Path) -> Option<(PathBuf, PathBuf)> {
    let run = root.join("run");
    crate::mounts::is_mount_point(&run)
        .unwrap_or(false)
        .then(|| (run.join("reboot-required"), run.join("reboot-required.pkgs")))
}

/// Say that `root` needs a restart for snapinst's pending generation.
pub(crate) fn mark(root: &Path) -> Result<()> {
    let Some((flag, pkgs)) = paths(root) else { return Ok(()) };
    std::fs::write(&flag, "*** System restart required ***\n")
        .with_context(|| format!("writing {}", flag.escaped()))?;
    let listed = std::fs::read_to_string(&pkgs).unwrap_or_default();
    if !listed.lines().any(|l| l == WHO) {
        std::fs::write(&pkgs, format!("{listed}{WHO}\n")).with_context(|| format!("writing {}", pkgs.escaped()))?;
    }
    Ok(())
}

/// Take snapinst's entry back (nothing of snapinst's is pending any more); the mark goes when nothing else asks.
pub(crate) fn unmark(root: &Path) -> Result<()> {
    let Some((flag, pkgs)) = paths(root) else { return Ok(()) };
    let Ok(listed) = std::fs::read_to_string(&pkgs) else { return Ok(()) };
    if !listed.lines().any(|l| l == WHO) {
        return Ok(());
    }
    let rest: String = listed.lines().filter(|l| *l != WHO).map(|l| format!("{l}\n")).collect();
    if rest.is_empty() {
        crate::fsutil::remove_any(&pkgs)?;
        crate::fsutil::remove_any(&flag)
    } else {
        std::fs::write(&pkgs, rest).with_context(|| format!("writing {}", pkgs.escaped()))
    }
}
