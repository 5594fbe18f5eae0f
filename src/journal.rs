//! The milestones of a root's transactions in the systemd journal, as structured entries (`SYSLOG_IDENTIFIER`
//! `snapinst`, a `MESSAGE_ID` per kind, `SNAPINST_TXN`, `SNAPINST_ROOT`, `SNAPINST_GENERATION`, `SNAPINST_BACKEND`,
//! `SNAPINST_EVENT`), sent through systemd-journal-logger. Without a journal (containers, CI) nothing is sent: stderr
//! says it all as before. In the initramfs (`snapinst boot`, before journald runs) the entries wait in
//! `/run/snapinst/journal-pending` (the initramfs hands /run to the system) and the first snapinst command that finds
//! the journal sends them: the boot's units run one on every boot.

use crate::output::EventName;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a milestone is; each kind has its own `MESSAGE_ID` (`journalctl MESSAGE_ID=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Milestone {
    /// A transaction committed a new generation.
    Committed,
    /// A transaction failed and was rolled back whole.
    RolledBack,
    /// `snapinst rollback` made an earlier generation current.
    Rollback,
    /// An interrupted transaction was finished or undone.
    Recovered,
    /// Recovery could not finish.
    RecoveryFailed,
    /// A new generation did not reach boot-complete.target and the previous one was restored.
    Fallback,
    /// A path both a transaction and the running system changed.
    Conflict,
}

impl Milestone {
    pub fn message_id(self) -> &'static str {
        match self {
            Milestone::Committed => "5e0b6e4ad7a84d0c9a0b1f7e3c2d9a11",
            Milestone::RolledBack => "8f3c2a61b54e4f0f8d7c6b5a49382712",
            Milestone::Rollback => "c1d2e3f405164728b9a0c1d2e3f40513",
            Milestone::Recovered => "2b7e151628ae4d2aa6d2abf7158809cf",
            Milestone::RecoveryFailed => "9a4c7b1e0d3f4e2c8b6a5d4c3b2a1914",
            Milestone::Fallback => "f4e3d2c1b0a94837a6b5c4d3e2f10a15",
            Milestone::Conflict => "0d1c2b3a49584736a5b4c3d2e1f00f16",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Milestone::Committed => "committed",
            Milestone::RolledBack => "rolled_back",
            Milestone::Rollback => "rollback",
            Milestone::Recovered => "recovered",
            Milestone::RecoveryFailed => "recovery_failed",
            Milestone::Fallback => "fallback",
            Milestone::Conflict => "conflict",
        }
    }
}

/// Where the entries of a `snapinst boot` without a journal wait.
const PENDING: &str = "/run/snapinst/journal-pending";
/// Where the journal listens.
const SOCKET: &str = "/run/systemd/journal/socket";
/// The most that waits (a boot's few entries; more is a machine without a journal at all).
const PENDING_MAX: u64 = 256 << 10;

/// The root, backend and operation (`rollback`) of this command's transaction, once known (from its first event).
static CONTEXT: Mutex<Context> = Mutex::new(Context { root: None, backend: None, operation: None });

#[derive(Clone, Default)]
struct Context {
    root: Option<String>,
    backend: Option<String>,
    operation: Option<String>,
}
/// Whether this command keeps entries for the journal when there is none (`snapinst boot`).
static DEFER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This command runs where the journal is not yet (the initramfs): keep its entries for later.
pub(crate) fn defer_without_journal() {
    DEFER.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The root (and backend) this command's milestones are about, when no event says it.
pub(crate) fn about(root: &Path, backend: Option<String>) {
    set_context(&json!({"root": crate::pathbytes::json(root), "backend": backend}));
}

/// Remember what the command's milestones are about, from an event's fields.
fn set_context(event: &Value) {
    if let Ok(mut c) = CONTEXT.lock() {
        let text = |k: &str| event[k].as_str().map(str::to_string);
        c.root = text("root").or(c.root.take());
        c.backend = text("backend").or(c.backend.take());
        c.operation = text("operation").or(c.operation.take());
    }
}

/// The milestone an event is, if any, recorded (`event`: the whole event line).
pub(crate) fn from_event(name: EventName, event: &Value) {
    let txn = event["txn"].as_str();
    let generation = event["generation"].as_u64();
    let root = || CONTEXT.lock().ok().and_then(|c| c.root.clone()).unwrap_or_else(|| "?".into());
    match name {
        EventName::Started | EventName::Resumed => set_context(event),
        EventName::Committed => {
            let rollback = CONTEXT.lock().is_ok_and(|c| c.operation.as_deref() == Some("rollback"));
            let g = generation.unwrap_or(0);
            if rollback {
                note(Milestone::Rollback, &format!("{}: rolled back to generation {g}", root()), txn, generation);
            } else {
                note(Milestone::Committed, &format!("{}: generation {g} committed", root()), txn, generation);
            }
        }
        EventName::RolledBack => {
            let why = event["reason"].as_str().unwrap_or("");
            note(Milestone::RolledBack, &format!("{}: transaction rolled back: {why}", root()), txn, None);
        }
        EventName::Recovered if event["action"] != "nothing" => {
            set_context(event);
            let action = event["action"].as_str().unwrap_or("?").replace('_', " ");
            note(Milestone::Recovered, &format!("{}: interrupted transaction {action}", root()), txn, generation);
        }
        EventName::RecoveryFailed => {
            set_context(event);
            let why = event["error"].as_str().unwrap_or("");
            note(Milestone::RecoveryFailed, &format!("{}: recovery failed: {why}", root()), txn, None);
        }
        EventName::Conflict => {
            let path = event["conflict"]["path"].as_str().unwrap_or("?");
            note(Milestone::Conflict, &format!("{}: conflict on {path}", root()), txn, None);
        }
        _ => {}
    }
}

fn available() -> bool {
    Path::new(SOCKET).exists()
}

/// Record a milestone: `message` is its text; `txn` and `generation` what it is about.
pub(crate) fn note(m: Milestone, message: &str, txn: Option<&str>, generation: Option<u64>) {
    let Context { root, backend, .. } = CONTEXT.lock().map(|c| c.clone()).unwrap_or_default();
    let mut fields = vec![
        ("MESSAGE_ID".to_string(), m.message_id().to_string()),
        ("SNAPINST_EVENT".to_string(), m.name().to_string()),
    ];
    let optional = [
        ("SNAPINST_TXN", txn.map(str::to_string)),
        ("SNAPINST_ROOT", root),
        ("SNAPINST_GENERATION", generation.map(|g| g.to_string())),
        ("SNAPINST_BACKEND", backend),
    ];
    fields.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))));
    let priority = match m {
        Milestone::RecoveryFailed => log::Level::Error,
        Milestone::RolledBack | Milestone::Fallback | Milestone::Conflict => log::Level::Warn,
        _ => log::Level::Info,
    };
    if available() {
        let _ = send(priority, message, &fields);
    } else if DEFER.load(std::sync::atomic::Ordering::SeqCst) {
        keep(priority, message, &fields);
    }
}

fn send(priority: log::Level, message: &str, fields: &[(String, String)]) -> std::io::Result<()> {
    let journal = systemd_journal_logger::JournalLog::empty()?
        .with_syslog_identifier("snapinst".to_string())
        .with_extra_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    journal.journal_send(
        &log::Record::builder().args(format_args!("{message}")).level(priority).target("snapinst").build(),
    )
}

/// An entry kept in `PENDING`, one JSON line each.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    priority: String,
    message: String,
    fields: Vec<(String, String)>,
}

fn keep(priority: log::Level, message: &str, fields: &[(String, String)]) {
    let path = PathBuf::from(PENDING);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > PENDING_MAX) {
        return;
    }
    let kept = Kept { priority: priority.as_str().to_string(), message: message.to_string(), fields: fields.to_vec() };
    let Ok(line) = serde_json::to_string(&kept) else { return };
    let _ = std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/run")));
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Send what a boot without the journal kept, once the journal is there (every command calls this at its start).
pub(crate) fn send_pending() {
    if !available() {
        return;
    }
    // Taken whole by a rename first: two commands at once never send an entry twice.
    let taken = PathBuf::from(format!("{PENDING}.{}", std::process::id()));
    if std::fs::rename(PENDING, &taken).is_err() {
        return;
    }
    let text = std::fs::read_to_string(&taken).unwrap_or_default();
    for kept in text.lines().filter_map(|l| serde_json::from_str::<Kept>(l).ok()) {
        let priority = kept.priority.parse().unwrap_or(log::Level::Info);
        let _ = send(priority, &kept.message, &kept.fields);
    }
    let _ = std::fs::remove_file(&taken);
}
