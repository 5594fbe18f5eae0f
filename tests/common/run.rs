//! Running the real binary: plain, with a timeout, in the background; its JSON Lines; `status`,
//! `list`, `recover` and `rollback` wrappers.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// A `Command` for the binary with a clean environment as far as snapinst is concerned.
pub fn snapinst_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(BIN);
    c.args(args).env_remove("SNAPINST").env_remove("SNAPINST_FAILPOINT").stdin(Stdio::null());
    // ext2 stands in for FAT, which the development machines' kernel may lack (see `FsKind::Ext2`).
    c.env("SNAPINST_TEST_COPY_STAGED", "ext2");
    // No configuration but the built-in defaults, whatever the machine's /etc/snapinst holds (a test that wants one
    // sets its own directory).
    c.env("SNAPINST_CONFIG_DIR", "/nonexistent/snapinst-test-config");
    c
}

/// Runs `snapinst ARGS` and returns its output.
pub fn snapinst<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_timeout(&mut snapinst_cmd(args), CMD_TIMEOUT)
}

/// Runs `snapinst ARGS` with extra environment variables.
pub fn snapinst_env<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = snapinst_cmd(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run_timeout(&mut c, CMD_TIMEOUT)
}

/// Runs a command to completion, killing it (and panicking) after `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = join_timeout(t2, Duration::from_secs(5));
        panic!("{cmd:?} did not finish within {timeout:?} (killed); stderr:\n{}", String::from_utf8_lossy(&stderr));
    };
    // A grandchild that inherited the pipes could keep them open; do not wait forever for it.
    let stdout = join_timeout(t1, Duration::from_secs(30));
    let stderr = join_timeout(t2, Duration::from_secs(30));
    Output { status, stdout, stderr }
}

fn join_timeout(t: std::thread::JoinHandle<Vec<u8>>, d: Duration) -> Vec<u8> {
    let deadline = Instant::now() + d;
    while !t.is_finished() {
        if Instant::now() > deadline {
            return b"<output pipe still held open by a leftover process>".to_vec();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    t.join().unwrap_or_default()
}

/// Waits for a child up to `timeout`; None when it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("waiting for child") {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A human-readable dump of an output for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "expected exit code {code}\n{}", show(out));
}

/// True when the process died of SIGKILL.
pub fn killed_by_sigkill(out: &Output) -> bool {
    out.status.signal() == Some(libc::SIGKILL)
}

/// `snapinst apply PLAN --root ROOT --backend B --json [extra]`.
pub fn apply(plan: &Path, root: &Path, backend: Backend, extra: &[&str]) -> Output {
    apply_env(plan, root, backend, extra, &[])
}

pub fn apply_env(plan: &Path, root: &Path, backend: Backend, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("apply"),
        plan.as_os_str(),
        OsStr::new("--root"),
        root.as_os_str(),
        OsStr::new("--backend"),
        OsStr::new(backend.name()),
        OsStr::new("--json"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    snapinst_env(args, env)
}

/// Every stdout line as JSON; each must be an object with `"v":1`, `"apiVersion":"snapinst/v1"`,
/// `"kind":"Event"` and an `"event"`.
#[track_caller]
pub fn json_lines(out: &Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let val: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}\n{}", show(out)));
        assert_eq!(val["v"], json!(1), "JSON line without \"v\":1: {line}");
        assert!(val["event"].is_string(), "JSON line without \"event\": {line}");
        assert_eq!(val["apiVersion"], json!("snapinst/v1"), "JSON line without its apiVersion: {line}");
        assert_eq!(val["kind"], json!("Event"), "JSON line without \"kind\":\"Event\": {line}");
        v.push(val);
    }
    v
}

/// Like [`json_lines`] for a process that was killed: a last, partial line is ignored.
pub fn json_lines_lenient(out: &Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

pub fn events<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == name).collect()
}

#[track_caller]
pub fn summary(lines: &[Value]) -> &Value {
    let last = lines.last().expect("no JSON lines on stdout");
    assert_eq!(last["event"], "summary", "last JSON line is not the summary: {last}");
    last
}

fn root_args(root: &Path) -> Vec<&OsStr> {
    vec![OsStr::new("--root"), root.as_os_str(), OsStr::new("--json")]
}

/// `snapinst status --root ROOT --json` as one JSON object.
#[track_caller]
pub fn status_json(root: &Path) -> Value {
    let mut args = vec![OsStr::new("status")];
    args.extend(root_args(root));
    let out = snapinst(args);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not one JSON object ({e})\n{}", show(&out)));
    assert_eq!(v["v"], json!(1), "status --json without v:1: {v}");
    v
}

/// `snapinst list --root ROOT --json` as one JSON object.
#[track_caller]
pub fn list_json(root: &Path) -> Value {
    let mut args = vec![OsStr::new("list")];
    args.extend(root_args(root));
    let out = snapinst(args);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("list --json is not one JSON object ({e})\n{}", show(&out)));
    assert_eq!(v["v"], json!(1), "list --json without v:1: {v}");
    v
}

/// Asserts that status and list agree that `g` is the current generation.
#[track_caller]
pub fn assert_current_generation(root: &Path, g: u64) {
    let st = status_json(root);
    assert_eq!(st["current_generation"], json!(g), "status --json current_generation: {st}");
    let l = list_json(root);
    assert_eq!(l["current_generation"], json!(g), "list --json current_generation: {l}");
    let gens = l["generations"].as_array().unwrap_or_else(|| panic!("list --json has no generations array: {l}"));
    if g == 0 && gens.is_empty() {
        // Nothing committed yet: generation 0 is the untouched tree, with nothing stored for it.
        return;
    }
    let current: Vec<&Value> = gens.iter().filter(|x| x["current"] == json!(true)).collect();
    assert_eq!(current.len(), 1, "exactly one generation must be current: {l}");
    assert_eq!(current[0]["generation"], json!(g), "list --json generation marked current: {l}");
}

/// `snapinst recover --root ROOT --json [env]`.
pub fn recover_env(root: &Path, env: &[(&str, &str)]) -> Output {
    let mut args = vec![OsStr::new("recover")];
    args.extend(root_args(root));
    snapinst_env(args, env)
}

pub fn recover(root: &Path) -> Output {
    recover_env(root, &[])
}

/// `snapinst rollback --root ROOT --json [extra]`.
pub fn rollback(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![OsStr::new("rollback")];
    args.extend(root_args(root));
    args.extend(extra.iter().map(OsStr::new));
    snapinst_env(args, env)
}

/// Spawns `snapinst ARGS` in the background with its stdout lines delivered to a channel.
pub struct Background {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub stderr: std::thread::JoinHandle<String>,
}

pub fn spawn_background(mut cmd: Command) -> Background {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(so).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    Background { child, lines: rx, stderr }
}

impl Background {
    /// Waits until a JSON line satisfies `pred`; panics when the process ends first or after
    /// `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out waiting for {what}; lines so far: {seen:#?}");
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(l) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        if pred(&v) {
                            return v;
                        }
                    }
                    seen.push(l);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    panic!("process ended ({st:?}) before {what}; lines: {seen:#?}");
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The `action` of every `recovered` event of a `recover` or `boot` run.
pub fn recovered_actions(out: &Output) -> Vec<String> {
    json_lines(out)
        .iter()
        .filter(|l| l["event"] == "recovered")
        .map(|l| l["action"].as_str().unwrap_or("?").to_string())
        .collect()
}
