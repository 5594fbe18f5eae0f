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

    /// Random operation scripts against the delta: for a random tree and a random script of changes to a copy of
    /// it (files written, removed, made, changed in type, chmodded, symlinked, moved), the delta the comparison
    /// makes, swapped forward onto the original, gives exactly the changed tree, and swapped back gives exactly
    /// the original. `PROPTEST_CASES` sets how many scripts (CI runs the default, bounded count).
    mod delta_round_trip {
        use super::*;
        use crate::delta::{Delta, Direction};
        use crate::inroot::Root;
        use proptest::prelude::*;
        use std::collections::BTreeMap;
        use std::os::unix::fs::{MetadataExt, PermissionsExt};

        const NAMES: [&str; 4] = ["a", "b", "c", "d"];

        #[derive(Debug, Clone)]
        enum Op {
            Write(Vec<usize>, u8),
            Remove(Vec<usize>),
            Mkdir(Vec<usize>),
            Chmod(Vec<usize>, u32),
            Symlink(Vec<usize>, usize),
            Move(Vec<usize>, Vec<usize>),
        }

        fn path_of(ix: &[usize]) -> PathBuf {
            ix.iter().map(|i| NAMES[i % NAMES.len()]).collect()
        }

        fn op() -> impl Strategy<Value = Op> {
            let p = proptest::collection::vec(0..NAMES.len(), 1..4);
            prop_oneof![
                (p.clone(), any::<u8>()).prop_map(|(p, b)| Op::Write(p, b)),
                p.clone().prop_map(Op::Remove),
                p.clone().prop_map(Op::Mkdir),
                (p.clone(), prop_oneof![Just(0o600u32), Just(0o755), Just(0o4711)]).prop_map(|(p, m)| Op::Chmod(p, m)),
                (p.clone(), 0..NAMES.len()).prop_map(|(p, t)| Op::Symlink(p, t)),
                (p.clone(), p).prop_map(|(a, b)| Op::Move(a, b)),
            ]
        }

        /// Do `op` in `tree` where it can be done (a missing parent or a clash makes it a no-op).
        fn run(tree: &Path, op: &Op) {
            let _ = match op {
                Op::Write(p, b) => fs::write(tree.join(path_of(p)), vec![*b; 1 + *b as usize % 7]),
                Op::Remove(p) => {
                    let at = tree.join(path_of(p));
                    match fs::symlink_metadata(&at) {
                        Ok(m) if m.is_dir() => fs::remove_dir_all(at),
                        Ok(_) => fs::remove_file(at),
                        Err(e) => Err(e),
                    }
                }
                Op::Mkdir(p) => fs::create_dir(tree.join(path_of(p))),
                Op::Chmod(p, m) => {
                    let at = tree.join(path_of(p));
                    match fs::symlink_metadata(&at) {
                        Ok(md) if !md.file_type().is_symlink() => {
                            fs::set_permissions(at, fs::Permissions::from_mode(*m))
                        }
                        _ => Ok(()),
                    }
                }
                Op::Symlink(p, t) => std::os::unix::fs::symlink(NAMES[*t], tree.join(path_of(p))),
                Op::Move(a, b) => {
                    let (a, b) = (path_of(a), path_of(b));
                    if b.starts_with(&a) {
                        Ok(())
                    } else {
                        fs::rename(tree.join(a), tree.join(b))
                    }
                }
            };
        }

        /// Kind, mode, contents or target, and (for a non-directory) modification time of every path.
        fn manifest(tree: &Path) -> BTreeMap<PathBuf, String> {
            let mut m = BTreeMap::new();
            let mut stack = vec![PathBuf::new()];
            while let Some(rel) = stack.pop() {
                for e in fs::read_dir(tree.join(&rel)).unwrap() {
                    let e = e.unwrap();
                    let p = rel.join(e.file_name());
                    let md = fs::symlink_metadata(tree.join(&p)).unwrap();
                    let what = if md.is_dir() {
                        stack.push(p.clone());
                        format!("dir {:o}", md.mode() & 0o7777)
                    } else if md.file_type().is_symlink() {
                        format!("symlink {:?}", fs::read_link(tree.join(&p)).unwrap())
                    } else {
                        let body = fs::read(tree.join(&p)).unwrap();
                        format!("file {:o} {body:?} {}.{}", md.mode() & 0o7777, md.mtime(), md.mtime_nsec())
                    };
                    m.insert(p, what);
                }
            }
            m
        }

        fn round_trip(base_ops: &[Op], script: &[Op]) -> Result<(), TestCaseError> {
            let t = tempfile::tempdir().unwrap();
            let (base, stage, tree) = (t.path().join("base"), t.path().join("stage"), t.path().join("tree"));
            fs::create_dir(&base).unwrap();
            for o in base_ops {
                run(&base, o);
            }
            fsutil::copy_tree(&base, &stage).unwrap();
            for o in script {
                run(&stage, o);
            }
            fsutil::copy_tree(&base, &tree).unwrap();
            let changes = treediff::diff(&base, &stage, &[]).unwrap();
            let entries = entries_of(&changes, &base, &stage).unwrap();
            let d = Delta::at(&t.path().join("delta"));
            d.create().unwrap();
            for (k, e) in entries.iter().enumerate() {
                if let Entry::Replace { path, after: true, .. } = e {
                    fsutil::copy_tree(&stage.join(path), &d.side("new").join(k.to_string())).unwrap();
                }
            }
            d.write_index(&entries).unwrap();
            let root = Root::open(&tree).unwrap();
            d.swap(&root, Direction::Forward, || {}).unwrap();
            prop_assert_eq!(manifest(&tree), manifest(&stage), "forward: {:?}", entries);
            d.swap(&root, Direction::Backward, || {}).unwrap();
            prop_assert_eq!(manifest(&tree), manifest(&base), "backward: {:?}", entries);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: crate::plan::fuzz_cases(48), ..ProptestConfig::default() })]
            #[test]
            fn a_delta_swaps_forward_and_back_exactly(
                base in proptest::collection::vec(op(), 0..24),
                script in proptest::collection::vec(op(), 1..16),
            ) {
                round_trip(&base, &script)?;
            }
        }
    }
}
