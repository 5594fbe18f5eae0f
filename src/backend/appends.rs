//! Appends made on both sides of a commit, merged in the order they were made. Right after the commit of a
//! directory target, a log file may have received records in the replaced tree (in the commit's last instant,
//! after the carry-over's last look) and then in the new tree (since the exchange). When both versions are the
//! version the last look saw with bytes added at its end, and nothing else about the file changed, no write
//! contradicts another: the file is what the look saw, then what was appended before the exchange, then what was
//! appended after it. Anything else is a conflict for the caller to keep.

use crate::pathbytes::PathText;
use anyhow::{Context, Result};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// One version of the file: where it is and what `lstat` said of it.
pub(super) struct Side<'a> {
    pub path: &'a Path,
    pub meta: &'a Metadata,
}

/// Whether `a` and `b` are both regular files with the same mode and owner.
fn same_kind(a: &Metadata, b: &Metadata) -> bool {
    a.is_file() && b.is_file() && (a.mode(), a.uid(), a.gid()) == (b.mode(), b.uid(), b.gid())
}

/// What `merge` found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Merge {
    /// The two do not both extend the base: a conflict.
    Apart,
    /// `later` holds `earlier` whole already (merged before: a finishing done again after a crash).
    Holds,
    /// The merge is written.
    Written,
}

/// When `earlier` (appended to before the exchange) and `later` (appended to after it) both extend `base` (the last
/// look), write their merge to the new file `to`: `earlier` whole, then what `later` added; unless `later` extends
/// `earlier` already.
pub(super) fn merge(base: &Side, earlier: &Side, later: &Side, to: &Path) -> Result<Merge> {
    let len = base.meta.size();
    let extends = |a: &Side, s: &Side| -> Result<bool> {
        let n = a.meta.size();
        Ok(same_kind(a.meta, s.meta) && s.meta.size() >= n && crate::treediff::same_prefix(a.path, s.path, n)?)
    };
    if !extends(base, earlier)? || !extends(base, later)? {
        return Ok(Merge::Apart);
    }
    if extends(earlier, later)? {
        return Ok(Merge::Holds);
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {}", to.escaped()))?;
    for (from, skip) in [(earlier.path, 0), (later.path, len)] {
        let mut f = File::open(from).with_context(|| format!("opening {}", from.escaped()))?;
        f.seek(SeekFrom::Start(skip)).with_context(|| format!("reading {}", from.escaped()))?;
        std::io::copy(&mut f, &mut out).with_context(|| format!("copying {} to {}", from.escaped(), to.escaped()))?;
    }
    // Durable before it replaces the live file: a btrfs commit may make the exchange durable before the data.
    out.sync_all().with_context(|| format!("writing {}", to.escaped()))?;
    Ok(Merge::Written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn merged(base: &str, earlier: &str, later: &str) -> Option<String> {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str, c: &str| {
            let path = d.path().join(n);
            fs::write(&path, c).unwrap();
            path
        };
        let (b, e, l) = (p("b", base), p("e", earlier), p("l", later));
        let m = |path: &Path| fs::symlink_metadata(path).unwrap();
        let (bm, em, lm) = (m(&b), m(&e), m(&l));
        let to = d.path().join("to");
        let side = |path, meta| Side { path, meta };
        match merge(&side(&b, &bm), &side(&e, &em), &side(&l, &lm), &to).unwrap() {
            Merge::Written => Some(fs::read_to_string(&to).unwrap()),
            Merge::Holds => Some("(holds)".to_string()),
            Merge::Apart => None,
        }
    }

    #[test]
    fn a_merge_done_already_is_not_done_again() {
        assert_eq!(merged("1\n", "1\n2\n", "1\n2\n3\n").as_deref(), Some("(holds)"));
    }

    #[test]
    fn appends_on_both_sides_merge_earlier_first() {
        assert_eq!(merged("1\n2\n", "1\n2\n3\n", "1\n2\n4\n5\n").as_deref(), Some("1\n2\n3\n4\n5\n"));
    }

    #[test]
    fn a_side_that_rewrote_the_file_does_not_merge() {
        assert_eq!(merged("1\n2\n", "1\n2\n3\n", "x\n2\n4\n"), None);
        assert_eq!(merged("1\n2\n", "1\n", "1\n2\n4\n"), None);
    }
}
