//! Whole-tree manifests, their readable diff, and [`Expect`]: the before-manifest with a plan's
//! effects applied, to compare the after-manifest with.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;

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

/// The whole-tree manifest of every path below (and including) `root`, filesystems mounted inside
/// it included, snapinst's own state areas left out: the root's when it is inside the root
/// (`/var/lib/snapinst/state` or `/.snapinst`), and each part's (`<mount point>/.snapinst`). They
/// are never part of the tree as far as a transaction is concerned.
pub fn manifest(root: &Path) -> Manifest {
    let mut m = manifest_all(root);
    let areas: Vec<PathBuf> = m
        .keys()
        .filter(|k| k.ends_with(".snapinst") || k.as_path() == Path::new("/var/lib/snapinst/state"))
        .filter(|k| root.join(k.strip_prefix("/").unwrap()).join("txns").is_dir())
        .cloned()
        .collect();
    m.retain(|k, _| !areas.iter().any(|a| k.starts_with(a)));
    m
}

/// The manifest of every path below (and including) `root`, state area included.
pub fn manifest_all(root: &Path) -> Manifest {
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
    pub fn spec(&mut self, path: impl AsRef<Path>, spec: Spec) -> &mut Self {
        let p = path.as_ref().to_path_buf();
        let p2 = p.clone();
        self.forget_links_to(&move |l| l == p2);
        self.want.insert(p, Want::Spec(spec));
        self
    }

    /// Exactly `entry` at `path` (as another manifest has it), mtime included.
    pub fn entry(&mut self, path: impl AsRef<Path>, entry: Entry) -> &mut Self {
        self.want.insert(path.as_ref().to_path_buf(), Want::Exact(entry));
        self
    }

    /// A regular file with exactly this content, mode and owner, no xattrs and no hard links.
    pub fn file(&mut self, path: impl AsRef<Path>, content: &[u8], mode: u32, uid: u32, gid: u32) -> &mut Self {
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
    pub fn file_content(&mut self, path: impl AsRef<Path>, content: &[u8]) -> &mut Self {
        self.spec(path, Spec { kind: Some(Kind::File), content: Some(content.to_vec()), ..Spec::default() })
    }

    /// A directory with this mode and owner; missing ancestors become directories of any mode.
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32, uid: u32, gid: u32) -> &mut Self {
        self.parents(path.as_ref());
        self.spec(
            path,
            Spec { kind: Some(Kind::Dir), mode: Some(mode), uid: Some(uid), gid: Some(gid), ..Spec::default() },
        )
    }

    /// A directory of any mode and owner (and its missing ancestors).
    pub fn dir_any(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.parents(path.as_ref());
        if !self.want.contains_key(path.as_ref()) {
            self.spec(path, Spec { kind: Some(Kind::Dir), ..Spec::default() });
        }
        self
    }

    fn parents(&mut self, path: &Path) {
        let mut anc: Vec<PathBuf> = path.ancestors().skip(1).map(Path::to_path_buf).collect();
        anc.reverse();
        for a in anc {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.want.entry(a) {
                slot.insert(Want::Spec(Spec { kind: Some(Kind::Dir), ..Spec::default() }));
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
    pub fn remove(&mut self, path: impl AsRef<Path>) -> &mut Self {
        let p = path.as_ref().to_path_buf();
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
