//! `snapinst dpkg-guard`: dpkg's pre-invoke hook (`/etc/dpkg/dpkg.cfg.d/snapinst`). While a generation that
//! snapinst committed to a running root waits for its boot, the tree the next boot mounts is not the one a live
//! dpkg would change: its changes would be missing at that boot, and the package database would disagree with the
//! files. The hook refuses such a run, naming the pending generation and what to do; otherwise (nothing pending, a
//! root snapinst does not manage, a dpkg run inside a snapinst stage) it does nothing. When it cannot tell, it says
//! so and lets dpkg run: a broken hook must not stop every package operation on the machine.

use super::{locate, refuse, Outcome};
use crate::backend;
use crate::cli::RootArgs;
use crate::pathbytes::PathText;
use anyhow::Result;
use std::path::PathBuf;

pub(crate) fn dpkg_guard() -> Result<Outcome> {
    if std::env::var_os("SNAPINST_TXN").is_some() {
        return Ok(Outcome::Done); // a step of a transaction, in its stage
    }
    let root = match std::env::var("DPKG_ROOT") {
        Ok(r) if !r.is_empty() => PathBuf::from(r),
        _ => PathBuf::from("/"),
    };
    match pending(&root) {
        Ok(None) => Ok(Outcome::Done),
        Ok(Some(why)) => refuse(why),
        Err(e) => {
            eprintln!(
                "snapinst: warning: cannot tell whether a generation of {} waits for its boot ({e:#}); letting dpkg run",
                root.escaped()
            );
            Ok(Outcome::Done)
        }
    }
}

/// Why a live dpkg run on `root` must wait, if it must.
fn pending(root: &std::path::Path) -> Result<Option<String>> {
    let loc = locate(&RootArgs { root: root.to_path_buf(), state_dir: None, json: false })?;
    let Some(state) = loc.state.load()? else { return Ok(None) };
    let generation = match &state.pending {
        Some(p) => p.generation,
        None if backend::next_boot_differs(state.backend, &loc.root, &state) => state.current,
        None => return Ok(None),
    };
    Ok(Some(format!(
        "generation {generation} of {} is committed and waits for the next boot, which mounts it instead of the tree \
         running now: a package change made now would be missing at that boot, and the package database would \
         disagree with the files. Reboot first; or make the change through snapinst (`snapinst apply` with a \
         `package` step), which stages it on generation {generation}; or give up the pending generation \
         (`snapinst rollback --root {}`)",
        loc.root.escaped(),
        loc.root.escaped()
    )))
}
