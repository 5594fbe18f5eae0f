//! The `package` step: Debian packages installed and removed with the staged root's own dpkg and apt, run in the
//! sandbox like a `run` step. Removals go first, then the plan's local .deb files (copied to a private host
//! directory that the sandbox shows read-only inside the root, so the stage never holds them), then packages from
//! the root's apt sources, then (`upgrade`) the whole system upgraded from them (`apt-get full-upgrade`). A failing command (a maintainer script, a missing dependency) fails the step, and the
//! staged root, dpkg database included, is discarded with the transaction.

use super::commands::{judge, run_staged};
use super::StepFailure;
use crate::inroot::Root;
use crate::pathbytes::PathText;
use crate::plan::{Command, PackageSpec, RootPath};
use crate::sandbox::SHARE_DIR;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(super) fn apply(
    root: &Root,
    stage_env: &[(String, String)],
    txn: &str,
    spec: &PackageSpec,
) -> Result<String, StepFailure> {
    let plain = |e: anyhow::Error| StepFailure { message: format!("{e:#}"), output: String::new() };
    let mut output = String::new();
    let mut step = |mut argv: Vec<String>, share: Option<&Path>| -> Result<(), StepFailure> {
        let status = StatusFd::start();
        if let Some(s) = &status {
            s.add_to(&mut argv);
        }
        let cmd =
            Command { argv, timeout: spec.timeout, env: environment(), pass_fd: status.as_ref().map(StatusFd::fd) };
        let out = judge(run_staged(root, share, stage_env, txn, &cmd)?, &cmd, 0)?;
        output.push_str(&out);
        Ok(())
    };
    if !spec.remove.is_empty() {
        let action = if spec.purge { "--purge" } else { "--remove" };
        step(args(&dpkg(&[action]), &spec.remove), None)?;
    }
    if !spec.debs.is_empty() {
        let inbox = Inbox::fill(txn, &spec.debs).map_err(plain)?;
        let names: Vec<String> = inbox.names.iter().map(|n| format!("{SHARE_DIR}/{n}")).collect();
        step(args(&dpkg(&["--force-confdef", "--force-confold", "--install"]), &names), Some(&inbox.dir))?;
    }
    if !spec.apt.is_empty() || spec.upgrade {
        if !has_apt_sources(root).map_err(plain)? {
            let what = if spec.apt.is_empty() {
                "the root cannot be upgraded"
            } else {
                "\"apt\" packages cannot be fetched; give them as \"debs\" instead"
            };
            return Err(plain(anyhow::anyhow!(
                "the root has no apt sources (/etc/apt/sources.list or /etc/apt/sources.list.d/), so {what}"
            )));
        }
        step(args(&["apt-get", "-q", "update"], &[]), None)?;
    }
    // A changed configuration file keeps the administrator's version (`--force-confold`), never asking.
    let mut apt_get =
        vec!["apt-get", "-q", "-y", "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"];
    if crate::nosync::suppressed() {
        apt_get.extend(["-o", "Dpkg::Options::=--force-unsafe-io"]);
    }
    if !spec.apt.is_empty() {
        step(args(&[&apt_get[..], &["--no-install-recommends", "install"]].concat(), &spec.apt), None)?;
    }
    if spec.upgrade {
        step(args(&[&apt_get[..], &["full-upgrade"]].concat(), &[]), None)?;
    }
    Ok(output)
}

/// `dpkg` with `rest`, and with `--force-unsafe-io` while syncs are suppressed: dpkg then does not ask for the
/// writeback and the fsync of each unpacked file before renaming it into place (the filter makes them no-ops;
/// this spares the calls). apt-get passes it on to dpkg the same way.
fn dpkg<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["dpkg"];
    if crate::nosync::suppressed() {
        argv.push("--force-unsafe-io");
    }
    argv.extend(rest);
    argv
}

fn args(head: &[&str], rest: &[String]) -> Vec<String> {
    head.iter().map(|s| s.to_string()).chain(rest.iter().cloned()).collect()
}

/// Debian's tools must never ask a question: there is nobody to answer.
fn environment() -> BTreeMap<String, String> {
    [("DEBIAN_FRONTEND", "noninteractive"), ("DEBCONF_NONINTERACTIVE_SEEN", "true")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn has_apt_sources(root: &Root) -> Result<bool> {
    let list = root.read(&RootPath::from_rel(Path::new("etc/apt/sources.list")))?;
    if list.is_some_and(|b| String::from_utf8_lossy(&b).lines().any(|l| l.trim_start().starts_with("deb"))) {
        return Ok(true);
    }
    let dir = root.path.join("etc/apt/sources.list.d");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(false) };
    Ok(entries.filter_map(|e| e.ok()).any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.ends_with(".list") || name.ends_with(".sources")
    }))
}

/// A private host directory holding copies of the step's .deb files; removed when dropped.
struct Inbox {
    dir: PathBuf,
    names: Vec<String>,
}

impl Inbox {
    fn fill(txn: &str, debs: &[PathBuf]) -> Result<Inbox> {
        let base = if Path::new("/run").is_dir() { PathBuf::from("/run/snapinst") } else { std::env::temp_dir() };
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.escaped()))?;
        let dir = base.join(format!("debs-{txn}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing the leftover {}", dir.escaped()))?;
        }
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.escaped()))?;
        let mut inbox = Inbox { dir, names: Vec::new() };
        for (i, deb) in debs.iter().enumerate() {
            let file = deb.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let name = format!("{i:03}-{file}");
            std::fs::copy(deb, inbox.dir.join(&name)).with_context(|| format!("copying {}", deb.escaped()))?;
            inbox.names.push(name);
        }
        Ok(inbox)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// While a progress bar is drawn (a terminal): a pipe given to dpkg as `--status-fd` (to apt-get as
/// `APT::Status-Fd`), read into the bar's message as the packages are unpacked and configured.
struct StatusFd {
    writer: std::io::PipeWriter,
}

impl StatusFd {
    fn start() -> Option<StatusFd> {
        if !crate::events::bar_shown() {
            return None;
        }
        let (reader, writer) = std::io::pipe().ok()?;
        // Ends at the end of the pipe: when the command and all it started are gone (the sandbox kills them all)
        // and `writer` is dropped.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(reader).lines().map_while(Result::ok) {
                if let Some(note) = status_note(&line) {
                    crate::events::progress_note(note);
                }
            }
        });
        Some(StatusFd { writer })
    }

    fn fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.writer)
    }

    /// The option that names the descriptor, for dpkg or apt-get.
    fn add_to(&self, argv: &mut Vec<String>) {
        let at = argv.len().min(1);
        let option = if argv.first().is_some_and(|a| a == "apt-get") {
            vec!["-o".to_string(), format!("APT::Status-Fd={}", self.fd())]
        } else {
            vec![format!("--status-fd={}", self.fd())]
        };
        argv.splice(at..at, option);
    }
}

/// What a line of dpkg's or apt's status output says is being done, for the progress bar.
fn status_note(line: &str) -> Option<String> {
    if let Some(rest) = line.strip_prefix("processing: ") {
        // dpkg: "processing: ACTION: PACKAGE"
        let (action, package) = rest.split_once(": ")?;
        return Some(format!("dpkg: {action} {package}"));
    }
    // apt: "pmstatus:PACKAGE:PERCENT:DESCRIPTION" (dpkg's work), "dlstatus:..." (downloads)
    let mut parts = line.splitn(4, ':');
    let (kind, _package, percent, what) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let percent: f64 = percent.parse().ok()?;
    matches!(kind, "pmstatus" | "dlstatus").then(|| format!("apt: {what} ({percent:.0}%)"))
}

#[cfg(test)]
mod tests {
    use super::status_note;

    #[test]
    fn status_lines_become_notes() {
        assert_eq!(status_note("processing: unpack: perl-base").as_deref(), Some("dpkg: unpack perl-base"));
        assert_eq!(status_note("status: perl: half-configured"), None);
        assert_eq!(
            status_note("pmstatus:perl:33.3333:Unpacking perl (amd64)").as_deref(),
            Some("apt: Unpacking perl (amd64) (33%)")
        );
        assert_eq!(status_note("garbage"), None);
    }
}
