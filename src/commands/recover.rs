//! `snapinst recover`: finish or undo every interrupted transaction of a root (or of every registered root), from
//! its record alone. A record before its commit point is undone (stage discarded, host undos run); from the commit
//! point on it is finished. Running it again changes nothing. A failed recovery leaves a stamp in the state area,
//! which `status` reports, so a boot never hides it.

use super::{
    apply, finish_commit, locate, lock_error, require_root_user, rollback, set_phase, NeedsRecovery, Outcome, Refused,
};
use crate::backend::{self, Ctx};
use crate::cli::RootArgs;
use crate::events::Reporter;
use crate::lock::RootLock;
use crate::output::EventName;
use crate::pathbytes;
use crate::pathbytes::PathText;
use crate::state::{Phase, State, StateDir, TxnKind, TxnRecord};
use crate::{failpoint, fsutil, mounts, registry, submounts};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The stamp a failed recovery leaves in the state area.
pub(crate) const FAILED_STAMP: &str = "recovery-failed";

pub(crate) fn run(args: &RootArgs, all: bool) -> Result<Outcome> {
    require_root_user()?;
    let out = Reporter::new(args.json);
    mounts::enter_private_namespace()?;
    crate::topview::remove_stale();
    let targets: Vec<(std::path::PathBuf, StateDir)> = if all {
        let mut targets = Vec::new();
        for r in registry::all()? {
            let args = RootArgs { root: r.root, state_dir: r.state_dir, json: args.json };
            match locate(&args) {
                Ok(loc) => targets.push((loc.root, loc.state)),
                Err(e) => out.say(format!("snapinst: skipping registered root {}: {e:#}", args.root.escaped())),
            }
        }
        targets
    } else {
        let loc = locate(args)?;
        vec![(loc.root, loc.state)]
    };
    let mut failed = Vec::new();
    for (root, sd) in targets {
        if !sd.exists() {
            if !all {
                out.say(format!(
                    "snapinst: {} has no state area at {}; nothing to recover",
                    root.escaped(),
                    sd.dir.escaped()
                ));
            }
            continue;
        }
        match recover_root(&root, &sd, &out, PartsMayWait::No) {
            Ok(_) => {
                let _ = fsutil::remove_any(&sd.dir.join(FAILED_STAMP));
            }
            // Another transaction holds the root: nothing to recover while it runs, and nothing is wrong.
            Err(e) if e.downcast_ref::<Refused>().is_some() && !all => return Err(e),
            Err(e) if e.downcast_ref::<Refused>().is_some() => out.say(format!("snapinst: {e:#}")),
            Err(e) => {
                let msg = format!("recovering {} failed: {e:#}", root.escaped());
                let _ = fsutil::write_atomic(&sd.dir.join(FAILED_STAMP), format!("{msg}\n").as_bytes());
                out.event(EventName::RecoveryFailed, json!({"root": pathbytes::json(&root), "error": msg}));
                failed.push(msg);
            }
        }
    }
    if !failed.is_empty() {
        return Err(NeedsRecovery(failed.join("\n")).into());
    }
    Ok(Outcome::Done)
}

/// Whether a transaction whose parts are not all mounted may wait for them (at boot, before the root is mounted:
/// `snapinst recover`, run once the local filesystems are, finishes it) or is an error naming them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartsMayWait {
    Yes,
    No,
}

/// Finish or undo every interrupted transaction of `root`; returns how many were left to wait for their parts.
pub(crate) fn recover_root(root: &Path, sd: &StateDir, out: &Reporter, may_wait: PartsMayWait) -> Result<usize> {
    let _lock = RootLock::acquire(&sd.lock_path(), root).map_err(lock_error)?;
    let unfinished = sd.unfinished()?;
    if unfinished.is_empty() {
        out.event(EventName::Recovered, json!({"root": pathbytes::json(root), "txn": null, "action": "nothing"}));
        out.say(format!("snapinst: {}: nothing to recover", root.escaped()));
    }
    let mut waiting = 0;
    for mut rec in unfinished {
        let (_, unmounted) = submounts::split_by_mounted(root, &rec.parts);
        if may_wait == PartsMayWait::Yes && !unmounted.is_empty() {
            waiting += 1;
            let named: Vec<PathBuf> = unmounted.iter().map(|p| Path::new("/").join(p)).collect();
            out.event(
                EventName::Recovered,
                json!({"root": pathbytes::json(root), "txn": rec.txn, "action": "waiting",
                       "parts": pathbytes::json_list(&named)}),
            );
            out.say(format!(
                "snapinst: {}: transaction {} waits for {} to be mounted; `snapinst recover` finishes it then",
                root.escaped(),
                rec.txn,
                submounts::shown(&unmounted)
            ));
            continue;
        }
        let mut state = sd.load()?.unwrap_or_else(|| State::new(root, rec.backend, 5));
        let ctx = Ctx::new(rec.backend, root, sd)?.with_parts_of(&rec)?;
        let action = match rec.kind {
            TxnKind::Apply => recover_apply(&ctx, &mut rec, &mut state),
            TxnKind::Rollback => rollback::recover(&ctx, &mut rec, &mut state),
        }
        .with_context(|| format!("recovering transaction {}", rec.txn))?;
        out.event(EventName::Recovered, json!({"root": pathbytes::json(root), "txn": rec.txn, "action": action}));
        out.say(format!("snapinst: {}: transaction {} {}", root.escaped(), rec.txn, action.replace('_', " ")));
    }
    if let Some(state) = sd.load()? {
        // Leftovers of parts that are not mounted now wait for the next sweep with them mounted.
        let (mounted, _) = submounts::split_by_mounted(root, &state.parts());
        let ctx = Ctx::new(state.backend, root, sd)?.with_parts(&mounted)?;
        if waiting == 0 {
            for path in backend::sweep(&ctx, &state)? {
                out.say(format!("snapinst: removed leftover {}", path.escaped()));
            }
        }
    }
    Ok(waiting)
}

fn recover_apply(ctx: &Ctx, rec: &mut TxnRecord, state: &mut State) -> Result<&'static str> {
    let forward = match rec.phase {
        Phase::Committing => backend::commit_took_effect(ctx, rec)?,
        Phase::Finishing => true,
        _ => false,
    };
    if forward {
        backend::commit(ctx, rec)?;
        failpoint::hit("recover-mid-recovery");
        finish_commit(ctx, rec, state, "committed (recovered)")?;
        return Ok("rolled_forward");
    }
    set_phase(&ctx.state, rec, Phase::Discarding)?;
    apply::discard(ctx, rec)?;
    failpoint::hit("recover-mid-recovery");
    rec.outcome = Some("rolled_back (recovered)".into());
    set_phase(&ctx.state, rec, Phase::Done)?;
    Ok("rolled_back")
}
