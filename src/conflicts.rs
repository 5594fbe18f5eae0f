//! Conflicts: paths that both the plan and the running system changed during one transaction. The plan's version
//! is what the new tree holds; the live version is kept in the state area (never in the tree) so nothing is lost.
//! A conflict is listed in the transaction record, the `summary` event, `status`, `list --json` and
//! `snapinst conflicts`; this module says what one is and how it reads, and what a carry-over did.

use crate::pathbytes::PathText;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the carry-over at a commit did: how many paths of the stage it made what the live tree had, in how many
/// rounds (one more while the live tree kept changing), how long it took, and how long before the end of the
/// preparation of the commit its last snapshot of the live tree was taken (`tail_ms`: writes after that moment go
/// to the tree the commit replaces), and how many paths written in that instant a directory target got right after
/// the commit (`after_commit`: the handover of `backend::hand_over_now`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CarryOver {
    pub paths: usize,
    pub rounds: usize,
    pub ms: u64,
    #[serde(default)]
    pub tail_ms: u64,
    #[serde(default)]
    pub after_commit: usize,
}

/// One version of a path: what kind of entry it is (`file`, `directory`, `symlink`, `special`, or `absent` when
/// that side removed it) and its size in bytes (not for a directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Version {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A path both the plan and the live system changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Conflict {
    /// The path in the root (`/etc/app.conf`).
    #[serde(with = "crate::pathbytes::one")]
    pub path: PathBuf,
    /// The plan's version: what the new tree holds.
    pub plan: Version,
    /// The live system's version.
    pub live: Version,
    /// Where the live version is kept (none when the live system removed the path).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::pathbytes::maybe")]
    pub kept: Option<PathBuf>,
    /// The kept copy went when this generation (the one the transaction made current) was pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_with: Option<u64>,
}

impl Version {
    /// The version of an entry with metadata `m` (None: absent).
    pub fn of(m: &Option<std::fs::Metadata>) -> Version {
        use std::os::unix::fs::MetadataExt;
        let Some(m) = m else { return Version { kind: "absent".into(), size: None } };
        let t = m.file_type();
        let kind = if t.is_dir() {
            "directory"
        } else if t.is_symlink() {
            "symlink"
        } else if t.is_file() {
            "file"
        } else {
            "special"
        };
        Version { kind: kind.into(), size: (!t.is_dir()).then(|| m.size()) }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.size {
            Some(size) => write!(f, "{} ({size} bytes)", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl Conflict {
    /// One line for people: the path, both versions, and where the live one is.
    pub fn line(&self) -> String {
        let live = match (&self.kept, self.pruned_with) {
            (Some(k), _) => format!("the running system's {} is kept at {}", self.live, k.escaped()),
            (None, Some(n)) => {
                format!("the running system's {} was kept until generation {n} was pruned", self.live)
            }
            (None, None) => "the running system had removed it".to_string(),
        };
        format!("{}: the plan's {} is in the new tree; {live}", self.path.escaped(), self.plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_reads_as_one_line_naming_both_versions_and_the_kept_copy() {
        let c = Conflict {
            path: "/etc/app.conf".into(),
            plan: Version { kind: "file".into(), size: Some(12) },
            live: Version { kind: "file".into(), size: Some(40) },
            kept: Some("/var/lib/snapinst/conflicts/t1/etc/app.conf".into()),
            pruned_with: None,
        };
        assert_eq!(
            c.line(),
            "/etc/app.conf: the plan's file (12 bytes) is in the new tree; the running system's file (40 bytes) is kept at /var/lib/snapinst/conflicts/t1/etc/app.conf"
        );
        let gone = Conflict { live: Version { kind: "absent".into(), size: None }, kept: None, ..c };
        assert!(gone.line().ends_with("the running system had removed it"));
        let pruned = Conflict { kept: None, pruned_with: Some(3), ..gone };
        assert!(pruned.line().ends_with("was kept until generation 3 was pruned"), "{}", pruned.line());
    }
}
