//! `snapinst boot` and `snapinst bless`: the failed-boot fallback for a generation committed to a running root.
//! `apply` marks such a generation pending with a number of tries; `boot` (run by the initramfs hook before the root
//! is mounted) first recovers interrupted transactions, then spends one try, and when none is left makes the
//! previous generation current again and says why; `bless` (run once boot-complete.target is reached) clears the
//! mark. A generation restored this way gets tries of its own but no further fallback, so a machine whose
//! fallback is unhealthy too never loops between generations.

use super::{locate, lock_error, recover, require_root_user, rollback, Outcome};
use crate::backend::{self, Ctx};
use crate::cli::RootArgs;
use crate::events::Reporter;
use crate::journal::Milestone;
use crate::lock::RootLock;
use crate::mounts;
use crate::output::EventName;
use crate::pathbytes::PathText;
use crate::state::{CarryBack, Pending, State};
use anyhow::Result;
use serde_json::json;

/// Carry into the tree about to be mounted what the running system wrote to the one it ran on after the commit
/// that replaced it; say what was done, and add its conflicts to that transaction's record. Never fails the boot:
/// what could not be carried stays in the kept generation, and the message says where.
fn hand_over(ctx: &Ctx, state: &State, out: &Reporter) {
    match backend::hand_over(ctx, state) {
        Ok(None) => {}
        Ok(Some(h)) => {
            let said = format!(
                "carried {} paths the running system wrote to generation {} after the commit into generation {}",
                h.paths, h.generation, state.current
            );
            report_carried(ctx, out, EventName::HandedOver, state.current, said, h);
        }
        Err(e) => out.say(format!(
            "snapinst: warning: what the running system wrote after the last commit could not be carried into generation {} ({e:#}); it is in the previous generation's tree, kept in the state area",
            state.current
        )),
    }
}

/// After the fallback's rollback `back.txn` restored generation `fallback`: carry into it what the failed boots of
/// generation `back.generation` wrote (their logs); never fails the boot, as `hand_over`.
fn carry_back(ctx: &Ctx, back: &CarryBack, fallback: u64, out: &Reporter) {
    let failed = back.generation;
    match backend::carry_back_failed_boots(ctx, failed, &back.txn) {
        Ok(None) => {}
        Ok(Some(h)) => {
            let said = format!(
                "carried {} paths the failed boots of generation {failed} wrote into generation {fallback}",
                h.paths
            );
            report_carried(ctx, out, EventName::CarriedBack, fallback, said, h);
        }
        Err(e) => out.say(format!(
            "snapinst: warning: what the failed boots of generation {failed} wrote could not be carried into generation {fallback} ({e:#}); it is in generation {failed}'s tree, kept in the state area"
        )),
    }
}

/// Say what a carry at boot did (event `event`), and add its conflicts to its transaction's record.
fn report_carried(ctx: &Ctx, out: &Reporter, event: EventName, to: u64, said: String, mut h: backend::HandedOver) {
    ctx.state.show_kept(&mut h.conflicts);
    out.event(event, json!({"generation": h.generation, "to": to, "paths": h.paths, "conflicts": h.conflicts}));
    out.say(format!("snapinst: {said}"));
    for c in &h.conflicts {
        out.say(format!("snapinst: conflict: {}", c.line()));
    }
    if let (Some(txn), false) = (&h.txn, h.conflicts.is_empty()) {
        let noted = ctx.state.txns().map(|all| all.into_iter().find(|t| &t.txn == txn));
        if let Ok(Some(mut rec)) = noted {
            // A path the commit already listed is listed once, with its latest kept version.
            rec.conflicts.retain(|old| h.conflicts.iter().all(|c| c.path != old.path));
            rec.conflicts.extend(h.conflicts);
            if let Err(e) = ctx.state.write_txn(&rec) {
                out.say(format!("snapinst: warning: could not record the conflicts in {txn}: {e:#}"));
            }
        }
    }
}

pub(crate) fn boot(args: &RootArgs) -> Result<Outcome> {
    require_root_user()?;
    // In the initramfs journald is not running yet: the milestones wait in /run for the first command that finds it.
    crate::journal::defer_without_journal();
    mounts::enter_private_namespace()?;
    let mut loc = locate(args)?;
    // The initramfs hook mounts the filesystem's top level under /run: the paths recorded now are named by device.
    if let Ok(m) = mounts::mount_of(&loc.state.dir) {
        if loc.state.shown_as.is_none() && m.fstype == "btrfs" && m.mount_point.starts_with("/run") {
            loc.state.shown_as = Some((m.mount_point, m.source));
        }
    }
    let out = Reporter::new(args.json);
    crate::journal::about(&loc.root, None);
    if !loc.state.exists() {
        out.say(format!("snapinst: {} is not managed; nothing to check at boot", loc.root.escaped()));
        return Ok(Outcome::Done);
    }
    if recover::recover_root(&loc.root, &loc.state, &out, recover::PartsMayWait::Yes)? > 0 {
        out.say("snapinst: a transaction is unfinished until its filesystems are mounted; no boot is counted now");
        return Ok(Outcome::Done);
    }
    let _lock = RootLock::acquire(&loc.state.lock_path(), &loc.root).map_err(lock_error)?;
    let Some(mut state) = loc.state.load()? else { return Ok(Outcome::Done) };
    let ctx = Ctx::new(state.backend, &loc.root, &loc.state)?;
    crate::journal::about(&loc.root, Some(state.backend.to_string()));
    backend::seal(&ctx, &state)?;
    hand_over(&ctx, &state, &out);
    if let Some(back) = state.pending.as_ref().and_then(|p| p.carry_back.clone()) {
        // A fallback cut off before it carried back what the failed boots wrote.
        carry_back(&ctx, &back, state.current, &out);
        state.pending.as_mut().expect("checked above").carry_back = None;
        loc.state.save(&state)?;
    }
    let Some(pending) = state.pending.clone() else { return Ok(Outcome::Done) };
    let note = if pending.generation != state.current {
        state.pending = None;
        drop_booted(&ctx, pending.generation, &out);
        format!("generation {} is no longer current; nothing is pending", pending.generation)
    } else if pending.boots_left > 0 {
        if let Err(e) = backend::keep_booted(&ctx, pending.generation) {
            out.say(format!(
                "snapinst: warning: could not keep generation {}'s tree as this boot finds it ({e:#}); a fallback would leave what its boots write in its kept tree",
                pending.generation
            ));
        }
        state.pending = Some(Pending { boots_left: pending.boots_left - 1, ..pending.clone() });
        format!(
            "booting generation {} (try {} of {}); `snapinst bless` marks it good",
            pending.generation,
            state.boot_tries - pending.boots_left + 1,
            state.boot_tries
        )
    } else {
        match pending.fallback.filter(|f| state.generation(*f).is_some()) {
            Some(fallback) => {
                // Before the root is mounted nothing is mounted inside it: the parts' half of the fallback is
                // carried out by `snapinst recover` once they are (the record says which).
                let parts = state.parts();
                let (mounted, _) = crate::submounts::split_by_mounted(&loc.root, &parts);
                let ctx = Ctx::new(state.backend, &loc.root, &loc.state)?.with_parts(&mounted)?;
                // Exactly the kept tree: the fallback runs in the initramfs, where the least can go wrong is best.
                let rec = rollback::switch(&ctx, &mut state, fallback, &parts, true, &out)?;
                let back = CarryBack { generation: pending.generation, txn: rec.txn.clone() };
                state.pending = Some(Pending {
                    generation: fallback,
                    fallback: None,
                    boots_left: state.boot_tries,
                    carry_back: Some(back.clone()),
                });
                loc.state.save(&state)?;
                carry_back(&ctx, &back, fallback, &out);
                state.pending.as_mut().expect("set above").carry_back = None;
                let waiting = rollback::unmounted_parts(&ctx, &rec);
                let then = if waiting.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (its root now; {} once mounted, by `snapinst recover`)",
                        crate::submounts::shown(&waiting)
                    )
                };
                let said = format!(
                    "generation {} did not reach boot-complete.target in {} boots; generation {fallback} is current again{then}",
                    pending.generation, state.boot_tries
                );
                crate::journal::note(Milestone::Fallback, &said, Some(&rec.txn), Some(fallback));
                said
            }
            None => {
                state.pending = None;
                drop_booted(&ctx, pending.generation, &out);
                let said = format!(
                    "generation {} did not reach boot-complete.target in {} boots either, and there is nothing left to fall back to; it stays current",
                    pending.generation, state.boot_tries
                );
                crate::journal::note(Milestone::Fallback, &said, None, Some(pending.generation));
                said
            }
        }
    };
    record(&loc.state, &mut state, &out, note)?;
    Ok(Outcome::Done)
}

pub(crate) fn bless(args: &RootArgs) -> Result<Outcome> {
    require_root_user()?;
    mounts::enter_private_namespace()?;
    let out = Reporter::new(args.json);
    let loc = match locate(args) {
        Ok(loc) if loc.state.exists() => loc,
        _ => {
            out.say(format!("snapinst: {} is not managed by snapinst; nothing to bless", args.root.escaped()));
            return Ok(Outcome::Done);
        }
    };
    let _lock = RootLock::acquire(&loc.state.lock_path(), &loc.root).map_err(lock_error)?;
    let Some(mut state) = loc.state.load()? else {
        out.say(format!("snapinst: {} is not managed; nothing to bless", loc.root.escaped()));
        return Ok(Outcome::Done);
    };
    match state.pending.clone() {
        Some(p) if p.generation == state.current => {
            state.pending = None;
            match Ctx::new(state.backend, &loc.root, &loc.state) {
                Ok(ctx) => drop_booted(&ctx, p.generation, &out),
                Err(e) => out.say(format!("snapinst: warning: {e:#}")),
            }
            // A generation restored by the fallback keeps the reason in the note, so `status` still says why.
            let note = match (&p.fallback, &state.boot_note) {
                (None, Some(prev)) => format!("{prev}; generation {} then booted successfully", p.generation),
                _ => format!("generation {} booted successfully", p.generation),
            };
            record(&loc.state, &mut state, &out, note)?;
        }
        _ => out.say(format!("snapinst: generation {} has nothing pending", state.current)),
    }
    Ok(Outcome::Done)
}

/// Drop generation `n`'s first-boot tree (it booted fine, or is no longer pending); a failure only warns.
fn drop_booted(ctx: &Ctx, n: u64, out: &Reporter) {
    if let Err(e) = backend::drop_booted(ctx, n) {
        out.say(format!("snapinst: warning: could not drop generation {n}'s first-boot tree ({e:#})"));
    }
}

fn record(sd: &crate::state::StateDir, state: &mut State, out: &Reporter, note: String) -> Result<()> {
    out.event(EventName::Boot, json!({"current_generation": state.current, "note": note, "pending": state.pending}));
    out.say(format!("snapinst: {note}"));
    state.boot_note = Some(note);
    sd.save(state)
}
