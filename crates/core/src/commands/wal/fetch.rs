//! `wal-fetch NAME DEST`: PostgreSQL's `restore_command`. Writes the file, or fails with
//! [`Error::WalMissing`] (exit 3) when the store does not hold it, which recovery expects for
//! history files that were never written and for the segment after the last one archived.

use std::path::Path;

use crate::database::wal_names::WalFileName;
use crate::error::{Error, Result};
use crate::repository::wal::read_wal_file;
use crate::repository::OpContext;

/// Writes WAL file `name` to `dest` (through a temp file beside it); returns its size.
pub async fn wal_fetch(ctx: &OpContext<'_>, name: &WalFileName, dest: &Path) -> Result<u64> {
    match read_wal_file(ctx, name, Some(dest)).await {
        Ok((size, _)) => Ok(size),
        Err(Error::NotFound { .. }) => Err(Error::WalMissing {
            name: name.to_string(),
            store: ctx.store.describe(),
        }),
        Err(e) => Err(e),
    }
}
