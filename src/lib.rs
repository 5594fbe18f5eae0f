//! snapinst applies an install plan to a root as one transaction: the steps run in a staged copy of the root (a
//! btrfs snapshot or an overlayfs upper layer), and one atomic operation commits them. The library holds the whole
//! program; `main.rs` only calls [`run`].

mod backend;
mod census;
mod cli;
mod commands;
mod config;
mod conflicts;
mod delta;
mod dpkg_lock;
mod events;
mod failpoint;
mod fsutil;
mod inroot;
mod journal;
mod lock;
mod mounts;
mod nosync;
mod output;
mod pathbytes;
mod plan;
mod reboot_required;
mod registry;
mod sandbox;
mod state;
mod steps;
mod submounts;
mod textpos;
mod topview;
mod treediff;

pub use cli::{command, run};
