//! The example plans on a real, debootstrapped Debian root: a service with its own system user, a config file and
//! its unit enabled; GNU hello installed from its real .deb; a package whose postinst fails. What snapinst did is
//! checked with the root's own tools (dpkg, pwck, grpck, systemctl) and with whole-tree manifests.

#[macro_use]
mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::path::Path;

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("reading /{rel}: {e}"))
}

/// The one `name:` line of an account file, split into fields.
fn entry(root: &Path, file: &str, name: &str) -> Vec<String> {
    let text = read(root, &format!("etc/{file}"));
    let lines: Vec<&str> = text.lines().filter(|l| l.split(':').next() == Some(name)).collect();
    assert_eq!(lines.len(), 1, "/etc/{file} has {} entries for {name}:\n{text}", lines.len());
    lines[0].split(':').map(str::to_owned).collect()
}

#[track_caller]
fn assert_tool_ok(root: &Path, argv: &[&str]) -> String {
    let out = chroot_run(root, argv);
    assert!(out.status.success(), "{argv:?} in the root failed:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn service_example(backend: Backend) {
    let img = debian_image(backend);
    let root = img.root();
    let before = manifest(&root);
    let (_dir, plan) = example_plan_dir("service");

    let out = apply(&plan, &root, backend, &[]);
    assert_code(&out, 0);
    let after = manifest(&root);

    // The accounts, as the root's own tools see them.
    let user = entry(&root, "passwd", "hello");
    let group = entry(&root, "group", "hello");
    let (uid, gid): (u32, u32) = (user[2].parse().unwrap(), group[2].parse().unwrap());
    assert!((100..1000).contains(&uid) && (100..1000).contains(&gid), "not system ids: uid {uid} gid {gid}");
    assert_eq!(user[3], gid.to_string(), "primary group of hello");
    assert_eq!(&user[4..], ["hello service", "/var/lib/hello", "/usr/sbin/nologin"]);
    assert_eq!(entry(&root, "shadow", "hello")[1], "!", "the new user has a locked password");
    assert_eq!(entry(&root, "gshadow", "hello")[1], "!");
    assert_tool_ok(&root, &["pwck", "-r", "-q"]);
    assert_tool_ok(&root, &["grpck", "-r"]);
    assert_eq!(assert_tool_ok(&root, &["id", "-gn", "hello"]).trim(), "hello");
    assert_eq!(assert_tool_ok(&root, &["systemctl", "is-enabled", "hello.service"]).trim(), "enabled");

    // The whole tree: the plan's paths, the four account files each with exactly one line more, nothing else.
    let mut want = Expect::new(&before);
    for file in ["passwd", "group", "shadow", "gshadow"] {
        let rel = format!("/etc/{file}");
        let old = &before[Path::new(&rel)];
        let old_text = fs::read_to_string(debian_fixture().root.join(&rel[1..])).unwrap();
        assert_eq!(old.sha256.as_deref(), Some(sha256_bytes(old_text.as_bytes()).as_str()), "{rel} of the fixture");
        let new_text = read(&root, &rel[1..]);
        let added = new_text
            .strip_prefix(old_text.as_str())
            .unwrap_or_else(|| panic!("{rel} lost or changed lines:\n{new_text}"));
        assert!(
            added.starts_with("hello:") && added.lines().count() == 1,
            "{rel} gained more than the hello line: {added:?}"
        );
        want.spec(
            &rel,
            Spec {
                kind: Some(Kind::File),
                mode: Some(old.mode),
                uid: Some(old.uid),
                gid: Some(old.gid),
                ..Spec::default()
            },
        );
    }
    let program = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/service/files/hello-service")).unwrap();
    let unit = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/service/files/hello.service")).unwrap();
    want.file("/usr/local/bin/hello-service", &program, 0o755, 0, 0)
        .dir("/etc/hello", 0o755, 0, 0)
        .file("/etc/hello/hello.conf", b"greeting=hi\n", 0o640, 0, gid)
        .file("/etc/systemd/system/hello.service", &unit, 0o644, 0, 0)
        .symlink("/etc/systemd/system/multi-user.target.wants/hello.service", "/etc/systemd/system/hello.service")
        .dir("/var/lib/hello", 0o755, uid, gid);
    want.check(&after);

    // Again: the accounts and the link exist with the same settings, so they are left exactly as they are.
    let out = apply(&plan, &root, backend, &[]);
    assert_code(&out, 0);
    let again = manifest(&root);
    for rel in [
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/systemd/system/multi-user.target.wants/hello.service",
    ] {
        assert_eq!(
            again[Path::new(rel)],
            after[Path::new(rel)],
            "{rel} was rewritten by an apply that had nothing to change"
        );
    }

    // A plan asking for other settings for the same user: a clear error, nothing changed.
    let pd = PlanDir::new(
        &common::plan("conflict", vec![json!({"id": "user", "type": "user", "name": "hello", "home": "/srv/hello"})]),
        &[],
    );
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(r#"user "hello" already exists with home "/var/lib/hello" (the plan asks for "/srv/hello")"#),
        "{err}"
    );
    assert_manifest_eq(&again, &manifest(&root));
}

for_each_backend!(service_example_on_debian, service_example);

fn packages_example(backend: Backend) {
    let img = debian_image(backend);
    let root = img.root();
    let before = manifest(&root);
    assert_eq!(dpkg_status(&root, "hello"), None, "the fixture root already has hello");
    let (_dir, plan) = example_plan_dir("packages");

    let out = apply(&plan, &root, backend, &[]);
    assert_code(&out, 0);
    assert_eq!(dpkg_status(&root, "hello").as_deref(), Some("install ok installed"));
    // dpkg checks every installed file against the package's checksums.
    assert_eq!(assert_tool_ok(&root, &["dpkg", "--verify", "hello"]), "");
    assert!(assert_tool_ok(&root, &["hello"]).contains("Hello, world!"));
    let installed = manifest(&root);

    // Removal through a package step.
    let pd = PlanDir::new(
        &common::plan("remove-hello", vec![json!({"id": "rm", "type": "package", "remove": ["hello"], "purge": true})]),
        &[],
    );
    assert_code(&apply(&pd.path, &root, backend, &[]), 0);
    assert_eq!(dpkg_status(&root, "hello"), None, "hello is still known to dpkg after a purge");
    assert!(!root.join("usr/bin/hello").exists());

    // Rolling back both transactions gives back the tree as it was, dpkg database included.
    assert_code(&snapinst(["rollback", "--root", root.to_str().unwrap()]), 0);
    assert_manifest_eq(&installed, &manifest(&root));
    assert_code(&snapinst(["rollback", "--root", root.to_str().unwrap()]), 0);
    assert_manifest_eq(&before, &manifest(&root));
}

fn broken_package_example(backend: Backend) {
    let img = debian_image(backend);
    let root = img.root();
    let before = manifest(&root);
    let (_dir, plan) = example_plan_dir("broken-package");

    let out = apply(&plan, &root, backend, &[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("step \"broken\" failed"), "{err}");
    assert!(err.contains("post-installation script subprocess returned error exit status 1"), "{err}");
    assert_manifest_eq(&before, &manifest(&root));
    assert_eq!(dpkg_status(&root, "snapinst-test-broken"), None);
    assert_eq!(dpkg_status(&root, "hello"), None, "hello, installed by the plan's first step, was not rolled back");
    assert_tool_ok(&root, &["dpkg", "--audit"]);
}

for_staged_backends!(packages_on_debian, packages_example);

for_staged_backends!(broken_package_on_debian, broken_package_example);

/// The journal backend cannot take back what dpkg does: a package step is refused before anything changes.
#[test]
fn package_steps_refused_on_journal() {
    let img = debian_image(Backend::Journal);
    let root = img.root();
    let before = manifest(&root);
    let (_dir, plan) = example_plan_dir("packages");
    let out = apply(&plan, &root, Backend::Journal, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("the journal backend cannot undo what a package step does"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
}

/// `--dry-run` and `--confirm --yes` print exactly the paths the plan changes; `--confirm` without a terminal
/// refuses before anything happens.
fn dry_run_and_confirm_show_the_changes(backend: Backend) {
    let img = debian_image(backend);
    let root = img.root();
    let before = manifest(&root);
    let (_dir, plan) = example_plan_dir("service");
    let expected: Vec<(String, String)> = [
        ("modified", "/etc/group"),
        ("modified", "/etc/gshadow"),
        ("added", "/etc/hello"),
        ("added", "/etc/hello/hello.conf"),
        ("modified", "/etc/passwd"),
        ("modified", "/etc/shadow"),
        ("added", "/etc/systemd/system/hello.service"),
        ("added", "/etc/systemd/system/multi-user.target.wants/hello.service"),
        ("added", "/usr/local/bin/hello-service"),
        ("added", "/var/lib/hello"),
    ]
    .iter()
    .map(|(k, p)| (k.to_string(), p.to_string()))
    .collect();
    let changes = |out: &std::process::Output| -> Vec<(String, String)> {
        events(&json_lines(out), "change")
            .iter()
            .map(|e| (e["change"].as_str().unwrap().to_string(), e["path"].as_str().unwrap().to_string()))
            .collect()
    };

    let out = apply(&plan, &root, backend, &["--dry-run"]);
    assert_code(&out, 0);
    assert_eq!(changes(&out), expected, "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));

    // Without --json the same list is the standard output.
    let out = snapinst(["apply", plan.to_str().unwrap(), "--root", root.to_str().unwrap(), "--dry-run"]);
    assert_code(&out, 0);
    let text: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (k, p) = l.split_once(char::is_whitespace).unwrap_or_else(|| panic!("not a change line: {l}"));
            (k.to_string(), p.trim().to_string())
        })
        .collect();
    assert_eq!(text, expected);

    // --confirm needs a terminal (the tests' standard input is not one) unless --yes.
    let out = apply(&plan, &root, backend, &["--confirm"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("add --yes"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));

    let out = apply(&plan, &root, backend, &["--confirm", "--yes"]);
    assert_code(&out, 0);
    assert_eq!(changes(&out), expected);
    assert_eq!(assert_tool_ok(&root, &["systemctl", "is-enabled", "hello.service"]).trim(), "enabled");
}

for_staged_backends!(dry_run_and_confirm_on_debian, dry_run_and_confirm_show_the_changes);

/// The failing package under `--keep-failed`: the root and its dpkg database stay as they were; once the vendor's
/// fixed package is in the plan, `resume` continues from the checkpoint after hello and commits.
fn broken_package_kept_then_resumed(backend: Backend) {
    let img = debian_image(backend);
    let root = img.root();
    let before = manifest(&root);
    let (_dir, plan) = example_plan_dir("broken-package");

    let out = apply(&plan, &root, backend, &["--keep-failed"]);
    assert_code(&out, 1);
    assert_eq!(json_lines(&out).last().unwrap()["outcome"], "kept", "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
    let status: serde_json::Value =
        serde_json::from_slice(&snapinst(["status", "--root", root.to_str().unwrap(), "--json"]).stdout).unwrap();
    assert_eq!(status["kept"]["failed_step"], "broken", "{status}");

    let fixed = fs::read_to_string(&plan)
        .unwrap()
        .replace("snapinst-test-broken_1.0_all.deb", "snapinst-test-broken_1.1_all.deb");
    fs::write(&plan, fixed).unwrap();
    let out = snapinst(["resume", "--root", root.to_str().unwrap(), "--json"]);
    assert_code(&out, 0);
    let lines = json_lines(&out);
    let ran: Vec<&str> = events(&lines, "step_started").iter().map(|e| e["step"].as_str().unwrap()).collect();
    assert_eq!(ran, ["broken"], "the resume runs only the failed step (hello comes from the checkpoint)");
    assert_eq!(dpkg_status(&root, "hello").as_deref(), Some("install ok installed"));
    assert_eq!(dpkg_status(&root, "snapinst-test-broken").as_deref(), Some("install ok installed"));
    let version = chroot_run(&root, &["dpkg-query", "-W", "-f=${Version}", "snapinst-test-broken"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout), "1.1");
    assert_eq!(assert_tool_ok(&root, &["dpkg", "--audit"]), "");
}

for_staged_backends!(broken_package_kept_then_resumed_on_debian, broken_package_kept_then_resumed);

/// `apt` installs from the root's own sources (here a local repository inside the root); a root without sources
/// is a clear error that changes nothing.
fn apt_from_the_roots_sources(backend: Backend) {
    let img = debian_image(backend);
    let root = img.root();
    let pd = PlanDir::new(&common::plan("apt", vec![json!({"id": "hello", "type": "package", "apt": ["hello"]})]), &[]);

    fs::write(root.join("etc/apt/sources.list"), "").unwrap();
    for e in fs::read_dir(root.join("etc/apt/sources.list.d")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    let before = manifest(&root);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("the root has no apt sources"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));

    run_ok(std::process::Command::new("cp").arg("-a").arg(&debian_fixture().repo).arg(root.join("srv/repo")));
    fs::write(root.join("etc/apt/sources.list"), "deb [trusted=yes] file:/srv/repo ./\n").unwrap();
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);
    assert_eq!(dpkg_status(&root, "hello").as_deref(), Some("install ok installed"));
    assert_eq!(assert_tool_ok(&root, &["dpkg", "--verify", "hello"]), "");
}

for_staged_backends!(apt_on_debian, apt_from_the_roots_sources);

/// The symlinks under /etc/systemd/system: path and target.
fn unit_links(root: &Path) -> Vec<(String, String)> {
    manifest(&root.join("etc/systemd/system"))
        .into_iter()
        .map(|(path, e)| (path.display().to_string(), e.target.map(|t| t.display().to_string()).unwrap_or_default()))
        .collect()
}

/// Service steps make exactly the links the root's own `systemctl` makes, for a unit with `Alias=` and several
/// `Also=` (systemd-networkd), a template instance (getty@tty2), masking, and disabling again.
#[test]
fn service_steps_match_systemctl() {
    let img = debian_image(Backend::Btrfs);
    let root = img.root();
    let oracle = debian_copy();
    assert_eq!(unit_links(&root), unit_links(oracle.path()), "the two copies differ before any change");

    let cases: [(serde_json::Value, &[&str]); 4] = [
        (json!({"unit": "systemd-networkd.service", "enable": true}), &["enable", "systemd-networkd.service"]),
        (json!({"unit": "getty@tty2.service", "enable": true}), &["enable", "getty@tty2.service"]),
        (
            json!({"unit": "systemd-networkd-wait-online.service", "mask": true}),
            &["mask", "systemd-networkd-wait-online.service"],
        ),
        (json!({"unit": "systemd-networkd.service", "enable": false}), &["disable", "systemd-networkd.service"]),
    ];
    for (i, (fields, systemctl)) in cases.iter().enumerate() {
        let mut step = json!({"id": format!("s{i}"), "type": "service"});
        step.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        let pd = PlanDir::new(&common::plan("units", vec![step]), &[]);
        assert_code(&apply(&pd.path, &root, Backend::Btrfs, &[]), 0);
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(systemctl);
        let out = chroot_run(oracle.path(), &argv);
        assert!(out.status.success(), "systemctl {systemctl:?} in the copy failed:\n{}", show(&out));
        assert_eq!(unit_links(&root), unit_links(oracle.path()), "after {fields} / systemctl {systemctl:?}");
    }
}

/// The four account files.
fn account_files(root: &Path) -> Vec<(String, String)> {
    ["passwd", "group", "shadow", "gshadow"].iter().map(|f| (f.to_string(), read(root, &format!("etc/{f}")))).collect()
}

/// User and group steps write exactly what the root's own `groupadd --system` and `useradd --system` write: the
/// same ids from the system range, the same fields, the same shadow entries, the same group memberships.
#[test]
fn account_steps_match_useradd() {
    let img = debian_image(Backend::Btrfs);
    let root = img.root();
    let oracle = debian_copy();

    let steps = vec![
        json!({"id": "g", "type": "group", "name": "svc"}),
        json!({"id": "u1", "type": "user", "name": "hello", "group": "svc", "home": "/var/lib/hello", "comment": "hello service"}),
        json!({"id": "u2", "type": "user", "name": "worker", "groups": ["svc", "adm"], "shell": "/bin/sh"}),
    ];
    let pd = PlanDir::new(&common::plan("accounts", steps), &[]);
    assert_code(&apply(&pd.path, &root, Backend::Btrfs, &[]), 0);

    let commands: [&[&str]; 3] = [
        &["groupadd", "--system", "svc"],
        &[
            "useradd",
            "--system",
            "--gid",
            "svc",
            "--home-dir",
            "/var/lib/hello",
            "--no-create-home",
            "--comment",
            "hello service",
            "--shell",
            "/usr/sbin/nologin",
            "hello",
        ],
        &[
            "useradd",
            "--system",
            "--user-group",
            "--groups",
            "svc,adm",
            "--home-dir",
            "/nonexistent",
            "--no-create-home",
            "--shell",
            "/bin/sh",
            "worker",
        ],
    ];
    for argv in commands {
        let out = chroot_run(oracle.path(), argv);
        assert!(out.status.success(), "{argv:?} failed:\n{}", show(&out));
    }
    for ((file, ours), (_, theirs)) in account_files(&root).iter().zip(account_files(oracle.path())) {
        assert_eq!(ours, &theirs, "/etc/{file}: snapinst (left) and useradd (right) differ");
    }
}

/// `dpkg-query`'s version of `package` in the root.
fn version_of(root: &Path, package: &str) -> String {
    assert_tool_ok(root, &["dpkg-query", "-W", "-f=${Version}", package])
}

/// The root's only apt source is the flat repository `repo`, copied to /srv/upgrade.
fn use_only_repo(root: &Path, repo: &Path) {
    let _ = fs::remove_dir_all(root.join("srv/upgrade"));
    run_ok(std::process::Command::new("cp").arg("-a").arg(repo).arg(root.join("srv/upgrade")));
    fs::write(root.join("etc/apt/sources.list"), "deb [trusted=yes] file:/srv/upgrade ./\n").unwrap();
    for e in fs::read_dir(root.join("etc/apt/sources.list.d")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
}

fn upgrade_cmd(root: &Path, backend: Backend, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["upgrade", "--root", root.to_str().unwrap(), "--backend", backend.name(), "--json"];
    args.extend(extra);
    snapinst(args)
}

/// `snapinst upgrade`: the whole system upgraded from the root's own sources as one transaction. A new version
/// whose postinst fails rolls the whole upgrade back (the packages that did upgrade too); a good one commits,
/// `--dry-run` shows it first, and a rollback returns to the old versions.
fn whole_system_upgrade(backend: Backend) {
    let img = debian_image(backend);
    let root = img.root();
    let fx = debian_fixture();
    for deb in ["snapinst-test-upgrade_1.0_all.deb", "snapinst-test-fragile_1.0_all.deb"] {
        fs::copy(fx.debs.join(deb), root.join("var/tmp").join(deb)).unwrap();
        assert_tool_ok(&root, &["dpkg", "-i", &format!("/var/tmp/{deb}")]);
        fs::remove_file(root.join("var/tmp").join(deb)).unwrap();
    }

    use_only_repo(&root, &fx.upgrade_bad);
    let before = manifest(&root);
    let out = upgrade_cmd(&root, backend, &[]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("snapinst-test-fragile 2.0: postinst exits 1"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
    assert_eq!(version_of(&root, "snapinst-test-upgrade"), "1.0", "the package that did upgrade went back too");

    use_only_repo(&root, &fx.upgrade_good);
    let before = manifest(&root);
    let out = upgrade_cmd(&root, backend, &["--dry-run"]);
    assert_code(&out, 0);
    let lines = json_lines(&out);
    let changed: Vec<&str> = events(&lines, "change").iter().filter_map(|c| c["path"].as_str()).collect();
    assert!(changed.contains(&"/usr/share/snapinst-test-upgrade/NEWS"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));

    let out = upgrade_cmd(&root, backend, &[]);
    assert_code(&out, 0);
    assert_eq!(summary(&json_lines(&out))["outcome"], "committed");
    assert_eq!(version_of(&root, "snapinst-test-upgrade"), "2.0");
    assert_eq!(version_of(&root, "snapinst-test-fragile"), "1.0");
    assert_eq!(
        fs::read_to_string(root.join("usr/share/snapinst-test-upgrade/VERSION")).unwrap(),
        "snapinst-test-upgrade 2.0\n"
    );
    assert_eq!(assert_tool_ok(&root, &["dpkg", "--audit"]), "");

    assert_code(&root_rollback(&root), 0);
    assert_manifest_eq(&before, &manifest(&root));
    assert_eq!(version_of(&root, "snapinst-test-upgrade"), "1.0");
}

fn root_rollback(root: &Path) -> std::process::Output {
    snapinst(["rollback", "--root", root.to_str().unwrap(), "--json"])
}

for_staged_backends!(upgrade_on_debian, whole_system_upgrade);

/// An upgrade a root cannot do is refused before anything runs: no apt-get in the root, or the journal backend.
#[test]
fn privileged_upgrade_refusals() {
    require_root();
    let img = populated(Backend::Overlay);
    let root = img.root();
    let before = manifest(&root);
    let out = upgrade_cmd(&root, Backend::Overlay, &[]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("step \"upgrade\" (#1) field \"upgrade\": the root has no /usr/bin/apt-get"), "{err}");
    assert_manifest_eq(&before, &manifest(&root));

    let img = debian_image(Backend::Journal);
    let root = img.root();
    let before = manifest(&root);
    let out = upgrade_cmd(&root, Backend::Journal, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("the journal backend cannot undo what a package step does"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
}
