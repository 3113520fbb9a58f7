//! What the store holds: every object named like a backup, whether it opens as itself, and
//! the newest one that does (`latest`). `list-backups` shows it; prune, check, verify and
//! restore decide by it.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use secrecy::SecretString;

use crate::error::{Error, ErrorKind, Result};
use crate::manifest::{run_owner, BackupKind, Header};
use crate::progress::Cancel;
use crate::repository::trust::{split_listing, Listing};
use crate::repository::BackupId;
use crate::store::{ObjectInfo, Store};

use crate::repository::open::read_header;

/// Each header read costs one passphrase derivation (a fraction of a second of CPU) and one GET.
const HEADER_READS_AT_ONCE: usize = 8;

#[derive(Debug, Clone)]
pub struct BackupListing {
    pub backup_id: BackupId,
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

    /// Bytes this backup added to the store: its base and the volumes and run it wrote, and
    /// the base backup it took (not the WAL, which the archiver stores as it comes).
    pub fn added_bytes(&self) -> Option<u64> {
        match &self.details {
            Details::Manifest(h) => Some(
                self.size
                    + h.media.as_ref().map_or(0, |m| {
                        let own_run = m
                            .runs
                            .iter()
                            .filter(|r| run_owner(&r.name) == Some(h.backup_id.as_str()));
                        m.own(&h.backup_id).map(|v| v.object_bytes).sum::<u64>()
                            + own_run.map(|r| r.object_bytes).sum::<u64>()
                    })
                    + h.database.physical.as_ref().map_or(0, |p| {
                        if p.base == super::wal::base_object(&h.backup_id) {
                            p.base_object_bytes
                        } else {
                            0
                        }
                    }),
            ),
            Details::Charm => Some(self.size),
            _ => None,
        }
    }

    /// Bytes a restore of this backup downloads: its base, its runs and every volume it takes
    /// files from, and a physical backup's base backup (the WAL it replays comes on top).
    pub fn restore_bytes(&self) -> Option<u64> {
        match &self.details {
            Details::Manifest(h) => Some(
                self.size
                    + h.media.as_ref().map_or(0, |m| {
                        m.volumes.iter().map(|v| v.object_bytes).sum::<u64>()
                            + m.runs.iter().map(|r| r.object_bytes).sum::<u64>()
                    })
                    + h.database
                        .physical
                        .as_ref()
                        .map_or(0, |p| p.base_object_bytes),
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
    /// Named like a backup, but it does not open with the passphrase, or its header names
    /// another backup: never counted as a backup (not kept, not a parent, not `latest`, not
    /// pruned). It may be an attacker's, damaged, of a newer format, or another passphrase's.
    Unreadable {
        kind: ErrorKind,
        why: String,
    },
}

impl BackupListing {
    /// Whether the object opened with the passphrase as the backup its name says.
    pub fn is_verified(&self) -> bool {
        matches!(self.details, Details::Manifest(_) | Details::Charm)
    }
}

/// What the store's top level holds.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Every object named like a backup, oldest first, verified or not.
    pub backups: Vec<BackupListing>,
    /// Objects not named like backups (`notes.txt`, `backup-foo`): ignored by every command.
    pub strays: Vec<String>,
}

impl Catalog {
    /// The backups that opened as themselves.
    pub fn verified(&self) -> impl Iterator<Item = &BackupListing> {
        self.backups.iter().filter(|b| b.is_verified())
    }

    /// Objects named like backups that did not open as themselves, with why.
    pub fn unverified(&self) -> Vec<(String, String)> {
        self.backups
            .iter()
            .filter_map(|b| match &b.details {
                Details::Unreadable { why, .. } => Some((b.backup_id.to_string(), why.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Lists every object named like a backup, oldest first, and the strays beside them. With a
/// passphrase, each backup's header is read (only the first kilobytes are downloaded and
/// decrypted) and checked to name the backup it is stored as.
pub async fn list_backups(
    store: &dyn Store,
    passphrase: Option<&SecretString>,
    cancel: &Cancel,
) -> Result<Catalog> {
    store.check_access().await?;
    let Listing { backups, strays } = split_listing(store.list().await?);
    let mut objects: Vec<(BackupId, ObjectInfo)> = backups;
    objects.sort_by(|(a_id, a), (b_id, b)| {
        a.last_modified
            .cmp(&b.last_modified)
            .then_with(|| a_id.cmp(b_id))
    });
    // One small GET each: several at a time, so hundreds of backups list in seconds.
    let listings = futures::stream::iter(objects)
        .map(|(backup_id, object)| async move {
            let details = match passphrase {
                None => Details::NotRead,
                Some(passphrase) => read_details(store, &object.name, passphrase, cancel).await?,
            };
            Ok(BackupListing {
                backup_id,
                last_modified: object.last_modified,
                size: object.size,
                details,
            })
        })
        .buffered(HEADER_READS_AT_ONCE)
        .collect::<Vec<Result<BackupListing>>>()
        .await;
    Ok(Catalog {
        backups: listings.into_iter().collect::<Result<_>>()?,
        strays: strays.into_iter().map(|o| o.name).collect(),
    })
}

/// Opens backup `id`'s header. A store that fails or a Ctrl-C is an error (the listing would
/// be incomplete); anything the object itself is to blame for makes it unreadable.
async fn read_details(
    store: &dyn Store,
    id: &str,
    passphrase: &SecretString,
    cancel: &Cancel,
) -> Result<Details> {
    if cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    match read_header(store, id, passphrase, cancel).await {
        Ok(Some(header)) => Ok(Details::Manifest(Box::new(header))),
        Ok(None) => Ok(Details::Charm),
        Err(e) if matches!(e.kind(), ErrorKind::Storage | ErrorKind::Interrupted) => Err(e),
        Err(e) => Ok(Details::Unreadable {
            kind: e.kind(),
            why: e.to_string(),
        }),
    }
}

/// The newest backup that opens with the passphrase as itself (its name is its creation
/// time). Newer objects that do not are passed over, each with a warning; when none opens, the
/// newest one's error says why (a wrong passphrase, most often).
pub async fn newest_backup(
    store: &dyn Store,
    passphrase: &SecretString,
    cancel: &Cancel,
) -> Result<BackupId> {
    store.check_access().await?;
    let Listing { backups, .. } = split_listing(store.list().await?);
    let mut newest_failure = None;
    for (id, _) in backups.iter().rev() {
        match read_header(store, id.as_str(), passphrase, cancel).await {
            Ok(_) => return Ok(id.clone()),
            Err(e) if matches!(e.kind(), ErrorKind::Storage | ErrorKind::Interrupted) => {
                return Err(e)
            }
            Err(e) => {
                tracing::warn!("{id} is not taken as the latest backup: {e}");
                newest_failure.get_or_insert(e);
            }
        }
    }
    Err(newest_failure.unwrap_or_else(|| Error::NotFound {
        id: "latest".into(),
        store: store.describe(),
    }))
}
