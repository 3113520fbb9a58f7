//! What the tool keeps on this host, outside the store: the data dir's locks and state
//! ([`state_dir`]), a create's private scratch folder and the removal of those a kill left
//! ([`scratch`]), what a wal-push uploaded ahead ([`wal_records`]), the sorted walk of a folder
//! tree ([`walk`]), and how much room a filesystem has.

pub mod drills;
pub mod scratch;
pub mod state_dir;
pub mod wal_records;
pub mod walk;

use std::path::Path;

use crate::error::{Error, Result};

/// Bytes an unprivileged user may still write on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path)
        .map_err(|e| Error::io("check free space on", path, std::io::Error::from(e)))?;
    #[allow(clippy::unnecessary_cast)] // u64 on Linux, narrower elsewhere
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}
