//! Loop-mounted filesystem images made by the tests: a sparse file, formatted, attached to a
//! loop device and mounted; Drop unmounts (lazily if it must), detaches and removes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::*;

/// Serialises loop device allocation between the test threads of one binary.
static LOOP_LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Btrfs,
    Ext4,
    Xfs,
    /// Stands in for vfat, which this kernel may lack: the tests stage ext2 by copy, as snapinst stages FAT
    /// (`SNAPINST_TEST_COPY_STAGED`, set by [`crate::common::run::snapinst_cmd`]).
    Ext2,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Btrfs => "btrfs",
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Ext2 => "ext2",
        }
    }
}

/// A sparse file, formatted, attached to a loop device and mounted at a temporary mount point.
/// The managed root is `<mnt>/root` (or `<mnt>` itself, see [`LoopImage::top`]). Drop unmounts
/// (lazily if it must), detaches and removes.
pub struct LoopImage {
    /// Filesystems mounted inside the root ([`LoopImage::with_mounts`]): dropped first.
    subs: Vec<LoopImage>,
    kind: FsKind,
    mnt: PathBuf,
    root: PathBuf,
    state: PathBuf,
    loopdev: Option<loopdev::LoopDevice>,
    loop_path: PathBuf,
    /// For a subvolume mounted on its own ([`LoopImage::mounted_subvolume`]): its path in the top
    /// level, which is what its name (and so its next mount) points at.
    name: Option<PathBuf>,
    /// A second mount of this filesystem, elsewhere, that keeps it (and its autoclear loop device)
    /// alive while its mount inside a root is taken down to mount that root again.
    hold: Option<PathBuf>,
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
        let dir = tempfile::Builder::new().prefix("snapinst-img-").tempdir().expect("creating image tempdir");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("creating mount point");
        Self::create_at(kind, size_mb, dir, mnt)
    }

    /// An image whose filesystem's top is the managed root, as an ext4 `/` is. It has a `/var/lib`
    /// of its own, so the default state area is `/var/lib/snapinst/state` inside the root.
    pub fn top(kind: FsKind, size_mb: u64) -> LoopImage {
        let mut img = Self::create(kind, size_mb);
        img.root = img.mnt.clone();
        img.state = img.mnt.join("var/lib/snapinst/state");
        fs::create_dir_all(img.mnt.join("var/lib/snapinst")).expect("creating /var/lib/snapinst in the root");
        img
    }

    /// The btrfs image's subvolume `root` mounted on its own by name, as `/` is at boot, and made
    /// the managed root; the state area stays beside the subvolume on the top level. A commit
    /// changes what the name points at: see [`LoopImage::booted_manifest`].
    pub fn mounted_subvolume(mut self) -> LoopImage {
        assert_eq!(self.kind, FsKind::Btrfs, "only a btrfs subvolume can be mounted on its own");
        let live = self.dir.path().join("live");
        fs::create_dir(&live).expect("creating the live mount point");
        mount_subvolume(&self.loop_path, &live);
        self.name = Some(std::mem::replace(&mut self.root, live));
        self
    }

    /// Mount the root again as the next boot would (for a subvolume mounted on its own: by name,
    /// with the filesystems inside it mounted back on it); nothing for any other root.
    pub fn boot_again(&self) {
        self.boot_again_with(|| {});
    }

    /// [`LoopImage::boot_again`], running `initramfs` between the unmount and the mount, as the initramfs runs
    /// its hooks (`snapinst boot`) before the root is mounted.
    pub fn boot_again_with(&self, initramfs: impl FnOnce()) {
        if self.name.is_none() {
            return;
        }
        for sub in self.subs.iter().rev() {
            unmount_waiting(&sub.mnt);
        }
        unmount_waiting(&self.root);
        initramfs();
        mount_subvolume(&self.loop_path, &self.root);
        for sub in &self.subs {
            let hold = sub.hold.as_ref().expect("a filesystem inside a mounted subvolume has a hold mount");
            bind(hold, &sub.mnt);
        }
    }

    /// The manifest of the root as the machine sees it after the next boot: for a subvolume
    /// mounted on its own, after [`LoopImage::boot_again`]; else the root as it is.
    pub fn booted_manifest(&self) -> Manifest {
        self.boot_again();
        manifest(&self.root)
    }

    /// Where the root's subvolume is on the top level (a subvolume mounted on its own), which is
    /// where the boot hook finds it before the root is mounted.
    pub fn subvolume_name(&self) -> Option<&Path> {
        self.name.as_deref()
    }

    /// Mounts an ext4 filesystem at `/boot`, an ext2 one standing in for the EFI system partition
    /// at `/boot/efi` inside it, an xfs one at `/srv/www` and a btrfs subvolume (the top level of
    /// its filesystem) at `/home` inside the root, each with a few files, as a real machine has them.
    pub fn with_mounts(mut self) -> LoopImage {
        let mounts = [
            ("boot", FsKind::Ext4, 64),
            ("boot/efi", FsKind::Ext2, 48),
            ("srv/www", FsKind::Xfs, 320),
            ("home", FsKind::Btrfs, 128),
        ];
        for (at, kind, size) in mounts {
            let point = self.root.join(at);
            fs::create_dir_all(&point).unwrap_or_else(|e| panic!("creating {}: {e}", point.display()));
            let dir = tempfile::Builder::new().prefix("snapinst-sub-").tempdir().expect("creating image tempdir");
            let mut sub = Self::create_at(kind, size, dir, point.clone());
            if self.name.is_some() {
                let hold = sub.dir.path().join("hold");
                fs::create_dir(&hold).expect("creating a hold mount point");
                bind(&point, &hold);
                sub.hold = Some(hold);
            }
            write_file(&point.join("vmlinuz-1"), format!("{at} on {}\n", kind.name()).as_bytes());
            write_file(&point.join("grub/grub.cfg"), b"menuentry one\n");
            self.subs.push(sub);
        }
        fix_mtimes(&self.root);
        self
    }

    fn create_at(kind: FsKind, size_mb: u64, dir: tempfile::TempDir, mnt: PathBuf) -> LoopImage {
        require_root();
        let file = dir.path().join("disk.img");
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
            FsKind::Xfs => {
                run_ok(Command::new(require_tool("mkfs.xfs")).args(["-q", "-f"]).arg(&file));
            }
            FsKind::Ext2 => {
                run_ok(Command::new(require_tool("mkfs.ext2")).args(["-q", "-F"]).arg(&file));
            }
        }
        let ld = attach_loop(&file);
        let loop_path = ld.path().expect("loop device has no path");
        let fstype = kind.name();
        nix::mount::mount(Some(&loop_path), &mnt, Some(fstype), nix::mount::MsFlags::empty(), None::<&str>)
            .unwrap_or_else(|e| panic!("mounting {} ({fstype}) on {}: {e}", loop_path.display(), mnt.display()));
        let (root, state) = (mnt.join("root"), mnt.join(".snapinst-root"));
        LoopImage {
            subs: Vec::new(),
            kind,
            mnt,
            root,
            state,
            loopdev: Some(ld),
            loop_path,
            name: None,
            hold: None,
            dir,
        }
    }

    pub fn kind(&self) -> FsKind {
        self.kind
    }
    /// Where the image is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }
    /// The managed root, `<mnt>/root` (or `<mnt>` for [`LoopImage::top`]).
    pub fn root(&self) -> PathBuf {
        self.root.clone()
    }
    /// The default state directory for the root: `<mnt>/.snapinst-root`, or inside a top root.
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }
    /// The filesystems mounted inside the root.
    pub fn mounted_inside(&self) -> &[LoopImage] {
        &self.subs
    }
    pub fn loop_device(&self) -> &Path {
        &self.loop_path
    }
}

/// Mount subvolume `root` of the btrfs filesystem on `dev` at `at`, by name.
fn mount_subvolume(dev: &Path, at: &Path) {
    nix::mount::mount(Some(dev), at, Some("btrfs"), nix::mount::MsFlags::empty(), Some("subvol=root"))
        .unwrap_or_else(|e| panic!("mounting subvolume root of {} at {}: {e}", dev.display(), at.display()));
}

fn bind(from: &Path, to: &Path) {
    nix::mount::mount(Some(from), to, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .unwrap_or_else(|e| panic!("bind-mounting {} at {}: {e}", from.display(), to.display()));
}

/// Unmount `at`, waiting a little while something still uses it.
fn unmount_waiting(at: &Path) {
    for _ in 0..50 {
        match nix::mount::umount2(at, nix::mount::MntFlags::empty()) {
            Ok(()) => return,
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("unmounting {}: {e}", at.display()),
        }
    }
    panic!("unmounting {}: still busy after 5 s", at.display());
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

/// Where the engine registers managed roots for `recover --all` (see `src/registry.rs`).
const REGISTRY_DIR: &str = "/var/lib/snapinst/roots";

/// Removes the registrations of roots below `mnt`, so finished tests leave no roots behind for
/// `recover --all` to trip over.
fn forget_registrations(mnt: &Path) {
    let Ok(rd) = fs::read_dir(REGISTRY_DIR) else { return };
    for e in rd.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if v["root"].as_str().is_some_and(|r| Path::new(r).starts_with(mnt)) {
            if let Err(err) = fs::remove_file(e.path()) {
                eprintln!("cleanup: removing registration {}: {err}", e.path().display());
            }
        }
    }
}

impl Drop for LoopImage {
    fn drop(&mut self) {
        // The innermost (mounted last) first: /boot/efi before /boot.
        while let Some(sub) = self.subs.pop() {
            drop(sub);
        }
        forget_registrations(&self.mnt);
        if self.name.is_some() {
            forget_registrations(&self.root);
            if let Err(e) = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: unmounting the live root {}: {e}", self.root.display());
            }
        }
        if let Some(hold) = &self.hold {
            if let Err(e) = nix::mount::umount2(hold, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: unmounting {}: {e}", hold.display());
            }
        }
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
