//! A delta made by comparing two trees, for the stagers whose stage is a whole tree rather than an upper layer: the
//! copy stager (the part's tree against its copy) and the snapshot stager (the snapshot taken with the stage against
//! the stage). Every path the comparison finds changed gets a delta entry, and its new version is copied into the
//! delta on the part's own filesystem (by reflink where the filesystem has them, as btrfs does); then the delta is
//! synced, its index last, before the commit record. From there on the part commits and rolls back by renames.

use super::Ctx;
use crate::delta::{self, Entry};
use crate::fsutil;
use crate::pathbytes::PathText;
use crate::state::TxnRecord;
use crate::treediff::{self, Change, ChangeKind};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Write `rec`'s delta on the part `ctx`: what changed from `before` to `stage`, the state area `area` (relative
/// to both) left out.
/// Returns the paths the running system also changed meanwhile (see `delta_gens::write_staged_delta`).
pub(super) fn write_delta(
    ctx: &Ctx,
    rec: &TxnRecord,
    before: &Path,
    stage: &Path,
    area: &Path,
) -> Result<Vec<crate::conflicts::Conflict>> {
    let changes = treediff::diff(before, stage, &[area.to_path_buf()])?;
    let entries = entries_of(&changes, before, stage)?;
    super::delta_gens::write_staged_delta(ctx, rec, &entries, super::delta_gens::Put::Written, |path, dest| {
        fsutil::copy_tree(&stage.join(path), dest)
            .with_context(|| format!("copying /{} into the delta", path.escaped()))
    })
}

/// Turn the changes from `tree` to `stage` (sorted, a directory before what is below it) into delta entries: a
/// path added, removed, changed or changed in type is replaced whole (what is below it moves with it), and a
/// directory on both sides whose own metadata changed gets a metadata entry.
fn entries_of(changes: &[Change], tree: &Path, stage: &Path) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut whole: Option<PathBuf> = None;
    for c in changes {
        let rel = c.path.strip_prefix("/").unwrap_or(&c.path).to_path_buf();
        if whole.as_ref().is_some_and(|w| rel.starts_with(w) && rel != *w) {
            continue;
        }
        if c.kind == ChangeKind::Metadata && fs::symlink_metadata(stage.join(&rel)).is_ok_and(|m| m.is_dir()) {
            let meta = |root: &Path| -> Result<delta::Meta> {
                let path = root.join(&rel);
                delta::read_meta(&fs::File::open(&path).with_context(|| format!("opening {}", path.escaped()))?)
            };
            entries.push(Entry::Meta { before: meta(tree)?, after: meta(stage)?, path: rel });
            continue;
        }
        // A change of type comes as the old path removed, then the new one added: one entry replaces it.
        if let (ChangeKind::Added, Some(Entry::Replace { path, after, .. })) = (c.kind, entries.last_mut()) {
            if *path == rel {
                *after = true;
                continue;
            }
        }
        let (before, after) = match c.kind {
            ChangeKind::Added => (false, true),
            ChangeKind::Removed => (true, false),
            ChangeKind::Modified | ChangeKind::Metadata => (true, true),
        };
        entries.push(Entry::Replace { path: rel.clone(), before, after });
        whole = Some(rel);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, path: &str) -> Change {
        Change { kind, path: PathBuf::from(path) }
    }

    fn shown(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| match e {
                Entry::Replace { path, before, after } => format!("replace {} {before} {after}", path.escaped()),
                Entry::Meta { path, .. } => format!("meta {}", path.escaped()),
            })
            .collect()
    }

    #[test]
    fn a_subtree_moves_whole_and_a_change_of_type_is_one_entry() {
        let base = std::env::temp_dir().join(format!("snapinst-copy-entries-{}", std::process::id()));
        let (tree, stage) = (base.join("tree"), base.join("stage"));
        for d in [&tree, &stage] {
            fs::create_dir_all(d.join("EFI")).unwrap();
        }
        fs::create_dir_all(stage.join("kind")).unwrap();
        let changes = [
            change(ChangeKind::Metadata, "/EFI"),
            change(ChangeKind::Modified, "/EFI/grub.cfg"),
            change(ChangeKind::Added, "/EFI/new"),
            change(ChangeKind::Added, "/EFI/new/a.efi"),
            change(ChangeKind::Removed, "/kind"),
            change(ChangeKind::Added, "/kind"),
            change(ChangeKind::Added, "/kind/x"),
            change(ChangeKind::Removed, "/old"),
            change(ChangeKind::Removed, "/old/b"),
            change(ChangeKind::Metadata, "/one.txt"),
        ];
        let got = shown(&entries_of(&changes, &tree, &stage).unwrap());
        fs::remove_dir_all(&base).unwrap();
        assert_eq!(
            got,
            [
                "meta EFI",
                "replace EFI/grub.cfg true true",
                "replace EFI/new false true",
                "replace kind true true",
                "replace old true false",
                "replace one.txt true true",
            ]
        );
    }
}
