//! Milestones in the systemd journal: a real `systemd-journald` runs in a mount namespace of the test's own (a fresh
//! tmpfs on /run, the journal kept there), and snapinst's entries are read back with `journalctl`: each with
//! `SYSLOG_IDENTIFIER=snapinst`, the `MESSAGE_ID` of its kind and the fields `SNAPINST_TXN`, `SNAPINST_ROOT`,
//! `SNAPINST_GENERATION`, `SNAPINST_BACKEND`. A `snapinst boot` that runs before the journal does (the initramfs)
//! keeps its entries in /run until the next command finds the journal.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;

const COMMITTED: &str = "5e0b6e4ad7a84d0c9a0b1f7e3c2d9a11";
const ROLLED_BACK: &str = "8f3c2a61b54e4f0f8d7c6b5a49382712";
const RECOVERED: &str = "2b7e151628ae4d2aa6d2abf7158809cf";

/// In a new mount namespace with an empty /run: `snapinst boot` (no journal yet), then journald started, then
/// `apply GOOD` and `apply BAD`: the journal's snapinst entries as JSON, what waited in /run before, how many entries
/// `journalctl MESSAGE_ID=<committed>` finds, and the whole output.
fn run_with_a_journal(root: &str, good: &str, bad: &str) -> (Vec<Value>, String, String, String) {
    let journald = ["/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("systemd-journald (package systemd) is installed");
    require_tool("journalctl");
    let script = r#"
set -u
mount -t tmpfs -o mode=0755 tmpfs /run
"$BIN" boot --root "$ROOT" --json >/dev/null 2>&1
echo "@@pending"; cat /run/snapinst/journal-pending 2>/dev/null
"$JOURNALD" >/dev/null 2>&1 &
jd=$!
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
"$BIN" apply "$GOOD" --root "$ROOT" --backend btrfs --json >/dev/null 2>&1; echo "@@good $?"
"$BIN" apply "$BAD" --root "$ROOT" --backend btrfs --json >/dev/null 2>&1; echo "@@bad $?"
journalctl --sync 2>/dev/null || sleep 1
echo "@@journal"
journalctl -D /run/log/journal --no-pager -o json SYSLOG_IDENTIFIER=snapinst
echo "@@by-id"
journalctl -D /run/log/journal --no-pager -o json MESSAGE_ID=$COMMITTED_ID | wc -l
echo "@@end"
kill $jd
"#;
    let out = run_ok(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c", script])
            .env("BIN", BIN)
            .env("ROOT", root)
            .env("GOOD", good)
            .env("BAD", bad)
            .env("JOURNALD", journald)
            .env("COMMITTED_ID", COMMITTED)
            .env("SNAPINST_CONFIG_DIR", "/nonexistent/snapinst-test-config"),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let section = |from: &str, to: &str| {
        let start = text.find(from).map(|i| i + from.len()).unwrap_or(text.len());
        let end = text[start..].find(to).map(|i| start + i).unwrap_or(text.len());
        text[start..end].trim().to_string()
    };
    let entries = section("@@journal", "@@by-id")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journalctl -o json line ({e}): {l}")))
        .collect();
    let by_id = section("@@by-id", "@@end");
    (entries, section("@@pending", "@@good"), by_id, text)
}

#[test]
fn privileged_milestones_reach_the_journal_with_their_fields() {
    require_root();
    let img = populated(Backend::Btrfs);
    let root = img.root();
    let r = root.to_str().unwrap();
    // An interrupted transaction for the boot to recover.
    let hello = PlanDir::new(&plan("hello", vec![json!({"id": "d", "type": "dir", "path": "/opt/hello"})]), &[]);
    let killed = apply_env(&hello.path, &root, Backend::Btrfs, &[], &[("SNAPINST_FAILPOINT", "apply-after-record")]);
    assert!(killed_by_sigkill(&killed), "{}", show(&killed));
    let killed_txn = status_json(&root)["in_progress"]["txn"].as_str().expect("the killed apply's txn").to_string();
    let good = PlanDir::new(&plan("good", vec![json!({"id": "d", "type": "dir", "path": "/opt/good"})]), &[]);
    let bad = PlanDir::new(&plan("bad", vec![json!({"id": "x", "type": "run", "command": sh("exit 3")})]), &[]);
    let (entries, pending, by_id, text) =
        run_with_a_journal(r, good.path.to_str().unwrap(), bad.path.to_str().unwrap());
    assert!(text.contains("@@good 0") && text.contains("@@bad 1"), "{text}");

    // The boot ran before the journal: its entry waited in /run.
    assert!(pending.contains(RECOVERED) && pending.contains(&killed_txn), "waiting in /run: {pending}\n{text}");
    let field = |e: &Value, k: &str| e[k].as_str().unwrap_or("").to_string();
    let of = |id: &str| entries.iter().filter(|e| field(e, "MESSAGE_ID") == id).collect::<Vec<_>>();
    let recovered = of(RECOVERED);
    assert_eq!(recovered.len(), 1, "one recovered entry, sent once: {text}");
    assert_eq!(field(recovered[0], "SNAPINST_TXN"), killed_txn);
    assert_eq!(field(recovered[0], "SNAPINST_ROOT"), r);
    let committed = of(COMMITTED);
    assert_eq!(committed.len(), 1, "{text}");
    let c = committed[0];
    assert_eq!(
        [
            field(c, "SYSLOG_IDENTIFIER"),
            field(c, "SNAPINST_ROOT"),
            field(c, "SNAPINST_BACKEND"),
            field(c, "SNAPINST_GENERATION")
        ],
        ["snapinst".to_string(), r.to_string(), "btrfs".to_string(), "1".to_string()],
        "{c}"
    );
    assert!(!field(c, "SNAPINST_TXN").is_empty() && field(c, "MESSAGE").contains("generation 1 committed"), "{c}");
    let rolled_back = of(ROLLED_BACK);
    assert_eq!(rolled_back.len(), 1, "{text}");
    assert_eq!(field(rolled_back[0], "PRIORITY"), "4", "a warning: {}", rolled_back[0]);
    // Found by its MESSAGE_ID.
    assert_eq!(by_id, "1", "journalctl MESSAGE_ID=...: {text}");
}
