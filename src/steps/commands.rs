//! The command steps: `run` and `verify` inside the staged root, `host` (and its undo) on the host.

use super::StepFailure;
use crate::inroot::Root;
use crate::plan::Command;
use crate::sandbox::{self, Finished, OnSignal, Place, Syncs};
use crate::state::StepUndo;
use anyhow::{bail, Result};
use std::time::Duration;

/// Run a step's command: in a staged root with its syncs suppressed (unless `--no-suppress-sync`), on the host as
/// it is.
pub(super) fn run(place: Place, txn: &str, cmd: &Command) -> Result<Finished, StepFailure> {
    let syncs = if crate::nosync::suppressed() { Syncs::Suppressed } else { Syncs::Kept };
    sandbox::run(cmd, place, txn, OnSignal::Stop, syncs)
        .map_err(|e| StepFailure { message: format!("{e:#}"), output: String::new() })
}

pub(super) fn judge(f: Finished, cmd: &Command, expect_exit: i32) -> Result<String, StepFailure> {
    let output = f.output();
    let message = if f.interrupted {
        "interrupted by a signal".to_string()
    } else if f.timed_out {
        format!("timed out after {} s and was killed", cmd.timeout.as_secs())
    } else {
        match f.code {
            Some(c) if c == expect_exit => return Ok(output),
            Some(c) => format!("{:?} exited with status {c} (expected {expect_exit})", cmd.argv),
            None => format!("{:?} was killed by a signal", cmd.argv),
        }
    };
    Err(StepFailure { message, output })
}

/// Run `cmd` in the staged root (sharing `share` read-only with it), told what the stage tells its commands
/// (`stage_env`; the plan's own environment comes after it and wins).
pub(super) fn run_staged(
    root: &Root,
    share: Option<&std::path::Path>,
    stage_env: &[(String, String)],
    txn: &str,
    cmd: &Command,
) -> Result<Finished, StepFailure> {
    let place = match share {
        Some(dir) => Place::ChrootSharing(&root.path, dir),
        None => Place::Chroot(&root.path),
    };
    let mut env: std::collections::BTreeMap<String, String> = stage_env.iter().cloned().collect();
    env.extend(cmd.env.clone());
    run(place, txn, &Command { env, ..cmd.clone() })
}

pub(super) fn run_in_root(
    root: &Root,
    stage_env: &[(String, String)],
    txn: &str,
    cmd: &Command,
) -> Result<String, StepFailure> {
    judge(run_staged(root, None, stage_env, txn, cmd)?, cmd, 0)
}

pub(super) fn verify(
    root: &Root,
    stage_env: &[(String, String)],
    txn: &str,
    cmd: &Command,
    expect_exit: i32,
    expect_stdout: Option<&str>,
) -> Result<String, StepFailure> {
    let f = run_staged(root, None, stage_env, txn, cmd)?;
    let stdout = f.stdout.clone();
    let output = judge(f, cmd, expect_exit)?;
    if let Some(want) = expect_stdout {
        if !stdout.contains(want) {
            return Err(StepFailure { message: format!("its output does not contain {want:?}"), output });
        }
    }
    Ok(output)
}

pub(super) fn run_on_host(txn: &str, cmd: &Command) -> Result<String, StepFailure> {
    judge(run(Place::Host, txn, cmd)?, cmd, 0)
}

/// Run a recorded undo: a host step's on the host, a run step's chrooted in `root`, its syncs kept (it runs while
/// rolling back, after the last sync of the stage). An error names the step.
pub(crate) fn run_undo(txn: &str, root: &std::path::Path, undo: &StepUndo) -> Result<()> {
    let cmd = Command {
        argv: undo.argv.clone(),
        timeout: Duration::from_secs(undo.timeout_s),
        env: undo.env.clone(),
        pass_fd: None,
    };
    let (place, kind) = if undo.in_root { (Place::Chroot(root), "run") } else { (Place::Host, "host") };
    match judge(sandbox::run(&cmd, place, txn, OnSignal::Finish, Syncs::Kept)?, &cmd, 0) {
        Ok(_) => Ok(()),
        Err(f) if f.output.is_empty() => bail!("undo of {kind} step \"{}\" failed: {}", undo.step, f.message),
        Err(f) => bail!("undo of {kind} step \"{}\" failed: {}\n{}", undo.step, f.message, f.output.trim_end()),
    }
}
