//! The list of managed roots, so `recover --all` (run at boot) finds every root with a state area. One small file
//! per root in `/var/lib/snapinst/roots/`, keyed by a hash of the state area's path.

use crate::fsutil;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const REGISTRY_DIR: &str = "/var/lib/snapinst/roots";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Registered {
    #[serde(with = "crate::pathbytes::one")]
    pub root: PathBuf,
    /// None when the root uses the default state area (found again by the same rule).
    #[serde(default, with = "crate::pathbytes::maybe")]
    pub state_dir: Option<PathBuf>,
}

fn dir() -> PathBuf {
    std::env::var_os("SNAPINST_REGISTRY").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(REGISTRY_DIR))
}

/// Remember that `root` is managed, with its state in `state_dir` or the default one (idempotent).
pub(crate) fn register(root: &Path, state_dir: Option<&Path>) -> Result<()> {
    let key = hex::encode(Sha256::digest(root.as_os_str().as_encoded_bytes()));
    let path = dir().join(format!("{}.json", &key[..16]));
    if path.exists() {
        return Ok(());
    }
    fsutil::create_dir_durable(&dir())?;
    fsutil::write_json_atomic(
        &path,
        &Registered { root: root.to_path_buf(), state_dir: state_dir.map(Path::to_path_buf) },
    )
}

/// Every registered root.
pub(crate) fn all() -> Result<Vec<Registered>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir()) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            out.push(fsutil::read_json(&e.path())?);
        }
    }
    out.sort_by(|a: &Registered, b| a.root.cmp(&b.root));
    Ok(out)
}
