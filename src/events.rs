//! What a command tells its user: with `--json`, JSON Lines events on stdout (each with `"v":1` and `"event"`);
//! always, human progress on stderr (a progress bar for a long download, on a terminal only). Nothing else in
//! snapinst prints progress.

use serde_json::{json, Value};
use std::io::Write;

pub(crate) struct Reporter {
    json: bool,
}

impl Reporter {
    pub fn new(json: bool) -> Reporter {
        Reporter { json }
    }

    /// Emit one JSON event (ignored without `--json`).
    pub fn event(&self, event: &str, fields: Value) {
        if !self.json {
            return;
        }
        let mut obj = json!({"v": 1, "event": event});
        if let (Some(o), Value::Object(f)) = (obj.as_object_mut(), fields) {
            o.extend(f);
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{obj}");
        let _ = out.flush();
    }

    /// A line of human progress on stderr (a closed stderr never stops a transaction).
    pub fn say(&self, line: impl AsRef<str>) {
        let _ = writeln!(std::io::stderr(), "{}", line.as_ref());
    }

    /// A line of a command's result on stdout, without `--json` (with it, the result goes out as events).
    pub fn text(&self, line: impl AsRef<str>) {
        if !self.json {
            let _ = writeln!(std::io::stdout(), "{}", line.as_ref());
        }
    }

    /// Print a whole result object on stdout (status, list).
    pub fn result(&self, value: &Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            print!("{}", human());
        }
    }
}

/// The progress of a download of `total` bytes (when the server said) on stderr; drawn only on a terminal.
pub(crate) fn download_progress(total: Option<u64>, what: &str) -> indicatif::ProgressBar {
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
