//! `list-backups` and `delete-backup`: what the store holds.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use secrecy::SecretString;

use crate::error::{Error, Result};
use crate::manifest::{BackupKind, Header};
use crate::progress::Cancel;
use crate::store::Store;

use std::collections::HashSet;

use super::open::read_header;
use super::prune::{delete_base, require_passphrase_for_volumes, sweep_after, Deletion};
use super::sweep::SweepReport;

/// Each header read costs one passphrase derivation (a fraction of a second of CPU) and one GET.
const HEADER_READS_AT_ONCE: usize = 8;

#[derive(Debug, Clone)]
pub struct BackupListing {
    pub backup_id: String,
    pub last_modified: DateTime<Utc>,
    pub size: u64,
    pub details: Details,
}

impl BackupListing {
    /// Full or incremental; a format-1 backup is full. `None` when the header was not read or
    /// the backup is the charm's.
    pub fn kind(&self) -> Option<BackupKind> {
        match &self.details {
            Details::Manifest(h) => Some(h.media.as_ref().map_or(BackupKind::Full, |m| m.kind)),
            _ => None,
        }
    }

    /// Bytes this backup added to the store: its base and the volumes it wrote.
    pub fn added_bytes(&self) -> Option<u64> {
        match &self.details {
            Details::Manifest(h) => Some(
                self.size
                    + h.media.as_ref().map_or(0, |m| {
                        m.own(&h.backup_id).map(|v| v.object_bytes).sum::<u64>()
                    }),
            ),
            Details::Charm => Some(self.size),
            _ => None,
        }
    }

    /// Bytes a restore of this backup downloads: its base and every volume it takes files from.
    pub fn restore_bytes(&self) -> Option<u64> {
        match &self.details {
            Details::Manifest(h) => Some(
                self.size
                    + h.media
                        .as_ref()
                        .map_or(0, |m| m.volumes.iter().map(|v| v.object_bytes).sum::<u64>()),
            ),
            Details::Charm => Some(self.size),
            _ => None,
        }
    }
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

/// What deleting one backup did to the media volumes.
#[derive(Debug, Clone)]
pub struct DeleteOutcome {
    pub volumes: SweepReport,
    pub volume_warning: Option<String>,
}

/// Deletes backup `id` (an unknown id is an error), then condemns or deletes the media volumes
/// no remaining backup needs.
pub async fn delete_backup(
    store: &dyn Store,
    id: &str,
    deletion: &Deletion<'_>,
) -> Result<DeleteOutcome> {
    store.head(id).await?;
    require_passphrase_for_volumes(store, deletion).await?;
    delete_base(store, id).await?;
    let (volumes, volume_warning) = sweep_after(store, deletion, false, &HashSet::new()).await;
    Ok(DeleteOutcome {
        volumes,
        volume_warning,
    })
}
