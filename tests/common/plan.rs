//! Plan files in temporary directories, and [`Hello`], the standard plan most tests apply, with
//! its failing variants and its expected effects.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;

/// A plan file `plan.json` in a temporary directory, with its `files/` sources.
pub struct PlanDir {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl PlanDir {
    pub fn new(plan: &Value, files: &[(&str, &[u8])]) -> PlanDir {
        Self::raw(&serde_json::to_string_pretty(plan).unwrap(), files)
    }

    /// A plan file with exactly this text (for JSON syntax errors).
    pub fn raw(text: &str, files: &[(&str, &[u8])]) -> PlanDir {
        let dir = tempfile::Builder::new().prefix("snapinst-plan-").tempdir().expect("plan tempdir");
        let path = dir.path().join("plan.json");
        fs::write(&path, text).expect("writing plan.json");
        for (rel, content) in files {
            write_file(&dir.path().join(rel), content);
        }
        PlanDir { dir, path }
    }
}

pub fn plan(name: &str, steps: Vec<Value>) -> Value {
    json!({"name": name, "version": "1.0", "steps": steps})
}

pub fn sh(script: &str) -> Value {
    json!(["/bin/sh", "-c", script])
}

/// A host directory for `host` steps and escape sentinels. Deliberately not under /tmp: run steps
/// see a fresh tmpfs there, which would make "where did the write land" ambiguous.
pub fn host_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("snapinst-host-").tempdir_in("/var/tmp").expect("host tempdir in /var/tmp")
}

pub const HELLO_SH: &[u8] = b"#!/bin/sh\necho hello from snapinst\n";

/// The standard plan used by most tests. `tag` makes every path unique so one root can take
/// several transactions; `host` is the host directory the `host` step writes its marker into.
pub struct Hello {
    pub backend: Backend,
    pub tag: String,
    pub host: PathBuf,
    /// Directories on other filesystems mounted inside the root that the plan also writes into.
    pub parts: Vec<String>,
}

impl Hello {
    pub fn new(backend: Backend, tag: &str, host: &Path) -> Hello {
        Hello { backend, tag: tag.to_string(), host: host.to_path_buf(), parts: Vec::new() }
    }

    /// The same plan, also writing a file into each of `dirs` (a file step, and a run step where the
    /// backend has them) and replacing the `grub/grub.cfg` there.
    pub fn writing_into(mut self, dirs: &[&str]) -> Hello {
        self.parts = dirs.iter().map(|d| d.to_string()).collect();
        self
    }

    pub fn marker(&self) -> PathBuf {
        self.host.join(format!("marker{}", self.tag))
    }
    pub fn log(&self) -> PathBuf {
        self.host.join(format!("log{}", self.tag))
    }
    pub fn log_text(&self) -> Option<String> {
        fs::read_to_string(self.log()).ok()
    }

    /// Puts into the root what the plan removes and overwrites. Call before the before-manifest.
    pub fn prepare(&self, root: &Path) {
        let t = &self.tag;
        write_file(&in_root(root, &format!("/etc/hello{t}.old")), b"old config\n");
        for f in ["a", "b", "sub/c", "sub/deeper/d"] {
            write_file(&in_root(root, &format!("/srv/old{t}/{f}")), f.as_bytes());
        }
        symlink("a", in_root(root, &format!("/srv/old{t}/link-a"))).unwrap();
        let motd = in_root(root, &format!("/etc/motd{t}"));
        write_file(&motd, b"old message of the day\n");
        chown(&motd, SVC_UID, SVC_GID);
        chmod(&motd, 0o600);
        fix_mtimes(root);
    }

    /// The steps, in order. The journal backend gets no `run` step that does not declare its changes.
    pub fn steps(&self) -> Vec<Value> {
        let t = &self.tag;
        let host = self.host.display();
        let mut v = vec![
            json!({"id": "dirs", "type": "dir", "path": format!("/opt/hello{t}"), "mode": "0755"}),
            json!({"id": "conf", "type": "file", "path": format!("/etc/hello{t}.conf"),
                   "content": "greeting=hi\n", "mode": "0644", "owner": "root", "group": "root"}),
            json!({"id": "bin", "type": "file", "path": format!("/opt/hello{t}/hello.sh"),
                   "source": "files/hello.sh", "mode": "0755", "owner": "svc", "group": "svc"}),
            json!({"id": "link", "type": "symlink", "path": format!("/usr/local/bin/hello{t}"),
                   "target": format!("/opt/hello{t}/hello.sh")}),
            json!({"id": "rel", "type": "symlink", "path": format!("/opt/hello{t}/current"), "target": "hello.sh"}),
            json!({"id": "hostmark", "type": "host",
                   "do": sh(&format!("echo do >> {host}/log{t} && touch {host}/marker{t}")),
                   "undo": sh(&format!("echo undo >> {host}/log{t}; rm -f {host}/marker{t}"))}),
            json!({"id": "old", "type": "remove", "path": format!("/etc/hello{t}.old"),
                   "recursive": false, "missing_ok": true}),
            json!({"id": "olddir", "type": "remove", "path": format!("/srv/old{t}"),
                   "recursive": true, "missing_ok": false}),
            json!({"id": "motd", "type": "file", "path": format!("/etc/motd{t}"),
                   "content": format!("welcome {t}\n"), "mode": "0644", "owner": 0, "group": 0}),
            json!({"id": "perm", "type": "dir", "path": format!("/var/lib/hello{t}"),
                   "mode": "0750", "owner": "svc", "group": "svc"}),
            json!({"id": "deep", "type": "dir", "path": format!("/opt/deep{t}/a/b"), "mode": "0700"}),
        ];
        // The journal backend takes a run step that declares what it changes.
        v.push(json!({"id": "post", "type": "run", "timeout_s": 60, "changes": [format!("/var/lib/hello{t}/state")],
            "command": sh(&format!("echo installed > /var/lib/hello{t}/state && chmod 0640 /var/lib/hello{t}/state"))}));
        for (k, d) in self.parts.iter().enumerate() {
            v.push(json!({"id": format!("part{k}"), "type": "file", "path": format!("{d}/hello{t}.img"),
                          "content": format!("image {t} on {d}\n"), "mode": "0644"}));
            if self.backend.allows_run() {
                v.push(json!({"id": format!("part{k}-script"), "type": "run", "command":
                    sh(&format!("echo 'menuentry hello{t}' > {d}/grub/grub.cfg.new && mv {d}/grub/grub.cfg.new {d}/grub/grub.cfg"))}));
            }
        }
        v.push(json!({"id": "check", "type": "verify", "command": sh(&format!("cat /etc/hello{t}.conf")),
                      "expect_exit": 0, "expect_stdout": "greeting=hi"}));
        v
    }

    pub fn ids(&self) -> Vec<String> {
        self.steps().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    }

    /// Index (1-based) of the host step.
    pub fn host_index(&self) -> usize {
        self.ids().iter().position(|i| i == "hostmark").unwrap() + 1
    }

    /// A realistic runtime failure of the same type as step `k` (1-based): a path below a
    /// regular file, a missing path without missing_ok, a script exiting 1 after a partial
    /// change, a verify whose output does not match, a host command exiting 1.
    pub fn failing_step(&self, k: usize) -> Value {
        let t = &self.tag;
        let host = self.host.display();
        let mut s = self.steps()[k - 1].clone();
        let id = s["id"].as_str().unwrap().to_string();
        match id.as_str() {
            "dirs" | "perm" | "deep" => s["path"] = json!(format!("/etc/passwd/{id}/x")),
            "conf" | "bin" | "motd" => s["path"] = json!(format!("/etc/passwd/{id}")),
            "link" | "rel" => s["path"] = json!(format!("/etc/passwd/{id}")),
            "hostmark" => s["do"] = sh(&format!("echo do-failed >> {host}/log{t}; exit 1")),
            "old" => {
                s["path"] = json!(format!("/etc/hello{t}.missing"));
                s["missing_ok"] = json!(false);
            }
            "olddir" => s["path"] = json!(format!("/srv/never-there{t}")),
            "post" => {
                // The partial change is declared, so the journal backend takes it back too.
                s["command"] = sh(&format!("echo partial > /etc/partial{t}; echo boom-run >&2; exit 1"));
                s["changes"] = json!([format!("/var/lib/hello{t}/state"), format!("/etc/partial{t}")]);
            }
            "check" => s["expect_stdout"] = json!("greeting=bye"),
            part if part.starts_with("part") && part.ends_with("-script") => {
                let d = &self.parts[part[4..part.len() - 7].parse::<usize>().unwrap()];
                s["command"] = sh(&format!("echo partial > {d}/partial{t}; exit 1"))
            }
            part if part.starts_with("part") => s["path"] = json!(format!("/etc/passwd/{id}")),
            other => panic!("no failing variant for step {other}"),
        }
        s
    }

    pub fn plan(&self) -> Value {
        plan("hello", self.steps())
    }

    /// The plan with step `k` replaced by its failing variant.
    pub fn failing_plan(&self, k: usize) -> Value {
        let mut steps = self.steps();
        steps[k - 1] = self.failing_step(k);
        plan("hello", steps)
    }

    pub fn plan_dir(&self, plan: &Value) -> PlanDir {
        PlanDir::new(plan, &[("files/hello.sh", HELLO_SH)])
    }

    /// Adds the plan's effects on the root to `e`.
    pub fn expect(&self, e: &mut Expect) {
        let t = &self.tag;
        e.dir(format!("/opt/hello{t}"), 0o755, 0, 0)
            .file(format!("/etc/hello{t}.conf"), b"greeting=hi\n", 0o644, 0, 0)
            .file(format!("/opt/hello{t}/hello.sh"), HELLO_SH, 0o755, SVC_UID, SVC_GID)
            .symlink(&format!("/usr/local/bin/hello{t}"), &format!("/opt/hello{t}/hello.sh"))
            .symlink(&format!("/opt/hello{t}/current"), "hello.sh")
            .remove(format!("/etc/hello{t}.old"))
            .remove(format!("/srv/old{t}"))
            .file(format!("/etc/motd{t}"), format!("welcome {t}\n").as_bytes(), 0o644, 0, 0)
            .dir(format!("/var/lib/hello{t}"), 0o750, SVC_UID, SVC_GID)
            .dir(format!("/opt/deep{t}/a/b"), 0o700, 0, 0);
        e.file(format!("/var/lib/hello{t}/state"), b"installed\n", 0o640, 0, 0);
        for d in &self.parts {
            e.file(format!("{d}/hello{t}.img"), format!("image {t} on {d}\n").as_bytes(), 0o644, 0, 0);
            if self.backend.allows_run() {
                e.file_content(format!("{d}/grub/grub.cfg"), format!("menuentry hello{t}\n").as_bytes());
            }
        }
    }

    /// Host side after a commit: the host step ran once and was not undone.
    pub fn assert_host_committed(&self) {
        assert_eq!(self.log_text().as_deref(), Some("do\n"), "host step log after commit");
        assert!(self.marker().exists(), "host marker {} missing after commit", self.marker().display());
    }

    /// Host side after a rollback: the marker is gone (undo ran, or do never ran).
    pub fn assert_host_rolled_back(&self) {
        assert!(
            !self.marker().exists(),
            "host marker {} still exists after the transaction was rolled back (log: {:?})",
            self.marker().display(),
            self.log_text()
        );
    }
}
