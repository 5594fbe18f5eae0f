//! Carrying out one plan step against a target root. File steps (`files`) resolve every path inside the root and
//! tell a [`ChangeGuard`] before each change, so the journal backend can save the original first; command steps
//! (`commands`, `packages`) run in the sandbox; account and unit steps (`users`, `units`) edit files the same way
//! file steps do. Nothing here knows which backend it runs under.

mod accounts;
mod commands;
mod fetch;
mod files;
mod packages;
mod playbook;
mod units;
mod users;

use crate::inroot::Root;
use crate::plan::{Action, RootPath, Step};
use anyhow::Result;

pub(crate) use commands::run_undo;

/// Told before every change a file step makes, so the original can be kept (journal backend).
pub(crate) trait ChangeGuard {
    /// `path` is about to be created, replaced (`removing == false`) or removed.
    fn before_replace(&mut self, root: &Root, path: &RootPath, removing: bool) -> Result<()>;
    /// The metadata of the existing directory `path` is about to change.
    fn before_meta(&mut self, root: &Root, path: &RootPath) -> Result<()>;
    /// A directory on the root's filesystem, outside the root, for temporary files; None to use the parent.
    fn scratch(&self) -> Option<&std::path::Path>;
    /// A command is about to change `path` (a file, or a directory with everything below it) in place: keep the
    /// original, and leave an identical copy at `path` for the command.
    fn save_in_place(&mut self, root: &Root, path: &RootPath) -> Result<()>;
}

/// The guard of snapshot backends: the stage is thrown away whole, nothing to keep.
pub(crate) struct NoGuard;

impl ChangeGuard for NoGuard {
    fn before_replace(&mut self, _: &Root, _: &RootPath, _: bool) -> Result<()> {
        Ok(())
    }
    fn before_meta(&mut self, _: &Root, _: &RootPath) -> Result<()> {
        Ok(())
    }
    fn scratch(&self) -> Option<&std::path::Path> {
        None
    }
    fn save_in_place(&mut self, _: &Root, _: &RootPath) -> Result<()> {
        Ok(())
    }
}

/// Why a step failed, with the output of its command if it had one.
#[derive(Debug)]
pub(crate) struct StepFailure {
    pub message: String,
    pub output: String,
}

/// What a step needs to run.
pub(crate) struct StepContext<'a> {
    pub root: &'a Root,
    pub txn: &'a str,
    /// What the commands run in the stage are told about it (`backend::stage_env`).
    pub stage_env: &'a [(String, String)],
    pub guard: &'a mut dyn ChangeGuard,
    /// Called with a step that has an undo (`host`, a journal `run`) before the step runs (write-ahead).
    pub record_undo: &'a mut dyn FnMut(&Step) -> Result<()>,
}

/// Carry out one step. Ok holds the command output (empty for file steps).
pub(crate) fn apply(step: &Step, ctx: &mut StepContext) -> Result<String, StepFailure> {
    let plain = |e: anyhow::Error| StepFailure { message: format!("{e:#}"), output: String::new() };
    match &step.action {
        Action::Dir { path, attrs } => {
            files::dir(ctx.root, ctx.guard, path, attrs).map_err(plain).map(|_| String::new())
        }
        Action::File { path, content, attrs } => {
            files::file(ctx.root, ctx.guard, path, content, attrs).map_err(plain).map(|_| String::new())
        }
        Action::Symlink { path, target } => {
            files::symlink(ctx.root, ctx.guard, path, target).map_err(plain).map(|_| String::new())
        }
        Action::Remove { path, recursive, missing_ok } => {
            files::remove(ctx.root, ctx.guard, path, *recursive, *missing_ok).map_err(plain).map(|_| String::new())
        }
        Action::Run { command, changes, .. } => {
            for path in changes {
                ctx.guard.save_in_place(ctx.root, path).map_err(plain)?;
            }
            (ctx.record_undo)(step).map_err(plain)?;
            commands::run_in_root(ctx.root, ctx.stage_env, ctx.txn, command)
        }
        Action::Verify { command, expect_exit, expect_stdout } => {
            commands::verify(ctx.root, ctx.stage_env, ctx.txn, command, *expect_exit, expect_stdout.as_deref())
        }
        Action::Group { group } => users::group(ctx.root, ctx.guard, group).map_err(plain).map(|_| String::new()),
        Action::User { user } => users::user(ctx.root, ctx.guard, user).map_err(plain).map(|_| String::new()),
        Action::Service { unit, change } => {
            units::change(ctx.root, ctx.guard, unit, *change).map_err(plain).map(|_| String::new())
        }
        Action::Package { packages } => packages::apply(ctx.root, ctx.stage_env, ctx.txn, packages),
        Action::Fetch { fetch } => fetch::fetch(ctx.root, ctx.guard, fetch).map_err(plain).map(|_| String::new()),
        Action::Host { run, .. } => {
            (ctx.record_undo)(step).map_err(plain)?;
            commands::run_on_host(ctx.txn, run)
        }
        Action::Playbook { playbook } => playbook::run(ctx.root, ctx.stage_env, ctx.txn, playbook),
    }
}
