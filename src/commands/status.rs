//! `snapinst status`, `snapinst list` and `snapinst conflicts`: read-only views of a root's state area. They never take the lock and
//! never change anything, so they can run while a transaction is in progress.

use super::recover::FAILED_STAMP;
use super::{locate, Outcome};
use crate::backend;
use crate::cli::RootArgs;
use crate::events::Reporter;
use crate::lock;
use crate::output::{self, PathJson};
use crate::pathbytes;
use crate::state::State;
use anyhow::Result;
use serde_json::{json, Value};
use std::fmt::Write;

pub(crate) fn status(args: &RootArgs) -> Result<Outcome> {
    let loc = locate(args)?;
    let state = loc.state.load()?;
    let holder = lock::holder(&loc.state.lock_path());
    let unfinished = loc.state.unfinished()?;
    let paths = |ps: &[std::path::PathBuf]| ps.iter().cloned().map(PathJson).collect::<Vec<_>>();
    let in_progress = unfinished.first().map(|t| output::InProgress {
        txn: t.txn.clone(),
        kind: json!(t.kind),
        state: json!(t.phase),
        pid: holder,
        interrupted: holder.is_none(),
        plan: t.plan.clone(),
        parts: paths(&t.parts),
    });
    let recovery_failed = std::fs::read_to_string(loc.state.dir.join(FAILED_STAMP)).ok().map(|s| s.trim().to_string());
    let next_boot_differs = state.as_ref().is_some_and(|s| backend::next_boot_differs(s.backend, &loc.root, s));
    let status = output::Status {
        head: output::Head::of("Status"),
        root: PathJson(loc.root.clone()),
        state_dir: loc.state_shown.clone(),
        backend: state.as_ref().map(|s| s.backend.to_string()),
        parts: paths(&state.as_ref().map(|s| s.parts()).unwrap_or_default()),
        current_generation: state.as_ref().map(|s| s.current).unwrap_or(0),
        in_progress,
        kept: super::resume::kept_summary(&loc.state)?,
        next_boot_differs,
        recovery_failed,
        pending: state.as_ref().and_then(|s| s.pending.clone()).map(|p| json!(p)),
        boot_note: state.as_ref().and_then(|s| s.boot_note.clone()),
        last_conflicts: Some(last_conflicts(&loc.state)?).filter(|v| !v.is_null()),
        in_kept_trees: json!(in_kept_trees(&loc.state.gens_dir())),
    };
    let value = serde_json::to_value(&status)?;
    Reporter::new(args.json).result("Status", &value, || human_status(&value, state.as_ref()));
    Ok(Outcome::Done)
}

fn human_status(v: &Value, state: Option<&State>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "root:               {}", v["root"].as_str().unwrap_or("?"));
    let _ = writeln!(s, "state area:         {}", v["state_dir"].as_str().unwrap_or("?"));
    match state {
        None => {
            let _ = writeln!(s, "managed:            no (no transaction has run yet)");
        }
        Some(st) => {
            let _ = writeln!(s, "backend:            {}", st.backend);
            let _ = writeln!(s, "current generation: {}", st.current);
            let parts = crate::submounts::shown(&st.parts());
            if !parts.is_empty() {
                let _ = writeln!(s, "parts:              {} (staged with the root)", parts);
            }
        }
    }
    match &v["in_progress"] {
        Value::Null => {
            let _ = writeln!(s, "in progress:        nothing");
        }
        t if t["interrupted"] == true => {
            let _ = writeln!(
                s,
                "in progress:        transaction {} was INTERRUPTED ({}): run `snapinst recover --root {}`",
                t["txn"].as_str().unwrap_or("?"),
                t["state"].as_str().unwrap_or("?"),
                v["root"].as_str().unwrap_or("?")
            );
        }
        t => {
            let _ =
                writeln!(s, "in progress:        transaction {} (pid {})", t["txn"].as_str().unwrap_or("?"), t["pid"]);
        }
    }
    if let Some(k) = v["kept"].as_object() {
        let _ = writeln!(
            s,
            "kept:               transaction {} (plan \"{}\"): step \"{}\" failed; `snapinst resume` or `snapinst abort`",
            k["txn"].as_str().unwrap_or("?"),
            k["plan"].as_str().unwrap_or("?"),
            k["failed_step"].as_str().unwrap_or("?")
        );
        if let Some(e) = k["error"].as_str() {
            let _ = writeln!(s, "kept because:       {e}");
        }
    }
    if v["next_boot_differs"] == true {
        let _ = writeln!(s, "reboot needed:      yes (the next mount or boot of the root sees the current generation)");
    }
    if let Some(p) = state.and_then(|s| s.pending.as_ref()) {
        let _ = writeln!(
            s,
            "pending:            generation {} must reach boot-complete.target ({} boots left)",
            p.generation, p.boots_left
        );
    }
    if let Some(note) = v["boot_note"].as_str() {
        let _ = writeln!(s, "last boot check:    {note}");
    }
    for p in v["in_kept_trees"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "in a kept tree:     pid {} ({}) has {} open: it writes to a generation the root no longer holds",
            p["pid"],
            p["command"].as_str().unwrap_or("?"),
            p["path"].as_str().unwrap_or("?")
        );
    }
    if let Some(c) = v["last_conflicts"].as_object() {
        let _ = writeln!(
            s,
            "conflicts:          {} in transaction {} (`snapinst conflicts --txn {}`)",
            c["conflicts"].as_array().map_or(0, |a| a.len()),
            c["txn"].as_str().unwrap_or("?"),
            c["txn"].as_str().unwrap_or("?")
        );
    }
    if let Some(msg) = v["recovery_failed"].as_str() {
        let _ = writeln!(s, "RECOVERY FAILED:    {msg}");
    }
    s
}

pub(crate) fn list(args: &RootArgs) -> Result<Outcome> {
    let loc = locate(args)?;
    let state = loc.state.load()?;
    let current = state.as_ref().map(|s| s.current).unwrap_or(0);
    let paths = |ps: &[std::path::PathBuf]| ps.iter().cloned().map(PathJson).collect::<Vec<_>>();
    let generations: Vec<output::ListedGeneration> = state
        .as_ref()
        .map(|s| {
            s.generations
                .iter()
                .map(|g| output::ListedGeneration {
                    generation: g.generation,
                    time: g.time,
                    plan: g.plan.clone(),
                    plan_digest: g.plan_digest.clone(),
                    parent: g.parent,
                    current: g.generation == current,
                    parts: paths(&g.parts),
                })
                .collect()
        })
        .unwrap_or_default();
    let transactions: Vec<output::ListedTxn> = loc
        .state
        .txns()?
        .iter()
        .map(|t| output::ListedTxn {
            txn: t.txn.clone(),
            kind: json!(t.kind),
            time: t.time,
            plan: t.plan.clone(),
            state: json!(t.phase),
            outcome: t.outcome.clone(),
            failed_step: t.failed_step.clone(),
            from_generation: t.from_generation,
            to_generation: t.to_generation,
            parts: paths(&t.parts),
            carried: t.carried.as_ref().map(|c| json!(c)),
            conflicts: json!(t.conflicts),
        })
        .collect();
    let list = output::List { head: output::Head::of("List"), current_generation: current, generations, transactions };
    let value = serde_json::to_value(&list)?;
    let none = Vec::new();
    let generations = value["generations"].as_array().unwrap_or(&none);
    let transactions = value["transactions"].as_array().unwrap_or(&none);
    Reporter::new(args.json).result("List", &value, || {
        let mut s = String::from("GENERATION  CURRENT  TIME (UTC)           PLAN\n");
        for g in generations {
            let _ = writeln!(
                s,
                "{:<10}  {:<7}  {:<19}  {}",
                g["generation"].to_string(),
                if g["current"] == true { "*" } else { "" },
                utc(g["time"].as_u64().unwrap_or(0)),
                g["plan"].as_str().unwrap_or("(before snapinst)")
            );
        }
        s.push_str("\nTRANSACTION                  TIME (UTC)           KIND      PLAN              OUTCOME\n");
        for t in transactions {
            let _ = writeln!(
                s,
                "{:<28} {:<19}  {:<9} {:<17} {}",
                t["txn"].as_str().unwrap_or("?"),
                utc(t["time"].as_u64().unwrap_or(0)),
                t["kind"].as_str().unwrap_or("?"),
                t["plan"].as_str().unwrap_or("-"),
                t["outcome"].as_str().unwrap_or(t["state"].as_str().unwrap_or("?"))
            );
        }
        s
    });
    Ok(Outcome::Done)
}

/// The processes that have a file, their working directory or their root in a kept generation's tree (found through
/// /proc): after a commit replaced a directory target's tree, what they write goes there, not into the root.
fn in_kept_trees(gens: &std::path::Path) -> Vec<Value> {
    let gens = gens.canonicalize().unwrap_or_else(|_| gens.to_path_buf());
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let dir = p.path();
        let mut links: Vec<std::path::PathBuf> = vec![dir.join("cwd"), dir.join("root")];
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        let held = links.iter().filter_map(|l| std::fs::read_link(l).ok()).find(|t| t.starts_with(&gens));
        if let Some(path) = held {
            let command = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_string();
            out.push(json!({"pid": pid, "command": command, "path": pathbytes::json(&path)}));
        }
    }
    out
}

/// The conflicts of the last transaction that finished, if it had any.
fn last_conflicts(sd: &crate::state::StateDir) -> Result<Value> {
    let txns = sd.txns()?;
    Ok(match txns.iter().rev().find(|t| t.outcome.is_some()) {
        Some(t) if !t.conflicts.is_empty() => json!({"txn": t.txn, "plan": t.plan, "conflicts": t.conflicts}),
        _ => Value::Null,
    })
}

/// `snapinst conflicts`: the conflicts of transaction `txn`, or of every transaction on record, newest first.
pub(crate) fn conflicts(args: &RootArgs, txn: Option<&str>) -> Result<Outcome> {
    let loc = locate(args)?;
    let mut txns = loc.state.txns()?;
    txns.reverse();
    if let Some(id) = txn {
        txns.retain(|t| t.txn == id);
        if txns.is_empty() {
            anyhow::bail!("there is no transaction {id} on record in {} (`snapinst list` shows them)", loc.state_shown);
        }
    }
    let shown: Vec<Value> = txns
        .iter()
        .filter(|t| txn.is_some() || !t.conflicts.is_empty())
        .map(|t| json!({"txn": t.txn, "plan": t.plan, "outcome": t.outcome, "conflicts": t.conflicts}))
        .collect();
    let value = json!({"v": 1, "transactions": shown});
    Reporter::new(args.json).result("Conflicts", &value, || {
        let mut s = String::new();
        for t in &txns {
            if txn.is_none() && t.conflicts.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                "transaction {} (plan \"{}\", {}): {} conflicts",
                t.txn,
                t.plan.as_deref().unwrap_or("-"),
                t.outcome.as_deref().unwrap_or("in progress"),
                t.conflicts.len()
            );
            for c in &t.conflicts {
                let _ = writeln!(s, "  {}", c.line());
            }
        }
        if s.is_empty() {
            s.push_str("no transaction on record has conflicts\n");
        }
        s
    });
    Ok(Outcome::Done)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (days to civil date after Howard Hinnant's algorithm).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_496_552), "2026-11-24 05:02:32");
    }
}
