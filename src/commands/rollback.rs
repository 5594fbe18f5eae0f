//! `snapinst rollback`: make an earlier (or, with `--to`, any kept) generation current again. It is a transaction
//! of its own: planned, recorded, carried out by the backend (delta swaps; on btrfs a stage in which what the
//! rolled-back generations changed is put back, or with `--exact` the kept tree itself, exchanged for the root),
//! and finished by recovery if it is interrupted. The tree it replaces is kept under its own generation number.

use super::{locate, lock_error, prune, refuse, require_root_user, set_phase, NeedsRecovery, Outcome, Refused};
use crate::backend::{self, Ctx};
use crate::cli::RootArgs;
use crate::events::Reporter;
use crate::lock::RootLock;
use crate::output::EventName;
use crate::pathbytes;
use crate::pathbytes::PathText;
use crate::state::{Phase, State, TxnKind, TxnRecord};
use crate::{failpoint, mounts};
use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;

pub(crate) fn run(args: &RootArgs, to: Option<u64>, exact: bool) -> Result<Outcome> {
    require_root_user()?;
    let loc = locate(args)?;
    let out = Reporter::new(args.json);
    mounts::enter_private_namespace()?;
    let Some(_) = loc.state.load()? else {
        return refuse(format!("snapinst has no generations for {}: nothing to roll back", loc.root.escaped()));
    };
    let _lock = RootLock::acquire(&loc.state.lock_path(), &loc.root).map_err(lock_error)?;
    let _dpkg = crate::dpkg_lock::DpkgLocks::acquire(&loc.root).map_err(lock_error)?;
    super::apply::refuse_if_busy(&loc.state, &loc.root)?;
    let mut state = loc.state.load()?.expect("state exists: checked above");
    let target = match to {
        Some(t) => t,
        None => match state.generation(state.current).and_then(|g| g.parent) {
            Some(p) => p,
            None => {
                return refuse(format!("generation {} is the oldest kept; there is nothing before it", state.current))
            }
        },
    };
    if exact && state.backend != crate::state::BackendKind::Btrfs {
        return refuse(format!(
            "--exact restores a whole kept tree, and the {} backend keeps generations as deltas: a rollback there puts back only what the generations changed",
            state.backend
        ));
    }
    if state.generation(target).is_none() {
        let kept: Vec<String> = state.generations.iter().map(|g| g.generation.to_string()).collect();
        return refuse(format!("generation {target} is not kept (kept: {})", kept.join(", ")));
    }
    if target == state.current {
        out.say(format!("snapinst: generation {target} is already current; nothing to do"));
        out.event(EventName::Summary, json!({"txn": null, "outcome": "nothing", "generation": target}));
        return Ok(Outcome::Done);
    }
    let parts = state.parts();
    if let Some(rel) = crate::submounts::split_by_mounted(&loc.root, &parts).1.first() {
        return refuse(format!(
            "generations of {} hold changes to the filesystem mounted at /{}, and nothing is mounted at {} now; \
             mount it first",
            loc.root.escaped(),
            rel.escaped(),
            loc.root.join(rel).escaped()
        ));
    }
    let ctx = Ctx::new(state.backend, &loc.root, &loc.state)
        .and_then(|c| c.with_parts(&parts))
        .map_err(|e| Refused(format!("{e:#}")))?;
    let t0 = std::time::Instant::now();
    // Only a generation on the way back can have its changes reverted; any other kept tree is restored whole (what
    // was written since stays in the tree it replaces, kept as the current generation).
    let exact = exact
        || (state.backend == crate::state::BackendKind::Btrfs && !state.ancestors(state.current).contains(&target));
    if exact && to.is_some() && state.backend == crate::state::BackendKind::Btrfs {
        out.say(format!(
            "snapinst: generation {target} is restored exactly as it was kept; what was written since stays in generation {}'s tree",
            state.current
        ));
    }
    let rec = switch(&ctx, &mut state, target, &parts, exact, &out)?;
    let ms = t0.elapsed().as_millis() as u64;
    out.event(
        EventName::Summary,
        json!({"txn": rec.txn, "outcome": "committed", "generation": target, "parts": pathbytes::json_list(&rec.parts),
               "conflicts": rec.conflicts, "timings_ms": {"prepare": 0, "steps": 0, "commit": ms}}),
    );
    Ok(Outcome::Done)
}

/// Make generation `target` current, as a recorded transaction over the root and `parts` (with `exact`, a btrfs
/// root gets the target's kept tree itself, else only what the generations since changed is put back). The caller
/// holds the
/// lock. A part that is not in `ctx` (not mounted yet: the failed-boot fallback runs before the root is mounted)
/// is left for `snapinst recover` to carry out once it is: the record stays unfinished until then.
pub(crate) fn switch(
    ctx: &Ctx,
    state: &mut State,
    target: u64,
    parts: &[PathBuf],
    exact: bool,
    out: &Reporter,
) -> Result<TxnRecord> {
    let root = &ctx.root;
    let mut rec = TxnRecord::new(TxnKind::Rollback, state.backend, root, state.current, target);
    rec.parts = parts.to_vec();
    rec.exact = exact;
    ctx.state.write_txn(&rec)?;
    out.event(
        EventName::Started,
        json!({"txn": rec.txn, "operation": "rollback", "backend": state.backend.to_string(), "root": pathbytes::json(root),
               "from_generation": state.current, "to_generation": target}),
    );
    failpoint::hit("rollback-after-record");
    if let Err(e) = backend::plan_rollback(ctx, &mut rec, state) {
        rec.error = Some(format!("{e:#}"));
        rec.outcome = Some("refused".into());
        backend::abandon_rollback(ctx, &rec)?;
        set_phase(&ctx.state, &mut rec, Phase::Done)?;
        return refuse(format!("cannot roll back to generation {target}: {e:#}"));
    }
    for c in &rec.conflicts {
        out.event(EventName::Conflict, json!({"txn": rec.txn, "conflict": c}));
        out.say(format!("snapinst: conflict: {}", c.line()));
    }
    out.say(format!("snapinst: switching {} from generation {} to {target}", root.escaped(), state.current));
    set_phase(&ctx.state, &mut rec, Phase::Committing)?;
    failpoint::hit("rollback-after-commit-record");
    let said = rec.conflicts.clone();
    let finished = match carry_out(ctx, &mut rec, state) {
        Ok(finished) => finished,
        Err(e) => {
            return Err(e.context(NeedsRecovery(format!(
                "rollback {} was interrupted by an error; run `snapinst recover --root {}`",
                rec.txn,
                root.escaped()
            ))))
        }
    };
    if !finished {
        out.say(format!(
            "snapinst: the root is switched to generation {target}; {} follow once mounted (snapinst recover)",
            crate::submounts::shown(&unmounted_parts(ctx, &rec))
        ));
        return Ok(rec);
    }
    out.event(EventName::Committed, json!({"txn": rec.txn, "generation": target}));
    out.say(format!("snapinst: generation {target} is current"));
    super::report_handed_over(out, &rec, &said);
    if backend::next_boot_differs(state.backend, root, state) {
        out.say("snapinst: the root is mounted: the tree switched to is what its next mount or boot sees");
        crate::reboot_required::mark(root)?;
    } else {
        crate::reboot_required::unmark(root)?;
    }
    Ok(rec)
}

/// Carry out (or resume) a recorded rollback and finish it; returns false, leaving it unfinished, when some of its
/// parts are not in `ctx`. Idempotent; recovery calls it too.
pub(crate) fn carry_out(ctx: &Ctx, rec: &mut TxnRecord, state: &mut State) -> Result<bool> {
    let sd = ctx.state.clone();
    backend::rollback(ctx, rec, &mut |r| sd.write_txn(r))?;
    if !unmounted_parts(ctx, rec).is_empty() {
        return Ok(false);
    }
    finish(ctx, rec, state)?;
    Ok(true)
}

/// The parts of `rec` that `ctx` does not carry.
pub(crate) fn unmounted_parts(ctx: &Ctx, rec: &TxnRecord) -> Vec<PathBuf> {
    let here = ctx.part_rels();
    rec.parts.iter().filter(|p| !here.contains(p)).cloned().collect()
}

fn finish(ctx: &Ctx, rec: &mut TxnRecord, state: &mut State) -> Result<()> {
    set_phase(&ctx.state, rec, Phase::Finishing)?;
    backend::finish_rollback(ctx, rec, state)?;
    state.current = rec.to_generation;
    // A mark for the generation switched to stays: the failed-boot fallback gave it (its tries of its own).
    if state.pending.as_ref().is_some_and(|p| p.generation != rec.to_generation) {
        state.pending = None;
    }
    ctx.state.save(state)?;
    super::hand_over_now(ctx, rec);
    prune(ctx, state)?;
    rec.outcome = Some("committed".into());
    set_phase(&ctx.state, rec, Phase::Done)
}

/// Resume a rollback interrupted at `rec.phase`: finish it if it took effect, else abandon it.
pub(crate) fn recover(ctx: &Ctx, rec: &mut TxnRecord, state: &mut State) -> Result<&'static str> {
    match rec.phase {
        Phase::Committing if backend::rollback_took_effect(ctx, rec)? => {
            carry_out(ctx, rec, state)?;
            Ok("rolled_forward")
        }
        Phase::Finishing => {
            finish(ctx, rec, state)?;
            Ok("rolled_forward")
        }
        _ => {
            backend::abandon_rollback(ctx, rec)?;
            rec.outcome = Some("abandoned".into());
            set_phase(&ctx.state, rec, Phase::Done)?;
            Ok("rolled_back")
        }
    }
}
