//! A panic is a bug in snapinst, and must never leave a transaction behind. `install_hook` replaces Rust's panic
//! message with one line that says so and where; `after_panic` runs once the panicking command has unwound (so every
//! lock and guard it held is released): it recovers the command's root as `snapinst recover` does (a transaction
//! that had not reached its commit point is discarded whole, one past it is finished), says so, also in the
//! `summary` event, and returns the exit code of what happened: 1 when the root is as it was, 0 when the
//! transaction was past its commit point and is now committed, 3 when the recovery failed too.

use super::{locate, recover};
use crate::cli::RootArgs;
use crate::events::Reporter;
use crate::output::EventName;
use anyhow::bail;
use serde_json::json;
use std::sync::Mutex;

/// The last panic's message and place, for the summary.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Print a panic as the internal error it is (once, on stderr), and keep its message for `after_panic`.
pub(crate) fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let text = format!("{msg}{at}");
        eprintln!("snapinst: internal error (a bug in snapinst; please report it): {text}");
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(text);
        }
    }));
}

/// After a command panicked: recover `root` (the root of a command that changes one, and whether its parts may be
/// left to wait for their mounts; None for a command that changes nothing) and return the exit code.
pub(crate) fn after_panic(root: Option<(RootArgs, recover::PartsMayWait)>) -> u8 {
    let msg = LAST_PANIC.lock().ok().and_then(|mut l| l.take()).unwrap_or_else(|| "(no message)".to_string());
    let Some((args, may_wait)) = root else { return 1 };
    crate::failpoint::disarm();
    let out = Reporter::new(args.json);
    let recovered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recover_left(&args, may_wait, &out)));
    let (txn, outcome, code) = match recovered {
        Ok(Ok(None)) => {
            out.say("snapinst: no transaction was left in progress; nothing was changed");
            (None, "rolled_back", 1)
        }
        Ok(Ok(Some((txn, true)))) => {
            out.say(format!(
                "snapinst: transaction {txn} was past its commit point: recovery finished it, and it is committed"
            ));
            (Some(txn), "committed", 0)
        }
        Ok(Ok(Some((txn, false)))) => {
            out.say(format!("snapinst: transaction {txn} was rolled back: the root is as it was"));
            (Some(txn), "rolled_back", 1)
        }
        Ok(Err(e)) => {
            out.say(format!("snapinst: recovering after the internal error failed: {e:#}; run `snapinst recover`"));
            (None, "needs_recovery", 3)
        }
        Err(_) => {
            out.say(
                "snapinst: recovering after the internal error failed (another internal error); run `snapinst recover`",
            );
            (None, "needs_recovery", 3)
        }
    };
    out.event(EventName::Summary, json!({"txn": txn, "outcome": outcome, "internal_error": msg}));
    code
}

/// Recover the transaction the panicking command left unfinished on the root of `args`, if any: (its id, whether
/// it was rolled forward).
fn recover_left(
    args: &RootArgs,
    may_wait: recover::PartsMayWait,
    out: &Reporter,
) -> anyhow::Result<Option<(String, bool)>> {
    let loc = locate(args)?;
    if !loc.state.exists() {
        return Ok(None);
    }
    let left: Vec<String> = loc.state.unfinished()?.into_iter().map(|t| t.txn).collect();
    let Some(txn) = left.last().cloned() else { return Ok(None) };
    if recover::recover_root(&loc.root, &loc.state, out, may_wait)? > 0 {
        bail!("transaction {txn} waits for the filesystems inside the root; `snapinst recover` finishes it once they are mounted");
    }
    let rec = loc.state.txns()?.into_iter().find(|t| t.txn == txn);
    let forward = rec.and_then(|r| r.outcome).is_some_and(|o| o.starts_with("committed"));
    Ok(Some((txn, forward)))
}
