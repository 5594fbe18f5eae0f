//! A real Debian root for the package, user and service tests: debootstrapped once by
//! `tests/fixtures/debian-root.sh` into a cache outside the work tree (SNAPINST_TEST_CACHE, default
//! /var/cache/snapinst-test), with real .deb files beside it, then copied into a fresh loop image per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use super::*;

/// Where the fixture script put the debootstrapped tree and the .deb files.
pub struct DebianFixture {
    pub root: PathBuf,
    pub debs: PathBuf,
    /// A flat apt repository holding hello.
    pub repo: PathBuf,
    /// Flat apt repositories with newer versions of the upgrade tests' packages (1.0 of each is in `debs`): all
    /// good, and one whose new version's postinst fails.
    pub upgrade_good: PathBuf,
    pub upgrade_bad: PathBuf,
}

/// The fixture, made (or found in the cache) once per test binary.
pub fn debian_fixture() -> &'static DebianFixture {
    static FIXTURE: OnceLock<DebianFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cache = std::env::var_os("SNAPINST_TEST_CACHE").unwrap_or_else(|| "/var/cache/snapinst-test".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debian-root.sh");
        let out = run_ok(Command::new("bash").arg(&script).arg(&cache));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")).map(PathBuf::from))
                .unwrap_or_else(|| panic!("{} printed no {key}= line:\n{}", script.display(), show(&out)))
        };
        DebianFixture {
            root: field("root"),
            debs: field("debs"),
            repo: field("repo"),
            upgrade_good: field("upgrade_good"),
            upgrade_bad: field("upgrade_bad"),
        }
    })
}

/// A fresh image for the backend whose root is a copy of the debootstrapped tree.
pub fn debian_image(backend: Backend) -> LoopImage {
    let fixture = debian_fixture();
    let img = match backend {
        Backend::Btrfs => BtrfsImage::new(1024).into_inner(),
        Backend::Overlay | Backend::Journal => Ext4Image::new(1024).into_inner(),
    };
    run_ok(Command::new("cp").arg("-a").arg(fixture.root.join(".")).arg(img.root()));
    img
}

/// A plain copy of the debootstrapped tree in a temporary directory, for the root's own tools to change (the
/// oracle a test compares snapinst's result with).
pub fn debian_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    run_ok(Command::new("cp").arg("-a").arg(debian_fixture().root.join(".")).arg(dir.path()));
    dir
}

/// A copy of `examples/<name>` in a temporary directory, its `debs/` being the fixture's .deb files.
pub fn example_plan_dir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    let dir = tempfile::tempdir().expect("temporary directory");
    run_ok(Command::new("cp").arg("-a").arg(src.join(".")).arg(dir.path()));
    let debs = dir.path().join("debs");
    if debs.exists() {
        std::fs::remove_dir_all(&debs).expect("removing the example's own debs/");
    }
    std::os::unix::fs::symlink(&debian_fixture().debs, &debs).expect("linking debs/");
    let plan = dir.path().join("plan.json");
    (dir, plan)
}

/// Runs a command chrooted into `root` (the root's own programs, never the host's).
pub fn chroot_run(root: &Path, argv: &[&str]) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("chroot {} {argv:?}: {e}", root.display()))
}

/// The `Status:` line `dpkg -s` prints for a package in the root, or None when dpkg knows nothing of it.
pub fn dpkg_status(root: &Path, package: &str) -> Option<String> {
    let out = chroot_run(root, &["dpkg-query", "-W", "-f=${Status}", package]);
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !status.is_empty()).then_some(status)
}
