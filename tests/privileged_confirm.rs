//! `apply --confirm` on a terminal: the changes are printed, then the question; "y" commits, anything else throws
//! the transaction away. The terminal is a real pseudo-terminal made by util-linux's `script`.

#[macro_use]
mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};

/// Run `snapinst apply PLAN --root ROOT --confirm` on a pseudo-terminal and type `answer` at the question.
fn apply_confirming(plan: &std::path::Path, root: &std::path::Path, answer: &str) -> std::process::Output {
    let cmd = format!("{BIN} apply {} --root {} --confirm", plan.display(), root.display());
    let mut child = Command::new(require_tool("script"))
        .args(["--quiet", "--return", "--command", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting script");
    child.stdin.take().unwrap().write_all(format!("{answer}\n").as_bytes()).unwrap();
    child.wait_with_output().expect("waiting for script")
}

fn confirm_on_a_terminal(backend: Backend) {
    let img = populated(backend);
    let root = img.root();
    let before = manifest(&root);
    let pd = PlanDir::new(
        &plan("conf", vec![json!({"id": "c", "type": "file", "path": "/etc/confirmed", "content": "yes\n"})]),
        &[],
    );

    let out = apply_confirming(&pd.path, &root, "n");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "answering n: exit code\n{}", show(&out));
    assert!(text.contains("added     /etc/confirmed"), "the changes were not shown:\n{text}");
    assert!(text.contains("commit these changes"), "no question:\n{text}");
    assert!(text.contains("not confirmed"), "{text}");
    assert_manifest_eq(&before, &manifest(&root));
    assert_no_leftovers(&img);

    let out = apply_confirming(&pd.path, &root, "y");
    assert_eq!(out.status.code(), Some(0), "answering y: exit code\n{}", show(&out));
    let mut want = Expect::new(&before);
    want.file_content("/etc/confirmed", b"yes\n");
    want.check(&manifest(&root));
}

for_staged_backends!(confirm_on_a_terminal, confirm_on_a_terminal);
