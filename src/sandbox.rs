//! Running a step's command: inside the staged root (a private mount namespace with /proc /sys /dev bound and fresh
//! tmpfs on /tmp and /run, then chroot), or on the host for `host` steps. Output is captured, a timeout or a
//! SIGINT/SIGTERM kills the command's whole process group. The child must never mount anything in the host's
//! namespace: it unshares before its first mount. A command in a staged root runs with its syncs suppressed
//! (`nosync`) unless told to keep them.

use crate::plan::Command;
use anyhow::{Context, Result};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGINT/SIGTERM: the running transaction must stop and roll back.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub(crate) fn install_signal_handlers() -> Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // SAFETY: the handler only stores into an atomic flag.
        unsafe {
            signal_hook::low_level::register(sig, || INTERRUPTED.store(true, Ordering::SeqCst))
                .context("installing a signal handler")?;
        }
    }
    Ok(())
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Where a command runs.
pub(crate) enum Place<'a> {
    /// Chrooted into this staged root.
    Chroot(&'a Path),
    /// Chrooted into this staged root, with a host directory bound read-only at [`SHARE_DIR`] (on the fresh /run,
    /// so the stage itself is not changed).
    ChrootSharing(&'a Path, &'a Path),
    /// On the host, in the working directory given, with the staged root's /proc, /sys, /dev, /tmp and /run made as
    /// for a chroot (in the command's own mount namespace): for a program that acts on the root from outside it,
    /// chrooting into it for each action (Ansible's chroot connection).
    Beside(&'a Path, &'a Path),
    Host,
}

/// Where [`Place::ChrootSharing`] shows the shared host directory inside the root.
pub(crate) const SHARE_DIR: &str = "/run/snapinst-share";

#[derive(Debug)]
pub(crate) struct Finished {
    /// Exit code, or None when killed by a signal, the timeout or an interruption.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub interrupted: bool,
}

impl Finished {
    /// Output for the log and for error messages: stdout then stderr, each marked.
    pub fn output(&self) -> String {
        let mut s = String::new();
        if !self.stdout.is_empty() {
            s.push_str(&format!("--- stdout ---\n{}", self.stdout));
        }
        if !self.stderr.is_empty() {
            s.push_str(&format!("--- stderr ---\n{}", self.stderr));
        }
        s
    }
}

/// The mounts made in the child before chroot: (source, target inside the stage, kind).
struct ChrootSetup {
    root: CString,
    binds: Vec<(CString, CString)>,
    tmpfs: Vec<CString>,
    /// A host directory and the directory made for it on the fresh /run, bound read-only there.
    share: Option<(CString, CString)>,
    /// Whether the command is chrooted into the root, or only given its mounts (`Place::Beside`).
    chroot: bool,
}

fn chroot_setup(root: &Path, share: Option<&Path>) -> Result<ChrootSetup> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("path contains a NUL byte");
    let mut binds = Vec::new();
    let mut tmpfs = Vec::new();
    // Mount only where the stage has the directory: making one would change the tree being installed.
    for dir in ["proc", "sys", "dev"] {
        let target = root.join(dir);
        if is_real_dir(&target) {
            binds.push((c(&PathBuf::from("/").join(dir))?, c(&target)?));
        }
    }
    for dir in ["tmp", "run"] {
        let target = root.join(dir);
        if is_real_dir(&target) {
            tmpfs.push(c(&target)?);
        }
    }
    let share = match share {
        None => None,
        Some(dir) => {
            if !is_real_dir(&root.join("run")) {
                anyhow::bail!("the root has no /run directory to show the step's files in");
            }
            Some((c(dir)?, c(&root.join(SHARE_DIR.trim_start_matches('/')))?))
        }
    };
    Ok(ChrootSetup { root: c(root)?, binds, tmpfs, share, chroot: true })
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Whether a command's sync calls reach the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syncs {
    /// Suppressed (a step in a stage: the commit syncs once).
    Suppressed,
    /// As the command makes them (on the host, an undo, `--no-suppress-sync`).
    Kept,
}

/// Whether SIGINT/SIGTERM stops the command: a step's yes, an undo run while rolling back no (it must finish).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnSignal {
    Stop,
    Finish,
}

/// Run `cmd`, capturing its output, until it exits, times out or (with `OnSignal::Stop`) the transaction is
/// interrupted. `Syncs::Suppressed` applies only in a staged root: a command on the host keeps its syncs.
pub(crate) fn run(cmd: &Command, place: Place, txn: &str, on_signal: OnSignal, syncs: Syncs) -> Result<Finished> {
    let mut proc = std::process::Command::new(&cmd.argv[0]);
    proc.args(&cmd.argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("SNAPINST", "1")
        .env("SNAPINST_TXN", txn)
        .envs(&cmd.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let setup = match place {
        Place::Chroot(root) => {
            proc.current_dir("/");
            Some(chroot_setup(root, None)?)
        }
        Place::ChrootSharing(root, share) => {
            proc.current_dir("/");
            Some(chroot_setup(root, Some(share))?)
        }
        Place::Beside(root, dir) => {
            proc.current_dir(dir);
            Some(ChrootSetup { chroot: false, ..chroot_setup(root, None)? })
        }
        Place::Host => None,
    };
    // The filter is built before the fork; the child sends its listener back over the socket pair's child end to
    // the `Supervisor` serving the parent end.
    let sync_filter = match (&setup, syncs) {
        (Some(_), Syncs::Suppressed) => Some((
            crate::nosync::program()?,
            std::os::unix::net::UnixStream::pair().context("making the sync filter's socket pair")?,
        )),
        _ => None,
    };
    let in_child = sync_filter.as_ref().map(|(program, (_, child))| (*program, std::os::fd::AsRawFd::as_raw_fd(child)));
    let pass_fd = cmd.pass_fd;
    // SAFETY: the closure runs in the forked child before exec; it only makes raw system calls on data
    // prepared before the fork (no allocation, no locks).
    unsafe {
        proc.pre_exec(move || {
            if let Some(fd) = pass_fd {
                // Opened close-on-exec by snapinst: kept open for this command.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            contain()?;
            if let Some(setup) = &setup {
                enter_chroot(setup)?;
            }
            match in_child {
                Some((program, sock)) => crate::nosync::load_in_child(program, sock),
                None => Ok(()),
            }
        });
    }
    let spawned = proc.spawn().with_context(|| format!("starting {:?}", cmd.argv));
    let supervisor = sync_filter.map(|(_, (parent, child))| {
        drop(child);
        crate::nosync::Supervisor::start(parent.into())
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            if let Some(s) = supervisor {
                s.stop();
            }
            return Err(e);
        }
    };
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let deadline = Instant::now() + cmd.timeout;
    let (mut timed_out, mut was_interrupted) = (false, false);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a step's command")? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
        }
        if on_signal == OnSignal::Stop && interrupted() {
            was_interrupted = true;
        }
        if timed_out || was_interrupted {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            break child.wait().context("waiting for a killed command")?;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Whatever the command left running in its group (a daemon it started) goes too: it would pin the stage.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    if let Some(s) = supervisor {
        s.stop();
    }
    Ok(Finished {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
        interrupted: was_interrupted,
    })
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// In the child, before exec: put the command in a PID namespace of its own, as its first process, so that
/// everything it starts dies with it, and make it die with snapinst (even when snapinst is killed).
///
/// The forked child unshares the PID namespace and forks again: the grandchild, PID 1 of the new namespace, goes
/// on to exec the command; the child waits for it and exits the same way. Both die when their parent dies.
fn contain() -> std::io::Result<()> {
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: async-signal-safe system calls only, in a freshly forked child.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        check(libc::unshare(libc::CLONE_NEWPID))?;
        let pid = libc::fork();
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            return check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0));
        }
        // The waiting child keeps no descriptor but the output pipes (the spawner waits for the others to close).
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let sig = libc::WTERMSIG(status);
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig)
    }
}

/// In the child: a mount namespace of its own (a slave of snapinst's, so the host's unmounts reach it too), bind
/// mounts, tmpfs, chroot.
fn enter_chroot(s: &ChrootSetup) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: raw system calls with NUL-terminated strings owned by `s`, which outlives this call.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        // The stage becomes a mount point of its own (a btrfs stage is a directory of a larger mount), so that
        // inside it `/` has a mount table entry naming its filesystem and device, as on a machine: `findmnt /`,
        // `df /` and `grub-probe` (for `update-grub`) find them.
        check(libc::mount(
            s.root.as_ptr(),
            s.root.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))?;
        for (src, dst) in &s.binds {
            check(libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
        }
        for dst in &s.tmpfs {
            check(libc::mount(
                c"tmpfs".as_ptr(),
                dst.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=1777".as_ptr().cast(),
            ))?;
        }
        if let Some((src, dst)) = &s.share {
            check(libc::mkdir(dst.as_ptr(), 0o755))?;
            check(libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
            check(libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
        }
        if s.chroot {
            check(libc::chroot(s.root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
        }
    }
    Ok(())
}
