//! What can be done with a transaction that `apply --keep-failed` kept after a step failed: `resume` it (the plan
//! file is read again, the stage is put back to the checkpoint before the step to start at, and the remaining
//! steps run and commit as in `apply`), `abort` it (the stage and checkpoints are thrown away), or `diff` it (what
//! its stage changes). The root itself is never touched until a resume commits.

use super::apply::{check_keepable, discard, refuse_if_interrupted, show_changes, Confirm, Transaction};
use super::{locate, lock_error, refuse, require_root_user, set_phase, NeedsRecovery, Outcome, Refused};
use crate::backend::{self, Ctx};
use crate::cli::RootArgs;
use crate::events::Reporter;
use crate::lock::RootLock;
use crate::output::EventName;
use crate::pathbytes;
use crate::pathbytes::PathText;
use crate::plan::Plan;
use crate::state::{Phase, StateDir, TxnRecord};
use crate::{mounts, plan, sandbox};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The kept transaction of the root, with the lock held and the backend set up.
struct Kept {
    ctx: Ctx,
    rec: TxnRecord,
    _lock: RootLock,
    _dpkg: crate::dpkg_lock::DpkgLocks,
}

fn open_kept(args: &RootArgs) -> Result<Kept> {
    require_root_user()?;
    let loc = locate(args)?;
    if !loc.state.exists() {
        return refuse(format!("{} has no state area: no transaction was ever kept", loc.root.escaped()));
    }
    mounts::enter_private_namespace()?;
    let lock = RootLock::acquire(&loc.state.lock_path(), &loc.root).map_err(lock_error)?;
    let dpkg = crate::dpkg_lock::DpkgLocks::acquire(&loc.root).map_err(lock_error)?;
    refuse_if_interrupted(&loc.state, &loc.root)?;
    let Some(rec) = loc.state.kept()? else {
        return refuse(format!(
            "no transaction is kept on {} (`apply --keep-failed` keeps one when a step fails)",
            loc.root.escaped()
        ));
    };
    let ctx = Ctx::new(rec.backend, &loc.root, &loc.state)
        .and_then(|c| c.with_parts_of(&rec))
        .map_err(|e| Refused(format!("{e:#}")))?;
    Ok(Kept { ctx, rec, _lock: lock, _dpkg: dpkg })
}

/// Where to start: the step `from` names, or the failed step; as an index into the plan's steps.
fn start_index(plan_file: &Path, plan: &Plan, rec: &TxnRecord, from: Option<&str>) -> Result<usize> {
    let find = |id: &str| plan.steps.iter().position(|s| s.id == id);
    let done = rec.checkpoints.unwrap_or(0);
    let start = match from {
        Some(id) => find(id).ok_or_else(|| Refused(format!("{}: there is no step \"{id}\"", plan_file.escaped())))?,
        None => {
            let failed = rec.failed_step.as_deref().unwrap_or("");
            find(failed).ok_or_else(|| {
                Refused(format!(
                    "{}: the failed step \"{failed}\" is not in the plan any more; say where to start with --from STEP",
                    plan_file.escaped()
                ))
            })?
        }
    };
    if start > done {
        return refuse(format!(
            "step \"{}\" (#{}) comes after the failed step (#{}); a resume can start at the failed step or an earlier one",
            plan.steps[start].id,
            start + 1,
            done + 1
        ));
    }
    Ok(start)
}

pub(crate) fn resume(
    args: &RootArgs,
    from: Option<&str>,
    plan_override: Option<&Path>,
    confirm: Option<Confirm>,
) -> Result<Outcome> {
    Confirm::check_terminal(confirm)?;
    let Kept { ctx, mut rec, _lock, _dpkg } = open_kept(args)?;
    let plan_file: PathBuf = match plan_override.or(rec.plan_file.as_deref()) {
        Some(p) => std::path::absolute(p).with_context(|| format!("resolving {}", p.escaped()))?,
        None => return refuse(format!("transaction {} does not record its plan file; give it with --plan", rec.txn)),
    };
    let plan = plan::load(&plan_file).map_err(|p| Refused(p.to_string()))?;
    check_keepable(&plan_file, &plan, ctx.kind)?;
    let layout = ctx.layout()?;
    super::apply::refuse_plan_on_unstaged(&plan_file, &plan, &layout)?;
    let start = start_index(&plan_file, &plan, &rec, from)?;
    let mut state = ctx.state.load()?.context("the state area has no state.json")?;
    if state.current != rec.from_generation {
        return refuse(format!(
            "generation {} is current, but transaction {} was staged from generation {}; abort it",
            state.current, rec.txn, rec.from_generation
        ));
    }
    sandbox::install_signal_handlers()?;
    crate::nosync::set_suppressed(rec.suppress_sync);
    let out = Reporter::new(args.json);
    out.event(
        EventName::Resumed,
        json!({"txn": rec.txn, "plan": plan.name, "from_step": plan.steps[start].id, "index": start + 1}),
    );
    out.say(format!(
        "snapinst: resuming transaction {} of plan \"{}\" on {} at step \"{}\" (#{}), from the checkpoint before it",
        rec.txn,
        plan.name,
        ctx.root.escaped(),
        plan.steps[start].id,
        start + 1
    ));
    // Until the stage is back at the checkpoint the record stays Kept: a crash here leaves it resumable.
    let stage = backend::restore_checkpoint(&ctx, &mut rec, start)?;
    rec.checkpoints = Some(start);
    rec.stage = Some(stage.clone());
    rec.plan = Some(plan.name.clone());
    rec.plan_sha256 = Some(plan.sha256.clone());
    // Started with --if-changed: the generation records the digest of the plan as resumed (it may be edited).
    if rec.plan_digest.is_some() {
        rec.plan_digest = Some(plan.digest().map_err(|e| Refused(format!("{e:#}")))?);
    }
    rec.plan_file = Some(plan_file.clone());
    rec.pid = std::process::id();
    (rec.failed_step, rec.error, rec.outcome) = (None, None, None);
    set_phase(&ctx.state, &mut rec, Phase::Staged)?;
    let txn = Transaction {
        ctx: &ctx,
        out: &out,
        plan: &plan,
        dry_run: false,
        confirm,
        keep_failed: Some(&plan_file),
        layout: &layout,
        plan_digest: rec.plan_digest.clone(),
    };
    txn.steps_and_commit(rec, &stage, start, &mut state, 0)
}

pub(crate) fn abort(args: &RootArgs) -> Result<Outcome> {
    let Kept { ctx, mut rec, _lock, _dpkg } = open_kept(args)?;
    let out = Reporter::new(args.json);
    set_phase(&ctx.state, &mut rec, Phase::Discarding)?;
    discard(&ctx, &rec).map_err(|e| {
        NeedsRecovery(format!("throwing away transaction {} failed: {e:#}; run `snapinst recover`", rec.txn))
    })?;
    rec.outcome = Some("aborted".to_string());
    set_phase(&ctx.state, &mut rec, Phase::Done)?;
    out.event(EventName::Aborted, json!({"txn": rec.txn}));
    out.say(format!("snapinst: transaction {} was thrown away; {} is unchanged", rec.txn, ctx.root.escaped()));
    Ok(Outcome::Done)
}

pub(crate) fn diff(args: &RootArgs) -> Result<Outcome> {
    let Kept { ctx, rec, _lock, _dpkg } = open_kept(args)?;
    let out = Reporter::new(args.json);
    let stage = backend::kept_stage(&ctx, &rec)?;
    out.say(format!(
        "snapinst: transaction {} (plan \"{}\"), kept after step \"{}\" failed; its stage compared with {}:",
        rec.txn,
        rec.plan.as_deref().unwrap_or("?"),
        rec.failed_step.as_deref().unwrap_or("?"),
        ctx.root.escaped()
    ));
    show_changes(&out, &ctx, &rec.txn, &stage)?;
    Ok(Outcome::Done)
}

/// `resume --list`: the kept transaction's steps, each with its outcome, how many paths of the stage it changed,
/// and whether a resume can start at it (the checkpoint before it exists). The steps after the failed one come from
/// the plan file (`--plan`, or the one recorded), when it can still be read.
pub(crate) fn list(args: &RootArgs, plan_override: Option<&Path>) -> Result<Outcome> {
    let Kept { rec, .. } = open_kept(args)?;
    let out = Reporter::new(args.json);
    let done = rec.checkpoints.unwrap_or(0);
    let mut steps: Vec<serde_json::Value> = Vec::new();
    let mut row = |id: &str, outcome: &str, changed: Option<usize>| {
        let index = steps.len() + 1;
        let resumable = index <= done + 1;
        steps.push(json!({"index": index, "step": id, "outcome": outcome, "changed": changed, "resumable": resumable}));
    };
    let recorded: Vec<(String, &str, Option<usize>)> = if rec.steps_run.is_empty() {
        // A record from before the steps were recorded: the outcomes without the counts.
        Vec::new()
    } else {
        rec.steps_run.iter().map(|s| (s.step.clone(), if s.failed { "failed" } else { "done" }, s.changed)).collect()
    };
    for (id, outcome, changed) in &recorded {
        row(id, outcome, *changed);
    }
    let plan_file = plan_override.or(rec.plan_file.as_deref());
    let plan = plan_file.and_then(|p| plan::load(p).ok());
    match &plan {
        Some(plan) => {
            for (i, s) in plan.steps.iter().enumerate().skip(recorded.len()) {
                let outcome = if i < done {
                    "done"
                } else if rec.failed_step.as_deref() == Some(s.id.as_str()) && i == done {
                    "failed"
                } else {
                    "not_run"
                };
                row(&s.id, outcome, None);
            }
        }
        None => out.say(format!(
            "snapinst: the plan file {} cannot be read: the steps not run yet are not listed",
            plan_file.map_or("(none recorded)".to_string(), |p| p.escaped().to_string())
        )),
    }
    let value = json!({"v": 1, "txn": rec.txn, "plan": rec.plan, "plan_file": plan_file.map(pathbytes::json),
                       "failed_step": rec.failed_step, "steps": steps});
    out.result("Steps", &value, || {
        let mut text = format!(
            "transaction {} of plan \"{}\", kept after step \"{}\" failed\n",
            rec.txn,
            rec.plan.as_deref().unwrap_or("?"),
            rec.failed_step.as_deref().unwrap_or("?")
        );
        let width = steps.iter().filter_map(|s| s["step"].as_str()).map(str::len).max().unwrap_or(4).max(4);
        text.push_str(&format!("{:>3}  {:<width$}  {:<8}  {:>7}  resume\n", "#", "step", "outcome", "changed"));
        for s in &steps {
            let changed = s["changed"].as_u64().map_or("?".to_string(), |n| n.to_string());
            let changed = if s["outcome"] == "not_run" { "-".to_string() } else { changed };
            let resume = if s["resumable"] == true {
                format!("--from {}", s["step"].as_str().unwrap_or(""))
            } else {
                String::new()
            };
            text.push_str(&format!(
                "{:>3}  {:<width$}  {:<8}  {:>7}  {resume}\n",
                s["index"],
                s["step"].as_str().unwrap_or(""),
                s["outcome"].as_str().unwrap_or("").replace('_', " "),
                changed
            ));
        }
        text
    });
    Ok(Outcome::Done)
}

/// For `status`: the kept transaction, if any.
pub(crate) fn kept_summary(sd: &StateDir) -> Result<Option<serde_json::Value>> {
    Ok(sd.kept()?.map(|t| {
        json!({"txn": t.txn, "plan": t.plan, "plan_file": t.plan_file.as_deref().map(pathbytes::json), "failed_step": t.failed_step,
               "error": t.error, "steps_done": t.checkpoints})
    }))
}
