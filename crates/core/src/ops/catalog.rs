//! `list-backups` and `delete-backup`: what the store holds.

use std::io::Read;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use secrecy::SecretString;

use crate::archive::normalize_member_path;
use crate::error::{CorruptKind, Error, Result};
use crate::manifest::{Header, HEADER_MEMBER};
use crate::progress::Cancel;
use crate::store::Store;

use super::content_check::MAX_MANIFEST_BYTES;
use super::open_backup;

/// Each header read costs one passphrase derivation (a fraction of a second of CPU) and one GET.
const HEADER_READS_AT_ONCE: usize = 8;

#[derive(Debug, Clone)]
pub struct BackupListing {
    pub backup_id: String,
    pub last_modified: DateTime<Utc>,
    pub size: u64,
    pub details: Details,
}

/// What the first member of a backup says, when it could be read.
#[derive(Debug, Clone)]
pub enum Details {
    /// No passphrase was given, so the backup was not opened.
    NotRead,
    Manifest(Box<Header>),
    /// Opened, but holds no manifest: a backup made by the charm's pipeline.
    Charm,
    Unreadable(String),
}

/// Lists every backup, oldest first. With a passphrase, each backup's header is read (only the
/// first kilobytes are downloaded and decrypted).
pub async fn list_backups(
    store: &dyn Store,
    passphrase: Option<&SecretString>,
    cancel: &Cancel,
) -> Result<Vec<BackupListing>> {
    store.check_access().await?;
    let mut objects = store.list().await?;
    objects.sort_by(|a, b| {
        a.last_modified
            .cmp(&b.last_modified)
            .then_with(|| a.name.cmp(&b.name))
    });
    // One small GET each: several at a time, so hundreds of backups list in seconds.
    let listings = futures::stream::iter(objects)
        .map(|object| async move {
            if cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            let details = match passphrase {
                None => Details::NotRead,
                Some(passphrase) => {
                    match read_header(store, &object.name, passphrase, cancel).await {
                        Ok(Some(header)) => Details::Manifest(Box::new(header)),
                        Ok(None) => Details::Charm,
                        Err(e) => Details::Unreadable(e.to_string()),
                    }
                }
            };
            Ok(BackupListing {
                backup_id: object.name,
                last_modified: object.last_modified,
                size: object.size,
                details,
            })
        })
        .buffered(HEADER_READS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    listings.into_iter().collect()
}

/// Reads the manifest header of backup `id`, or `None` for a backup without one.
///
/// The header is read before the end of the stream, so its integrity is not yet proven; it is
/// used for display and early refusals only, never to decide that a backup is sound.
pub async fn read_header(
    store: &dyn Store,
    id: &str,
    passphrase: &SecretString,
    cancel: &Cancel,
) -> Result<Option<Header>> {
    let stream = store.get(id).await?;
    let handle = tokio::runtime::Handle::current();
    let passphrase = passphrase.clone();
    let id = id.to_string();
    let cancel = cancel.clone();
    tokio::task::spawn_blocking(move || -> Result<Option<Header>> {
        let reader = open_backup(stream, handle, &passphrase, &id, cancel)?;
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive.entries().map_err(|e| {
            Error::corrupt(
                &id,
                CorruptKind::Malformed,
                format!("not a tar archive: {e}"),
            )
        })?;
        let Some(first) = entries.next() else {
            return Err(Error::corrupt(
                &id,
                CorruptKind::Malformed,
                "the archive is empty",
            ));
        };
        let mut first = first.map_err(|e| {
            Error::corrupt(
                &id,
                CorruptKind::Malformed,
                format!("broken first member: {e}"),
            )
        })?;
        // Named as the full reader names it, so `./manifest.json` counts as the manifest too.
        let name = normalize_member_path(&String::from_utf8_lossy(&first.path_bytes()));
        let is_header = name == HEADER_MEMBER && first.header().entry_type().is_file();
        if !is_header {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        (&mut first)
            .take(MAX_MANIFEST_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Error::corrupt(
                    &id,
                    CorruptKind::Malformed,
                    format!("cannot read {HEADER_MEMBER}: {e}"),
                )
            })?;
        Header::from_json(&id, &bytes).map(Some)
    })
    .await
    .map_err(|e| Error::task_failed("header read", e))?
}

/// The id of the newest backup in the store (by its name, which is its creation time).
pub async fn newest_backup(store: &dyn Store) -> Result<String> {
    store.check_access().await?;
    store
        .list()
        .await?
        .into_iter()
        .map(|o| o.name)
        .filter(|name| name.starts_with("backup-"))
        .max()
        .ok_or_else(|| Error::NotFound {
            id: "latest".into(),
            store: store.describe(),
        })
}

/// Deletes backup `id`; an unknown id is an error.
pub async fn delete_backup(store: &dyn Store, id: &str) -> Result<()> {
    store.delete(id).await
}
