//! `wal-fetch NAME DEST`: PostgreSQL's `restore_command`. Writes the file, or fails with
//! [`Error::WalMissing`] (exit 3) when the store does not hold it, which recovery expects for
//! history files that were never written and for the segment after the last one archived.
//!
//! Read-ahead: recovery asks for one segment at a time and replays it before asking for the
//! next. A call that had to download its segment also downloads the next [`FETCH_AHEAD`]
//! segments of the same timeline, in parallel, into `<DEST's folder>/.synapse-backup-prefetch/`
//! (each read to its end and checked before it is renamed in there); the calls for those then
//! only rename the file to DEST. A segment the store does not hold ends the read-ahead quietly:
//! that is the end of the archive.

use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::database::wal_names::{WalFileKind, WalFileName};
use crate::error::{Error, IoContext, Result};
use crate::repository::wal::read_wal_file;
use crate::repository::OpContext;

/// Segments downloaded ahead of recovery's asking, besides the one asked for.
pub const FETCH_AHEAD: usize = 7;
/// The read-ahead folder, inside the folder of DEST (pg_wal): PostgreSQL's own, private one.
pub const PREFETCH_FOLDER: &str = ".synapse-backup-prefetch";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchReport {
    pub bytes: u64,
    /// Served from the read-ahead folder, not downloaded now.
    pub from_read_ahead: bool,
    /// Segments this call downloaded ahead.
    pub read_ahead: usize,
}

/// Writes WAL file `name` to `dest` (through a temp file beside it); with `ahead` > 0, reads the
/// next segments ahead, `parallel` at a time.
pub async fn wal_fetch(
    ctx: &OpContext<'_>,
    name: &WalFileName,
    dest: &Path,
    (ahead, parallel): (usize, usize),
) -> Result<FetchReport> {
    let folder = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefetch = folder.join(PREFETCH_FOLDER);
    let is_segment = name.kind() == WalFileKind::Segment;
    let ready = prefetch.join(name.as_str());
    if is_segment && ready.is_file() {
        let bytes = std::fs::metadata(&ready).at("stat", &ready)?.len();
        std::fs::rename(&ready, dest).at("rename into place", dest)?;
        forget_passed(&prefetch, name);
        return Ok(FetchReport {
            bytes,
            from_read_ahead: true,
            read_ahead: 0,
        });
    }
    let bytes = match read_wal_file(ctx, name, Some(dest)).await {
        Ok((size, _)) => size,
        Err(Error::NotFound { .. }) => {
            return Err(Error::WalMissing {
                name: name.to_string(),
                store: ctx.store.describe(),
            })
        }
        Err(e) => return Err(e),
    };
    let mut report = FetchReport {
        bytes,
        from_read_ahead: false,
        read_ahead: 0,
    };
    if !is_segment || ahead == 0 {
        return Ok(report);
    }
    forget_passed(&prefetch, name);
    if let Err(e) = create_private(&prefetch) {
        tracing::warn!("no read-ahead: {e}");
        return Ok(report);
    }
    let next: Vec<WalFileName> =
        std::iter::successors(name.next_segment(bytes), |n| n.next_segment(bytes))
            .take(ahead)
            .filter(|n| !prefetch.join(n.as_str()).exists())
            .collect();
    let results = futures::stream::iter(next.iter().map(|n| {
        let path = prefetch.join(n.as_str());
        async move { read_wal_file(ctx, n, Some(&path)).await }
    }))
    .buffered(parallel.max(1))
    .collect::<Vec<_>>()
    .await;
    for (n, result) in next.iter().zip(results) {
        match result {
            Ok(_) => report.read_ahead += 1,
            // The end of the archive (so far): what recovery asks next is answered then.
            Err(Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!("reading {n} ahead failed (it is fetched when asked for): {e}")
            }
        }
    }
    Ok(report)
}

/// Makes the read-ahead folder, readable by its owner alone.
fn create_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(Error::io("create", dir, e)),
    }
}

/// Removes what recovery has passed: read-ahead segments named before `name` (also those of
/// older timelines) and temp files a killed call left.
fn forget_passed(prefetch: &Path, name: &WalFileName) {
    let Ok(entries) = std::fs::read_dir(prefetch) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let passed = match WalFileName::parse(&file) {
            Ok(other) => other.as_str() < name.as_str(),
            Err(_) => file.starts_with('.'),
        };
        if passed {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_recovery_has_passed_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "000000010000000000000003",
            "000000010000000000000005",
            "000000020000000000000004",
            ".000000020000000000000006.synapse-backup-99",
        ] {
            std::fs::write(dir.path().join(file), b"x").unwrap();
        }
        forget_passed(
            dir.path(),
            &WalFileName::parse("000000020000000000000003").unwrap(),
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["000000020000000000000004"]);
    }
}
