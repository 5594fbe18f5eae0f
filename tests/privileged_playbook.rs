//! The playbook step on a real Debian root (with python3, for Ansible's modules): ansible-playbook on the host
//! reaches the stage through the chroot connection, and what its tasks change (only the tasks with the step's tags,
//! with the step's extra variables) is the whole difference between the trees, compared whole; a failing playbook
//! leaves the root exactly as it was; without ansible-playbook on PATH the plan is refused before anything runs.
//! The test command (scripts/test.sh) puts ansible-playbook and community.general there (scripts/ansible-env.sh).

#[macro_use]
mod common;

use common::*;
use serde_json::json;

const SITE_YML: &[u8] = b"- hosts: all
  gather_facts: false
  tasks:
    - name: A file from a template string
      ansible.builtin.copy:
        dest: /etc/motd-ansible
        content: \"{{ greeting }} from a playbook\\n\"
        mode: \"0644\"
      tags: [web]
    - name: A directory
      ansible.builtin.file:
        path: /srv/app
        state: directory
        mode: \"0750\"
      tags: [web]
    - name: A line in an existing file
      ansible.builtin.lineinfile:
        path: /etc/issue
        line: managed by snapinst
      tags: [web]
    - name: Not among the step's tags
      ansible.builtin.copy:
        dest: /etc/untagged
        content: x
      tags: [other]
";

const FAILING_YML: &[u8] = b"- hosts: all
  gather_facts: false
  tasks:
    - name: A change
      ansible.builtin.copy:
        dest: /etc/half-done
        content: half
    - name: Then a failure
      ansible.builtin.fail:
        msg: this playbook fails on purpose
";

fn playbook_plan(playbook: &str) -> serde_json::Value {
    plan(
        "playbook",
        vec![json!({
            "id": "site", "type": "playbook", "playbook": playbook,
            "extra_vars": {"greeting": "hello"}, "tags": ["web"], "timeout_s": 600
        })],
    )
}

/// A plan that runs the whole playbook (no tags).
fn untagged_plan(playbook: &str) -> serde_json::Value {
    plan("playbook", vec![json!({"id": "site", "type": "playbook", "playbook": playbook})])
}

fn require_ansible() {
    assert!(
        std::process::Command::new("ansible-playbook").arg("--version").output().is_ok_and(|o| o.status.success()),
        "ansible-playbook is not on PATH: run the tests through scripts/test.sh (scripts/ansible-env.sh)"
    );
}

fn playbook_changes_the_stage(backend: Backend) {
    require_ansible();
    let img = debian_image(backend);
    let root = img.root();
    let before = manifest(&root);
    let issue = std::fs::read_to_string(root.join("etc/issue")).unwrap();
    let pd = PlanDir::new(&playbook_plan("site.yml"), &[("site.yml", SITE_YML)]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 0);

    let mut want = Expect::new(&before);
    want.file("/etc/motd-ansible", b"hello from a playbook\n", 0o644, 0, 0);
    want.dir("/srv/app", 0o750, 0, 0);
    let old = &before[std::path::Path::new("/etc/issue")];
    want.file("/etc/issue", format!("{issue}managed by snapinst\n").as_bytes(), old.mode, old.uid, old.gid);
    want.check(&manifest(&root));

    // The same playbook failing half-way: the change it made is gone with the transaction.
    let now = manifest(&root);
    let pd = PlanDir::new(&untagged_plan("failing.yml"), &[("failing.yml", FAILING_YML)]);
    let out = apply(&pd.path, &root, backend, &[]);
    assert_code(&out, 1);
    assert!(show(&out).contains("this playbook fails on purpose"), "the playbook's failure is shown: {}", show(&out));
    assert_manifest_eq(&now, &manifest(&root));
}

for_staged_backends!(privileged_playbook_changes_the_stage, playbook_changes_the_stage);

/// The journal backend cannot take back what a playbook does: refused before anything runs.
#[test]
fn privileged_playbook_is_refused_on_the_journal_backend() {
    require_ansible();
    let img = Ext4Image::new(64).into_inner();
    let root = img.root();
    populate_tree(&root, 10);
    let before = manifest(&root);
    let pd = PlanDir::new(&playbook_plan("site.yml"), &[("site.yml", SITE_YML)]);
    let out = apply(&pd.path, &root, Backend::Journal, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("playbook"), "{}", show(&out));
    assert_manifest_eq(&before, &manifest(&root));
}

/// Without ansible-playbook on PATH, the plan is refused at validation, naming the step and the field.
#[test]
fn privileged_playbook_without_ansible_is_refused() {
    let img = Ext4Image::new(64).into_inner();
    let root = img.root();
    populate_tree(&root, 10);
    let before = manifest(&root);
    let pd = PlanDir::new(&playbook_plan("site.yml"), &[("site.yml", SITE_YML)]);
    for args in [vec!["validate"], vec!["apply", "--backend", "overlay"]] {
        let mut cmd = snapinst_cmd(&args);
        cmd.arg(&pd.path);
        if args[0] == "apply" {
            cmd.arg("--root").arg(&root);
        }
        let out = cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").output().unwrap();
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains("step \"site\"") && err.contains("\"playbook\"") && err.contains("ansible-playbook"),
            "{}",
            show(&out)
        );
    }
    assert_manifest_eq(&before, &manifest(&root));
}
