//! The filesystems mounted inside a managed root, and what a transaction does about each. The sandbox gives every
//! step its own /proc, /sys, /dev, /tmp and /run, so mounts at or below those are its business; the state areas
//! (the root's, when it lies inside the root, and each part's) and whatever snapinst mounts there are snapinst's
//! own. Every other filesystem mounted inside the root (a /boot, /home or /srv of its own) is either a *part* of the
//! transaction, staged on its own and mounted at its path inside the stage (see `backend::Part`), or *unstaged*:
//! then the stage shows the directory underneath it, and whatever a step wrote there would be committed under the
//! mount and stay hidden. For those this module refuses a plan whose file steps name a path on one, and after the
//! steps compares the directory underneath each with the stage's, so that a script's write there fails the
//! transaction out loud, naming the path and the mount. It only reads; it never writes anything.

use crate::pathbytes::PathText;
use crate::plan::{Action, Plan, RootPath};
use crate::state::BackendKind;
use crate::{mounts, topview, treediff};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The directories of a root that the sandbox mounts afresh for every step.
const SANDBOX_DIRS: [&str; 5] = ["proc", "sys", "dev", "tmp", "run"];

/// Where a part keeps its state area: at the top of its own filesystem, hidden from the stage.
pub(crate) const PART_STATE_DIR: &str = ".snapinst";

/// The filesystem types a part can be staged on (an overlay stage, its delta on the filesystem itself).
const STAGEABLE: [&str; 5] = ["ext4", "ext3", "ext2", "xfs", "btrfs"];

/// The filesystem types overlayfs refuses as a lower layer (case-insensitive names), staged by a copy instead.
const COPY_STAGED: [&str; 3] = ["vfat", "msdos", "exfat"];

/// The backend that stages the part of type `fstype` mounted at `root`.
pub(crate) fn part_backend(fstype: &str, root: &Path) -> BackendKind {
    if COPY_STAGED.contains(&fstype) || copy_staged_for_tests(fstype) {
        BackendKind::Copy
    } else if fstype == "btrfs" && crate::backend::snapshot_can_stage(root) {
        BackendKind::Snapshot
    } else {
        BackendKind::Overlay
    }
}

/// In a test build, `SNAPINST_TEST_COPY_STAGED=ext2` stages ext2 parts by copy, so that machines whose kernel has
/// no vfat still run every crash point through the copy stager (the VM tests use real vfat).
#[cfg(feature = "failpoints")]
fn copy_staged_for_tests(fstype: &str) -> bool {
    std::env::var("SNAPINST_TEST_COPY_STAGED").is_ok_and(|v| v.split(',').any(|t| t == fstype))
}

#[cfg(not(feature = "failpoints"))]
fn copy_staged_for_tests(_fstype: &str) -> bool {
    false
}

/// A filesystem mounted inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mounted {
    /// Where it is mounted, relative to the root (`boot/efi`).
    pub rel: PathBuf,
    pub fstype: String,
    pub source: String,
    /// Why the transaction does not stage it; None for a part.
    pub unstaged_because: Option<String>,
}

impl Mounted {
    /// `ext4 mounted at /boot (/dev/sda2)`.
    pub fn describe(&self) -> String {
        format!("{} mounted at /{} ({})", self.fstype, self.rel.escaped(), self.source)
    }
}

/// Which filesystems inside the root become parts.
#[derive(Debug, Clone)]
pub(crate) enum Selection<'a> {
    /// Every one that can be staged, but these (in-root paths, `--exclude-mount`).
    AllBut(&'a [PathBuf]),
    /// Exactly these (the parts a kept transaction was staged with).
    Exactly(&'a [PathBuf]),
}

/// What lies inside a root besides its own tree: state areas and the filesystems mounted on it.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The state areas inside the root (the root's, when it is there, and each part's), relative to the root.
    pub state_areas: Vec<PathBuf>,
    /// Every mount point inside the root that the stage does not show as the machine does (pseudo filesystems,
    /// unstaged ones), relative to it.
    pub hidden_mounts: Vec<PathBuf>,
    /// The filesystems staged on their own, outermost first.
    pub parts: Vec<Mounted>,
    /// The filesystems no stage carries (the outermost of each nest).
    pub unstaged: Vec<Mounted>,
}

impl Layout {
    /// Read the machine's mount table for `root` (snapinst's own mounts are not in it), managed by `kind`, whose
    /// state area is at `state_area` (relative to it) when inside it.
    pub fn read(root: &Path, state_area: Option<&Path>, kind: BackendKind, select: Selection) -> Result<Layout> {
        let mut found: Vec<Mounted> = Vec::new();
        let mut pseudo: Vec<PathBuf> = Vec::new();
        for m in mounts::host_all()? {
            let Ok(rel) = m.mount_point.strip_prefix(root) else { continue };
            if rel.as_os_str().is_empty() || state_area.is_some_and(|s| rel.starts_with(s)) {
                continue;
            }
            let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
            if first.is_some_and(|c| SANDBOX_DIRS.contains(&c.as_str())) {
                pseudo.push(rel.to_path_buf());
                continue;
            }
            let why = unstaged_because(&m, rel, kind, &select);
            // A later mount on the same path hides the earlier one: keep the one a step would have seen.
            found.retain(|f| f.rel != rel);
            found.push(Mounted { rel: rel.to_path_buf(), fstype: m.fstype, source: m.source, unstaged_because: why });
        }
        found.sort_by_key(|f| f.rel.components().count());
        // Below an unstaged filesystem nothing can be staged: the stage does not show it. Report the outermost.
        let mut parts: Vec<Mounted> = Vec::new();
        let mut unstaged: Vec<Mounted> = Vec::new();
        for f in found {
            if unstaged.iter().any(|u| f.rel.starts_with(&u.rel)) {
                continue;
            }
            if f.unstaged_because.is_some() {
                unstaged.push(f);
            } else {
                parts.push(f);
            }
        }
        let state_areas = state_area
            .map(Path::to_path_buf)
            .into_iter()
            .chain(parts.iter().map(|p| p.rel.join(PART_STATE_DIR)))
            .collect();
        let hidden_mounts = pseudo.into_iter().chain(unstaged.iter().map(|u| u.rel.clone())).collect();
        Ok(Layout { state_areas, hidden_mounts, parts, unstaged })
    }

    /// Where the parts are mounted, relative to the root, outermost first.
    pub fn part_rels(&self) -> Vec<PathBuf> {
        self.parts.iter().map(|p| p.rel.clone()).collect()
    }

    /// The paths (relative to the root) that comparing the root with a stage must leave out: the state areas and
    /// the mounts the stage does not show as the machine does.
    pub fn not_compared(&self) -> Vec<PathBuf> {
        self.state_areas.iter().chain(&self.hidden_mounts).cloned().collect()
    }

    /// Every problem of a plan's steps that name a path on an unstaged filesystem or in a state area.
    pub fn plan_problems(&self, plan_file: &Path, plan: &Plan) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            for (field, path, replaces) in named_paths(&step.action) {
                if let Some(why) = self.why_not(path, replaces) {
                    problems.push(format!(
                        "{}: step \"{}\" (#{}) field \"{field}\": {why}",
                        plan_file.escaped(),
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
        for m in self.unstaged.iter().chain(self.parts.iter().filter(|_| replaces)) {
            if let Some(why) = &m.unstaged_because {
                if p.starts_with(&m.rel) {
                    return Some(format!("{path} is on {}, which snapinst does not stage ({why})", m.describe()));
                }
            }
            if replaces && m.rel.starts_with(p) {
                return Some(format!("{path} holds the mount point of {}; a step cannot replace it", m.describe()));
            }
        }
        for area in &self.state_areas {
            if p.starts_with(area) {
                return Some(format!("{path} is inside snapinst's state area /{}", area.escaped()));
            }
            if replaces && area.starts_with(p) {
                return Some(format!(
                    "{path} holds snapinst's state area /{}; a step cannot replace it",
                    area.escaped()
                ));
            }
        }
        None
    }

    /// Fail when the filesystems mounted inside the root are not the ones of `self`, read earlier (one was mounted
    /// or unmounted while the transaction ran): what the stage carries would no longer match the machine.
    pub fn same_mounts(&self, now: &Layout) -> Result<()> {
        let all = |l: &Layout| -> Vec<Mounted> { l.parts.iter().chain(&l.unstaged).cloned().collect() };
        let (was, is) = (all(self), all(now));
        // The mounts of `a` that `b` does not have, described.
        let missing = |a: &[Mounted], b: &[Mounted]| -> Vec<String> {
            a.iter()
                .filter(|m| !b.iter().any(|o| o.rel == m.rel && o.source == m.source))
                .map(Mounted::describe)
                .collect()
        };
        let (gone, new) = (missing(&was, &is), missing(&is, &was));
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
    /// what its parent filesystem has underneath the mount), naming the first changed path and the mount.
    pub fn check_stage(&self, root: &Path, stage: &Path) -> Result<()> {
        for u in &self.unstaged {
            // The filesystem the mount point is on: the deepest part holding it, or the root's own.
            let parent = self.parts.iter().rfind(|p| u.rel.starts_with(&p.rel));
            let (base, inside) = match parent {
                Some(p) => (root.join(&p.rel), u.rel.strip_prefix(&p.rel).unwrap_or(&u.rel)),
                None => (root.to_path_buf(), u.rel.as_path()),
            };
            let under = topview::bare(&base)?.join(inside);
            let staged = stage.join(&u.rel);
            let changes = match (under.is_dir(), staged.is_dir()) {
                (true, true) => treediff::diff(&under, &staged, &[])?,
                (false, false) => Vec::new(),
                // The mount point itself was removed, or made where there was none.
                _ => vec![treediff::Change { kind: treediff::ChangeKind::Modified, path: PathBuf::from("/") }],
            };
            if let Some(c) = changes.first() {
                let shown = Path::new("/").join(&u.rel).join(c.path.strip_prefix("/").unwrap_or(&c.path));
                anyhow::bail!(
                    "a step {} {}, which is on {}: snapinst does not stage that filesystem ({}), and the write would \
                     be hidden under the mount (make the change with a host step, or unmount it first)",
                    c.kind.word(),
                    shown.escaped(),
                    u.describe(),
                    u.unstaged_because.as_deref().unwrap_or("?")
                );
            }
        }
        Ok(())
    }
}

/// Why the mount `m` at `rel` is not staged as a part; None when it is.
fn unstaged_because(m: &mounts::MountInfo, rel: &Path, kind: BackendKind, select: &Selection) -> Option<String> {
    let chosen = match select {
        Selection::AllBut(excluded) => !excluded.iter().any(|e| e == rel),
        Selection::Exactly(parts) => parts.iter().any(|p| p == rel),
    };
    if !chosen {
        return Some(match select {
            Selection::AllBut(_) => "left out with --exclude-mount".to_string(),
            Selection::Exactly(_) => "the transaction was staged without it".to_string(),
        });
    }
    if kind == BackendKind::Journal {
        return Some(format!("the {kind} backend stages no other filesystem"));
    }
    if !STAGEABLE.contains(&m.fstype.as_str()) && !COPY_STAGED.contains(&m.fstype.as_str()) {
        return Some(format!("{} cannot be staged yet", m.fstype));
    }
    if m.read_only {
        return Some("it is mounted read-only".to_string());
    }
    None
}

/// Which of `rels` (filesystems inside `root`, relative to it) are mounted at their place now: (mounted, not).
pub(crate) fn split_by_mounted(root: &Path, rels: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    rels.iter().cloned().partition(|rel| mounts::is_mount_point(&root.join(rel)).unwrap_or(false))
}

/// `/boot, /srv/www`: in-root paths as a message names them.
pub(crate) fn shown(rels: &[PathBuf]) -> String {
    rels.iter().map(|p| format!("/{}", p.escaped())).collect::<Vec<_>>().join(", ")
}

/// The paths a step names, with their field and whether the step may replace what is at them.
fn named_paths(action: &Action) -> Vec<(&'static str, &RootPath, bool)> {
    match action {
        Action::Dir { path, .. } => vec![("path", path, false)],
        Action::File { path, .. } | Action::Symlink { path, .. } | Action::Remove { path, .. } => {
            vec![("path", path, true)]
        }
        Action::Fetch { fetch } => vec![("path", &fetch.path, true)],
        Action::User { user } => user.home.iter().filter(|_| user.create_home).map(|h| ("home", h, false)).collect(),
        // A declared path is moved aside whole on the journal backend.
        Action::Run { changes, .. } => changes.iter().map(|p| ("changes", p, true)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(rel: &str, fstype: &str, why: Option<&str>) -> Mounted {
        Mounted {
            rel: PathBuf::from(rel),
            fstype: fstype.into(),
            source: "/dev/sda2".into(),
            unstaged_because: why.map(str::to_string),
        }
    }

    fn layout() -> Layout {
        Layout {
            state_areas: vec![PathBuf::from("var/lib/snapinst/state"), PathBuf::from("home/.snapinst")],
            hidden_mounts: vec![PathBuf::from("proc"), PathBuf::from("boot")],
            parts: vec![mounted("home", "ext4", None)],
            unstaged: vec![mounted("boot", "nfs", Some("nfs cannot be staged yet"))],
        }
    }

    fn rp(p: &str) -> RootPath {
        RootPath::from_rel(Path::new(p))
    }

    #[test]
    fn paths_on_unstaged_mounts_and_in_state_areas_are_named() {
        let l = layout();
        let why = l.why_not(&rp("boot/vmlinuz"), true).unwrap();
        assert!(why.contains("nfs mounted at /boot (/dev/sda2), which snapinst does not stage (nfs"), "{why}");
        assert!(l.why_not(&rp("boot"), false).is_some());
        assert!(l.why_not(&rp("var/lib/snapinst/state/x"), false).unwrap().contains("state area"));
        assert!(l.why_not(&rp("home/.snapinst/x"), false).unwrap().contains("state area /home/.snapinst"));
        assert!(l.why_not(&rp("var/lib"), true).unwrap().contains("holds snapinst's state area"));
        assert!(l.why_not(&rp("var/lib"), false).is_none(), "a dir step on an ancestor only sets its metadata");
        assert!(l.why_not(&rp("home/svc/.profile"), true).is_none(), "a part is staged: its paths are fine");
        assert!(l.why_not(&rp("home"), true).unwrap().contains("holds the mount point of ext4 mounted at /home"));
        assert!(l.why_not(&rp("bootstrap"), true).is_none());
    }

    #[test]
    fn not_compared_holds_the_state_areas_and_the_hidden_mounts() {
        let got = layout().not_compared();
        let want: Vec<PathBuf> =
            ["var/lib/snapinst/state", "home/.snapinst", "proc", "boot"].iter().map(PathBuf::from).collect();
        assert_eq!(got, want);
    }
}
