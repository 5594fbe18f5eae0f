//! Progress a person can watch: on a terminal (a real pseudo-terminal, through `script`), a bar for the steps with
//! dpkg's work inside a package step (its `--status-fd`), and one for the commit's merge, all on stderr, without
//! colours when `NO_COLOR` is set; stdout keeps the JSON Lines, untouched. Without a terminal, the `[n/N]` lines.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

/// `snapinst ARGS` with stderr on a pseudo-terminal and stdout to a file: (the terminal's transcript, stdout's
/// lines, exit code).
fn on_a_terminal(args: &[&str]) -> (String, Vec<Value>, i32) {
    require_tool("script");
    let dir = tempfile::tempdir().unwrap();
    let (stdout, transcript) = (dir.path().join("stdout"), dir.path().join("transcript"));
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line = std::iter::once(BIN).chain(args.iter().copied()).map(quote).collect::<Vec<_>>().join(" ");
    let inner = format!("{line} >{}", quote(stdout.to_str().unwrap()));
    let out = run_timeout(
        Command::new("script")
            .args(["-q", "-e", "-f", "-c", &inner])
            .arg(&transcript)
            .env("SNAPINST_CONFIG_DIR", "/nonexistent/snapinst-test-config")
            .env("NO_COLOR", "1")
            .env("TERM", "xterm"),
        CMD_TIMEOUT,
    );
    let transcript = String::from_utf8_lossy(&std::fs::read(&transcript).unwrap()).into_owned();
    let lines = std::fs::read_to_string(&stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}")))
        .collect();
    (transcript, lines, out.status.code().unwrap_or(-1))
}

#[test]
fn a_terminal_gets_bars_for_the_steps_dpkg_and_the_merge() {
    require_root();
    let img = debian_image(Backend::Overlay);
    let root = img.root();
    let (_dir, plan) = example_plan_dir("packages");
    let args = ["apply", plan.to_str().unwrap(), "--root", root.to_str().unwrap(), "--backend", "overlay", "--json"];
    let (tty, events, code) = on_a_terminal(&args);
    assert_eq!(code, 0, "{tty}");
    // stdout: the events, whole, the summary last.
    let last = events.last().expect("events on stdout");
    assert_eq!((last["event"].as_str(), last["outcome"].as_str()), (Some("summary"), Some("committed")), "{tty}");
    assert!(events.iter().all(|e| e["kind"] == "Event"));
    // The terminal: the bars, dpkg's work named in the steps' bar, and no `[n/N]` lines.
    let steps = events.iter().filter(|e| e["event"] == "step_started").count();
    assert!(tty.contains("steps [") && tty.contains(&format!("] {steps}/{steps} ")), "{tty}");
    assert!(tty.contains("dpkg: install ") || tty.contains("dpkg: upgrade "), "dpkg's progress: {tty}");
    assert!(tty.contains("dpkg: configure "), "dpkg's progress: {tty}");
    assert!(tty.contains("merging ["), "the merge's bar: {tty}");
    assert!(!tty.contains("[1/"), "a [n/N] line on a terminal: {tty}");
    assert!(tty.contains("snapinst: committed; generation 1 is current"), "{tty}");
    // NO_COLOR: no colour (SGR) sequences at all.
    assert!(!tty.contains("\x1b[3") && !tty.contains("\x1b[9") && !tty.contains("\x1b[1m"), "colour: {tty:?}");
}

#[test]
fn without_a_terminal_the_steps_are_lines() {
    require_root();
    let img = populated(Backend::Overlay);
    let pd =
        PlanDir::new(&plan("lines", vec![serde_json::json!({"id": "d", "type": "dir", "path": "/opt/lines"})]), &[]);
    let out = apply(&pd.path, &img.root(), Backend::Overlay, &[]);
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("[1/1] d (dir)") && err.contains("[1/1] d done in "), "{err}");
    assert!(!err.contains("steps [") && !err.contains("merging ["), "{err}");
}
