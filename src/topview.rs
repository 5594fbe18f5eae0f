//! Private views of a filesystem, made once per process in snapinst's own mount namespace. The top-level view is a
//! mount of a btrfs filesystem's top-level subvolume: through it snapinst reaches a root subvolume that is mounted
//! elsewhere (even as `/`), the state area beside it, and can rename the root, which the kernel refuses on a mount
//! point. The bare view is a non-recursive bind of a root: it shows the directories that the filesystems mounted
//! inside the root hide, which is what a stage shows there. No view is ever mounted in the host's namespace;
//! `cleanup` removes their directories before the process exits.

use crate::mounts;
use crate::pathbytes::PathText;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Views mounted by this process: (what is viewed, directory).
static VIEWS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

const BASE: &str = "/run/snapinst";

/// The directory where the top level of the btrfs filesystem holding `path` is mounted (mounting it if needed).
pub(crate) fn of(path: &Path) -> Result<PathBuf> {
    let source = mounts::mount_of(path)?.source;
    let mut views = VIEWS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = views.iter().find(|(s, _)| *s == source) {
        return Ok(dir.clone());
    }
    let dir = view_dir("top", views.len())?;
    nix::mount::mount(Some(source.as_str()), &dir, Some("btrfs"), nix::mount::MsFlags::empty(), Some("subvolid=5"))
        .with_context(|| format!("mounting the top level of {source} at {}", dir.escaped()))?;
    views.push((source, dir.clone()));
    Ok(dir)
}

/// `root` without the filesystems mounted inside it: a non-recursive bind, mounted once per process.
pub(crate) fn bare(root: &Path) -> Result<PathBuf> {
    let key = format!("bare:{}", root.escaped());
    let mut views = VIEWS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = views.iter().find(|(s, _)| *s == key) {
        return Ok(dir.clone());
    }
    let dir = view_dir("bare", views.len())?;
    nix::mount::mount(Some(root), &dir, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("binding {} (without its mounts) at {}", root.escaped(), dir.escaped()))?;
    views.push((key, dir.clone()));
    Ok(dir)
}

/// A fresh directory for view number `n` of this process: `/run/snapinst/<kind>.<pid>.<n>`.
fn view_dir(kind: &str, n: usize) -> Result<PathBuf> {
    let base = if Path::new("/run").is_dir() { PathBuf::from(BASE) } else { std::env::temp_dir().join("snapinst") };
    let dir = base.join(format!("{kind}.{}.{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.escaped()))?;
    Ok(dir)
}

/// The path of `p` inside its btrfs filesystem, relative to the top level.
pub(crate) fn fs_path(p: &Path) -> Result<PathBuf> {
    let p = p.canonicalize().with_context(|| format!("resolving {}", p.escaped()))?;
    let subvol_root = p
        .ancestors()
        .find(|a| libbtrfsutil::is_subvolume(a).unwrap_or(false))
        .with_context(|| format!("finding the btrfs subvolume holding {}", p.escaped()))?;
    let rel = p.strip_prefix(subvol_root).expect("an ancestor is a prefix");
    let sub = libbtrfsutil::subvolume_path(subvol_root)
        .with_context(|| format!("finding the subvolume path of {}", subvol_root.escaped()))?;
    Ok(sub.join(rel))
}

/// `p` as seen through the top-level view of its filesystem.
pub(crate) fn in_top(p: &Path) -> Result<PathBuf> {
    Ok(of(p)?.join(fs_path(p)?))
}

/// The managed root mounted at `root`, as seen through the top-level view: the subvolume *name* that the next
/// mount sees. After a commit the live mount still shows the previous tree, which snapinst has moved to
/// `<parent>/.snapinst-<name>/gens/<n>` (or, until the commit is finished, to the transaction's stage directory
/// `<parent>/.snapinst-<name>/stage/<txn>`); the name it came from is `<parent>/<name>`.
pub(crate) fn root_in_top(root: &Path) -> Result<PathBuf> {
    Ok(of(root)?.join(root_name(root)?))
}

/// The managed root's subvolume path relative to the top level (`@`): the name a boot loader mounts it by, the
/// live tree's as well as a stage's that will take that name at its commit.
pub(crate) fn root_name(root: &Path) -> Result<PathBuf> {
    let path = fs_path(root)?;
    Ok(managed_name(&path).unwrap_or(path))
}

fn managed_name(fs_path: &Path) -> Option<PathBuf> {
    let gens = fs_path.parent()?;
    let state = gens.parent()?;
    if gens.file_name()? != "gens" && gens.file_name()? != "stage" {
        return None;
    }
    let name = state.file_name()?.to_str()?.strip_prefix(".snapinst-")?;
    Some(state.parent()?.join(name))
}

/// Unmount the views and remove their directories (the namespace would drop the mounts anyway).
pub(crate) fn cleanup() {
    let mut views = VIEWS.lock().unwrap_or_else(|e| e.into_inner());
    for (_, dir) in views.drain(..) {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Remove view directories left by processes that were killed (empty directories under /run/snapinst).
pub(crate) fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(BASE) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('.').nth(1).and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() as i32
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::managed_name;
    use std::path::{Path, PathBuf};

    #[test]
    fn kept_generations_map_back_to_their_root() {
        assert_eq!(managed_name(Path::new(".snapinst-@/gens/3")), Some(PathBuf::from("@")));
        assert_eq!(managed_name(Path::new("a/.snapinst-root/gens/0")), Some(PathBuf::from("a/root")));
        assert_eq!(managed_name(Path::new("root")), None);
        assert_eq!(managed_name(Path::new("x/gens/1")), None);
    }

    #[test]
    fn a_tree_replaced_by_an_unfinished_commit_maps_back_to_its_root() {
        assert_eq!(managed_name(Path::new(".snapinst-@/stage/1796-12")), Some(PathBuf::from("@")));
        assert_eq!(managed_name(Path::new(".snapinst-@/other/1796-12")), None);
    }
}
