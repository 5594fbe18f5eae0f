//! The playbook step: `ansible-playbook` on the host against the staged root, through Ansible's chroot connection
//! (`community.general.chroot`), so that what any Ansible module changes in the root is part of the transaction
//! and goes with it when it fails. The playbook runs beside the stage (`sandbox::Place::Beside`): the stage's
//! /proc, /sys, /dev, /tmp and /run are mounted as for a chroot, and each task chroots into it. Its inventory is one
//! host, `snapinst_stage`, whose `ansible_host` is the stage; the plays target `all`. Ansible's working files on
//! the managed side go to the stage's /tmp, which is the step's own tmpfs, so they never reach the tree.

use super::StepFailure;
use crate::inroot::Root;
use crate::pathbytes::PathText;
use crate::plan::{Command, Playbook};
use crate::sandbox::Place;
use std::collections::BTreeMap;

/// The inventory's one host.
const HOST: &str = "snapinst_stage";

/// The command line: the plan's extra variables, then the connection's own (which win).
fn argv(root: &Root, pb: &Playbook) -> Vec<String> {
    let mut vars: BTreeMap<String, serde_json::Value> = pb.extra_vars.clone();
    vars.insert("ansible_host".into(), root.path.to_string_lossy().into_owned().into());
    vars.insert("ansible_connection".into(), "community.general.chroot".into());
    vars.insert("ansible_python_interpreter".into(), "auto_silent".into());
    // On the stage's /tmp, a tmpfs of the step's own: Ansible's working files never reach the tree.
    vars.insert("ansible_remote_tmp".into(), "/tmp/.ansible-snapinst".into());
    let mut argv = vec![pb.program.to_string_lossy().into_owned(), "-i".into(), format!("{HOST},")];
    argv.extend(["--extra-vars".into(), serde_json::Value::from(serde_json::Map::from_iter(vars)).to_string()]);
    if !pb.tags.is_empty() {
        argv.extend(["--tags".into(), pb.tags.join(",")]);
    }
    argv.push(pb.path.to_string_lossy().into_owned());
    argv
}

/// The environment: what the stage tells its commands, Ansible's own settings from snapinst's environment
/// (`ANSIBLE_*`: where the collections are, a configuration file), and plain output.
fn env(stage_env: &[(String, String)]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = stage_env.iter().cloned().collect();
    env.extend(std::env::vars().filter(|(k, _)| k.starts_with("ANSIBLE_")));
    env.insert("ANSIBLE_NOCOLOR".into(), "1".into());
    env.insert("ANSIBLE_RETRY_FILES_ENABLED".into(), "0".into());
    env
}

pub(super) fn run(
    root: &Root,
    stage_env: &[(String, String)],
    txn: &str,
    pb: &Playbook,
) -> Result<String, StepFailure> {
    let cmd = Command { argv: argv(root, pb), timeout: pb.timeout, env: env(stage_env), pass_fd: None };
    let dir = pb.path.parent().unwrap_or(std::path::Path::new("/"));
    let finished = super::commands::run(Place::Beside(&root.path, dir), txn, &cmd)?;
    // Named by its playbook, not by the whole command line with its variables.
    super::commands::judge(finished, &cmd, 0).map_err(|f| StepFailure {
        message: f.message.replace(&format!("{:?}", cmd.argv), &format!("ansible-playbook {}", pb.path.escaped())),
        output: f.output,
    })
}
