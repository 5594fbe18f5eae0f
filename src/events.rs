//! What a command tells its user: with `--json`, JSON Lines events on stdout (each with `"apiVersion":
//! "snapinst/v1"`, `"kind": "Event"`, `"v":1` and `"event"`), or on the file descriptor `--progress-fd` names
//! (stdout then keeps only the result); result objects (status, list, ...) with their own `kind`; always, human
//! progress on stderr: on a terminal, progress bars (the steps, with dpkg's work in a package step; the commit's
//! merge; a download), else lines. Nothing else in snapinst prints progress.

use crate::output::EventName;
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// The version of every JSON object snapinst prints (`"v": 1` is its older form, kept for one release).
pub(crate) const API_VERSION: &str = "snapinst/v1";

/// Where `--progress-fd` sends the events.
static PROGRESS: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Send every event, as JSON Lines, to the open file descriptor `fd` (`--progress-fd`); checked here, so a
/// descriptor that is not open for writing is an error before anything runs.
pub(crate) fn set_progress_fd(fd: i32) -> Result<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFL only reads the descriptor's flags; an fd that is not open gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fd < 0 || flags < 0 {
        bail!("--progress-fd {fd}: not an open file descriptor");
    }
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        bail!("--progress-fd {fd}: the descriptor is open for reading only");
    }
    // SAFETY: the descriptor is open (checked above) and is the caller's to give: snapinst owns it from here on.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = PROGRESS.set(Mutex::new(file));
    Ok(())
}

/// `value` (an object) with `apiVersion` and `kind` first.
pub(crate) fn versioned(kind: &str, value: &Value) -> Value {
    let mut obj = serde_json::Map::new();
    obj.insert("apiVersion".into(), json!(API_VERSION));
    obj.insert("kind".into(), json!(kind));
    if let Value::Object(o) = value {
        obj.extend(o.clone());
    }
    Value::Object(obj)
}

pub(crate) struct Reporter {
    json: bool,
}

impl Reporter {
    pub fn new(json: bool) -> Reporter {
        Reporter { json }
    }

    /// Emit one JSON event: to the `--progress-fd` descriptor when there is one, and with `--json` on stdout (only
    /// the `summary`, the result, when the events go to that descriptor). A closed reader never stops a command.
    pub fn event(&self, name: EventName, fields: Value) {
        let event = name.as_str();
        let mut obj = versioned("Event", &json!({"v": 1, "event": event}));
        if let (Some(o), Value::Object(f)) = (obj.as_object_mut(), fields) {
            debug_assert!(!f.contains_key("kind") && !f.contains_key("apiVersion"), "event {event} hides its kind");
            o.extend(f);
        }
        crate::journal::from_event(name, &obj);
        let progress = PROGRESS.get();
        if !self.json && progress.is_none() {
            return;
        }
        if let Some(p) = progress {
            if let Ok(mut f) = p.lock() {
                let _ = writeln!(f, "{obj}");
            }
        }
        if self.json && (progress.is_none() || name == EventName::Summary) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{obj}");
            let _ = out.flush();
        }
    }

    /// A line of human progress on stderr (a closed stderr never stops a transaction); above the progress bar
    /// while one is drawn.
    pub fn say(&self, line: impl AsRef<str>) {
        match ACTIVE.lock().ok().and_then(|a| a.clone()) {
            Some(bar) => bar.println(line.as_ref()),
            None => {
                let _ = writeln!(std::io::stderr(), "{}", line.as_ref());
            }
        }
    }

    /// A line of a command's result on stdout, without `--json` (with it, the result goes out as events).
    pub fn text(&self, line: impl AsRef<str>) {
        if !self.json {
            let _ = writeln!(std::io::stdout(), "{}", line.as_ref());
        }
    }

    /// Print a whole result object of `kind` on stdout (status, list).
    pub fn result(&self, kind: &str, value: &Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{}", versioned(kind, value));
        } else {
            print!("{}", human());
        }
    }
}

/// Whether this command draws bars at all: the ones a person runs (apply, upgrade, resume, rollback), not the ones
/// the boot runs on its console (boot, bless, recover).
static BARS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This command may draw progress bars on a terminal.
pub(crate) fn allow_bars() {
    BARS.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The progress bar drawn now, if any: `say` prints above it, `progress_note` sets its message.
static ACTIVE: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// A progress bar on stderr when stderr is a terminal (never on stdout; no colours, so `NO_COLOR` holds), or
/// nothing: without a terminal the caller prints its lines as before. While it is drawn, `say` prints above it.
pub(crate) struct Bar {
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    /// A bar of `total` units named `what` ("steps", "merging").
    pub fn start(what: &str, total: usize) -> Bar {
        use std::io::IsTerminal;
        if !BARS.load(std::sync::atomic::Ordering::SeqCst) || !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        let bar = indicatif::ProgressBar::with_draw_target(Some(total as u64), indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {wide_msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_string());
        if let Ok(mut a) = ACTIVE.lock() {
            *a = Some(bar.clone());
        }
        Bar { bar: Some(bar) }
    }

    /// Whether the bar is drawn (stderr is a terminal).
    pub fn shown(&self) -> bool {
        self.bar.is_some()
    }

    /// `done` units done, working on `now`.
    pub fn at(&self, done: usize, now: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(now.into());
        }
    }

    pub fn inc(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
            if let Ok(mut a) = ACTIVE.lock() {
                *a = None;
            }
        }
    }
}

/// Whether a progress bar is drawn now (so detail for its message is worth gathering).
pub(crate) fn bar_shown() -> bool {
    ACTIVE.lock().is_ok_and(|a| a.is_some())
}

/// Set the message of the bar drawn now, if any (what a long step is doing: dpkg's package and action).
pub(crate) fn progress_note(message: impl Into<String>) {
    if let Some(bar) = ACTIVE.lock().ok().and_then(|a| a.clone()) {
        bar.set_message(message.into());
    }
}

/// The progress of a download of `total` bytes (when the server said) on stderr; drawn only on a terminal.
pub(crate) fn download_progress(total: Option<u64>, what: &str) -> indicatif::ProgressBar {
    if bar_shown() {
        // Within the steps' bar, which says what the step is doing.
        progress_note(format!("fetching {what}"));
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        "{msg} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}, {eta} left"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("fetching {what}"));
    bar
}
