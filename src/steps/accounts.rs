//! The target root's account database: /etc/passwd, /etc/group and their shadow files, read from the root (never
//! the host's), looked up by name, edited in memory and written back whole through the file steps' replace-by-rename
//! (keeping each file's mode and owner). Also the system id range from the root's /etc/login.defs.

use super::{files, ChangeGuard};
use crate::inroot::Root;
use crate::plan::{Principal, RootPath};
use anyhow::{bail, Result};
use std::path::Path;

/// One colon-separated database file (passwd, group, shadow or gshadow), as lines of fields.
pub(super) struct Table {
    file: &'static str,
    lines: Vec<Vec<String>>,
    /// Whether the root has this file (shadow files may be missing in a minimal root).
    exists: bool,
    changed: bool,
}

impl Table {
    fn path(file: &str) -> RootPath {
        RootPath::from_rel(&Path::new("etc").join(file))
    }

    /// Read `/etc/<file>`; a missing file is an error unless `optional`.
    pub fn read(root: &Root, file: &'static str, optional: bool) -> Result<Table> {
        let bytes = match root.read(&Table::path(file))? {
            Some(b) => b,
            None if optional => return Ok(Table { file, lines: Vec::new(), exists: false, changed: false }),
            None => bail!("the root has no /etc/{file}"),
        };
        let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("/etc/{file} in the root is not UTF-8"))?;
        let lines = text.lines().map(|l| l.split(':').map(str::to_owned).collect()).collect();
        Ok(Table { file, lines, exists: true, changed: false })
    }

    /// The entry whose first field is `name`.
    pub fn find(&self, name: &str) -> Option<&[String]> {
        self.lines.iter().find(|f| f[0] == name).map(Vec::as_slice)
    }

    /// The entry whose third field (the uid or gid) is `id`.
    pub fn find_id(&self, id: u32) -> Option<&[String]> {
        self.lines.iter().find(|f| f.get(2).and_then(|s| s.parse().ok()) == Some(id)).map(Vec::as_slice)
    }

    /// Add an entry (only where the file exists: a root without shadow files gets none).
    pub fn push(&mut self, fields: Vec<String>) {
        if self.exists {
            self.lines.push(fields);
            self.changed = true;
        }
    }

    /// Add `member` to the comma-separated member list in field `field` of entry `name`, if not already there.
    pub fn add_member(&mut self, name: &str, field: usize, member: &str) {
        let Some(entry) = self.lines.iter_mut().find(|f| f[0] == name) else { return };
        while entry.len() <= field {
            entry.push(String::new());
        }
        let list = &mut entry[field];
        if list.split(',').any(|m| m == member) {
            return;
        }
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(member);
        self.changed = true;
    }

    /// Write the file back if it changed, keeping its mode and owner.
    pub fn write(&self, root: &Root, guard: &mut dyn ChangeGuard) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let mut text = String::new();
        for fields in &self.lines {
            text.push_str(&fields.join(":"));
            text.push('\n');
        }
        files::rewrite(root, guard, &Table::path(self.file), text.as_bytes())
    }
}

/// An inclusive range of ids for system accounts.
pub(super) struct IdRange {
    pub min: u32,
    pub max: u32,
}

/// The root's system uid or gid range (`SYS_UID_MIN`/`SYS_UID_MAX` or the GID pair in /etc/login.defs; 100-999
/// when not set, as Debian's adduser uses).
pub(super) fn system_range(root: &Root, kind: &str) -> Result<IdRange> {
    let defs = root.read(&RootPath::from_rel(Path::new("etc/login.defs")))?.unwrap_or_default();
    let defs = String::from_utf8_lossy(&defs);
    let value = |key: &str, default: u32| {
        defs.lines()
            .rev()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key)).then(|| w.next().and_then(|v| v.parse().ok())).flatten()
            })
            .unwrap_or(default)
    };
    let range = IdRange { min: value(&format!("SYS_{kind}_MIN"), 100), max: value(&format!("SYS_{kind}_MAX"), 999) };
    if range.min > range.max {
        bail!("the root's /etc/login.defs gives an empty system {kind} range ({}-{})", range.min, range.max);
    }
    Ok(range)
}

fn lookup(root: &Root, p: &Principal, file: &'static str, what: &str) -> Result<u32> {
    let name = match p {
        Principal::Id(n) => return Ok(*n),
        Principal::Name(n) => n,
    };
    let table = Table::read(root, file, false)?;
    match table.find(name).and_then(|f| f.get(2)).and_then(|s| s.parse().ok()) {
        Some(id) => Ok(id),
        None => bail!("{what} \"{name}\" is not in the root's /etc/{file}"),
    }
}

pub(super) fn uid(root: &Root, p: &Principal) -> Result<u32> {
    lookup(root, p, "passwd", "owner")
}

pub(super) fn gid(root: &Root, p: &Principal) -> Result<u32> {
    lookup(root, p, "group", "group")
}
