//! Helpers for the integration tests: loop-mounted btrfs and ext4 images, a populated test tree,
//! whole-tree manifests with a readable diff, a model of the expected tree after a plan, and
//! wrappers that run the real `snapinst` binary.
//!
//! Modelled on ripgrep's `tests/util.rs`: small, explicit, and loud. A privileged helper never
//! skips: when the machine lacks a tool or a kernel feature it panics with the reason.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_snapinst");

/// Any single snapinst invocation taking longer than this is a hang, not a slow machine.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);

/// Number of generated files in the standard test tree.
pub const TREE_FILES: usize = 300;

// ---------------------------------------------------------------------------------------------
// Privileges and tools
// ---------------------------------------------------------------------------------------------

/// Panics unless the test runs as root. Privileged tests call this first.
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "privileged test must run as root (euid is {euid}); run `sudo cargo test --features failpoints`"
    );
}

/// Absolute path of a required tool, or a panic naming it.
pub fn require_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool `{name}` not found in PATH or sbin directories; install it (btrfs-progs, e2fsprogs, util-linux, busybox-static)");
}

/// Runs a helper command (not snapinst) and panics with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", show(&out));
    out
}

// ---------------------------------------------------------------------------------------------
// Loop images
// ---------------------------------------------------------------------------------------------

/// Serialises loop device allocation between the test threads of one binary.
static LOOP_LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Btrfs,
    Ext4,
}

/// A sparse file, formatted, attached to a loop device and mounted at a temporary mount point.
/// The managed root is `<mnt>/root`. Drop unmounts (lazily if it must), detaches and removes.
pub struct LoopImage {
    kind: FsKind,
    mnt: PathBuf,
    loopdev: Option<loopdev::LoopDevice>,
    loop_path: PathBuf,
    // Last: the directory holding the backing file and the mount point goes after the unmount.
    dir: tempfile::TempDir,
}

/// A btrfs image whose root `<mnt>/root` is a subvolume.
pub struct BtrfsImage(LoopImage);

/// An ext4 image whose root `<mnt>/root` is a plain directory.
pub struct Ext4Image(LoopImage);

impl BtrfsImage {
    pub fn new(size_mb: u64) -> BtrfsImage {
        assert!(size_mb >= 114, "btrfs needs an image of at least 114 MB");
        let img = LoopImage::create(FsKind::Btrfs, size_mb);
        let btrfs = require_tool("btrfs");
        run_ok(Command::new(btrfs).args(["subvolume", "create"]).arg(img.root()).stdout(Stdio::null()));
        BtrfsImage(img)
    }
    pub fn into_inner(self) -> LoopImage {
        self.0
    }
}

impl Ext4Image {
    pub fn new(size_mb: u64) -> Ext4Image {
        let img = LoopImage::create(FsKind::Ext4, size_mb);
        fs::create_dir(img.root()).expect("creating <mnt>/root on ext4");
        Ext4Image(img)
    }
    pub fn into_inner(self) -> LoopImage {
        self.0
    }
}

impl std::ops::Deref for BtrfsImage {
    type Target = LoopImage;
    fn deref(&self) -> &LoopImage {
        &self.0
    }
}

impl std::ops::Deref for Ext4Image {
    type Target = LoopImage;
    fn deref(&self) -> &LoopImage {
        &self.0
    }
}

impl LoopImage {
    fn create(kind: FsKind, size_mb: u64) -> LoopImage {
        require_root();
        let dir = tempfile::Builder::new().prefix("snapinst-img-").tempdir().expect("creating image tempdir");
        let file = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("creating mount point");
        {
            let f = fs::File::create(&file).expect("creating image file");
            f.set_len(size_mb * 1024 * 1024).expect("sizing sparse image file");
        }
        match kind {
            FsKind::Btrfs => {
                run_ok(Command::new(require_tool("mkfs.btrfs")).args(["-q", "-f"]).arg(&file));
            }
            FsKind::Ext4 => {
                run_ok(Command::new(require_tool("mkfs.ext4")).args(["-q", "-F"]).arg(&file));
            }
        }
        let ld = attach_loop(&file);
        let loop_path = ld.path().expect("loop device has no path");
        let fstype = match kind {
            FsKind::Btrfs => "btrfs",
            FsKind::Ext4 => "ext4",
        };
        nix::mount::mount(Some(&loop_path), &mnt, Some(fstype), nix::mount::MsFlags::empty(), None::<&str>)
            .unwrap_or_else(|e| panic!("mounting {} ({fstype}) on {}: {e}", loop_path.display(), mnt.display()));
        LoopImage { kind, mnt, loopdev: Some(ld), loop_path, dir }
    }

    pub fn kind(&self) -> FsKind {
        self.kind
    }
    /// Where the image is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }
    /// The managed root, `<mnt>/root`.
    pub fn root(&self) -> PathBuf {
        self.mnt.join("root")
    }
    /// The default state directory for the root: `<mnt>/.snapinst-root`.
    pub fn state_dir(&self) -> PathBuf {
        self.mnt.join(".snapinst-root")
    }
    pub fn loop_device(&self) -> &Path {
        &self.loop_path
    }
}

fn attach_loop(file: &Path) -> loopdev::LoopDevice {
    let _guard = LOOP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut last_err = None;
    for _ in 0..20 {
        let lc = loopdev::LoopControl::open().expect("opening /dev/loop-control");
        let ld = match lc.next_free() {
            Ok(ld) => ld,
            Err(e) => {
                last_err = Some(e);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match ld.with().autoclear(true).attach(file) {
            Ok(()) => return ld,
            Err(e) => {
                // Another process took the device between next_free and attach.
                last_err = Some(e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    panic!("attaching {} to a loop device: {:?}", file.display(), last_err);
}

impl Drop for LoopImage {
    fn drop(&mut self) {
        // Anything the engine left mounted below the image goes first, deepest first.
        let mut below: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p != &self.mnt && p.starts_with(&self.mnt))
            .collect();
        below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in below {
            if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: lazy unmount of leaked mount {}: {e}", p.display());
            }
        }
        let mut unmounted = false;
        for _ in 0..20 {
            match nix::mount::umount2(&self.mnt, nix::mount::MntFlags::empty()) {
                Ok(()) => {
                    unmounted = true;
                    break;
                }
                Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => {
                    eprintln!("cleanup: unmounting {}: {e}", self.mnt.display());
                    break;
                }
            }
        }
        if !unmounted {
            if let Err(e) = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: lazy unmount of {}: {e}", self.mnt.display());
            }
        }
        if let Some(ld) = self.loopdev.take() {
            if unmounted {
                if let Err(e) = ld.detach() {
                    // autoclear detaches it once the last user goes away.
                    eprintln!("cleanup: detaching {}: {e}", self.loop_path.display());
                }
            }
            drop(ld);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Btrfs,
    Overlay,
    Journal,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Btrfs, Backend::Overlay, Backend::Journal];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Btrfs => "btrfs",
            Backend::Overlay => "overlay",
            Backend::Journal => "journal",
        }
    }

    /// A fresh image suitable for the backend: btrfs for btrfs, ext4 for overlay and journal.
    pub fn image(self) -> LoopImage {
        match self {
            Backend::Btrfs => BtrfsImage::new(320).into_inner(),
            Backend::Overlay | Backend::Journal => Ext4Image::new(256).into_inner(),
        }
    }

    /// The journal backend refuses `run` steps at validation.
    pub fn allows_run(self) -> bool {
        self != Backend::Journal
    }
}

/// A test per backend from one function `fn f(backend: Backend)`: the tests are named
/// `<modname>::btrfs`, `<modname>::overlay`, `<modname>::journal`.
/// Use with `#[macro_use] mod common;` and `for_each_backend!(privileged_name, function);`.
#[allow(unused_macros)]
macro_rules! for_each_backend {
    ($modname:ident, $func:ident) => {
        mod $modname {
            #[test]
            fn btrfs() {
                super::$func(crate::common::Backend::Btrfs)
            }
            #[test]
            fn overlay() {
                super::$func(crate::common::Backend::Overlay)
            }
            #[test]
            fn journal() {
                super::$func(crate::common::Backend::Journal)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The test tree
// ---------------------------------------------------------------------------------------------

pub const SVC_UID: u32 = 990;
pub const SVC_GID: u32 = 990;
pub const OTHER_UID: u32 = 1234;
pub const OTHER_GID: u32 = 5678;
pub const XATTR_NAME: &str = "user.snapinst.test";

const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "echo", "true", "false", "sleep", "touch", "mkdir", "rm", "ln", "chmod", "env", "ls", "test", "printf",
];

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, p.display()));
}

fn chown(p: &Path, uid: u32, gid: u32) {
    lchown(p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {uid}:{gid} {}: {e}", p.display()));
}

fn mkdirs(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
}

fn write(p: &Path, content: &[u8]) {
    if let Some(parent) = p.parent() {
        mkdirs(parent);
    }
    fs::write(p, content).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    xattr::set(p, name, value).unwrap_or_else(|e| panic!("setting xattr {name} on {}: {e}", p.display()));
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v.extend_from_slice(&(x >> 17).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Joins an absolute in-root path (`/etc/x`) to a root.
pub fn in_root(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Fills `root` with a tree of about `n_files` files plus a minimal busybox system: nested
/// directories, files of varied sizes, relative/absolute/dangling symlinks, hard links, user
/// xattrs, odd modes (0600, 0751, 04755, 02755, 01777 dir), foreign owners, a fifo and fixed
/// mtimes.
pub fn populate_tree(root: &Path, n_files: usize) {
    for d in [
        "bin",
        "etc",
        "usr/local/bin",
        "usr/share",
        "opt",
        "srv/data",
        "var/lib",
        "var/log",
        "home/svc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
    ] {
        mkdirs(&in_root(root, d));
    }
    // busybox system
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing on the host: install busybox-static (the test tree needs a static shell)"
    );
    fs::copy(busybox, in_root(root, "/bin/busybox")).expect("copying /bin/busybox");
    chmod(&in_root(root, "/bin/busybox"), 0o755);
    for applet in BUSYBOX_APPLETS {
        symlink("busybox", in_root(root, &format!("/bin/{applet}"))).expect("busybox applet symlink");
    }
    write(&in_root(root, "/etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\nsvc:x:990:990:service:/home/svc:/bin/sh\n");
    write(&in_root(root, "/etc/group"), b"root:x:0:\nsvc:x:990:\n");
    chmod(&in_root(root, "/etc/passwd"), 0o644);
    chmod(&in_root(root, "/etc/group"), 0o644);
    write(&in_root(root, "/etc/hostname"), b"snapinst-test\n");
    chmod(&in_root(root, "/tmp"), 0o1777);
    chmod(&in_root(root, "/root"), 0o700);
    chown(&in_root(root, "/home/svc"), SVC_UID, SVC_GID);
    chmod(&in_root(root, "/home/svc"), 0o700);

    // generated files
    const SIZES: [usize; 9] = [0, 1, 17, 511, 4096, 4097, 12_345, 65_537, 150_000];
    let mut files = Vec::new();
    for i in 0..n_files {
        let rel = format!("/usr/share/pkg{:02}/sub{}/d{}/f{:04}.dat", i % 17, i % 3, i % 2, i);
        let p = in_root(root, &rel);
        write(&p, &pseudo_bytes(i as u64, SIZES[i % SIZES.len()]));
        if i % 4 == 3 {
            chown(&p, SVC_UID, SVC_GID);
        } else if i % 9 == 4 {
            chown(&p, OTHER_UID, OTHER_GID);
        }
        let mode = match i % 6 {
            0 => 0o644,
            1 => 0o600,
            2 => 0o751,
            3 => 0o444,
            4 => 0o640,
            _ => 0o755,
        };
        chmod(&p, mode);
        if i % 6 == 5 {
            set_xattr(&p, XATTR_NAME, format!("value-{i}").as_bytes());
        }
        if i % 31 == 7 {
            set_xattr(&p, "user.snapinst.zz", b"second");
            set_xattr(&p, "user.snapinst.aa", &[0u8, 1, 2, 255]);
        }
        files.push(rel);
    }
    // odd modes, set after chown (chown clears setuid)
    let suid = in_root(root, "/usr/local/bin/suid-tool");
    write(&suid, &pseudo_bytes(9001, 3000));
    chmod(&suid, 0o4755);
    let sgid = in_root(root, "/usr/local/bin/sgid-tool");
    write(&sgid, &pseudo_bytes(9002, 3000));
    chown(&sgid, 0, SVC_GID);
    chmod(&sgid, 0o2755);
    let shared = in_root(root, "/srv/shared");
    mkdirs(&shared);
    chmod(&shared, 0o1777);
    write(&in_root(root, "/srv/shared/note"), b"sticky dir content\n");
    let private = in_root(root, "/srv/data/private");
    mkdirs(&private);
    chown(&private, OTHER_UID, OTHER_GID);
    chmod(&private, 0o751);
    write(&in_root(root, "/srv/data/private/secret"), b"s3cret\n");
    chmod(&in_root(root, "/srv/data/private/secret"), 0o600);
    set_xattr(&in_root(root, "/srv/data"), XATTR_NAME, b"on a directory");

    // hard links: pairs and one group of three
    mkdirs(&in_root(root, "/usr/share/links"));
    for (n, rel) in files.iter().enumerate().filter(|(n, _)| n % 20 == 0) {
        fs::hard_link(in_root(root, rel), in_root(root, &format!("/usr/share/links/h{n:04}"))).expect("hard link");
    }
    if files.len() > 20 {
        fs::hard_link(in_root(root, &files[20]), in_root(root, "/srv/data/h0020-third")).expect("third hard link");
    }

    // symlinks: relative, absolute, dangling, to a directory, chain
    let links = in_root(root, "/usr/share/links");
    if !files.is_empty() {
        symlink(format!("..{}", &files[0]["/usr/share".len()..]), links.join("rel-file")).unwrap();
    }
    symlink("../pkg01", links.join("rel-dir")).unwrap();
    symlink("/etc/passwd", links.join("abs-file")).unwrap();
    symlink("/usr/share/pkg02", links.join("abs-dir")).unwrap();
    symlink("/nonexistent/path", links.join("dangling")).unwrap();
    symlink("abs-file", links.join("chain")).unwrap();
    let foreign_link = links.join("owned-link");
    symlink("rel-file", &foreign_link).unwrap();
    chown(&foreign_link, SVC_UID, SVC_GID);

    // a fifo
    let fifo = in_root(root, "/srv/data/fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o640)).expect("mkfifo");
    chmod(&fifo, 0o640);

    fix_mtimes(root);
}

/// Gives every path under `root` a fixed, path-derived mtime with a non-zero nanosecond part.
pub fn fix_mtimes(root: &Path) {
    let mut paths = Vec::new();
    walk(root, &mut |p, _| paths.push(p.to_path_buf()));
    // Children before parents, so a directory keeps its own time.
    paths.reverse();
    for p in paths {
        let rel = p.strip_prefix(root).unwrap_or(&p);
        let h = Sha256::digest(rel.as_os_str().as_encoded_bytes());
        let secs = 1_500_000_000 + (u32::from_le_bytes([h[0], h[1], h[2], h[3]]) % 100_000_000) as i64;
        let nsecs = (u32::from_le_bytes([h[4], h[5], h[6], h[7]]) % 1_000_000_000) as i64;
        let ts = nix::sys::time::TimeSpec::new(secs, nsecs);
        nix::sys::stat::utimensat(None, &p, &ts, &ts, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
            .unwrap_or_else(|e| panic!("setting mtime of {}: {e}", p.display()));
    }
}

/// Pre-order walk, not following symlinks. Calls `f(path, metadata)` for every entry, root first.
fn walk(p: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    f(p, &md);
    if md.file_type().is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap_or_else(|e| panic!("reading directory {}: {e}", p.display()))
            .map(|e| e.expect("directory entry").file_name())
            .collect();
        names.sort();
        for n in names {
            walk(&p.join(n), f);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDev(u64),
    BlockDev(u64),
}

/// Everything the tests compare about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Not for directories (their size is filesystem-specific).
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub target: Option<PathBuf>,
    /// `user.*` and `security.*` xattrs, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Not for directories.
    pub mtime: Option<(i64, i64)>,
    /// Other paths of the manifest sharing this inode (sorted), for non-directories.
    pub links: Vec<PathBuf>,
}

pub type Manifest = BTreeMap<PathBuf, Entry>;

fn sha256_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Converts a host path below `root` into the manifest key (`/` for the root itself).
fn key(root: &Path, p: &Path) -> PathBuf {
    let rel = p.strip_prefix(root).expect("path below root");
    Path::new("/").join(rel)
}

/// The whole-tree manifest of every path below (and including) `root`.
pub fn manifest(root: &Path) -> Manifest {
    let mut m = Manifest::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    walk(root, &mut |p, md| {
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::CharDev(md.rdev())
        } else {
            Kind::BlockDev(md.rdev())
        };
        let k = key(root, p);
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        match xattr::list(p) {
            Ok(names) => {
                for n in names {
                    let name = n.to_string_lossy().into_owned();
                    if name.starts_with("user.") || name.starts_with("security.") {
                        let v = xattr::get(p, &n)
                            .unwrap_or_else(|e| panic!("reading xattr {name} of {}: {e}", p.display()))
                            .unwrap_or_default();
                        xattrs.push((name, v));
                    }
                }
            }
            Err(e) => panic!("listing xattrs of {}: {e}", p.display()),
        }
        xattrs.sort();
        let entry = Entry {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: (kind != Kind::Dir).then(|| md.size()),
            sha256: (kind == Kind::File).then(|| sha256_file(p)),
            target: (kind == Kind::Symlink).then(|| fs::read_link(p).expect("readlink")),
            xattrs,
            mtime: (kind != Kind::Dir).then(|| (md.mtime(), md.mtime_nsec())),
            links: Vec::new(),
        };
        if kind != Kind::Dir && md.nlink() > 1 {
            inodes.entry((md.dev(), md.ino())).or_default().push(k.clone());
        }
        m.insert(k, entry);
    });
    for group in inodes.values() {
        for p in group {
            let mut others: Vec<PathBuf> = group.iter().filter(|o| *o != p).cloned().collect();
            others.sort();
            m.get_mut(p).unwrap().links = others;
        }
    }
    m
}

fn kind_name(k: Kind) -> String {
    match k {
        Kind::Dir => "dir".into(),
        Kind::File => "file".into(),
        Kind::Symlink => "symlink".into(),
        Kind::Fifo => "fifo".into(),
        Kind::Socket => "socket".into(),
        Kind::CharDev(r) => format!("chardev({r:#x})"),
        Kind::BlockDev(r) => format!("blockdev({r:#x})"),
    }
}

/// A one-line description of an entry for diffs.
pub fn describe(e: &Entry) -> String {
    let mut s = format!("{} {:04o} {}:{}", kind_name(e.kind), e.mode, e.uid, e.gid);
    if let Some(sz) = e.size {
        s += &format!(" size={sz}");
    }
    if let Some(h) = &e.sha256 {
        s += &format!(" sha={}", &h[..12]);
    }
    if let Some(t) = &e.target {
        s += &format!(" -> {}", t.display());
    }
    if let Some((sec, ns)) = e.mtime {
        s += &format!(" mtime={sec}.{ns:09}");
    }
    if !e.xattrs.is_empty() {
        let names: Vec<&str> = e.xattrs.iter().map(|(n, _)| n.as_str()).collect();
        s += &format!(" xattrs={names:?}");
    }
    if !e.links.is_empty() {
        s += &format!(" links={:?}", e.links);
    }
    s
}

fn field_diffs(exp: &Entry, act: &Entry) -> Vec<String> {
    let mut d = Vec::new();
    if exp.kind != act.kind {
        d.push(format!("type {} -> {}", kind_name(exp.kind), kind_name(act.kind)));
    }
    if exp.mode != act.mode {
        d.push(format!("mode {:04o} -> {:04o}", exp.mode, act.mode));
    }
    if exp.uid != act.uid || exp.gid != act.gid {
        d.push(format!("owner {}:{} -> {}:{}", exp.uid, exp.gid, act.uid, act.gid));
    }
    if exp.size != act.size {
        d.push(format!("size {:?} -> {:?}", exp.size, act.size));
    }
    if exp.sha256 != act.sha256 {
        d.push("content differs".into());
    }
    if exp.target != act.target {
        d.push(format!("target {:?} -> {:?}", exp.target, act.target));
    }
    if exp.xattrs != act.xattrs {
        d.push(format!("xattrs {:?} -> {:?}", exp.xattrs, act.xattrs));
    }
    if exp.mtime != act.mtime {
        d.push(format!("mtime {:?} -> {:?}", exp.mtime, act.mtime));
    }
    if exp.links != act.links {
        d.push(format!("hard links {:?} -> {:?}", exp.links, act.links));
    }
    d
}

/// Panics with a readable diff (first 20 differing paths) when the manifests differ.
#[track_caller]
pub fn assert_manifest_eq(before: &Manifest, after: &Manifest) {
    Expect::new(before).check(after);
}

/// Like [`assert_manifest_eq`] with a context line in the panic message.
#[track_caller]
pub fn assert_manifest_eq_ctx(before: &Manifest, after: &Manifest, ctx: &str) {
    if let Err(report) = Expect::new(before).diff(after) {
        panic!("{ctx}: tree differs from the expected one\n{report}");
    }
}

pub fn manifests_equal(a: &Manifest, b: &Manifest) -> bool {
    a == b
}

// ---------------------------------------------------------------------------------------------
// Expected tree after a plan: a copy of the before-manifest with the plan's effects applied
// ---------------------------------------------------------------------------------------------

/// What a changed path must look like; `None` fields are not checked (e.g. the mtime of a file
/// the plan wrote, or the mode of a parent directory a dir step created).
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub kind: Option<Kind>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub content: Option<Vec<u8>>,
    pub target: Option<PathBuf>,
    pub xattrs: Option<Vec<(String, Vec<u8>)>>,
    pub links: Option<Vec<PathBuf>>,
}

#[derive(Clone, Debug)]
enum Want {
    Exact(Entry),
    Spec(Spec),
}

/// The expected manifest: untouched paths must be exactly as before; touched paths must match
/// their [`Spec`]; removed paths must be gone; nothing else may appear.
#[derive(Clone, Debug)]
pub struct Expect {
    want: BTreeMap<PathBuf, Want>,
}

impl Expect {
    pub fn new(before: &Manifest) -> Expect {
        Expect { want: before.iter().map(|(k, v)| (k.clone(), Want::Exact(v.clone()))).collect() }
    }

    fn forget_links_to(&mut self, gone: &dyn Fn(&Path) -> bool) {
        for w in self.want.values_mut() {
            if let Want::Exact(e) = w {
                e.links.retain(|l| !gone(l));
            }
        }
    }

    /// Sets the spec of one path (replacing whatever was expected there).
    pub fn spec(&mut self, path: &str, spec: Spec) -> &mut Self {
        let p = PathBuf::from(path);
        let p2 = p.clone();
        self.forget_links_to(&move |l| l == p2);
        self.want.insert(p, Want::Spec(spec));
        self
    }

    /// A regular file with exactly this content, mode and owner, no xattrs and no hard links.
    pub fn file(&mut self, path: &str, content: &[u8], mode: u32, uid: u32, gid: u32) -> &mut Self {
        self.spec(
            path,
            Spec {
                kind: Some(Kind::File),
                mode: Some(mode),
                uid: Some(uid),
                gid: Some(gid),
                content: Some(content.to_vec()),
                xattrs: Some(vec![]),
                links: Some(vec![]),
                ..Spec::default()
            },
        )
    }

    /// A regular file with this content; metadata not checked.
    pub fn file_content(&mut self, path: &str, content: &[u8]) -> &mut Self {
        self.spec(path, Spec { kind: Some(Kind::File), content: Some(content.to_vec()), ..Spec::default() })
    }

    /// A directory with this mode and owner; missing ancestors become directories of any mode.
    pub fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> &mut Self {
        self.parents(path);
        self.spec(
            path,
            Spec { kind: Some(Kind::Dir), mode: Some(mode), uid: Some(uid), gid: Some(gid), ..Spec::default() },
        )
    }

    /// A directory of any mode and owner (and its missing ancestors).
    pub fn dir_any(&mut self, path: &str) -> &mut Self {
        self.parents(path);
        if !self.want.contains_key(Path::new(path)) {
            self.spec(path, Spec { kind: Some(Kind::Dir), ..Spec::default() });
        }
        self
    }

    fn parents(&mut self, path: &str) {
        let mut anc: Vec<PathBuf> = Path::new(path).ancestors().skip(1).map(Path::to_path_buf).collect();
        anc.reverse();
        for a in anc {
            if !self.want.contains_key(&a) {
                self.want.insert(a, Want::Spec(Spec { kind: Some(Kind::Dir), ..Spec::default() }));
            }
        }
    }

    /// A symlink with this target, owned by root.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.spec(
            path,
            Spec {
                kind: Some(Kind::Symlink),
                uid: Some(0),
                gid: Some(0),
                target: Some(PathBuf::from(target)),
                ..Spec::default()
            },
        )
    }

    /// The path and everything below it are gone.
    pub fn remove(&mut self, path: &str) -> &mut Self {
        let p = PathBuf::from(path);
        let gone: Vec<PathBuf> = self.want.keys().filter(|k| k.starts_with(&p)).cloned().collect();
        for g in &gone {
            self.want.remove(g);
        }
        let p2 = p.clone();
        self.forget_links_to(&move |l| l.starts_with(&p2));
        self
    }

    /// Every difference between the expectation and `actual`, or Ok.
    pub fn diff(&self, actual: &Manifest) -> Result<(), String> {
        let mut problems: Vec<String> = Vec::new();
        let keys: BTreeSet<&PathBuf> = self.want.keys().chain(actual.keys()).collect();
        for k in keys {
            match (self.want.get(k), actual.get(k)) {
                (Some(Want::Exact(e)), None) => {
                    problems.push(format!("{}: missing (expected {})", k.display(), describe(e)))
                }
                (Some(Want::Spec(s)), None) => {
                    problems.push(format!("{}: missing (expected {:?})", k.display(), s.kind))
                }
                (None, Some(a)) => problems.push(format!("{}: unexpected new path: {}", k.display(), describe(a))),
                (Some(Want::Exact(e)), Some(a)) => {
                    let d = field_diffs(e, a);
                    if !d.is_empty() {
                        problems.push(format!("{}: {}", k.display(), d.join("; ")));
                    }
                }
                (Some(Want::Spec(s)), Some(a)) => {
                    let d = spec_diffs(s, a);
                    if !d.is_empty() {
                        problems.push(format!("{}: {} (actual: {})", k.display(), d.join("; "), describe(a)));
                    }
                }
                (None, None) => unreachable!(),
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let n = problems.len();
        let mut report = format!("{n} differing path(s):\n");
        for p in problems.iter().take(20) {
            report += "  ";
            report += p;
            report += "\n";
        }
        if n > 20 {
            report += &format!("  ... and {} more\n", n - 20);
        }
        Err(report)
    }

    #[track_caller]
    pub fn check(&self, actual: &Manifest) {
        if let Err(report) = self.diff(actual) {
            panic!("tree differs from the expected one\n{report}");
        }
    }

    pub fn matches(&self, actual: &Manifest) -> bool {
        self.diff(actual).is_ok()
    }
}

fn spec_diffs(s: &Spec, a: &Entry) -> Vec<String> {
    let mut d = Vec::new();
    if let Some(k) = s.kind {
        if k != a.kind {
            d.push(format!("type: want {}", kind_name(k)));
        }
    }
    if let Some(m) = s.mode {
        if m != a.mode {
            d.push(format!("mode: want {m:04o}"));
        }
    }
    if let Some(u) = s.uid {
        if u != a.uid {
            d.push(format!("uid: want {u}"));
        }
    }
    if let Some(g) = s.gid {
        if g != a.gid {
            d.push(format!("gid: want {g}"));
        }
    }
    if let Some(c) = &s.content {
        if Some(sha256_bytes(c)) != a.sha256 || Some(c.len() as u64) != a.size {
            d.push(format!("content: want {:?}", String::from_utf8_lossy(&c[..c.len().min(60)])));
        }
    }
    if let Some(t) = &s.target {
        if Some(t) != a.target.as_ref() {
            d.push(format!("target: want {}", t.display()));
        }
    }
    if let Some(x) = &s.xattrs {
        if x != &a.xattrs {
            d.push(format!("xattrs: want {x:?}"));
        }
    }
    if let Some(l) = &s.links {
        if l != &a.links {
            d.push(format!("hard links: want {l:?}"));
        }
    }
    d
}

// ---------------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------------

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
            write(&dir.path().join(rel), content);
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
}

impl Hello {
    pub fn new(backend: Backend, tag: &str, host: &Path) -> Hello {
        Hello { backend, tag: tag.to_string(), host: host.to_path_buf() }
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
        write(&in_root(root, &format!("/etc/hello{t}.old")), b"old config\n");
        for f in ["a", "b", "sub/c", "sub/deeper/d"] {
            write(&in_root(root, &format!("/srv/old{t}/{f}")), f.as_bytes());
        }
        symlink("a", in_root(root, &format!("/srv/old{t}/link-a"))).unwrap();
        let motd = in_root(root, &format!("/etc/motd{t}"));
        write(&motd, b"old message of the day\n");
        chown(&motd, SVC_UID, SVC_GID);
        chmod(&motd, 0o600);
        fix_mtimes(root);
    }

    /// The steps, in order. The journal backend gets no `run` step.
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
        if self.backend.allows_run() {
            v.push(json!({"id": "post", "type": "run", "timeout_s": 60, "command":
                sh(&format!("echo installed > /var/lib/hello{t}/state && chmod 0640 /var/lib/hello{t}/state"))}));
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
            "post" => s["command"] = sh(&format!("echo partial > /etc/partial{t}; echo boom-run >&2; exit 1")),
            "check" => s["expect_stdout"] = json!("greeting=bye"),
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
        e.dir(&format!("/opt/hello{t}"), 0o755, 0, 0)
            .file(&format!("/etc/hello{t}.conf"), b"greeting=hi\n", 0o644, 0, 0)
            .file(&format!("/opt/hello{t}/hello.sh"), HELLO_SH, 0o755, SVC_UID, SVC_GID)
            .symlink(&format!("/usr/local/bin/hello{t}"), &format!("/opt/hello{t}/hello.sh"))
            .symlink(&format!("/opt/hello{t}/current"), "hello.sh")
            .remove(&format!("/etc/hello{t}.old"))
            .remove(&format!("/srv/old{t}"))
            .file(&format!("/etc/motd{t}"), format!("welcome {t}\n").as_bytes(), 0o644, 0, 0)
            .dir(&format!("/var/lib/hello{t}"), 0o750, SVC_UID, SVC_GID)
            .dir(&format!("/opt/deep{t}/a/b"), 0o700, 0, 0);
        if self.backend.allows_run() {
            e.file(&format!("/var/lib/hello{t}/state"), b"installed\n", 0o640, 0, 0);
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

// ---------------------------------------------------------------------------------------------
// Running snapinst
// ---------------------------------------------------------------------------------------------

/// A `Command` for the binary with a clean environment as far as snapinst is concerned.
pub fn snapinst_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(BIN);
    c.args(args).env_remove("SNAPINST").env_remove("SNAPINST_FAILPOINT").stdin(Stdio::null());
    c
}

/// Runs `snapinst ARGS` and returns its output.
pub fn snapinst<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_timeout(&mut snapinst_cmd(args), CMD_TIMEOUT)
}

/// Runs `snapinst ARGS` with extra environment variables.
pub fn snapinst_env<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = snapinst_cmd(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run_timeout(&mut c, CMD_TIMEOUT)
}

/// Runs a command to completion, killing it (and panicking) after `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = join_timeout(t2, Duration::from_secs(5));
        panic!("{cmd:?} did not finish within {timeout:?} (killed); stderr:\n{}", String::from_utf8_lossy(&stderr));
    };
    // A grandchild that inherited the pipes could keep them open; do not wait forever for it.
    let stdout = join_timeout(t1, Duration::from_secs(30));
    let stderr = join_timeout(t2, Duration::from_secs(30));
    Output { status, stdout, stderr }
}

fn join_timeout(t: std::thread::JoinHandle<Vec<u8>>, d: Duration) -> Vec<u8> {
    let deadline = Instant::now() + d;
    while !t.is_finished() {
        if Instant::now() > deadline {
            return b"<output pipe still held open by a leftover process>".to_vec();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    t.join().unwrap_or_default()
}

/// Waits for a child up to `timeout`; None when it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("waiting for child") {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A human-readable dump of an output for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "expected exit code {code}\n{}", show(out));
}

/// True when the process died of SIGKILL.
pub fn killed_by_sigkill(out: &Output) -> bool {
    out.status.signal() == Some(libc::SIGKILL)
}

/// `snapinst apply PLAN --root ROOT --backend B --json [extra]`.
pub fn apply(plan: &Path, root: &Path, backend: Backend, extra: &[&str]) -> Output {
    apply_env(plan, root, backend, extra, &[])
}

pub fn apply_env(plan: &Path, root: &Path, backend: Backend, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("apply"),
        plan.as_os_str(),
        OsStr::new("--root"),
        root.as_os_str(),
        OsStr::new("--backend"),
        OsStr::new(backend.name()),
        OsStr::new("--json"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    snapinst_env(args, env)
}

/// Every stdout line as JSON; each must be an object with `"v":1` and an `"event"`.
#[track_caller]
pub fn json_lines(out: &Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let val: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}\n{}", show(out)));
        assert_eq!(val["v"], json!(1), "JSON line without \"v\":1: {line}");
        assert!(val["event"].is_string(), "JSON line without \"event\": {line}");
        v.push(val);
    }
    v
}

/// Like [`json_lines`] for a process that was killed: a last, partial line is ignored.
pub fn json_lines_lenient(out: &Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

pub fn events<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == name).collect()
}

#[track_caller]
pub fn summary(lines: &[Value]) -> &Value {
    let last = lines.last().expect("no JSON lines on stdout");
    assert_eq!(last["event"], "summary", "last JSON line is not the summary: {last}");
    last
}

fn root_args(root: &Path) -> Vec<&OsStr> {
    vec![OsStr::new("--root"), root.as_os_str(), OsStr::new("--json")]
}

/// `snapinst status --root ROOT --json` as one JSON object.
#[track_caller]
pub fn status_json(root: &Path) -> Value {
    let mut args = vec![OsStr::new("status")];
    args.extend(root_args(root));
    let out = snapinst(args);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not one JSON object ({e})\n{}", show(&out)));
    assert_eq!(v["v"], json!(1), "status --json without v:1: {v}");
    v
}

/// `snapinst list --root ROOT --json` as one JSON object.
#[track_caller]
pub fn list_json(root: &Path) -> Value {
    let mut args = vec![OsStr::new("list")];
    args.extend(root_args(root));
    let out = snapinst(args);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("list --json is not one JSON object ({e})\n{}", show(&out)));
    assert_eq!(v["v"], json!(1), "list --json without v:1: {v}");
    v
}

/// Asserts that status and list agree that `g` is the current generation.
#[track_caller]
pub fn assert_current_generation(root: &Path, g: u64) {
    let st = status_json(root);
    assert_eq!(st["current_generation"], json!(g), "status --json current_generation: {st}");
    let l = list_json(root);
    assert_eq!(l["current_generation"], json!(g), "list --json current_generation: {l}");
    let gens = l["generations"].as_array().unwrap_or_else(|| panic!("list --json has no generations array: {l}"));
    if g == 0 && gens.is_empty() {
        // Nothing committed yet: generation 0 is the untouched tree, with nothing stored for it.
        return;
    }
    let current: Vec<&Value> = gens.iter().filter(|x| x["current"] == json!(true)).collect();
    assert_eq!(current.len(), 1, "exactly one generation must be current: {l}");
    assert_eq!(current[0]["generation"], json!(g), "list --json generation marked current: {l}");
}

/// `snapinst recover --root ROOT --json [env]`.
pub fn recover_env(root: &Path, env: &[(&str, &str)]) -> Output {
    let mut args = vec![OsStr::new("recover")];
    args.extend(root_args(root));
    snapinst_env(args, env)
}

pub fn recover(root: &Path) -> Output {
    recover_env(root, &[])
}

/// `snapinst rollback --root ROOT --json [extra]`.
pub fn rollback(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![OsStr::new("rollback")];
    args.extend(root_args(root));
    args.extend(extra.iter().map(OsStr::new));
    snapinst_env(args, env)
}

/// Spawns `snapinst ARGS` in the background with its stdout lines delivered to a channel.
pub struct Background {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub stderr: std::thread::JoinHandle<String>,
}

pub fn spawn_background(mut cmd: Command) -> Background {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(so).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    Background { child, lines: rx, stderr }
}

impl Background {
    /// Waits until a JSON line satisfies `pred`; panics when the process ends first or after
    /// `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out waiting for {what}; lines so far: {seen:#?}");
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(l) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        if pred(&v) {
                            return v;
                        }
                    }
                    seen.push(l);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    panic!("process ended ({st:?}) before {what}; lines: {seen:#?}");
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

// ---------------------------------------------------------------------------------------------
// Leftovers: mounts, stages, locks
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
    pub line: String,
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of this process's namespace.
pub fn mounts() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    let mut v = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < sep + 4 || fields.len() < 5 {
            continue;
        }
        v.push(MountInfo {
            mount_point: PathBuf::from(unescape_mountinfo(fields[4])),
            fstype: fields[sep + 1].to_string(),
            source: unescape_mountinfo(fields[sep + 2]),
            super_opts: unescape_mountinfo(fields[sep + 3]),
            line: line.to_string(),
        });
    }
    v
}

/// Mounts below the image other than the image itself, and overlay mounts that use its paths.
pub fn leaked_mounts(img: &LoopImage) -> Vec<String> {
    let mnt = img.mountpoint();
    let mnt_s = mnt.to_string_lossy().into_owned();
    mounts()
        .into_iter()
        .filter(|m| {
            (m.mount_point != mnt && m.mount_point.starts_with(mnt))
                || (m.fstype == "overlay" && m.super_opts.contains(&mnt_s))
        })
        .map(|m| m.line)
        .collect()
}

/// Paths in the state dir that look like an unfinished transaction: a non-empty directory (or
/// a file) named `stage*` or `upper`. An empty one is a place for the next transaction.
fn stage_leftovers(state: &Path) -> Vec<String> {
    let mut found = Vec::new();
    fn rec(p: &Path, depth: usize, found: &mut Vec<String>) {
        if depth > 3 {
            return;
        }
        let Ok(rd) = fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let container = name.starts_with("stage") || name == "upper";
            if container && !is_dir {
                found.push(path.display().to_string());
            } else if container {
                let children: Vec<String> = fs::read_dir(&path)
                    .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                if !children.is_empty() {
                    found.push(format!("{} contains {children:?}", path.display()));
                }
            } else if is_dir {
                rec(&path, depth + 1, found);
            }
        }
    }
    rec(state, 0, &mut found);
    found
}

/// Who holds a lock on `p` (flock or POSIX/OFD), if anyone.
pub fn lock_holder(p: &Path) -> Option<String> {
    use std::os::fd::AsRawFd;
    let f = fs::OpenOptions::new().read(true).open(p).ok()?;
    let fd = f.as_raw_fd();
    // SAFETY: fd is a valid open descriptor owned by `f` for the duration of these calls.
    let r = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Some(format!("flock held on {}", p.display()));
    }
    // SAFETY: as above; we release the lock we just took.
    unsafe { libc::flock(fd, libc::LOCK_UN) };
    if p.is_file() {
        if let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(p) {
            // SAFETY: zeroed flock struct is a valid initial value; fd is open.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as _;
            fl.l_whence = libc::SEEK_SET as _;
            let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
            if r == 0 && fl.l_type as i32 != libc::F_UNLCK {
                return Some(format!("POSIX lock held on {} by pid {}", p.display(), fl.l_pid));
            }
        }
    }
    None
}

/// Nothing of a transaction is left: no mount, no stage, no non-empty upper layer, no held
/// lock, no stage subvolume, and `status` reports nothing in progress.
#[track_caller]
pub fn assert_no_leftovers(img: &LoopImage) {
    let mut problems = Vec::new();
    for m in leaked_mounts(img) {
        problems.push(format!("mount left: {m}"));
    }
    let state = img.state_dir();
    for s in stage_leftovers(&state) {
        problems.push(format!("stage left: {s}"));
    }
    let mut lockish = vec![state.clone(), img.root()];
    fn collect_locks(p: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if depth > 2 {
            return;
        }
        let Ok(rd) = fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let ft = e.file_type().ok();
            let name = e.file_name().to_string_lossy().to_lowercase();
            if ft.map(|t| t.is_file()).unwrap_or(false) && name.contains("lock") {
                out.push(e.path());
            } else if ft.map(|t| t.is_dir()).unwrap_or(false) {
                collect_locks(&e.path(), depth + 1, out);
            }
        }
    }
    collect_locks(&state, 0, &mut lockish);
    for p in lockish {
        if p.exists() {
            if let Some(h) = lock_holder(&p) {
                problems.push(format!("lock left: {h}"));
            }
        }
    }
    if img.kind() == FsKind::Btrfs {
        let out = run_ok(Command::new(require_tool("btrfs")).args(["subvolume", "list"]).arg(img.mountpoint()));
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if l.to_lowercase().contains("stage") {
                problems.push(format!("stage subvolume left: {l}"));
            }
        }
    }
    let st = status_json(&img.root());
    if !st["in_progress"].is_null() {
        problems.push(format!("status reports a transaction in progress: {}", st["in_progress"]));
    }
    if !st["recovery_failed"].is_null() {
        problems.push(format!("status reports recovery_failed: {}", st["recovery_failed"]));
    }
    assert!(problems.is_empty(), "transaction leftovers:\n  {}", problems.join("\n  "));
}

/// The names in a directory (sorted), e.g. to prove nothing appeared next to the root.
pub fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fresh image for the backend with the standard tree in its root.
pub fn populated(backend: Backend) -> LoopImage {
    let img = backend.image();
    populate_tree(&img.root(), TREE_FILES);
    img
}

/// Canonical string form of a path, for comparing with paths the binary prints.
pub fn canon(p: &Path) -> String {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).to_string_lossy().into_owned()
}
