//! The standard test tree: a busybox system plus a few hundred files with every kind of metadata
//! a manifest compares.

use std::fs;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const SVC_UID: u32 = 990;
pub const SVC_GID: u32 = 990;
pub const OTHER_UID: u32 = 1234;
pub const OTHER_GID: u32 = 5678;
pub const XATTR_NAME: &str = "user.snapinst.test";

const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "echo", "true", "false", "sleep", "touch", "mkdir", "rm", "ln", "chmod", "env", "ls", "test",
    "printf", "mv", "chown",
];

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, p.display()));
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    lchown(p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {uid}:{gid} {}: {e}", p.display()));
}

pub fn mkdirs(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
}

pub fn write_file(p: &Path, content: &[u8]) {
    if let Some(parent) = p.parent() {
        mkdirs(parent);
    }
    fs::write(p, content).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
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

/// The in-root path of generated file number `i` of [`populate_tree`].
pub fn tree_file(i: usize) -> String {
    format!("/usr/share/pkg{:02}/sub{}/d{}/f{:04}.dat", i % 17, i % 3, i % 2, i)
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
    write_file(
        &in_root(root, "/etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\nsvc:x:990:990:service:/home/svc:/bin/sh\n",
    );
    write_file(&in_root(root, "/etc/group"), b"root:x:0:\nsvc:x:990:\n");
    chmod(&in_root(root, "/etc/passwd"), 0o644);
    chmod(&in_root(root, "/etc/group"), 0o644);
    write_file(&in_root(root, "/etc/hostname"), b"snapinst-test\n");
    chmod(&in_root(root, "/tmp"), 0o1777);
    chmod(&in_root(root, "/root"), 0o700);
    chown(&in_root(root, "/home/svc"), SVC_UID, SVC_GID);
    chmod(&in_root(root, "/home/svc"), 0o700);

    // generated files
    // Small files mostly, some past a page and an extent; a few large ones below.
    const SIZES: [usize; 9] = [0, 1, 17, 511, 4096, 4097, 12_345, 1000, 70_001];
    let mut files = Vec::new();
    for i in 0..n_files {
        let rel = tree_file(i);
        let p = in_root(root, &rel);
        write_file(&p, &pseudo_bytes(i as u64, SIZES[i % SIZES.len()]));
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
    for (n, size) in [(1usize, 300_000usize), (2, 1_048_577)] {
        let p = in_root(root, &format!("/opt/big/blob{n}"));
        write_file(&p, &pseudo_bytes(70_000 + n as u64, size));
    }
    // odd modes, set after chown (chown clears setuid)
    let suid = in_root(root, "/usr/local/bin/suid-tool");
    write_file(&suid, &pseudo_bytes(9001, 3000));
    chmod(&suid, 0o4755);
    let sgid = in_root(root, "/usr/local/bin/sgid-tool");
    write_file(&sgid, &pseudo_bytes(9002, 3000));
    chown(&sgid, 0, SVC_GID);
    chmod(&sgid, 0o2755);
    let shared = in_root(root, "/srv/shared");
    mkdirs(&shared);
    chmod(&shared, 0o1777);
    write_file(&in_root(root, "/srv/shared/note"), b"sticky dir content\n");
    let private = in_root(root, "/srv/data/private");
    mkdirs(&private);
    chown(&private, OTHER_UID, OTHER_GID);
    chmod(&private, 0o751);
    write_file(&in_root(root, "/srv/data/private/secret"), b"s3cret\n");
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
pub fn walk(p: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
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
