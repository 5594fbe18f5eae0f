//! The `service` step: enable, disable, mask or unmask a systemd unit in the staged root without a running systemd,
//! the way `systemctl --root` does it. Enabling reads the unit's `[Install]` section and makes the symlinks it asks
//! for in /etc/systemd/system (`WantedBy=` and `RequiredBy=` as `.wants/` and `.requires/` links, `Alias=` as
//! links named after the alias, `Also=` units enabled with it); disabling removes the same links; masking links the
//! unit to /dev/null.

use super::{files, ChangeGuard};
use crate::inroot::Root;
use crate::plan::{RootPath, UnitChange};
use anyhow::{bail, Context, Result};
use std::path::Path;

const CONFIG_DIR: &str = "etc/systemd/system";
/// Where unit files are searched, in the order of Debian 12's systemd (runtime directories are not part of a root);
/// links point at the first place a unit is found, as `systemctl` makes them.
const UNIT_DIRS: &[&str] =
    &["etc/systemd/system", "usr/local/lib/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"];

pub(super) fn change(root: &Root, guard: &mut dyn ChangeGuard, unit: &str, change: UnitChange) -> Result<()> {
    match change {
        UnitChange::Enable => enable(root, guard, unit, &mut Vec::new()),
        UnitChange::Disable => disable(root, guard, unit, &mut Vec::new()),
        UnitChange::Mask => mask(root, guard, unit),
        UnitChange::Unmask => unmask(root, guard, unit),
    }
}

fn config_path(name: &str) -> RootPath {
    RootPath::from_rel(&Path::new(CONFIG_DIR).join(name))
}

/// The unit file a link target names (`/usr/lib/systemd/system/x.service`), as a path inside the root.
fn unit_file(target: &str) -> RootPath {
    RootPath::from_rel(Path::new(target.trim_start_matches('/')))
}

fn is_masked(root: &Root, unit: &str) -> Result<bool> {
    Ok(root.readlink(&config_path(unit))?.is_some_and(|t| t == "/dev/null"))
}

/// A unit name split at its `@`: `getty@tty1.service` is template `getty@.service`, instance `tty1`.
struct UnitName<'a> {
    full: &'a str,
    prefix: &'a str,
    instance: Option<&'a str>,
    template: Option<String>,
}

fn split_name(unit: &str) -> UnitName<'_> {
    let (stem, suffix) = unit.rsplit_once('.').unwrap_or((unit, ""));
    match stem.split_once('@') {
        Some((prefix, instance)) => UnitName {
            full: unit,
            prefix,
            instance: (!instance.is_empty()).then_some(instance),
            template: Some(format!("{prefix}@.{suffix}")),
        },
        None => UnitName { full: unit, prefix: stem, instance: None, template: None },
    }
}

/// The unit file for `unit` (or its template), as a path inside the root, and its text.
fn find_unit_file(root: &Root, name: &UnitName) -> Result<(RootPath, String)> {
    let candidates = std::iter::once(name.full.to_string()).chain(name.template.clone());
    for file in candidates {
        for dir in UNIT_DIRS {
            let path = RootPath::from_rel(&Path::new(dir).join(&file));
            if *dir == CONFIG_DIR && root.readlink(&path)?.is_some() {
                continue; // a link in the configuration directory is an alias or a mask, not the unit's file
            }
            if let Some(bytes) = root.read(&path)? {
                let text = String::from_utf8(bytes).with_context(|| format!("{path} is not UTF-8"))?;
                return Ok((path, text));
            }
        }
    }
    bail!(
        "unit {} has no unit file in the root ({})",
        name.full,
        UNIT_DIRS.iter().map(|d| format!("/{d}")).collect::<Vec<_>>().join(", ")
    )
}

/// The `[Install]` section's settings, specifiers expanded.
#[derive(Default)]
struct Install {
    wanted_by: Vec<String>,
    required_by: Vec<String>,
    alias: Vec<String>,
    also: Vec<String>,
    default_instance: Option<String>,
}

fn parse_install(text: &str, name: &UnitName) -> Install {
    let mut install = Install::default();
    let mut in_install = false;
    let mut logical = String::new();
    for raw in text.lines() {
        // A trailing backslash continues the line.
        if let Some(part) = raw.strip_suffix('\\') {
            logical.push_str(part);
            logical.push(' ');
            continue;
        }
        logical.push_str(raw);
        let line = std::mem::take(&mut logical);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        let Some((key, value)) = line.split_once('=').filter(|_| in_install) else { continue };
        let values = || value.split_whitespace().map(|v| expand(v, name)).collect::<Vec<_>>();
        match key.trim() {
            "WantedBy" => install.wanted_by.extend(values()),
            "RequiredBy" => install.required_by.extend(values()),
            "Alias" => install.alias.extend(values()),
            "Also" => install.also.extend(values()),
            "DefaultInstance" => install.default_instance = Some(value.trim().to_string()),
            _ => {}
        }
    }
    install
}

/// Expand the specifiers systemctl expands in `[Install]`: %n %N %p %i %%.
fn expand(value: &str, name: &UnitName) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(name.full),
            Some('N') => out.push_str(name.full.rsplit_once('.').map_or(name.full, |(s, _)| s)),
            Some('p') => out.push_str(name.prefix),
            Some('i') => out.push_str(name.instance.unwrap_or("")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// A symlink an enabled unit needs: its path and its target.
type Link = (RootPath, String);

/// The links enabling `unit` makes, and the units its `Also=` names (both empty for a static unit).
fn install_links(root: &Root, unit: &str) -> Result<(Vec<Link>, Vec<String>)> {
    let name = split_name(unit);
    let (file, text) = find_unit_file(root, &name)?;
    let install = parse_install(&text, &name);
    let mut instance_name = name.full.to_string();
    if name.template.is_some() && name.instance.is_none() {
        match &install.default_instance {
            Some(i) => instance_name = name.full.replacen("@.", &format!("@{i}."), 1),
            None => bail!(
                "{unit} is a template without DefaultInstance=; name an instance (like {}@NAME.{})",
                name.prefix,
                unit.rsplit('.').next().unwrap_or("service")
            ),
        }
    }
    // A unit file's name is the unit's name, which is text: the link target is written as it is.
    let target = format!("/{}", file.rel().to_string_lossy());
    let mut links = Vec::new();
    for (list, kind) in [(&install.wanted_by, "wants"), (&install.required_by, "requires")] {
        for by in list {
            links.push((config_path(&format!("{by}.{kind}/{instance_name}")), target.clone()));
        }
    }
    for alias in &install.alias {
        links.push((config_path(alias), target.clone()));
    }
    Ok((links, install.also))
}

fn enable(root: &Root, guard: &mut dyn ChangeGuard, unit: &str, done: &mut Vec<String>) -> Result<()> {
    if done.iter().any(|d| d == unit) {
        return Ok(());
    }
    done.push(unit.to_string());
    if is_masked(root, unit)? {
        bail!("{unit} is masked (/{CONFIG_DIR}/{unit} links to /dev/null); unmask it first");
    }
    let (links, also) = install_links(root, unit)?;
    if links.is_empty() && also.is_empty() {
        bail!("{unit} has no [Install] section: it cannot be enabled (it starts when another unit needs it)");
    }
    for (link, target) in links {
        match root.readlink(&link)? {
            Some(_) if root.same_file(&link, &unit_file(&target)) => {}
            Some(t) => bail!("{link} already links to {} (snapinst does not replace it)", t.to_string_lossy()),
            None if root.lstat(&link)?.is_some() => {
                bail!("{link} exists and is not a symlink (snapinst does not replace it)")
            }
            None => files::symlink(root, guard, &link, &target)?,
        }
    }
    for other in also {
        enable(root, guard, &other, done)?;
    }
    Ok(())
}

fn disable(root: &Root, guard: &mut dyn ChangeGuard, unit: &str, done: &mut Vec<String>) -> Result<()> {
    if done.iter().any(|d| d == unit) {
        return Ok(());
    }
    done.push(unit.to_string());
    if is_masked(root, unit)? {
        // As systemctl: a masked unit's [Install] section is not read, so its links stay.
        return Ok(());
    }
    let (links, also) = install_links(root, unit)?;
    for (link, _) in links {
        if root.readlink(&link)?.is_some() {
            files::remove(root, guard, &link, false, true)?;
            // As systemctl: a .wants/ or .requires/ directory left empty goes too.
            if let Some(dir) = link.parent().filter(|d| d.rel().parent() == Some(Path::new(CONFIG_DIR))) {
                if root.is_empty_dir(&dir)? {
                    files::remove(root, guard, &dir, false, true)?;
                }
            }
        }
    }
    for other in also {
        disable(root, guard, &other, done)?;
    }
    Ok(())
}

fn mask(root: &Root, guard: &mut dyn ChangeGuard, unit: &str) -> Result<()> {
    let link = config_path(unit);
    if is_masked(root, unit)? {
        return Ok(());
    }
    if root.lstat(&link)?.is_some() {
        bail!("{link} exists; masking would replace it (remove it first with a remove step)");
    }
    files::symlink(root, guard, &link, "/dev/null")
}

fn unmask(root: &Root, guard: &mut dyn ChangeGuard, unit: &str) -> Result<()> {
    if is_masked(root, unit)? {
        files::remove(root, guard, &config_path(unit), false, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_section_with_specifiers_and_continuations() {
        let name = split_name("getty@tty1.service");
        let text = "[Unit]\nWantedBy=ignored.target\n[Install]\nWantedBy=getty.target \\\n  multi-user.target\n\
                    Alias=%p-%i.service\n# WantedBy=commented.target\nAlso=other.socket\n";
        let install = parse_install(text, &name);
        assert_eq!(install.wanted_by, ["getty.target", "multi-user.target"]);
        assert_eq!(install.alias, ["getty-tty1.service"]);
        assert_eq!(install.also, ["other.socket"]);
        assert!(install.required_by.is_empty());
        assert_eq!(name.template.as_deref(), Some("getty@.service"));
    }
}
