//! The command line: clap definitions, dispatch, and the mapping of outcomes to the documented exit codes
//! (0 committed or nothing to do, 1 rolled back, 2 bad plan or usage, 3 recovery needed). Errors are printed with
//! their whole context chain.

use crate::commands::recover::PartsMayWait;
use crate::commands::{self, Outcome};
use crate::state::BackendKind;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "snapinst", version, about = "Install a plan into a root as one transaction: all of it or none of it")]
struct Cli {
    /// Write the JSON Lines events (what --json prints) to the open file descriptor N; with --json, stdout then
    /// keeps only the result (the summary, or the status, list, ... object).
    #[arg(long, global = true, value_name = "N")]
    progress_fd: Option<i32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum BackendChoice {
    Auto,
    Btrfs,
    Overlay,
    Journal,
}

impl BackendChoice {
    pub fn fixed(self) -> Option<BackendKind> {
        match self {
            BackendChoice::Auto => None,
            BackendChoice::Btrfs => Some(BackendKind::Btrfs),
            BackendChoice::Overlay => Some(BackendKind::Overlay),
            BackendChoice::Journal => Some(BackendKind::Journal),
        }
    }
}

/// What `snapinst schema` describes.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SchemaOf {
    Plan,
    Status,
    List,
    Events,
}

/// Options every root-level command shares.
#[derive(clap::Args, Clone)]
pub(crate) struct RootArgs {
    /// The root to manage.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The state area (default: `<parent of root>/.snapinst-<name of root>`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Print JSON Lines on stdout.
    #[arg(long)]
    pub json: bool,
}

/// How a transaction that applies a plan (`apply`, `upgrade`) is staged, kept and shown.
#[derive(clap::Args)]
pub(crate) struct TxnFlags {
    /// How to stage the transaction [default: auto, or the configuration's `backend`].
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Generations to keep [default: 5, or the configuration's `keep`].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,
    /// Boots a new generation of a running root gets to reach boot-complete.target before the previous
    /// one is restored [default: 3, or the configuration's `boot_tries`].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    boot_tries: Option<u32>,
    /// Run the steps in a stage, print what they change, then discard it.
    #[arg(long)]
    dry_run: bool,
    /// Do nothing when the current generation was committed by this same plan with the same files it names
    /// (a digest of them, recorded by an apply with --if-changed): the summary's outcome is then `unchanged`.
    #[arg(long)]
    if_changed: bool,
    /// Print what the transaction changes and ask before the commit (needs a terminal, or --yes).
    #[arg(long, conflicts_with = "dry_run")]
    confirm: bool,
    /// With --confirm: print the changes and commit without asking.
    #[arg(long, requires = "confirm")]
    yes: bool,
    /// Leave the filesystem mounted at PATH (inside the root, e.g. /srv) out of the transaction instead of
    /// staging it; a step that writes there fails. Repeatable; added to the configuration's `exclude_mounts`.
    #[arg(long = "exclude-mount", value_name = "PATH")]
    exclude_mount: Vec<PathBuf>,
    /// Let the steps' sync calls reach the disk (by default a step in a stage has its fsync, fdatasync, syncfs,
    /// sync, sync_file_range, msync and O_SYNC made no-ops, and the commit syncs once), and mount an overlay stage
    /// without `volatile` (the configuration's `suppress_sync = false` does the same).
    #[arg(long)]
    no_suppress_sync: bool,
}

impl TxnFlags {
    /// The options of the transaction: these flags over the configuration.
    fn options(self, keep_failed: bool) -> commands::apply::ApplyOptions {
        let config = crate::config::get();
        let mut exclude_mounts = config.exclude_mounts.value.clone();
        exclude_mounts.extend(self.exclude_mount.into_iter().filter(|p| !config.exclude_mounts.value.contains(p)));
        commands::apply::ApplyOptions {
            backend: self.backend.map_or(config.backend.value, BackendChoice::fixed),
            keep: config.keep.or_flag(self.keep).value as usize,
            boot_tries: config.boot_tries.or_flag(self.boot_tries).value,
            dry_run: self.dry_run,
            if_changed: self.if_changed,
            confirm: commands::apply::Confirm::from_flags(self.confirm, self.yes),
            keep_failed,
            exclude_mounts,
            suppress_sync: config.suppress_sync.value && !self.no_suppress_sync,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Apply a plan as one transaction.
    Apply {
        plan: PathBuf,
        #[command(flatten)]
        root: RootArgs,
        #[command(flatten)]
        flags: TxnFlags,
        /// When a step fails, keep the stage (checkpointed after every step) for `resume` or `abort`.
        #[arg(long, conflicts_with = "dry_run")]
        keep_failed: bool,
    },
    /// Upgrade the whole system as one transaction: `apt-get update` and `apt-get full-upgrade` from the root's
    /// own apt sources, in the stage (the one-step plan `{"type": "package", "upgrade": true}`).
    Upgrade {
        #[command(flatten)]
        root: RootArgs,
        #[command(flatten)]
        flags: TxnFlags,
        /// Seconds each apt-get command may take before it is killed.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_s: u64,
    },
    /// Continue a transaction kept by `apply --keep-failed`, reading its plan file again.
    Resume {
        #[command(flatten)]
        root: RootArgs,
        /// Start at this step (its id) instead of the failed one; it must not come after the failed step.
        #[arg(long, value_name = "STEP")]
        from: Option<String>,
        /// Read the plan from this file instead of the one the transaction was started with.
        #[arg(long, value_name = "PLAN.json")]
        plan: Option<PathBuf>,
        /// Print what the transaction changes and ask before the commit (needs a terminal, or --yes).
        #[arg(long)]
        confirm: bool,
        /// With --confirm: print the changes and commit without asking.
        #[arg(long, requires = "confirm")]
        yes: bool,
        /// List the kept transaction's steps (id, outcome, how many paths each changed, where a resume can start)
        /// and change nothing.
        #[arg(long, conflicts_with_all = ["from", "confirm"])]
        list: bool,
    },
    /// Throw away a transaction kept by `apply --keep-failed`.
    Abort {
        #[command(flatten)]
        root: RootArgs,
    },
    /// Show what a kept transaction's stage changes, compared with the root.
    Diff {
        #[command(flatten)]
        root: RootArgs,
    },
    /// At boot, before the root is mounted: finish interrupted transactions, count the boots of a pending
    /// generation, and restore the previous one when it has used up its tries.
    Boot {
        #[command(flatten)]
        root: RootArgs,
    },
    /// Mark the current generation as booted successfully (run after boot-complete.target).
    Bless {
        #[command(flatten)]
        root: RootArgs,
    },
    /// Make an earlier generation current again (the previous one by default).
    Rollback {
        #[command(flatten)]
        root: RootArgs,
        /// The generation to return to.
        #[arg(long)]
        to: Option<u64>,
        /// Restore the generation's whole tree exactly as it was kept, dropping everything written since (btrfs).
        /// Without it a rollback reverts only what the rolled-back generations changed and keeps every other write.
        #[arg(long)]
        exact: bool,
    },
    /// Show the current generation and any transaction in progress.
    Status {
        #[command(flatten)]
        root: RootArgs,
    },
    /// List generations and transactions.
    List {
        #[command(flatten)]
        root: RootArgs,
    },
    /// Show the paths both a transaction's plan and the running system changed: the plan's version is in the tree,
    /// the running system's is kept in the state area.
    Conflicts {
        #[command(flatten)]
        root: RootArgs,
        /// Only this transaction (default: every transaction on record, newest first).
        #[arg(long)]
        txn: Option<String>,
    },
    /// Finish or undo interrupted transactions (safe to run any number of times).
    Recover {
        #[command(flatten)]
        root: RootArgs,
        /// Every root snapinst manages on this machine.
        #[arg(long, conflicts_with = "state_dir")]
        all: bool,
    },
    /// Check a plan and report every problem; change nothing.
    Validate { plan: PathBuf },
    /// Print the effective configuration (/etc/snapinst/snapinst.toml and snapinst.d/*.toml over the built-in
    /// defaults) and where each value comes from.
    Config {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print a JSON Schema: of the plan file (for editors and other tools that check plans), or of an output.
    Schema {
        /// Which: the plan file, `status --json`, `list --json`, or one line of the events.
        #[arg(long, value_enum, default_value = "plan")]
        output: SchemaOf,
    },
    /// List the crash points: name, operation that reaches it, backends (for the crash tests).
    #[command(hide = true)]
    Failpoints,
    /// dpkg's pre-invoke hook: refuse a live dpkg run while a generation committed to the running root waits for
    /// its boot (`DPKG_ROOT` names the root; nothing to do otherwise).
    #[command(hide = true)]
    DpkgGuard,
    /// Hold ROOT's dpkg locks until stdin ends (the child a transaction starts to hold them).
    #[command(hide = true)]
    HoldDpkgLocks { root: PathBuf },
}

/// The command line's definition (for the man pages and completions that `snapinst-docs` writes).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Parse the command line, run the command, and exit with its documented code.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if matches!(
        cli.command,
        Command::Status { .. }
            | Command::List { .. }
            | Command::Conflicts { .. }
            | Command::Diff { .. }
            | Command::Schema { .. }
            | Command::Config { .. }
            | Command::Failpoints
    ) {
        // A read-only command ends quietly when the reader of its output goes away (`snapinst list | head`).
        // A transaction never does: it ignores SIGPIPE (Rust's default) and its events drop write errors.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // The configuration, read once. A bad file stops every command before it does anything, but the ones that
    // finish interrupted transactions (at boot above all): they go on with the built-in defaults, and say so.
    if let Err(e) = crate::config::init() {
        if matches!(cli.command, Command::Boot { .. } | Command::Bless { .. } | Command::Recover { .. }) {
            eprintln!("snapinst: warning: the configuration is not used: {e}; going on with the built-in defaults");
            crate::config::init_defaults();
        } else {
            eprintln!("snapinst: the configuration is not valid: {e}");
            eprintln!("snapinst: nothing was done");
            return ExitCode::from(2);
        }
    }
    if let Some(fd) = cli.progress_fd {
        if let Err(e) = crate::events::set_progress_fd(fd) {
            eprintln!("snapinst: {e}");
            eprintln!("snapinst: nothing was done");
            return ExitCode::from(2);
        }
    }
    if matches!(
        cli.command,
        Command::Apply { .. } | Command::Upgrade { .. } | Command::Resume { .. } | Command::Rollback { .. }
    ) {
        crate::events::allow_bars();
    }
    // What a boot without the journal kept for it (see `journal`).
    crate::journal::send_pending();
    commands::panicked::install_hook();
    // The root a command changes, recovered if the command panics (a bug): `recover` itself is not run again.
    let changed_root = match &cli.command {
        Command::Apply { root, .. }
        | Command::Upgrade { root, .. }
        | Command::Resume { root, list: false, .. }
        | Command::Abort { root }
        | Command::Bless { root }
        | Command::Rollback { root, .. } => Some((root.clone(), PartsMayWait::No)),
        // In the initramfs the filesystems inside the root are not mounted yet.
        Command::Boot { root } => Some((root.clone(), PartsMayWait::Yes)),
        _ => None,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli.command)));
    crate::topview::cleanup();
    match result {
        Ok(Ok(outcome)) => ExitCode::from(outcome.code()),
        Ok(Err(e)) => {
            let code = commands::error_code(&e);
            for line in format!("{e:#}").lines() {
                eprintln!("snapinst: {line}");
            }
            ExitCode::from(code)
        }
        Err(_) => {
            let code = commands::panicked::after_panic(changed_root);
            crate::topview::cleanup();
            ExitCode::from(code)
        }
    }
}

/// Run the command.
fn dispatch(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Apply { plan, root, flags, keep_failed } => {
            commands::apply::run(&plan, &root, &flags.options(keep_failed))
        }
        Command::Upgrade { root, flags, timeout_s } => {
            commands::apply::upgrade(&root, &flags.options(false), timeout_s)
        }
        Command::Resume { root, plan, list: true, .. } => commands::resume::list(&root, plan.as_deref()),
        Command::Resume { root, from, plan, confirm, yes, list: false } => {
            let confirm = commands::apply::Confirm::from_flags(confirm, yes);
            commands::resume::resume(&root, from.as_deref(), plan.as_deref(), confirm)
        }
        Command::Abort { root } => commands::resume::abort(&root),
        Command::Diff { root } => commands::resume::diff(&root),
        Command::Boot { root } => commands::boot::boot(&root),
        Command::Bless { root } => commands::boot::bless(&root),
        Command::Rollback { root, to, exact } => commands::rollback::run(&root, to, exact),
        Command::Status { root } => commands::status::status(&root),
        Command::List { root } => commands::status::list(&root),
        Command::Conflicts { root, txn } => commands::status::conflicts(&root, txn.as_deref()),
        Command::Recover { root, all } => commands::recover::run(&root, all),
        Command::Validate { plan } => commands::validate(&plan),
        Command::Config { json } => commands::show_config(json),
        Command::Schema { output } => {
            use crate::output::{schema, Output};
            match output {
                SchemaOf::Plan => println!("{:#}", crate::plan::spec::schema()),
                SchemaOf::Status => println!("{:#}", schema(Output::Status)),
                SchemaOf::List => println!("{:#}", schema(Output::List)),
                SchemaOf::Events => println!("{:#}", schema(Output::Events)),
            }
            Ok(Outcome::Done)
        }
        Command::DpkgGuard => commands::guard::dpkg_guard(),
        Command::HoldDpkgLocks { root } => crate::dpkg_lock::hold(&root),
        Command::Failpoints => {
            crate::failpoint::ALL
                .iter()
                .for_each(|p| println!("{}\t{}\t{}", p.name, p.operation, p.backends.join(",")));
            Ok(Outcome::Done)
        }
    }
}
