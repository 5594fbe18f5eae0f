//! The filesystems mounted inside a managed root, and what a transaction does about them. The sandbox gives every
//! step its own /proc, /sys, /dev, /tmp and /run, so mounts at or below those are its business; the state area
//! (which may lie inside the root) and whatever snapinst mounts there are snapinst's own. Every other filesystem
//! mounted inside the root (a /boot, /boot/efi, /home or /srv of its own) is not staged by this version: the stage
//! shows the directory underneath it, and whatever a step wrote there would be committed under the mount and stay
//! hidden. So this module refuses a plan whose file steps name a path on such a filesystem, and after the steps
//! compares the directory underneath each one with the stage's, so that a script's write there fails the
//! transaction out loud, naming the path and the mount. It never writes anything.

use crate::plan::{Action, Plan, RootPath};
use crate::{mounts, topview, treediff};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The directories of a root that the sandbox mounts afresh for every step.
const SANDBOX_DIRS: [&str; 5] = ["proc", "sys", "dev", "tmp", "run"];

/// A filesystem mounted inside the root that the stage does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unstaged {
    /// Where it is mounted, relative to the root (`boot/efi`).
    pub rel: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl Unstaged {
    /// `ext4 mounted at /boot (/dev/sda2)`.
    pub fn describe(&self) -> String {
        format!("{} mounted at /{} ({})", self.fstype, self.rel.display(), self.source)
    }
}

/// What lies inside a root besides its own tree: the state area, if it is there, and the filesystems mounted on it.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The state area, relative to the root, when it is inside the root.
    pub state_area: Option<PathBuf>,
    /// Every mount point inside the root (not the state area's), relative to it.
    pub mount_points: Vec<PathBuf>,
    /// The mounts among them that no stage carries.
    pub unstaged: Vec<Unstaged>,
}

impl Layout {
    /// Read the machine's mount table for `root` (snapinst's own mounts are not in it), whose state area is at
    /// `state_area` (relative to it) when inside it.
    pub fn read(root: &Path, state_area: Option<&Path>) -> Result<Layout> {
        let state_area = state_area.map(Path::to_path_buf);
        let mut mount_points = Vec::new();
        let mut unstaged: Vec<Unstaged> = Vec::new();
        for m in mounts::host_all()? {
            let Ok(rel) = m.mount_point.strip_prefix(root) else { continue };
            if rel.as_os_str().is_empty() || state_area.as_ref().is_some_and(|s| rel.starts_with(s)) {
                continue;
            }
            if !mount_points.iter().any(|p: &PathBuf| p == rel) {
                mount_points.push(rel.to_path_buf());
            }
            let in_sandbox_dir =
                rel.components().next().is_some_and(|c| SANDBOX_DIRS.iter().any(|d| c.as_os_str() == *d));
            if in_sandbox_dir {
                continue;
            }
            // A later mount on the same path hides the earlier one: keep the one a step would have seen.
            unstaged.retain(|u| u.rel != rel);
            unstaged.push(Unstaged { rel: rel.to_path_buf(), fstype: m.fstype, source: m.source });
        }
        // Below an unstaged mount, everything is unstaged with it: report the outermost only.
        let outer: Vec<PathBuf> = unstaged.iter().map(|u| u.rel.clone()).collect();
        unstaged.retain(|u| !outer.iter().any(|o| o != &u.rel && u.rel.starts_with(o)));
        Ok(Layout { state_area, mount_points, unstaged })
    }

    /// The paths (relative to the root) that comparing the root with a stage must leave out: the state area and
    /// every mount point, whose contents the stage does not show.
    pub fn not_compared(&self) -> Vec<PathBuf> {
        self.state_area.iter().cloned().chain(self.mount_points.iter().cloned()).collect()
    }

    /// Every problem of a plan's steps that name a path on an unstaged filesystem or in the state area.
    pub fn plan_problems(&self, plan_file: &Path, plan: &Plan) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            for (field, path, replaces) in named_paths(&step.action) {
                if let Some(why) = self.why_not(path, replaces) {
                    problems.push(format!(
                        "{}: step \"{}\" (#{}) field \"{field}\": {why}",
                        plan_file.display(),
                        step.id,
                        i + 1
                    ));
                }
            }
        }
        problems
    }

    /// Why a step may not act on `path` (`replaces`: it may replace or remove what is there, not only add).
    fn why_not(&self, path: &RootPath, replaces: bool) -> Option<String> {
        let p = path.rel();
        if let Some(area) = &self.state_area {
            if p.starts_with(area) {
                return Some(format!("{path} is inside snapinst's state area /{}", area.display()));
            }
            if replaces && area.starts_with(p) {
                return Some(format!(
                    "{path} holds snapinst's state area /{}; a step cannot replace it",
                    area.display()
                ));
            }
        }
        for u in &self.unstaged {
            if p.starts_with(&u.rel) {
                return Some(format!("{path} is on {}, which snapinst does not stage", u.describe()));
            }
            if replaces && u.rel.starts_with(p) {
                return Some(format!(
                    "{path} holds the mount point of {}, which snapinst does not stage; a step cannot replace it",
                    u.describe()
                ));
            }
        }
        None
    }

    /// Fail when the filesystems mounted inside the root are not the ones of `self`, read earlier (one was mounted
    /// or unmounted while the transaction ran): what the stage carries would no longer match the machine.
    pub fn same_mounts(&self, now: &Layout) -> Result<()> {
        // The mounts of `a` that `b` does not have, described.
        let missing = |a: &Layout, b: &Layout| -> Vec<String> {
            a.unstaged.iter().filter(|u| !b.unstaged.contains(u)).map(Unstaged::describe).collect()
        };
        let (gone, new) = (missing(self, now), missing(now, self));
        let mut what = Vec::new();
        if !gone.is_empty() {
            what.push(format!("unmounted: {}", gone.join(", ")));
        }
        if !new.is_empty() {
            what.push(format!("mounted: {}", new.join(", ")));
        }
        if what.is_empty() {
            return Ok(());
        }
        anyhow::bail!("the filesystems mounted inside the root changed while the transaction ran ({})", what.join("; "))
    }

    /// After the steps: fail when the stage changed anything where an unstaged filesystem is mounted (compared with
    /// what the root has under that mount), naming the first changed path and the mount.
    pub fn check_stage(&self, root: &Path, stage: &Path) -> Result<()> {
        if self.unstaged.is_empty() {
            return Ok(());
        }
        let bare = topview::bare(root)?;
        for u in &self.unstaged {
            let (under, staged) = (bare.join(&u.rel), stage.join(&u.rel));
            let changes = match (under.is_dir(), staged.is_dir()) {
                (true, true) => treediff::diff(&under, &staged, &[])?,
                (false, false) => Vec::new(),
                // The mount point itself was removed, or made where there was none.
                _ => vec![treediff::Change { kind: treediff::ChangeKind::Modified, path: PathBuf::from("/") }],
            };
            if let Some(c) = changes.first() {
                let inside = c.path.strip_prefix("/").unwrap_or(&c.path);
                let shown = Path::new("/").join(&u.rel).join(inside);
                anyhow::bail!(
                    "a step {} {}, which is on {}: snapinst does not stage that filesystem, and the write would be \
                     hidden under the mount (add the change with a host step, or unmount it first)",
                    c.kind.word(),
                    shown.display(),
                    u.describe()
                );
            }
        }
        Ok(())
    }
}

/// The paths a step names, with their field and whether the step may replace what is at them.
fn named_paths(action: &Action) -> Vec<(&'static str, &RootPath, bool)> {
    match action {
        Action::Dir { path, .. } => vec![("path", path, false)],
        Action::File { path, .. } | Action::Symlink { path, .. } | Action::Remove { path, .. } => {
            vec![("path", path, true)]
        }
        Action::User { user } => user.home.iter().filter(|_| user.create_home).map(|h| ("home", h, false)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            state_area: Some(PathBuf::from("var/lib/snapinst/state")),
            mount_points: vec![PathBuf::from("boot"), PathBuf::from("proc")],
            unstaged: vec![Unstaged { rel: PathBuf::from("boot"), fstype: "ext4".into(), source: "/dev/sda2".into() }],
        }
    }

    fn rp(p: &str) -> RootPath {
        RootPath::from_rel(Path::new(p))
    }

    #[test]
    fn paths_on_unstaged_mounts_and_in_the_state_area_are_named() {
        let l = layout();
        assert!(l.why_not(&rp("boot/vmlinuz"), true).unwrap().contains("ext4 mounted at /boot (/dev/sda2)"));
        assert!(l.why_not(&rp("boot"), false).is_some());
        assert!(l.why_not(&rp("var/lib/snapinst/state/x"), false).unwrap().contains("state area"));
        assert!(l.why_not(&rp("var/lib"), true).unwrap().contains("holds snapinst's state area"));
        assert!(l.why_not(&rp("var/lib"), false).is_none(), "a dir step on an ancestor only sets its metadata");
        assert!(l.why_not(&rp("bootstrap"), true).is_none());
        assert!(l.why_not(&rp("etc/hosts"), true).is_none());
    }

    #[test]
    fn not_compared_holds_the_state_area_and_every_mount_point() {
        let got = layout().not_compared();
        assert_eq!(got, vec![PathBuf::from("var/lib/snapinst/state"), PathBuf::from("boot"), PathBuf::from("proc")]);
    }
}
