//! What a physical backup needs from the store beside its own object: its base
//! (`wal/base-<id>`) and every WAL segment from the base's start to the backup's restore point.
//! Checked by presence before a restore touches anything, and read in full by verify.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::archive::read_members;
use crate::database::physical::PhysicalInfo;
use crate::database::wal_names::WalFileName;
use crate::error::{CorruptKind, Error, Result};

use super::object_reader::read_shared_object;
use super::open::read_header;
use super::trust::split_listing;
use super::wal::{base_part, read_wal_file, wal_object, WAL_FOLDER};
use super::BackupId;
use super::OpContext;

/// How many WAL objects verify reads at once.
const SEGMENTS_AT_ONCE: usize = 4;

/// What the check found: the segments the backup needs, and the base's plaintext size when it
/// was read.
#[derive(Debug, Clone, Default)]
pub struct PhysicalCheck {
    pub segments: usize,
    pub base_bytes: u64,
}

/// The segments `physical` needs, after checking that the base and every one of them is in
/// the store (the base at its recorded size). The first gap is named: exit 5.
pub async fn check_present(
    ctx: &OpContext<'_>,
    id: &str,
    physical: &PhysicalInfo,
) -> Result<Vec<WalFileName>> {
    let needed = physical.needed_segments().map_err(|why| {
        Error::corrupt(
            id,
            CorruptKind::Malformed,
            format!("database.physical: {why}"),
        )
    })?;
    let stored: HashMap<String, u64> = ctx
        .store
        .list_folder(WAL_FOLDER)
        .await?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    match stored.get(&physical.base) {
        Some(&size) if size == physical.base_object_bytes => {}
        found => {
            return Err(Error::corrupt(
                id,
                CorruptKind::ManifestMismatch,
                format!(
                "its base backup {} is {} in {}: the database cannot be restored from this backup",
                physical.base,
                match found {
                    Some(size) => format!(
                        "{size} bytes, not the {} recorded,",
                        physical.base_object_bytes
                    ),
                    None => "missing".to_string(),
                },
                ctx.store.describe()
            ),
            ))
        }
    }
    if let Some(gap) = needed.iter().find(|s| !stored.contains_key(&wal_object(s))) {
        return Err(Error::corrupt(
            id,
            CorruptKind::ManifestMismatch,
            format!(
                "WAL segment {gap} is missing from {} (the backup needs {} .. {}): the database cannot recover to its restore point {}; was wal/ pruned or archiving off for a while?",
                ctx.store.describe(),
                physical.start_wal,
                physical.end_wal,
                physical.restore_point
            ),
        ));
    }
    Ok(needed)
}

/// [`check_present`], then the base and every needed segment read to the end (their OpenPGP
/// integrity checks), the segments a few at a time.
pub async fn verify_physical(
    ctx: &OpContext<'_>,
    id: &str,
    physical: &PhysicalInfo,
) -> Result<PhysicalCheck> {
    let needed = check_present(ctx, id, physical).await?;
    let base_id = id.to_string();
    let base_bytes = read_shared_object(ctx, &physical.base, move |reader| {
        let mut bytes = 0u64;
        let mut parts = 0usize;
        read_members(reader, &base_id, |mut member| {
            if !base_part(&base_id, &member.path, member.kind)? {
                return Ok(());
            }
            parts += 1;
            bytes += std::io::copy(&mut member.data, &mut std::io::sink()).map_err(|e| {
                Error::corrupt(&base_id, CorruptKind::Truncated, format!("its base: {e}"))
            })?;
            Ok(())
        })?;
        if parts == 0 {
            return Err(Error::corrupt(
                &base_id,
                CorruptKind::Malformed,
                "its base holds no part",
            ));
        }
        Ok(bytes)
    })
    .await?;
    let outcomes = futures::stream::iter(needed.iter())
        .map(|segment| async move {
            read_wal_file(ctx, segment, None).await.map_err(|e| match e {
                // The base opened with this passphrase: a segment that does not is damaged.
                Error::WrongPassphrase { .. } => Error::corrupt(
                    id,
                    CorruptKind::Integrity,
                    format!("WAL segment {segment} does not open with the passphrase that opened its base: it is damaged"),
                ),
                other => other,
            })
        })
        .buffer_unordered(SEGMENTS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    for outcome in outcomes {
        outcome?;
    }
    Ok(PhysicalCheck {
        segments: needed.len(),
        base_bytes,
    })
}

/// For `restore-backup --to-time`: the newest physical backup (of `server_name`, when given)
/// whose restore point is at or before `at`: its base starts the recovery, its media are
/// restored. Headers that do not open are skipped with a warning, as everywhere.
pub async fn backup_for_time(
    ctx: &OpContext<'_>,
    server_name: Option<&str>,
    at: DateTime<Utc>,
) -> Result<BackupId> {
    if at > Utc::now() {
        return Err(Error::config(format!(
            "--to-time {} is in the future",
            at.to_rfc3339()
        )));
    }
    let listing = split_listing(ctx.store.list().await?);
    let mut oldest: Option<DateTime<Utc>> = None;
    for (id, _) in listing.backups.iter().rev() {
        let header = match read_header(ctx.store, id.as_str(), ctx.passphrase()?, &ctx.cancel).await
        {
            Ok(Some(header)) => header,
            Ok(None) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    crate::error::ErrorKind::Interrupted | crate::error::ErrorKind::Storage
                ) =>
            {
                return Err(e)
            }
            Err(e) => {
                tracing::warn!("{id} is not considered for --to-time: {e}");
                continue;
            }
        };
        if server_name.is_some_and(|name| name != header.server_name) {
            continue;
        }
        let Some(physical) = header.database.physical else {
            continue;
        };
        if physical.at <= at {
            return Ok(id.clone());
        }
        oldest = Some(physical.at);
    }
    Err(Error::NotFound {
        id: format!(
            "restoring to {} or earlier (--to-time needs a physical backup whose restore point is before it{})",
            at.to_rfc3339(),
            oldest
                .map(|o| format!("; the oldest restores to {}", o.to_rfc3339()))
                .unwrap_or_default()
        ),
        store: ctx.store.describe(),
    })
}

/// The moments `restore-backup --to-time` can reach: from the oldest physical backup's restore
/// point to when the newest WAL segment was stored (the archive's last object; its content is
/// a little older). `None` without a physical backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestorableSpan {
    pub from: DateTime<Utc>,
    pub wal_stored_until: Option<DateTime<Utc>>,
}

pub async fn restorable_span(
    store: &dyn crate::store::Store,
    physical: impl Iterator<Item = &PhysicalInfo>,
) -> Result<Option<RestorableSpan>> {
    let Some(from) = physical.map(|p| p.at).min() else {
        return Ok(None);
    };
    let wal_stored_until = store
        .list_folder(WAL_FOLDER)
        .await?
        .into_iter()
        .filter(|o| {
            o.name
                .strip_prefix("wal/")
                .and_then(|n| WalFileName::parse(n).ok())
                .is_some_and(|n| n.kind() == crate::database::wal_names::WalFileKind::Segment)
        })
        .map(|o| o.last_modified)
        .max();
    Ok(Some(RestorableSpan {
        from,
        wal_stored_until,
    }))
}
