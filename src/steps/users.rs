//! The `group` and `user` steps: ensure a system group or user in the staged root, editing /etc/group, /etc/gshadow,
//! /etc/passwd and /etc/shadow together. An account that already exists with the settings the plan names is left
//! alone; one that exists with other settings is an error naming the difference. New ids come from the root's
//! system range the way shadow allocates them (see [`allocate`]), and a user's own new group takes the user's number
//! when it is free: the same entries `groupadd --system` and `useradd --system` write.

use super::accounts::{system_range, IdRange, Table};
use super::{files, ChangeGuard};
use crate::inroot::Root;
use crate::plan::{Attrs, GroupSpec, Principal, UserSpec};
use anyhow::{bail, Result};

const DEFAULT_HOME: &str = "/nonexistent";
const DEFAULT_SHELL: &str = "/usr/sbin/nologin";

/// The account files, read together so that every edit sees the others.
struct Db {
    passwd: Table,
    shadow: Table,
    group: Table,
    gshadow: Table,
}

impl Db {
    fn read(root: &Root) -> Result<Db> {
        Ok(Db {
            passwd: Table::read(root, "passwd", false)?,
            shadow: Table::read(root, "shadow", true)?,
            group: Table::read(root, "group", false)?,
            gshadow: Table::read(root, "gshadow", true)?,
        })
    }

    /// Group files first: a passwd entry never names a group that is not written yet.
    fn write(&self, root: &Root, guard: &mut dyn ChangeGuard) -> Result<()> {
        self.group.write(root, guard)?;
        self.gshadow.write(root, guard)?;
        self.passwd.write(root, guard)?;
        self.shadow.write(root, guard)
    }

    fn gid_of(&self, name: &str) -> Option<u32> {
        self.group.find(name).and_then(|f| f.get(2)).and_then(|s| s.parse().ok())
    }

    /// Make group `name` (with `gid`, or the highest free system gid); returns its gid.
    fn add_group(&mut self, root: &Root, name: &str, gid: Option<u32>) -> Result<u32> {
        let gid = match gid {
            Some(g) => {
                if let Some(other) = self.group.find_id(g) {
                    bail!("gid {g} is already used by group \"{}\"", other[0]);
                }
                g
            }
            None => allocate(&system_range(root, "GID")?, |g| self.group.find_id(g).is_some())
                .ok_or_else(|| anyhow::anyhow!("no free gid left in the root's system range"))?,
        };
        self.group.push(vec![name.into(), "x".into(), gid.to_string(), String::new()]);
        self.gshadow.push(vec![name.into(), "!".into(), String::new(), String::new()]);
        Ok(gid)
    }
}

/// A new system id as shadow's `useradd --system` and `groupadd --system` pick it: the highest free id below the
/// lowest one in use in the range (so system ids grow down in one block), else any free id, highest first.
fn allocate(range: &IdRange, used: impl Fn(u32) -> bool) -> Option<u32> {
    let below_lowest_used = (range.min..=range.max).find(|&id| used(id)).map_or(Some(range.max), |l| l.checked_sub(1));
    let below = below_lowest_used.and_then(|top| (range.min..=top.min(range.max)).rev().find(|&id| !used(id)));
    below.or_else(|| (range.min..=range.max).rev().find(|&id| !used(id)))
}

pub(super) fn group(root: &Root, guard: &mut dyn ChangeGuard, spec: &GroupSpec) -> Result<()> {
    let mut db = Db::read(root)?;
    match (db.gid_of(&spec.name), spec.gid) {
        (Some(have), Some(want)) if have != want => {
            bail!("group \"{}\" already exists with gid {have} (the plan asks for {want})", spec.name)
        }
        (Some(_), _) => return Ok(()),
        (None, gid) => {
            db.add_group(root, &spec.name, gid)?;
        }
    }
    db.write(root, guard)
}

pub(super) fn user(root: &Root, guard: &mut dyn ChangeGuard, spec: &UserSpec) -> Result<()> {
    let mut db = Db::read(root)?;
    for g in &spec.groups {
        if db.group.find(g).is_none() {
            bail!("supplementary group \"{g}\" is not in the root's /etc/group (add a group step before this one)");
        }
    }
    let primary = spec.group.as_deref().unwrap_or(&spec.name);
    let existing = db.passwd.find(&spec.name).map(<[String]>::to_vec);
    let (uid, gid) = match existing {
        Some(entry) => check_existing(&db, spec, &entry)?,
        None => add_user(root, &mut db, spec, primary)?,
    };
    for g in &spec.groups {
        db.group.add_member(g, 3, &spec.name);
        db.gshadow.add_member(g, 3, &spec.name);
    }
    db.write(root, guard)?;
    if spec.create_home {
        if let Some(home) = &spec.home {
            if root.lstat(home)?.is_none() {
                let attrs =
                    Attrs { mode: Some(0o755), owner: Some(Principal::Id(uid)), group: Some(Principal::Id(gid)) };
                files::dir(root, guard, home, &attrs)?;
            }
        }
    }
    Ok(())
}

/// A user that exists must match every setting the plan names; returns its uid and gid.
fn check_existing(db: &Db, spec: &UserSpec, entry: &[String]) -> Result<(u32, u32)> {
    let field = |i: usize| entry.get(i).map(String::as_str).unwrap_or("");
    let uid: u32 =
        field(2).parse().map_err(|_| anyhow::anyhow!("user \"{}\" has a bad uid in /etc/passwd", spec.name))?;
    let gid: u32 =
        field(3).parse().map_err(|_| anyhow::anyhow!("user \"{}\" has a bad gid in /etc/passwd", spec.name))?;
    let mut differences = Vec::new();
    if let Some(want) = spec.uid.filter(|&u| u != uid) {
        differences.push(format!("uid {uid} (the plan asks for {want})"));
    }
    if let Some(g) = &spec.group {
        match db.gid_of(g) {
            Some(want) if want == gid => {}
            Some(_) => differences.push(format!("primary gid {gid} (the plan asks for group \"{g}\")")),
            None => bail!("group \"{g}\" is not in the root's /etc/group"),
        }
    }
    let home = spec.home.as_ref().map(ToString::to_string);
    for (name, i, want) in
        [("home", 5, home.as_deref()), ("shell", 6, spec.shell.as_deref()), ("comment", 4, spec.comment.as_deref())]
    {
        if let Some(want) = want.filter(|&w| w != field(i)) {
            differences.push(format!("{name} \"{}\" (the plan asks for \"{want}\")", field(i)));
        }
    }
    if !differences.is_empty() {
        bail!("user \"{}\" already exists with {}", spec.name, differences.join(", "));
    }
    Ok((uid, gid))
}

fn add_user(root: &Root, db: &mut Db, spec: &UserSpec, primary: &str) -> Result<(u32, u32)> {
    let range = system_range(root, "UID")?;
    let uid = match spec.uid {
        Some(u) => {
            if let Some(other) = db.passwd.find_id(u) {
                bail!("uid {u} is already used by user \"{}\"", other[0]);
            }
            u
        }
        // A new own group takes the same number when it is free (below).
        None => allocate(&range, |u| db.passwd.find_id(u).is_some())
            .ok_or_else(|| anyhow::anyhow!("no free uid left in the root's system range"))?,
    };
    let gid = match db.gid_of(primary) {
        Some(g) => g,
        None if spec.group.is_some() => bail!("group \"{primary}\" is not in the root's /etc/group"),
        None => {
            let same = (db.group.find_id(uid).is_none()).then_some(uid);
            db.add_group(root, primary, same)?
        }
    };
    let home = spec.home.as_ref().map(ToString::to_string).unwrap_or_else(|| DEFAULT_HOME.into());
    let shell = spec.shell.clone().unwrap_or_else(|| DEFAULT_SHELL.into());
    let comment = spec.comment.clone().unwrap_or_default();
    db.passwd.push(vec![spec.name.clone(), "x".into(), uid.to_string(), gid.to_string(), comment, home, shell]);
    let days =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 86400).unwrap_or(0);
    let mut shadow = vec![spec.name.clone(), "!".into(), days.to_string()];
    shadow.resize(9, String::new());
    db.shadow.push(shadow);
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_grow_down_from_the_lowest_used() {
        let range = IdRange { min: 100, max: 999 };
        assert_eq!(allocate(&range, |_| false), Some(999));
        assert_eq!(allocate(&range, |id| id == 998 || id == 999), Some(997));
        // A gap above the lowest used id is not taken while there is room below it.
        assert_eq!(allocate(&range, |id| id == 500 || id == 999), Some(499));
        // No room below the lowest used id: the highest free id anywhere.
        assert_eq!(allocate(&range, |id| id <= 101 || id == 999), Some(998));
        assert_eq!(allocate(&IdRange { min: 100, max: 101 }, |_| true), None);
    }
}
