//! `snapinst apply`: check everything, stage, run the steps in the stage, and commit with one atomic operation, or
//! throw the stage away whole. The record in the state area is written before each phase, so `recover` can finish
//! or undo the transaction from any instant. Nothing here changes the root except through the backend's commit.

use super::{finish_commit, locate, lock_error, refuse, require_root_user, set_phase, NeedsRecovery, Outcome, Refused};
use crate::backend::{self, Ctx};
use crate::census::Census;
use crate::cli::RootArgs;
use crate::dpkg_lock::DpkgLocks;
use crate::events::Reporter;
use crate::inroot::Root;
use crate::lock::RootLock;
use crate::output::EventName;
use crate::pathbytes;
use crate::pathbytes::PathText;
use crate::plan::{Action, Plan, Step};
use crate::state::{BackendKind, Phase, State, StateDir, StepRun, StepUndo, TxnKind, TxnRecord};
use crate::steps::{self, StepContext, StepFailure};
use crate::submounts::{Layout, Selection};
use crate::{failpoint, fsutil, mounts, plan, registry, sandbox, treediff};
use anyhow::{Context, Result};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `apply` was asked besides the plan and the root.
pub(crate) struct ApplyOptions {
    pub backend: Option<BackendKind>,
    pub keep: usize,
    pub boot_tries: u32,
    pub dry_run: bool,
    /// `--if-changed`: nothing to do when the current generation holds this plan's digest (`Plan::digest`).
    pub if_changed: bool,
    pub confirm: Option<Confirm>,
    /// On a step failure, keep the stage (with a checkpoint after every step) for `resume` or `abort`.
    pub keep_failed: bool,
    /// `--exclude-mount`: filesystems inside the root (as paths inside it) not to stage.
    pub exclude_mounts: Vec<std::path::PathBuf>,
    /// Suppress the steps' syncs in the stage (`--no-suppress-sync` turns it off).
    pub suppress_sync: bool,
}

/// `--confirm`: show the changes, then ask on the terminal, or (`--yes`) commit without asking.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirm {
    Ask,
    Yes,
}

impl Confirm {
    /// From the `--confirm` and `--yes` flags.
    pub fn from_flags(confirm: bool, yes: bool) -> Option<Confirm> {
        match (confirm, yes) {
            (false, _) => None,
            (true, false) => Some(Confirm::Ask),
            (true, true) => Some(Confirm::Yes),
        }
    }

    /// Refuse `--confirm` without a terminal to ask on.
    pub(crate) fn check_terminal(confirm: Option<Confirm>) -> Result<()> {
        if confirm == Some(Confirm::Ask) && !std::io::stdin().is_terminal() {
            return refuse(
                "--confirm asks on a terminal, and standard input is not one; add --yes to commit without asking",
            );
        }
        Ok(())
    }
}

/// Room kept free beyond what the plan writes (snapshot metadata, records).
const SPACE_MARGIN: u64 = 16 << 20;

pub(crate) fn run(plan_file: &Path, args: &RootArgs, opts: &ApplyOptions) -> Result<Outcome> {
    let plan = plan::load(plan_file).map_err(|p| Refused(p.to_string()))?;
    let plan_file = std::path::absolute(plan_file).with_context(|| format!("resolving {}", plan_file.escaped()))?;
    run_plan(&plan, &plan_file, args, opts)
}

/// `snapinst upgrade`: the one-step plan that upgrades the whole system from the root's own apt sources.
pub(crate) fn upgrade(args: &RootArgs, opts: &ApplyOptions, timeout_s: u64) -> Result<Outcome> {
    let value = json!({"name": "upgrade", "version": "1", "steps": [
        {"id": "upgrade", "type": "package", "upgrade": true, "timeout_s": timeout_s}
    ]});
    if opts.if_changed {
        return refuse(
            "--if-changed compares a plan and the files it names; `upgrade` takes its packages from the apt sources",
        );
    }
    let shown_as = Path::new("(snapinst upgrade)");
    let plan = plan::from_value(&value, shown_as).map_err(|p| Refused(p.to_string()))?;
    run_plan(&plan, shown_as, args, opts)
}

/// Apply `plan`, read from `plan_file` (absolute; for messages, and recorded for `resume` with --keep-failed).
fn run_plan(plan: &Plan, plan_file: &Path, args: &RootArgs, opts: &ApplyOptions) -> Result<Outcome> {
    if std::env::var_os("SNAPINST").is_some_and(|v| v == "1") {
        return refuse("refusing to start a transaction from inside a snapinst step (SNAPINST=1 is set)");
    }
    Confirm::check_terminal(opts.confirm)?;
    require_root_user()?;
    crate::nosync::set_suppressed(opts.suppress_sync);
    let loc = locate(args)?;
    let out = Reporter::new(args.json);
    mounts::enter_private_namespace()?;
    sandbox::install_signal_handlers()?;
    let prior = loc.state.load().map_err(|e| Refused(format!("{e:#}")))?;
    let kind = choose_backend(&loc.root, opts.backend, prior.as_ref())?;
    backend::check_usable(kind, &loc.root, &loc.state.dir).map_err(|e| Refused(format!("{e:#}")))?;
    let excluded = excluded_mounts(&loc.root, &opts.exclude_mounts)?;
    let state_area = backend::state_area(&loc.root, &loc.state.dir);
    let layout = Layout::read(&loc.root, state_area.as_deref(), kind, Selection::AllBut(&excluded))?;
    refuse_exchange_under_mounts(kind, &loc.root, &layout)?;
    check_plan_fits(plan_file, plan, kind, &loc.state.dir, &loc.root, &layout)?;
    if opts.confirm.is_some() && kind == BackendKind::Journal {
        return refuse(
            "--confirm needs a staged root to compare with the live one; the journal backend changes the root in place",
        );
    }
    if opts.keep_failed {
        check_keepable(plan_file, plan, kind)?;
    }
    loc.state.create()?;
    let _lock = RootLock::acquire(&loc.state.lock_path(), &loc.root).map_err(lock_error)?;
    let _dpkg = DpkgLocks::acquire(&loc.root).map_err(lock_error)?;
    failpoint::hit("apply-after-lock");
    refuse_if_busy(&loc.state, &loc.root)?;
    let mut state = match loc.state.load()? {
        Some(s) => s,
        None => {
            let s = State::new(&loc.root, kind, opts.keep);
            loc.state.save(&s)?;
            s
        }
    };
    let plan_digest = if opts.if_changed { Some(plan.digest().map_err(|e| Refused(format!("{e:#}")))?) } else { None };
    if let Some(digest) = &plan_digest {
        if state.generation(state.current).and_then(|g| g.plan_digest.as_ref()) == Some(digest) {
            out.say(format!(
                "snapinst: {}: generation {} was committed by this plan, with the same files: nothing to do",
                loc.root.escaped(),
                state.current
            ));
            out.event(EventName::Summary, json!({"txn": null, "outcome": "unchanged", "generation": state.current}));
            return Ok(Outcome::Done);
        }
    }
    state.keep = opts.keep;
    state.boot_tries = opts.boot_tries;
    // A state area given (on the command line or in the configuration) is recorded, so `recover --all` finds it.
    let given = args.state_dir.is_some() || crate::config::get().state_dir_for(&loc.root).is_some();
    registry::register(&loc.root, given.then_some(loc.state.dir.as_path()))?;
    let ctx = Ctx::new(kind, &loc.root, &loc.state)
        .and_then(|c| c.with_parts(&layout.part_rels()))
        .map_err(|e| Refused(format!("{e:#}")))?;
    let txn = Transaction {
        ctx: &ctx,
        out: &out,
        plan,
        dry_run: opts.dry_run,
        confirm: opts.confirm,
        keep_failed: opts.keep_failed.then_some(plan_file),
        plan_digest,
        layout: &layout,
    };
    txn.run(&mut state)
}

/// Refuse a package step that needs a tool the root does not have (`dpkg`, `apt-get`): its own tools do the work.
fn refuse_missing_tools(plan_file: &Path, plan: &Plan, root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let Action::Package { packages } = &step.action else { continue };
        for (field, tool) in packages.tools_needed() {
            if root.join(tool).symlink_metadata().is_err() {
                let so = match field {
                    "remove" => "its packages cannot be removed",
                    "upgrade" => "it cannot be upgraded",
                    _ => "its packages cannot be installed",
                };
                problems.push(format!(
                    "{}: step \"{}\" (#{}) field \"{field}\": the root has no /{tool}, so {so}",
                    plan_file.escaped(),
                    step.id,
                    i + 1
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        refuse(problems.join("\n"))
    }
}

/// Refuse to start while another transaction is unfinished (exit 3: recover it) or kept (exit 2: resume or abort).
pub(crate) fn refuse_if_busy(sd: &StateDir, root: &Path) -> Result<()> {
    refuse_if_interrupted(sd, root)?;
    if let Some(t) = sd.kept()? {
        return refuse(format!(
            "transaction {} (plan \"{}\") on {} is kept after its step \"{}\" failed; finish it with `snapinst resume --root {}` or throw it away with `snapinst abort --root {}`",
            t.txn,
            t.plan.as_deref().unwrap_or("?"),
            root.escaped(),
            t.failed_step.as_deref().unwrap_or("?"),
            root.escaped(),
            root.escaped()
        ));
    }
    Ok(())
}

/// Refuse to start while a transaction is unfinished (a crash interrupted it): exit 3, recover it first.
pub(crate) fn refuse_if_interrupted(sd: &StateDir, root: &Path) -> Result<()> {
    if let Some(t) = sd.unfinished()?.first() {
        return Err(NeedsRecovery(format!(
            "transaction {} on {} was interrupted ({:?}); run `snapinst recover --root {}` first",
            t.txn,
            root.escaped(),
            t.phase,
            root.escaped()
        ))
        .into());
    }
    Ok(())
}

/// `--keep-failed` needs a stage to keep, and steps that all act inside it.
pub(super) fn check_keepable(plan_file: &Path, plan: &Plan, kind: BackendKind) -> Result<()> {
    if kind == BackendKind::Journal {
        return refuse("--keep-failed keeps a staged root; the journal backend changes the root in place");
    }
    if let Some((i, s)) = plan.steps.iter().enumerate().find(|(_, s)| matches!(s.action, Action::Host { .. })) {
        return refuse(format!(
            "{}: step \"{}\" (#{}) field \"type\": a host step acts outside the stage, so no checkpoint can take it back; --keep-failed is not possible with host steps",
            plan_file.escaped(),
            s.id,
            i + 1
        ));
    }
    Ok(())
}

fn choose_backend(root: &Path, asked: Option<BackendKind>, prior: Option<&State>) -> Result<BackendKind> {
    match (asked, prior) {
        (Some(a), Some(p)) if a != p.backend && p.generations.len() > 1 => refuse(format!(
            "{} is managed with the {} backend (it has generations); it cannot switch to {a}",
            root.escaped(),
            p.backend
        )),
        (Some(a), _) => Ok(a),
        (None, Some(p)) => Ok(p.backend),
        (None, None) => Ok(backend::detect(root)),
    }
}

/// `--exclude-mount` paths, relative to the root; each must be a filesystem mounted inside it.
fn excluded_mounts(root: &Path, given: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>> {
    let mut rels = Vec::new();
    for p in given {
        let rel = p.strip_prefix("/").unwrap_or(p).to_path_buf();
        let at = root.join(&rel);
        if rel.as_os_str().is_empty() || !at.is_dir() || !mounts::is_mount_point(&at)? {
            return refuse(format!(
                "--exclude-mount {}: no filesystem is mounted at {} (give the mount point as a path inside the root)",
                p.escaped(),
                at.escaped()
            ));
        }
        rels.push(rel);
    }
    Ok(rels)
}

/// Refuse (every problem at once) a plan whose steps name paths on unstaged filesystems or in a state area.
pub(super) fn refuse_plan_on_unstaged(plan_file: &Path, plan: &Plan, layout: &Layout) -> Result<()> {
    let problems = layout.plan_problems(plan_file, plan);
    if problems.is_empty() {
        Ok(())
    } else {
        refuse(problems.join("\n"))
    }
}

/// The btrfs backend commits by renaming a directory root's subvolume: filesystems mounted inside it would stay
/// with the replaced tree, out of sight. (A root mounted on its own is exchanged for its next mount instead.)
fn refuse_exchange_under_mounts(kind: BackendKind, root: &Path, layout: &Layout) -> Result<()> {
    let points: Vec<std::path::PathBuf> =
        layout.hidden_mounts.iter().chain(layout.parts.iter().map(|p| &p.rel)).cloned().collect();
    if kind != BackendKind::Btrfs || points.is_empty() || mounts::is_mount_point(root)? {
        return Ok(());
    }
    refuse(format!(
        "filesystems are mounted inside {} ({}); the btrfs backend commits by renaming the root's subvolume, and \
         they would stay with the replaced tree: unmount them first, or manage a subvolume mounted on its own",
        root.escaped(),
        crate::submounts::shown(&points)
    ))
}

/// Refuse a plan the backend cannot carry out, that names paths on filesystems it does not stage or in the state
/// area, or that does not fit in the free space.
fn check_plan_fits(
    plan_file: &Path,
    plan: &Plan,
    kind: BackendKind,
    state_dir: &Path,
    root: &Path,
    layout: &Layout,
) -> Result<()> {
    refuse_plan_on_unstaged(plan_file, plan, layout)?;
    if kind == BackendKind::Journal {
        let problems: Vec<String> = plan
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.action.changes_undeclared())
            .map(|(i, s)| {
                let how = match s.action {
                    Action::Run { .. } => {
                        " unless it declares the paths it writes: add \"changes\": [\"/opt/app\", \"/etc/app.conf\"] \
                         (they are saved before it runs and restored if the transaction fails), or"
                    }
                    _ => ";",
                };
                format!(
                    "{}: step \"{}\" (#{}) field \"type\": the journal backend cannot undo what a {} step does{how} \
                     use the btrfs or overlay backend",
                    plan_file.escaped(),
                    s.id,
                    i + 1,
                    s.action.type_name()
                )
            })
            .collect();
        if !problems.is_empty() {
            return refuse(problems.join("\n"));
        }
    }
    refuse_missing_tools(plan_file, plan, root)?;
    let holder = state_dir.ancestors().find(|a| a.exists()).unwrap_or(root);
    // With the state area inside the root, an overlay stage writes what changes twice: on its scratch filesystem,
    // then in the delta copied from it.
    let state_inside = backend::state_area(root, state_dir).is_some();
    let copies = if kind == BackendKind::Overlay && state_inside { 2 } else { 1 };
    let mut need = copies * plan.bytes_written() + SPACE_MARGIN;
    for p in &layout.parts {
        // A part's writes are not known in advance: ask for the margin, and what its stage costs, on its own
        // filesystem (and what it costs in the root's state area there).
        let part_root = root.join(&p.rel);
        let part_state = part_root.join(crate::submounts::PART_STATE_DIR);
        let part_kind = crate::submounts::part_backend(&p.fstype, &part_root);
        let cannot = |e: anyhow::Error| Refused(format!("{} cannot be staged: {e:#}", p.describe()));
        backend::check_usable(part_kind, &part_root, &part_state).map_err(cannot)?;
        let (on_part, in_root_state) =
            backend::part_staging_bytes(part_kind, &part_root, &part_state).map_err(cannot)?;
        need += in_root_state;
        let part_need = SPACE_MARGIN + on_part;
        let free = fsutil::free_bytes(&part_root)?;
        if free < part_need {
            return refuse(format!(
                "not enough free space on {}: staging it needs {} MiB, {} MiB are free",
                p.describe(),
                part_need.div_ceil(1 << 20),
                free >> 20
            ));
        }
    }
    let have = fsutil::free_bytes(holder)?;
    if have < need {
        return refuse(format!(
            "not enough free space on the filesystem of {}: the transaction needs {} MiB, {} MiB are free",
            holder.escaped(),
            need.div_ceil(1 << 20),
            have >> 20
        ));
    }
    Ok(())
}

pub(super) struct Transaction<'a> {
    pub ctx: &'a Ctx,
    pub out: &'a Reporter,
    pub plan: &'a Plan,
    pub dry_run: bool,
    pub confirm: Option<Confirm>,
    /// `--keep-failed` (and every resume): the plan file, recorded for resume.
    pub keep_failed: Option<&'a Path>,
    /// The state area and the mounts inside the root when the transaction started.
    pub layout: &'a Layout,
    /// `--if-changed`: the plan's digest, recorded in the generation it commits.
    pub plan_digest: Option<String>,
}

impl Transaction<'_> {
    fn sd(&self) -> &StateDir {
        &self.ctx.state
    }

    fn run(&self, state: &mut State) -> Result<Outcome> {
        let mut rec = TxnRecord::new(TxnKind::Apply, self.ctx.kind, &self.ctx.root, state.current, state.next);
        rec.plan = Some(self.plan.name.clone());
        rec.plan_sha256 = Some(self.plan.sha256.clone());
        rec.plan_digest = self.plan_digest.clone();
        rec.boot_pending = self.ctx.kind == BackendKind::Btrfs && mounts::is_mount_point(&self.ctx.root)?;
        rec.parts = self.ctx.part_rels();
        rec.part_kinds = self.ctx.part_kinds();
        self.sd().write_txn(&rec)?;
        failpoint::hit("apply-after-record");
        let total = self.plan.steps.len();
        self.out.event(
            EventName::Started,
            json!({"txn": rec.txn, "plan": self.plan.name, "version": self.plan.version, "backend": self.ctx.kind.to_string(),
                   "root": pathbytes::json(&self.ctx.root), "steps": total}),
        );
        self.out.say(format!(
            "snapinst: applying plan \"{}\" to {} ({} backend, transaction {})",
            self.plan.name,
            self.ctx.root.escaped(),
            self.ctx.kind,
            rec.txn
        ));
        self.announce_unstaged(&rec.txn);
        let t0 = Instant::now();
        let stage = match backend::prepare(self.ctx, &mut rec) {
            Ok(stage) => stage,
            Err(e) => return self.abort(&mut rec, &format!("preparing the stage failed: {e:#}"), [0, 0]),
        };
        rec.stage = Some(stage.clone());
        if let Some(plan_file) = self.keep_failed {
            rec.plan_file = Some(plan_file.to_path_buf());
            if let Err(e) = backend::take_checkpoint(self.ctx, &rec, 0) {
                return self.abort(&mut rec, &format!("taking the first checkpoint failed: {e:#}"), [0, 0]);
            }
            rec.checkpoints = Some(0);
        }
        set_phase(self.sd(), &mut rec, Phase::Staged)?;
        failpoint::hit("apply-after-stage");
        let prepare_ms = t0.elapsed().as_millis() as u64;
        self.steps_and_commit(rec, &stage, 0, state, prepare_ms)
    }

    /// Run the plan's steps from `first` (0-based) in the stage, then commit (or discard, or keep on failure).
    pub(super) fn steps_and_commit(
        &self,
        mut rec: TxnRecord,
        stage: &Path,
        first: usize,
        state: &mut State,
        prepare_ms: u64,
    ) -> Result<Outcome> {
        let t1 = Instant::now();
        if let Err(reason) = self.run_steps(&mut rec, stage, first) {
            let timings = [prepare_ms, t1.elapsed().as_millis() as u64];
            if self.keep_failed.is_some() && rec.failed_step.is_some() {
                return self.keep(&mut rec, &reason, timings);
            }
            return self.abort(&mut rec, &reason, timings);
        }
        let steps_ms = t1.elapsed().as_millis() as u64;
        if let Err(e) = self.check_mounts(stage) {
            return self.abort(&mut rec, &format!("{e:#}"), [prepare_ms, steps_ms]);
        }
        if self.dry_run || self.confirm.is_some() {
            if let Err(e) = show_changes(self.out, self.ctx, &rec.txn, stage) {
                return self.abort(
                    &mut rec,
                    &format!("comparing the stage with the root failed: {e:#}"),
                    [prepare_ms, steps_ms],
                );
            }
        }
        if self.confirm == Some(Confirm::Ask) && !ask_to_commit(&self.ctx.root) {
            return self.abort(&mut rec, "the commit was not confirmed", [prepare_ms, steps_ms]);
        }
        if self.dry_run {
            return self.abort(&mut rec, "dry run: the steps succeeded; nothing is committed", [prepare_ms, steps_ms]);
        }
        failpoint::hit("apply-after-steps");

        let t2 = Instant::now();
        if let Err(e) = backend::pre_commit(self.ctx, &mut rec) {
            return self.abort(&mut rec, &format!("preparing the commit failed: {e:#}"), [prepare_ms, steps_ms]);
        }
        self.report_carry_over(&rec);
        set_phase(self.sd(), &mut rec, Phase::Committing)?;
        failpoint::hit("apply-after-commit-record");
        let prepared = Instant::now();
        let said = rec.conflicts.clone();
        let mut window_ms = None;
        let done = backend::commit(self.ctx, &rec).and_then(|()| {
            window_ms = rec.carried.map(|c| c.tail_ms + prepared.elapsed().as_millis() as u64);
            failpoint::hit("apply-after-exchange");
            finish_commit(self.ctx, &mut rec, state, "committed")
        });
        if let Err(e) = done {
            return Err(e.context(NeedsRecovery(format!(
                "transaction {} passed its commit point but could not finish; run `snapinst recover --root {}`",
                rec.txn,
                self.ctx.root.escaped()
            ))));
        }
        let commit_ms = t2.elapsed().as_millis() as u64;
        match window_ms {
            Some(ms) => self.out.event(
                EventName::Committed,
                json!({"txn": rec.txn, "generation": rec.to_generation, "carry_window_ms": ms}),
            ),
            None => self.out.event(EventName::Committed, json!({"txn": rec.txn, "generation": rec.to_generation})),
        }
        self.out.say(format!("snapinst: committed; generation {} is current", rec.to_generation));
        super::report_handed_over(self.out, &rec, &said);
        if backend::next_boot_differs(self.ctx.kind, &self.ctx.root, state) {
            if let Err(e) = crate::reboot_required::mark(&self.ctx.root) {
                self.out.say(format!("snapinst: warning: could not mark that a restart is required: {e:#}"));
            }
            self.out.say(format!(
                "snapinst: the root is mounted: generation {} is what its next mount or boot sees; it gets {} boots to reach boot-complete.target (`snapinst bless`) before generation {} is restored",
                rec.to_generation, state.boot_tries, rec.from_generation
            ));
        }
        self.summary(&rec, "committed", Some(rec.to_generation), [prepare_ms, steps_ms, commit_ms]);
        Ok(Outcome::Done)
    }

    /// Run the steps from `first` (0-based) in the stage; on failure, the reason (already reported).
    fn run_steps(&self, rec: &mut TxnRecord, stage: &Path, first: usize) -> Result<(), String> {
        let root = Root::open(stage).map_err(|e| format!("{e:#}"))?;
        let mut guard = backend::guard(self.ctx, rec).map_err(|e| format!("{e:#}"))?;
        let stage_env = backend::stage_env(self.ctx).map_err(|e| format!("{e:#}"))?;
        let txn = rec.txn.clone();
        let total = self.plan.steps.len();
        let mut census = StepCensus::new(self, stage);
        rec.steps_run.truncate(first);
        // On a terminal a bar stands for the `[n/N]` lines.
        let bar = crate::events::Bar::start("steps", total);
        for (i, step) in self.plan.steps.iter().enumerate().skip(first) {
            let n = i + 1;
            if sandbox::interrupted() {
                rec.failed_step = Some(step.id.clone());
                return Err(format!("interrupted by a signal before step \"{}\"", step.id));
            }
            self.out.event(EventName::StepStarted, json!({"txn": txn, "step": step.id, "index": n, "total": total}));
            if bar.shown() {
                bar.at(i, format!("{} ({})", step.id, step.action.type_name()));
            } else {
                self.out.say(format!("[{n}/{total}] {} ({})", step.id, step.action.type_name()));
            }
            if self.dry_run && matches!(step.action, Action::Host { .. }) {
                // A host step acts outside any stage: a dry run must not touch the host.
                self.out.event(
                    EventName::StepFinished,
                    json!({"txn": txn, "step": step.id, "index": n, "total": total, "elapsed_ms": 0, "skipped": true}),
                );
                self.out.say(format!("[{n}/{total}] {} skipped: a dry run does not run host steps", step.id));
                continue;
            }
            let t = Instant::now();
            let mut record_undo = |s: &Step| self.record_undo(rec, s);
            let mut ctx = StepContext {
                root: &root,
                txn: &txn,
                stage_env: &stage_env,
                guard: guard.as_mut(),
                record_undo: &mut record_undo,
            };
            match steps::apply(step, &mut ctx) {
                Ok(_) => {
                    let ms = t.elapsed().as_millis() as u64;
                    self.out.event(
                        EventName::StepFinished,
                        json!({"txn": txn, "step": step.id, "index": n, "total": total, "elapsed_ms": ms}),
                    );
                    if bar.shown() {
                        bar.at(n, format!("{} done in {ms} ms", step.id));
                    } else {
                        self.out.say(format!("[{n}/{total}] {} done in {ms} ms", step.id));
                    }
                    failpoint::hit("apply-mid-step");
                    if self.keep_failed.is_some() {
                        rec.steps_run.push(StepRun {
                            step: step.id.clone(),
                            failed: false,
                            changed: census.after_step(),
                        });
                        backend::take_checkpoint(self.ctx, rec, n)
                            .and_then(|()| {
                                rec.checkpoints = Some(n);
                                self.sd().write_txn(rec)
                            })
                            .map_err(|e| format!("taking the checkpoint after step \"{}\" failed: {e:#}", step.id))?;
                    }
                }
                Err(StepFailure { message, output }) => {
                    self.out.event(
                        EventName::StepFailed,
                        json!({"txn": txn, "step": step.id, "index": n, "total": total, "error": message, "output": output}),
                    );
                    self.out.say(format!("[{n}/{total}] {} FAILED: {message}", step.id));
                    if !output.is_empty() {
                        self.out.say(output.trim_end());
                    }
                    rec.failed_step = Some(step.id.clone());
                    if self.keep_failed.is_some() {
                        rec.steps_run.push(StepRun {
                            step: step.id.clone(),
                            failed: true,
                            changed: census.after_step(),
                        });
                    }
                    return Err(format!("step \"{}\" failed: {message}", step.id));
                }
            }
        }
        Ok(())
    }

    /// Say which filesystems inside the root are staged with it, and which are left out.
    fn announce_unstaged(&self, txn: &str) {
        let kinds = self.ctx.part_kinds();
        for p in &self.layout.parts {
            let staged_by = kinds.get(&backend::part_key(&p.rel)).map_or("?".to_string(), |k| k.to_string());
            self.out.event(
                EventName::Part,
                json!({"txn": txn, "path": pathbytes::json(&Path::new("/").join(&p.rel)), "fstype": p.fstype, "source": p.source,
                       "staged_by": staged_by.to_string()}),
            );
            self.out.say(format!("snapinst: {} is staged with the root ({staged_by})", p.describe()));
        }
        for u in &self.layout.unstaged {
            let why = u.unstaged_because.as_deref().unwrap_or("?");
            self.out.event(
                EventName::UnstagedMount,
                json!({"txn": txn, "path": pathbytes::json(&Path::new("/").join(&u.rel)), "fstype": u.fstype, "source": u.source,
                       "reason": why}),
            );
            self.out.say(format!(
                "snapinst: {} is left out of the transaction ({why}); a step that writes there fails",
                u.describe()
            ));
        }
    }

    /// After the steps: the mounts inside the root are still the ones the transaction started with, and the stage
    /// wrote nothing where one of them is mounted.
    fn check_mounts(&self, stage: &Path) -> Result<()> {
        let now = self.ctx.layout()?;
        self.layout.same_mounts(&now)?;
        if self.ctx.kind == BackendKind::Journal {
            return Ok(()); // the steps wrote into the root itself; the plan check kept them off other filesystems
        }
        now.check_stage(&self.ctx.root, stage)
    }

    /// Record a step's undo before the step runs: a host step's, and on the journal backend a run step's (a stage
    /// is discarded whole, so there a run step's undo has nothing to do).
    fn record_undo(&self, rec: &mut TxnRecord, step: &Step) -> Result<()> {
        let (undo, in_root) = match &step.action {
            Action::Host { undo, .. } => (undo, false),
            Action::Run { undo: Some(undo), .. } if self.ctx.kind == BackendKind::Journal => (undo, true),
            _ => return Ok(()),
        };
        rec.undos.push(StepUndo {
            step: step.id.clone(),
            argv: undo.argv.clone(),
            timeout_s: undo.timeout.as_secs(),
            env: undo.env.clone(),
            in_root,
        });
        self.sd().write_txn(rec)
    }

    /// Keep the failed transaction: its stage and checkpoints stay for `resume` or `abort`; the root is unchanged.
    fn keep(&self, rec: &mut TxnRecord, reason: &str, timings: [u64; 2]) -> Result<Outcome> {
        rec.error = Some(reason.to_string());
        rec.outcome = Some("kept".to_string());
        set_phase(self.sd(), rec, Phase::Kept)?;
        let root = self.ctx.root.escaped();
        self.out.event(
            EventName::Kept,
            json!({"txn": rec.txn, "reason": reason, "failed_step": rec.failed_step, "checkpoints": rec.checkpoints}),
        );
        self.out.say(format!(
            "snapinst: {reason}; {root} is unchanged. The transaction is kept: fix the cause (the plan or the \
             environment), then `snapinst resume --root {root}` continues at the failed step (`--from STEP` for an \
             earlier one), `snapinst diff --root {root}` shows the stage, `snapinst abort --root {root}` throws it away"
        ));
        self.summary(rec, "kept", None, [timings[0], timings[1], 0]);
        Ok(Outcome::Kept)
    }

    /// Throw the transaction away: discard the stage, run host undos in reverse.
    fn abort(&self, rec: &mut TxnRecord, reason: &str, timings: [u64; 2]) -> Result<Outcome> {
        rec.error = Some(reason.to_string());
        set_phase(self.sd(), rec, Phase::Discarding)?;
        if let Err(e) = discard(self.ctx, rec) {
            let msg = format!(
                "transaction {} failed ({reason}) and could not be rolled back cleanly: {e:#}; run `snapinst recover --root {}`",
                rec.txn,
                self.ctx.root.escaped()
            );
            self.summary(rec, "needs_recovery", None, [timings[0], timings[1], 0]);
            return Err(NeedsRecovery(msg).into());
        }
        let outcome = if self.dry_run && rec.failed_step.is_none() { "dry_run" } else { "rolled_back" };
        rec.outcome = Some(outcome.to_string());
        set_phase(self.sd(), rec, Phase::Done)?;
        if outcome == "dry_run" {
            self.out.say("snapinst: dry run: every step succeeded; the stage was discarded");
            self.summary(rec, outcome, None, [timings[0], timings[1], 0]);
            return Ok(Outcome::Done);
        }
        self.out.event(EventName::RolledBack, json!({"txn": rec.txn, "reason": reason}));
        self.out.say(format!(
            "snapinst: {reason}; the transaction was rolled back, {} is unchanged",
            self.ctx.root.escaped()
        ));
        self.summary(rec, outcome, None, [timings[0], timings[1], 0]);
        Ok(Outcome::RolledBack)
    }

    fn summary(&self, rec: &TxnRecord, outcome: &str, generation: Option<u64>, t: [u64; 3]) {
        self.out.event(
            EventName::Summary,
            json!({"txn": rec.txn, "outcome": outcome, "generation": generation, "parts": pathbytes::json_list(&rec.parts),
                   "conflicts": rec.conflicts, "timings_ms": {"prepare": t[0], "steps": t[1], "commit": t[2]}}),
        );
    }

    /// Say what the carry-over brought from the live tree into the stage (btrfs), and every conflict found.
    fn report_carry_over(&self, rec: &TxnRecord) {
        if let Some(carried) = rec.carried {
            self.out.event(
                EventName::CarriedOver,
                json!({"txn": rec.txn, "paths": carried.paths, "rounds": carried.rounds, "elapsed_ms": carried.ms,
                       "conflicts": rec.conflicts.len()}),
            );
            if carried.paths > 0 {
                self.out.say(format!(
                    "snapinst: carried {} paths the running system changed during the transaction into the new tree ({} ms)",
                    carried.paths, carried.ms
                ));
            }
        }
        for c in &rec.conflicts {
            self.out.event(EventName::Conflict, json!({"txn": rec.txn, "conflict": c}));
            self.out.say(format!("snapinst: conflict: {}", c.line()));
        }
    }
}

/// Print every path `stage` changes against the root (JSON: a `change` event each), then a count of each kind.
pub(super) fn show_changes(out: &Reporter, ctx: &Ctx, txn: &str, stage: &Path) -> Result<()> {
    if ctx.kind == BackendKind::Journal {
        out.say("snapinst: the journal backend changes the root in place: there is no stage to compare");
        return Ok(());
    }
    let changes = treediff::diff(&ctx.root, stage, &ctx.layout()?.not_compared())?;
    let mut counts = std::collections::BTreeMap::new();
    for c in &changes {
        *counts.entry(c.kind.word()).or_insert(0u64) += 1;
        out.event(EventName::Change, json!({"txn": txn, "change": c.kind, "path": pathbytes::json(&c.path)}));
        out.text(format!("{:<9} {}", c.kind.word(), c.path.escaped()));
    }
    out.event(EventName::Changes, json!({"txn": txn, "counts": counts}));
    let total: Vec<String> = ["added", "modified", "removed", "metadata"]
        .iter()
        .map(|k| format!("{} {k}", counts.get(k).copied().unwrap_or(0)))
        .collect();
    out.say(format!("snapinst: the transaction changes {} paths: {}", changes.len(), total.join(", ")));
    Ok(())
}

/// Ask on the terminal whether to commit; anything but yes is no.
fn ask_to_commit(root: &Path) -> bool {
    eprint!("snapinst: commit these changes to {}? [y/N] ", root.escaped());
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Discard a transaction's stage, then run the undos of its steps (newest first). Idempotent; used by recovery too.
pub(crate) fn discard(ctx: &Ctx, rec: &TxnRecord) -> Result<()> {
    backend::discard(ctx, rec).context("discarding the stage")?;
    let mut failures = Vec::new();
    for undo in rec.undos.iter().rev() {
        if let Err(e) = steps::run_undo(&rec.txn, &ctx.root, undo) {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// With `--keep-failed`: a census of the stage before the steps and after each, to count what each step changed.
/// A census that fails (say, a path too long to reach) makes the count unknown, and says so once.
struct StepCensus<'a> {
    stage: &'a Path,
    skip: Vec<PathBuf>,
    last: Option<Census>,
    out: &'a Reporter,
}

impl<'a> StepCensus<'a> {
    /// A census of `stage` as it is now, when the transaction keeps checkpoints (else it counts nothing).
    fn new(t: &'a Transaction<'a>, stage: &'a Path) -> StepCensus<'a> {
        let mut c = StepCensus { stage, skip: t.layout.not_compared(), last: None, out: t.out };
        if t.keep_failed.is_some() {
            c.last = c.take();
        }
        c
    }

    fn take(&self) -> Option<Census> {
        match Census::take(self.stage, &self.skip) {
            Ok(c) => Some(c),
            Err(e) => {
                self.out.say(format!("snapinst: warning: the paths each step changes cannot be counted: {e:#}"));
                None
            }
        }
    }

    /// How many paths the step just run changed.
    fn after_step(&mut self) -> Option<usize> {
        let before = self.last.take()?;
        let now = self.take()?;
        let changed = now.changed_since(&before);
        self.last = Some(now);
        Some(changed)
    }
}
