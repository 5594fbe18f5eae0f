//! Sync suppression for the commands a step runs in a stage, as `systemd-nspawn --suppress-sync` does it. Inside a
//! stage a sync is wasted work: a crash or a failure throws the stage away whole, and the commit makes what it keeps
//! durable once (a checked `syncfs` of each staged filesystem before the commit record).
//!
//! A seccomp filter is loaded in the command's process just before `exec` and is inherited by everything it starts,
//! static and setuid programs included (an `LD_PRELOAD` library would miss both). `fsync`, `fdatasync`, `syncfs`
//! and `sync_file_range` on a descriptor that is not negative, `sync` and `msync` return 0 without reaching the
//! disk; a negative descriptor still gets the kernel's EBADF. An `open` or `openat` asking for `O_SYNC` or
//! `O_DSYNC`, and every `openat2`, is handed to snapinst (a seccomp user notification): snapinst opens the same
//! path inside the command's root, with the command's filesystem credentials and umask, without the sync flags,
//! and installs the descriptor in the command's process. An `openat2` without sync flags, or a call it cannot redo
//! exactly (resolve flags, a directory outside the command's root, flags `openat2` refuses), goes on unchanged.
//! `host` steps and undo commands are never filtered; `--no-suppress-sync` turns all of it off.

use anyhow::{anyhow, Context, Result};
use libseccomp::{
    ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags,
    ScmpSyscall,
};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static SUPPRESSED: AtomicBool = AtomicBool::new(true);

/// Whether the commands this process runs in a stage have their syncs suppressed (on unless `--no-suppress-sync`).
pub(crate) fn suppressed() -> bool {
    SUPPRESSED.load(Ordering::SeqCst)
}

pub(crate) fn set_suppressed(on: bool) {
    SUPPRESSED.store(on, Ordering::SeqCst)
}

/// The bit `O_DSYNC` sets, which `O_SYNC` includes.
const DSYNC_BIT: u64 = libc::O_DSYNC as u64;
const SYNC_FLAGS: u64 = (libc::O_SYNC | libc::O_DSYNC) as u64;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
/// `_IOW('!', 3, struct seccomp_notif_addfd)`.
const SECCOMP_IOCTL_NOTIF_ADDFD: libc::c_ulong = 0x4018_2103;
const SECCOMP_ADDFD_FLAG_SEND: u32 = 1 << 1;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// The compiled filter, built once, before any fork (loading it in the child is one system call).
pub(crate) struct Program(Vec<libc::sock_filter>);

/// The filter, built on first use.
pub(crate) fn program() -> Result<&'static Program> {
    static PROGRAM: OnceLock<std::result::Result<Program, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("building the seccomp filter that suppresses syncs: {e}"))
}

fn build() -> Result<Program> {
    let mut f = ScmpFilterContext::new_filter(ScmpAction::Allow)?;
    // A program of another architecture (a 32-bit one) runs unfiltered rather than killed.
    f.set_act_badarch(ScmpAction::Allow)?;
    let fd_not_negative = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(0x8000_0000), 0);
    for name in ["fsync", "fdatasync", "syncfs", "sync_file_range"] {
        f.add_rule_conditional(ScmpAction::Errno(0), ScmpSyscall::from_name(name)?, &[fd_not_negative])?;
    }
    for name in ["sync", "msync"] {
        f.add_rule(ScmpAction::Errno(0), ScmpSyscall::from_name(name)?)?;
    }
    for (name, flags_arg) in [("open", 1), ("openat", 2)] {
        let asks_sync = ScmpArgCompare::new(flags_arg, ScmpCompareOp::MaskedEqual(DSYNC_BIT), DSYNC_BIT);
        f.add_rule_conditional(ScmpAction::Notify, ScmpSyscall::from_name(name)?, &[asks_sync])?;
    }
    // openat2's flags are in memory the filter cannot read: snapinst looks at each call.
    f.add_rule(ScmpAction::Notify, ScmpSyscall::from_name("openat2")?)?;
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is owned at once.
    let fd = unsafe { libc::memfd_create(c"snapinst-filter".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.export_bpf(&mut file)?;
    let mut bytes = Vec::new();
    std::io::Seek::rewind(&mut file)?;
    file.read_to_end(&mut bytes)?;
    let insns = bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect::<Vec<_>>();
    if insns.is_empty() || bytes.len() % 8 != 0 {
        return Err(anyhow!("libseccomp exported {} bytes, not a BPF program", bytes.len()));
    }
    Ok(Program(insns))
}

/// In the forked child, just before `exec`: load the filter and send its listener descriptor over `sock` to the
/// process that serves it.
///
/// # Safety
/// Only raw system calls on memory prepared before the fork: callable between fork and exec.
pub(crate) unsafe fn load_in_child(program: &Program, sock: RawFd) -> std::io::Result<()> {
    let prog = libc::sock_fprog { len: program.0.len() as u16, filter: program.0.as_ptr() as *mut libc::sock_filter };
    let listener = libc::syscall(
        libc::SYS_seccomp,
        SECCOMP_SET_MODE_FILTER,
        SECCOMP_FILTER_FLAG_NEW_LISTENER,
        &prog as *const libc::sock_fprog,
    );
    if listener < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let listener = listener as RawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u64; 4]; // CMSG_SPACE(sizeof(int)), aligned
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
    let c = libc::CMSG_FIRSTHDR(&msg);
    (*c).cmsg_level = libc::SOL_SOCKET;
    (*c).cmsg_type = libc::SCM_RIGHTS;
    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), listener);
    let sent = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
    let error = std::io::Error::last_os_error();
    libc::close(listener);
    if sent < 0 {
        return Err(error);
    }
    Ok(())
}

/// Serves the filter of one command: receives its listener from the child, then answers the open calls it hands
/// over, until the command and everything it started are gone or [`Supervisor::stop`] is called.
pub(crate) struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    pub(crate) fn start(sock: OwnedFd) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || serve(&sock, &flag));
        Supervisor { stop, thread: Some(thread) }
    }

    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wait up to 50 ms for `fd` to be readable: (readable, hung up).
fn poll_in(fd: RawFd) -> (bool, bool) {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 50) };
    if n <= 0 {
        return (false, false);
    }
    (p.revents & libc::POLLIN != 0, p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
}

fn serve(sock: &OwnedFd, stop: &AtomicBool) {
    let listener = loop {
        let (readable, hung_up) = poll_in(sock.as_raw_fd());
        if readable || hung_up {
            match receive_fd(sock.as_raw_fd()) {
                Some(fd) => break Arc::new(fd),
                None => return, // the child exited (or exec failed) before loading the filter
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
    };
    loop {
        let (readable, hung_up) = poll_in(listener.as_raw_fd());
        if readable {
            if let Ok(req) = ScmpNotifReq::receive(listener.as_raw_fd()) {
                let listener = listener.clone();
                // A thread per call: an open may block (a FIFO) and must not hold up the others.
                std::thread::spawn(move || answer(&listener, &req));
            }
        } else if hung_up || stop.load(Ordering::SeqCst) {
            return; // no process uses the filter any more
        }
    }
}

fn receive_fd(sock: RawFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u64; 4];
    // SAFETY: recvmsg into buffers owned here; a received descriptor is owned at once.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        if libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) <= 0 {
            return None;
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        Some(OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>())))
    }
}

/// What to do with a call the filter handed over.
enum Answer {
    /// Let the kernel run it as it is.
    Continue,
    /// Opened without the sync flags: install this descriptor (close-on-exec when asked).
    Opened(OwnedFd, bool),
    /// Opening failed with this errno, as the call would have.
    Failed(i32),
}

fn answer(listener: &OwnedFd, req: &ScmpNotifReq) {
    let fd = listener.as_raw_fd();
    let _ = match reopen(fd, req) {
        Answer::Continue => ScmpNotifResp::new_continue(req.id, ScmpNotifRespFlags::empty()).respond(fd).is_ok(),
        Answer::Failed(errno) => {
            ScmpNotifResp::new_error(req.id, -errno, ScmpNotifRespFlags::empty()).respond(fd).is_ok()
        }
        Answer::Opened(file, cloexec) => add_fd(fd, req.id, &file, cloexec),
    };
}

/// Install `file` in the process that made call `id`, as the call's result.
fn add_fd(listener: RawFd, id: u64, file: &OwnedFd, cloexec: bool) -> bool {
    #[repr(C)]
    struct NotifAddfd {
        id: u64,
        flags: u32,
        srcfd: u32,
        newfd: u32,
        newfd_flags: u32,
    }
    let add = NotifAddfd {
        id,
        flags: SECCOMP_ADDFD_FLAG_SEND,
        srcfd: file.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: the ioctl reads one seccomp_notif_addfd owned here.
    unsafe { libc::ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add as *const NotifAddfd) >= 0 }
}

/// The open call's arguments: (directory descriptor, address of the path, flags, mode), or None to let it run.
fn open_args(req: &ScmpNotifReq) -> Option<(i32, u64, u64, u64)> {
    let a = req.data.args;
    let nr = i32::from(req.data.syscall) as libc::c_long;
    match nr {
        libc::SYS_open => Some((libc::AT_FDCWD, a[0], a[1], a[2])),
        libc::SYS_openat => Some((a[0] as i32, a[1], a[2], a[3])),
        libc::SYS_openat2 => {
            // struct open_how { u64 flags; u64 mode; u64 resolve; }: resolve flags are the caller's rules of
            // lookup, which reopening in the root would change, so such a call runs as it is.
            let mut how = [0u8; 24];
            if a[3] < 24 || read_mem(req.pid, a[2], &mut how).is_err() {
                return None;
            }
            let word = |i: usize| u64::from_ne_bytes(how[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            (word(2) == 0).then(|| (a[0] as i32, a[1], word(0), word(1)))
        }
        _ => None,
    }
}

fn reopen(listener: RawFd, req: &ScmpNotifReq) -> Answer {
    let Some((dirfd, path_at, flags, mode)) = open_args(req) else { return Answer::Continue };
    if flags & SYNC_FLAGS == 0 {
        return Answer::Continue;
    }
    let pid = req.pid;
    let (Ok(path), Ok(creds)) = (read_path(pid, path_at), Creds::of(pid)) else { return Answer::Continue };
    let Some(in_root) = path_in_root(pid, dirfd, &path) else { return Answer::Continue };
    let (Ok(root), Ok(name)) =
        (std::fs::File::open(format!("/proc/{pid}/root")), CString::new(in_root.as_os_str().as_bytes()))
    else {
        return Answer::Continue;
    };
    // The process may have gone and its number been reused while its memory was read.
    if libseccomp::notify_id_valid(listener, req.id).is_err() {
        return Answer::Continue;
    }
    if creds.assume().is_err() {
        return Answer::Continue;
    }
    let wants_mode = flags & libc::O_CREAT as u64 != 0 || flags & libc::O_TMPFILE as u64 == libc::O_TMPFILE as u64;
    let how: [u64; 3] =
        [(flags & !SYNC_FLAGS) | libc::O_CLOEXEC as u64, if wants_mode { mode & 0o7777 } else { 0 }, RESOLVE_IN_ROOT];
    // SAFETY: openat2 with a valid directory descriptor, a NUL-terminated name and an open_how of 24 bytes.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, root.as_raw_fd(), name.as_ptr(), how.as_ptr(), 24usize) };
    if fd < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        // EINVAL: flags openat2 is strict about and open ignores; E2BIG/ENOSYS: no openat2. Let the call run.
        return if [libc::EINVAL, libc::E2BIG, libc::ENOSYS].contains(&errno) {
            Answer::Continue
        } else {
            Answer::Failed(errno)
        };
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Answer::Opened(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }, flags & libc::O_CLOEXEC as u64 != 0)
}

/// The path a call names, as a path from the process's root: an absolute path as it is, a relative one joined to
/// the directory it is relative to; None when that directory is not under the process's root.
fn path_in_root(pid: u32, dirfd: i32, path: &Path) -> Option<PathBuf> {
    if path.is_absolute() {
        return Some(path.to_path_buf());
    }
    let root = std::fs::read_link(format!("/proc/{pid}/root")).ok()?;
    let dir = if dirfd == libc::AT_FDCWD {
        std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?
    } else {
        std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).ok()?
    };
    Some(Path::new("/").join(dir.strip_prefix(&root).ok()?).join(path))
}

/// Read `buf.len()` bytes of process `pid`'s memory at `addr`.
fn read_mem(pid: u32, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open(format!("/proc/{pid}/mem"))?.read_exact_at(buf, addr)
}

/// The NUL-terminated path at `addr` in process `pid`'s memory (read a page at a time: the next may be unmapped).
fn read_path(pid: u32, addr: u64) -> std::io::Result<PathBuf> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut path = Vec::new();
    let mut at = addr;
    while path.len() < libc::PATH_MAX as usize {
        let mut chunk = vec![0u8; (4096 - (at % 4096)) as usize];
        let n = mem.read_at(&mut chunk, at)?;
        if n == 0 {
            break;
        }
        if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
            path.extend_from_slice(&chunk[..end]);
            return Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&path)));
        }
        path.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
    Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG))
}

/// The filesystem credentials and umask a process opens files with.
struct Creds {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<libc::gid_t>,
    umask: u32,
}

impl Creds {
    fn of(pid: u32) -> Result<Creds> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("");
        let fourth = |name: &str| -> Result<u32> {
            Ok(field(name).split_whitespace().nth(3).context("a short id line")?.parse()?)
        };
        Ok(Creds {
            fsuid: fourth("Uid:")?,
            fsgid: fourth("Gid:")?,
            groups: field("Groups:").split_whitespace().map(str::parse).collect::<Result<_, _>>()?,
            umask: u32::from_str_radix(field("Umask:"), 8)?,
        })
    }

    /// Take these credentials and umask in the calling thread only (it is a thread of its own for one call).
    fn assume(&self) -> std::io::Result<()> {
        let check = |r: libc::c_long| if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
        // SAFETY: per-thread credential calls (raw, so that glibc does not apply them to every thread), after
        // unsharing the filesystem attributes so that the umask is this thread's alone.
        unsafe {
            check(libc::unshare(libc::CLONE_FS) as libc::c_long)?;
            libc::umask(self.umask as libc::mode_t);
            check(libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()))?;
            libc::syscall(libc::SYS_setfsgid, self.fsgid);
            libc::syscall(libc::SYS_setfsuid, self.fsuid);
        }
        Ok(())
    }
}
