//! The refusals a restore makes before Synapse is stopped or a byte is downloaded.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::database::postgres::Postgres;
use crate::error::{Error, Refusal, Result};
use crate::manifest::Header;

use super::files::existing_ancestor;
use super::plan::Destination;

/// Free space kept in reserve beyond the backup's size.
const SPACE_MARGIN: u64 = 64 * 1024 * 1024;

/// Refuses a backup of another server; notes what the backup lacks. The header is read from
/// the start of the stream and not yet proven intact: the same check runs again on the stream
/// being restored.
pub(crate) fn check_backup_fits(
    destination: &Destination,
    header: Option<&Header>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let Destination::Live(hs) = destination else {
        return Ok(());
    };
    match header {
        Some(header) => {
            if header.server_name != hs.server_name {
                return Err(Error::refused(Refusal::ServerNameMismatch, format!(
                    "backup {} is of server {:?} but {} says server_name {:?}; Synapse cannot change its server_name, so restore it onto a config with server_name {:?}",
                    header.backup_id,
                    header.server_name,
                    hs.describe_files(),
                    hs.server_name,
                    header.server_name
                )));
            }
            if !header.database.included {
                notes.push(format!(
                    "this backup does not contain the {:?} database: restore the database with its own tools first (it must match the backup's time)",
                    header.database.kind
                ));
            }
        }
        None => notes.push(
            "this backup has no manifest (made by the charm's pipeline); its files were checked by the OpenPGP integrity check only".into(),
        ),
    }
    Ok(())
}

/// Refuses a PostgreSQL target Synapse would refuse or a restore would mix into (asks the
/// server, off the async runtime).
pub(crate) async fn check_database_target(postgres: &Postgres, replace: bool) -> Result<()> {
    let postgres = postgres.clone();
    tokio::task::spawn_blocking(move || postgres.check_restore_target(replace))
        .await
        .map_err(|e| Error::task_failed("database check", e))?
}

/// Whether `path` lies on the filesystem of one of `others` (both looked up at their nearest
/// existing folder).
pub(crate) fn same_filesystem<'a>(path: &Path, others: impl IntoIterator<Item = &'a Path>) -> bool {
    let device = |p: &Path| fs::metadata(existing_ancestor(p)).ok().map(|m| m.dev());
    let Some(mine) = device(path) else {
        return false;
    };
    others.into_iter().any(|other| device(other) == Some(mine))
}

/// Refuses when a target's filesystem has less room than `needed` bytes plus a margin.
pub(crate) fn check_free_space<'a>(
    live_paths: impl IntoIterator<Item = &'a Path>,
    needed: u64,
) -> Result<()> {
    let mut checked = BTreeSet::new();
    for live in live_paths {
        let parent = existing_ancestor(live);
        let Ok(meta) = fs::metadata(&parent) else {
            continue;
        };
        if !checked.insert(meta.dev()) {
            continue;
        }
        let available = crate::host::free_bytes(&parent)?;
        if available < needed + SPACE_MARGIN {
            return Err(Error::refused(Refusal::NotEnoughSpace, format!(
                "not enough free space on the filesystem of {}: the restore stages {} MiB next to the live data and {} MiB are free; free some space (or pass --skip-space-check if the data is split across filesystems)",
                parent.display(),
                (needed + SPACE_MARGIN) >> 20,
                available >> 20
            )));
        }
    }
    Ok(())
}
