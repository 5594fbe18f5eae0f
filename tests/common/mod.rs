//! Helpers for the integration tests: loop-mounted btrfs and ext4 images, a populated test tree,
//! whole-tree manifests with a readable diff, a model of the expected tree after a plan, and
//! wrappers that run the real `snapinst` binary.
//!
//! Modelled on ripgrep's `tests/util.rs`: small, explicit, and loud. A privileged helper never
//! skips: when the machine lacks a tool or a kernel feature it panics with the reason.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

mod debian;
mod http;
mod image;
mod leftovers;
mod manifest;
mod plan;
mod run;
mod tree;

#[allow(unused_imports)]
pub use debian::*;
#[allow(unused_imports)]
pub use http::*;
pub use image::*;
pub use leftovers::*;
pub use manifest::*;
pub use plan::*;
pub use run::*;
pub use tree::*;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_snapinst");

/// Any single snapinst invocation taking longer than this is a hang, not a slow machine.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);

/// Number of generated files in the standard test tree.
pub const TREE_FILES: usize = 300;

// Privileges and tools

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

// Backends

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

/// How a test root is laid out on its filesystems.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `<mnt>/root`: a directory or subvolume with its state area beside it.
    Plain,
    /// The top of an ext4 filesystem, like an ext4 `/`, with its state area inside it (overlay and
    /// journal; for btrfs, `Plain`).
    Top,
    /// An ext4 `/boot` and an xfs `/srv/www` mounted inside the root; for btrfs the root is the
    /// subvolume mounted on its own, as `/` is, for the others `Top`.
    WithMounts,
}

impl Backend {
    /// A fresh image laid out as `layout`.
    pub fn image_in(self, layout: Layout) -> LoopImage {
        match (layout, self) {
            (Layout::Plain, _) => self.image(),
            (Layout::Top, Backend::Btrfs) => self.image(),
            (Layout::Top, _) => LoopImage::top(FsKind::Ext4, 256),
            (Layout::WithMounts, Backend::Btrfs) => self.image().mounted_subvolume().with_mounts(),
            (Layout::WithMounts, _) => self.image_in(Layout::Top).with_mounts(),
        }
    }
}

/// One test per listed backend from one function `fn f(backend: Backend)`, in a module named `$modname`.
#[allow(unused_macros)]
macro_rules! backend_tests {
    ($modname:ident, $func:ident, $($name:ident => $backend:ident),+) => {
        mod $modname {
            $(
                #[test]
                fn $name() {
                    super::$func(crate::common::Backend::$backend)
                }
            )+
        }
    };
}

/// A test per backend from one function `fn f(backend: Backend)`: the tests are named
/// `<modname>::btrfs`, `<modname>::overlay`, `<modname>::journal`.
/// Use with `#[macro_use] mod common;` and `for_each_backend!(privileged_name, function);`.
#[allow(unused_macros)]
macro_rules! for_each_backend {
    ($modname:ident, $func:ident) => {
        backend_tests!($modname, $func, btrfs => Btrfs, overlay => Overlay, journal => Journal);
    };
}

/// Like [`for_each_backend!`] for the backends that stage a transaction (btrfs and overlay): the tests are named
/// `<modname>::btrfs` and `<modname>::overlay`.
#[allow(unused_macros)]
macro_rules! for_staged_backends {
    ($modname:ident, $func:ident) => {
        backend_tests!($modname, $func, btrfs => Btrfs, overlay => Overlay);
    };
}
