//! The commands a user runs. Each module is one command; this one holds what they share: the documented outcome
//! codes, the errors that map to them, locating a root and its state area, and the end of a transaction (making
//! the new generation current and pruning old ones), which `apply`, `rollback` and `recover` all finish with.

pub(crate) mod apply;
pub(crate) mod boot;
pub(crate) mod guard;
pub(crate) mod panicked;
pub(crate) mod recover;
pub(crate) mod resume;
pub(crate) mod rollback;
pub(crate) mod status;

use crate::backend::{self, Ctx};
use crate::cli::RootArgs;
use crate::output::EventName;
use crate::pathbytes::PathText;
use crate::state::{Generation, Pending, Phase, State, StateDir, TxnRecord};
use crate::{failpoint, fsutil, plan};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Committed, or nothing to do.
    Done,
    /// A step failed and the transaction was rolled back completely.
    RolledBack,
    /// A step failed; the root is unchanged and the transaction is kept (`apply --keep-failed`).
    Kept,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::RolledBack | Outcome::Kept => 1,
        }
    }
}

/// Bad plan or bad usage: nothing was touched (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub String);

/// A transaction could not be finished or undone cleanly: `snapinst recover` is needed (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NeedsRecovery(pub String);

pub(crate) fn refuse<T>(msg: impl Into<String>) -> Result<T> {
    Err(Refused(msg.into()).into())
}

/// The exit code for an error: 3 when recovery is needed, 4 when another process holds a lock snapinst needs
/// (nothing was changed; try again later), else 2 (nothing was changed).
pub(crate) fn error_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<NeedsRecovery>()) {
        3
    } else if e.chain().any(|c| c.is::<crate::lock::Busy>()) {
        4
    } else {
        2
    }
}

/// An error taking a lock, for the command's result: busy stays busy (exit 4), anything else is a refusal (exit 2).
pub(crate) fn lock_error(e: anyhow::Error) -> anyhow::Error {
    if e.is::<crate::lock::Busy>() {
        e
    } else {
        Refused(format!("{e:#}")).into()
    }
}

pub(crate) fn validate(plan: &Path) -> Result<Outcome> {
    match plan::load(plan) {
        Ok(p) => {
            eprintln!("{}: plan \"{}\" is valid ({} steps)", plan.escaped(), p.name, p.steps.len());
            Ok(Outcome::Done)
        }
        Err(problems) => refuse(problems.to_string()),
    }
}

/// A root and its state area, as named on the command line.
pub(crate) struct Located {
    pub root: PathBuf,
    pub state: StateDir,
    /// The state area as a user can find it: its path, or `DEVICE:/PATH` on a filesystem's top level that
    /// snapinst reaches through a private mount.
    pub state_shown: String,
}

pub(crate) fn locate(args: &RootArgs) -> Result<Located> {
    let root = match std::fs::metadata(&args.root) {
        Err(e) => return refuse(format!("the root {} cannot be used: {e}", args.root.escaped())),
        Ok(m) if !m.is_dir() => return refuse(format!("the root {} is not a directory", args.root.escaped())),
        Ok(_) => args.root.canonicalize().map_err(|e| Refused(format!("resolving {}: {e}", args.root.escaped())))?,
    };
    let configured = crate::config::get().state_dir_for(&root);
    let state_dir = match args.state_dir.as_ref().or(configured.as_ref()) {
        Some(d) => std::path::absolute(d).map_err(|e| Refused(format!("resolving {}: {e}", d.escaped())))?,
        None if mounted_btrfs_subvolume(&root)? => {
            // Beside the root's subvolume, reached through a private mount of the filesystem's top level.
            crate::mounts::enter_private_namespace()?;
            let dir = StateDir::default_for(&crate::topview::root_in_top(&root)?)?;
            let top = crate::topview::of(&root)?;
            let source = crate::mounts::mount_of(&root)?.source;
            let state = StateDir { shown_as: Some((top, source)), ..StateDir::at(dir) };
            let shown = state.shown(&state.dir).escaped().to_string();
            return Ok(Located { root, state, state_shown: shown });
        }
        // The top of a filesystem: nothing beside it is on its filesystem, so the state area goes inside it.
        None if crate::mounts::is_mount_point(&root)? => default_state_inside(&root)?,
        None => StateDir::default_for(&root).map_err(|e| Refused(format!("{e:#}")))?,
    };
    let state_dir = state_dir.canonicalize().unwrap_or(state_dir);
    Ok(Located { root, state_shown: state_dir.escaped().to_string(), state: StateDir::at(state_dir) })
}

/// The state area of a root that is the top of its filesystem: `<root>/var/lib/snapinst/state` where `<root>/var/lib`
/// is on the root's own filesystem (a Debian root), else `<root>/.snapinst`.
/// One that exists already is kept, wherever `var/lib` is now.
fn default_state_inside(root: &Path) -> Result<PathBuf> {
    let (debian, plain) = (root.join("var/lib/snapinst/state"), root.join(".snapinst"));
    for existing in [&debian, &plain] {
        if existing.join("txns").is_dir() {
            return Ok(existing.clone());
        }
    }
    let var_lib = root.join("var/lib");
    let own = std::fs::symlink_metadata(&var_lib).is_ok_and(|m| m.is_dir())
        && crate::mounts::mount_id(&var_lib)? == crate::mounts::mount_id(root)?;
    Ok(if own { debian } else { plain })
}

/// Whether `root` is a btrfs subvolume mounted on its own (like `/`), so its siblings are not visible.
fn mounted_btrfs_subvolume(root: &Path) -> Result<bool> {
    Ok(crate::mounts::is_mount_point(root)?
        && crate::mounts::mount_of(root)?.fstype == "btrfs"
        && libbtrfsutil::is_subvolume(root).unwrap_or(false))
}

pub(crate) fn require_root_user() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return refuse("snapinst must run as root (it snapshots, mounts and changes system files)");
    }
    Ok(())
}

/// `snapinst config`: each setting, its value and where it comes from.
pub(crate) fn show_config(json: bool) -> Result<Outcome> {
    let config = crate::config::get();
    if json {
        let settings: serde_json::Map<String, serde_json::Value> =
            config.rows().into_iter().map(|(k, v, from)| (k, serde_json::json!({"value": v, "from": from}))).collect();
        println!(
            "{}",
            crate::events::versioned(
                "Config",
                &serde_json::json!({"v": 1, "dir": crate::pathbytes::json(&crate::config::dir()), "settings": settings})
            )
        );
    } else {
        println!("# read from {} (snapinst.toml, then snapinst.d/*.toml)", crate::config::dir().escaped());
        for (k, v, from) in config.rows() {
            println!("{k} = {v}  # {from}");
        }
    }
    Ok(Outcome::Done)
}

/// Persist a phase change of a transaction record.
pub(crate) fn set_phase(state: &StateDir, rec: &mut TxnRecord, phase: Phase) -> Result<()> {
    rec.phase = phase;
    state.write_txn(rec)
}

/// The end of a committed apply: keep the previous tree, make the new generation current, prune. Idempotent.
pub(crate) fn finish_commit(ctx: &Ctx, rec: &mut TxnRecord, state: &mut State, outcome: &str) -> Result<()> {
    set_phase(&ctx.state, rec, Phase::Finishing)?;
    backend::finish(ctx, rec, state)?;
    if state.generation(rec.to_generation).is_none() {
        state.generations.push(Generation {
            generation: rec.to_generation,
            parent: Some(rec.from_generation),
            time: fsutil::now(),
            plan: rec.plan.clone(),
            txn: Some(rec.txn.clone()),
            parts: rec.parts.clone(),
            parent_pruned: false,
            committed_ns: Some(crate::fsutil::now_coarse_ns()),
            plan_digest: rec.plan_digest.clone(),
        });
    }
    state.current = rec.to_generation;
    state.next = state.next.max(rec.to_generation + 1);
    state.pending = rec.boot_pending.then_some(Pending {
        generation: rec.to_generation,
        fallback: Some(rec.from_generation),
        boots_left: state.boot_tries,
        carry_back: None,
    });
    ctx.state.save(state)?;
    hand_over_now(ctx, rec);
    failpoint::hit("apply-before-prune");
    prune(ctx, state)?;
    rec.outcome = Some(outcome.to_string());
    set_phase(&ctx.state, rec, Phase::Done)
}

/// Right after a commit (an apply or a keeping rollback) of a btrfs directory target: carry into the new tree what the
/// running system wrote to the replaced one after the carry-over's last look (`backend::hand_over_now`); the
/// record counts the paths and lists the conflicts. Never fails the finishing (the commit took effect): what could
/// not be carried stays in the replaced generation's kept tree, which is not pruned while its handover waits for
/// the next finishing to carry it, and a warning says so.
pub(crate) fn hand_over_now(ctx: &Ctx, rec: &mut TxnRecord) {
    match backend::hand_over_now(ctx, rec) {
        Ok(None) => {}
        Ok(Some(h)) => {
            let carried = rec.carried.get_or_insert_with(Default::default);
            carried.after_commit = h.paths;
            // A path the commit already listed is listed once, with its latest kept version.
            rec.conflicts.retain(|old| h.conflicts.iter().all(|c| c.path != old.path));
            rec.conflicts.extend(h.conflicts);
        }
        Err(e) => {
            let kept = backend::keep_for_retry(ctx, rec);
            eprintln!(
                "snapinst: warning: what the running system wrote in the commit's last instant could not be carried into generation {} ({e:#}); it is in generation {}'s tree, kept in the state area{}",
                rec.to_generation,
                rec.from_generation,
                match kept {
                    Ok(()) => ", and the next transaction's finishing carries it".to_string(),
                    Err(k) => format!(" (keeping it for a later carry failed too: {k:#})"),
                }
            )
        }
    }
}

/// Say what `hand_over_now` did for `rec` (event `handed_over`), and each conflict it added to those said before
/// the commit (`said`).
pub(crate) fn report_handed_over(out: &crate::events::Reporter, rec: &TxnRecord, said: &[crate::conflicts::Conflict]) {
    let paths = rec.carried.map_or(0, |c| c.after_commit);
    let new: Vec<_> = rec.conflicts.iter().filter(|c| !said.contains(c)).collect();
    if paths == 0 && new.is_empty() {
        return;
    }
    out.event(
        EventName::HandedOver,
        serde_json::json!({"txn": rec.txn, "generation": rec.from_generation,
        "to": rec.to_generation, "paths": paths, "conflicts": new}),
    );
    out.say(format!(
        "snapinst: carried {paths} paths the running system wrote in the commit's last instant into generation {}",
        rec.to_generation
    ));
    for c in new {
        out.event(EventName::Conflict, serde_json::json!({"txn": rec.txn, "conflict": c}));
        out.say(format!("snapinst: conflict: {}", c.line()));
    }
}

/// Drop the oldest generations beyond `state.keep`, never the current (or, for btrfs, the mounted) one.
pub(crate) fn prune(ctx: &Ctx, state: &mut State) -> Result<()> {
    while state.generations.len() > state.keep.max(1) {
        let Some(&n) = backend::prunable(ctx, state).first() else {
            break;
        };
        let before = state.clone();
        let child_of_n: Vec<u64> =
            state.generations.iter().filter(|g| g.parent == Some(n)).map(|g| g.generation).collect();
        let n_parent = state.generation(n).and_then(|g| g.parent);
        state.generations.retain(|g| g.generation != n);
        for g in state.generations.iter_mut().filter(|g| child_of_n.contains(&g.generation)) {
            g.parent = n_parent;
            g.parent_pruned = true;
        }
        ctx.state.save(state)?;
        backend::drop_generation(ctx, n, &before)?;
    }
    Ok(())
}
