//! Which media volumes (and format 3's file-list runs, which sit among them under `volumes/`
//! and are treated exactly alike) may be deleted, and when. Volumes are shared between backups, so
//! deleting a backup deletes only what no other backup (kept, or being made right now on this
//! or another host) needs. Without a lock, in two steps:
//!
//! - create-backup announces itself with `.pending/<backup-id>` (its owner, and every volume its
//!   parent uses: a superset of those it will take files from) **before** it reads
//!   `.condemned/`, and uses no condemned volume. The marker goes once the base is written, or the backup failed.
//! - [`sweep`] (after delete-backup and prune-backups) condemns each volume that no base and no
//!   live marker names (`.condemned/<volume>`), and deletes a volume only when it has been
//!   condemned for longer than the grace period and still nothing names it.
//!
//! A volume deleted at time D was condemned at C ≤ D − grace, and no marker named it at D. A
//! create that uses it wrote its marker before it looked for condemned volumes and found none,
//! so before C; the marker lives until the create's base exists, and the base names the volume.
//! Either way the sweep at D sees a reference. (S3's read-after-write consistency is assumed, as
//! AWS and Garage give it.) Markers are plain JSON with no user data in them: volume names only.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use secrecy::SecretString;

use crate::error::{Error, ErrorKind, Refusal, Result, StorageCause};
use crate::manifest::index_name;
use crate::progress::Cancel;
use crate::store::owner::UploadOwner;
use crate::store::{ObjectInfo, ReadFailed, Store};

use crate::repository::trust::split_listing;
use crate::repository::wal::WAL_FOLDER;
use crate::repository::{BackupId, OpContext};

mod decide;
mod wal;

use decide::{
    decide_volumes, judge_pending, marks_without_volume, orphan_indexes, InUse, PendingMarker,
    PendingVerdict, PendingWal, VolumeAction,
};
pub use wal::{shared_base_condemned, WAL_CONDEMNED};

use crate::database::wal_names::WalFileName;

use super::open::read_stored_header;

const PENDING: &str = ".pending";
const CONDEMNED: &str = ".condemned";
const HEADER_READS_AT_ONCE: usize = 8;
/// A marker names volumes (~50 bytes each): 16 MiB is ~300,000 volumes, 75 TiB of media at the
/// default volume size. A bigger one is treated as unreadable, never as empty.
const MARKER_READ_CAP: usize = 16 << 20;

/// A create-backup's announcement that it is under way, rewritten as it learns what it uses.
pub struct Pending<'a> {
    store: &'a dyn Store,
    name: String,
    marker: PendingMarker,
}

impl<'a> Pending<'a> {
    /// Writes the marker of `backup_id`, before it chooses anything shared: from now on its own
    /// volumes and base are protected, and what it names later is too.
    pub async fn announce(store: &'a dyn Store, backup_id: &str) -> Result<Pending<'a>> {
        let pending = Pending {
            store,
            name: format!("{PENDING}/{backup_id}"),
            marker: PendingMarker {
                backup_id: backup_id.to_string(),
                owner: UploadOwner::current().token(),
                volumes: Vec::new(),
                wal: None,
            },
        };
        pending.write().await?;
        Ok(pending)
    }

    /// Names the `volumes` the create means to use; before it reads which are condemned.
    pub async fn name_volumes(&mut self, volumes: &[String]) -> Result<()> {
        self.marker.volumes = volumes.to_vec();
        self.write().await
    }

    /// Names the base the create means to use (an earlier one it shares, or its own) and the
    /// WAL from `start_wal` on, or none; a shared one before it reads whether they are
    /// condemned ([`shared_base_condemned`]).
    pub async fn name_base(&mut self, base: Option<(&str, &WalFileName)>) -> Result<()> {
        self.marker.wal = base.map(|(base, start)| PendingWal {
            base: base.to_string(),
            start_wal: start.to_string(),
        });
        self.write().await
    }

    async fn write(&self) -> Result<()> {
        let body = serde_json::to_vec(&self.marker)
            .map_err(|e| Error::Internal(format!("cannot encode the pending marker: {e}")))?;
        let stream = futures::stream::once(async move { Ok(bytes::Bytes::from(body)) }).boxed();
        self.store.put(&self.name, stream, None).await?;
        Ok(())
    }

    /// Removes the marker; a marker left behind stops protecting anything once its process is
    /// gone, so a failure here is only a warning.
    pub async fn withdraw(self) {
        if let Err(e) = self.store.delete(&self.name).await {
            tracing::warn!("could not remove {}: {e}", self.name);
        }
    }
}

/// The volumes a prune has condemned.
pub async fn condemned_volumes(store: &dyn Store) -> Result<HashSet<String>> {
    Ok(store
        .list_folder(CONDEMNED)
        .await?
        .into_iter()
        .filter_map(|o| condemned_volume(&o.name))
        .collect())
}

fn condemned_volume(marker: &str) -> Option<String> {
    Some(format!("volumes/{}", marker.strip_prefix(".condemned/")?))
}

fn condemned_marker(volume: &str) -> String {
    format!(
        "{CONDEMNED}/{}",
        volume.strip_prefix("volumes/").unwrap_or(volume)
    )
}

/// What a sweep did, or (dry run) would do, to the media volumes and in `wal/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub volumes: Swept,
    /// Archived WAL files and base backups.
    pub wal: Swept,
}

/// Objects (name, bytes) by what a sweep did to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// No backup needs them, condemned now: deleted by a sweep once the grace period passed.
    pub condemned: Vec<(String, u64)>,
    /// Deleted (condemned long enough and still unused).
    pub deleted: Vec<(String, u64)>,
    /// Condemned earlier, still within the grace period.
    pub waiting: Vec<(String, u64)>,
}

impl Swept {
    pub fn bytes(list: &[(String, u64)]) -> u64 {
        list.iter().map(|(_, size)| size).sum()
    }
}

/// Condemns the volumes, WAL files and bases nothing needs and deletes those condemned longer
/// than `grace`. With `dry_run`, changes nothing and reports what it would do, as if the
/// backups in `leaving` were already gone.
pub async fn sweep(
    ctx: &OpContext<'_>,
    grace: std::time::Duration,
    dry_run: bool,
    leaving: &HashSet<BackupId>,
) -> Result<SweepReport> {
    let store = ctx.store;
    let mut volumes = store.list_folder("volumes").await?;
    // Reported in name order, whatever order the store lists in.
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    let condemned: HashMap<String, ObjectInfo> = store
        .list_folder(CONDEMNED)
        .await?
        .into_iter()
        .filter_map(|o| Some((condemned_volume(&o.name)?, o)))
        .collect();
    let wal_in_store = !store.list_folder(WAL_FOLDER).await?.is_empty();
    if volumes.is_empty() && condemned.is_empty() && !wal_in_store {
        return Ok(SweepReport::default());
    }
    let Some(passphrase) = ctx.passphrase.as_ref() else {
        return Err(Error::config(
            "the store holds media volumes or archived WAL shared between backups; the passphrase is needed to read which of them the remaining backups use (set [backup] passphrase-file or SYNAPSE_BACKUP_PASSPHRASE)",
        ));
    };
    let in_use = volumes_in_use(store, passphrase, &ctx.cancel, dry_run, leaving).await?;
    let volumes = sweep_volumes(store, &volumes, &condemned, &in_use, grace, dry_run).await?;
    let wal = if wal_in_store {
        wal::sweep_wal(store, &in_use, grace, dry_run).await?
    } else {
        Swept::default()
    };
    Ok(SweepReport { volumes, wal })
}

async fn sweep_volumes(
    store: &dyn Store,
    volumes: &[ObjectInfo],
    condemned: &HashMap<String, ObjectInfo>,
    in_use: &InUse,
    grace: std::time::Duration,
    dry_run: bool,
) -> Result<Swept> {
    let mut report = Swept::default();
    let now = Utc::now();
    let condemned_since: HashMap<String, DateTime<Utc>> = condemned
        .iter()
        .map(|(volume, mark)| (volume.clone(), mark.last_modified))
        .collect();
    let actions = decide_volumes(volumes, &condemned_since, in_use, now, grace);
    for (volume, action) in volumes.iter().zip(actions) {
        let entry = (volume.name.clone(), volume.size);
        match action {
            VolumeAction::Keep => {}
            VolumeAction::Wait => report.waiting.push(entry),
            VolumeAction::Reprieve => {
                if !dry_run {
                    store.delete(&condemned_marker(&volume.name)).await?;
                }
            }
            VolumeAction::Condemn => {
                if !dry_run {
                    let body = bytes::Bytes::from(now.to_rfc3339());
                    let body = futures::stream::once(async move { Ok(body) }).boxed();
                    store
                        .put(&condemned_marker(&volume.name), body, None)
                        .await?;
                }
                report.condemned.push(entry);
            }
            VolumeAction::Delete => {
                if !dry_run {
                    store.delete(&volume.name).await?;
                    store.delete(&condemned_marker(&volume.name)).await?;
                }
                report.deleted.push(entry);
            }
        }
    }
    if !dry_run {
        for volume in marks_without_volume(condemned.keys(), volumes) {
            store.delete(&condemned_marker(&volume)).await?;
        }
        let indexes = store.list_folder("index").await?;
        for index in orphan_indexes(&indexes, in_use, now, grace) {
            store.delete(&index).await?;
        }
    }
    Ok(report)
}

async fn volumes_in_use(
    store: &dyn Store,
    passphrase: &SecretString,
    cancel: &Cancel,
    dry_run: bool,
    leaving: &HashSet<BackupId>,
) -> Result<InUse> {
    let mut in_use = InUse::default();
    // Markers before bases: a create removes its marker only once its base exists, so it is
    // seen one way or the other.
    let mut unreadable_markers = Vec::new();
    for marker in store.list_folder(PENDING).await? {
        let age = decide::age(Utc::now(), marker.last_modified);
        let (body, complete) = read_small_object(store, &marker.name).await?;
        match judge_pending(&body, complete, age, UploadOwner::is_abandoned) {
            PendingVerdict::Protects {
                backup_id,
                volumes,
                wal,
            } => {
                in_use.volumes.extend(volumes);
                if let Some(wal) = wal {
                    note_physical(&mut in_use, &marker.name, &wal.base, &wal.start_wal)?;
                }
                in_use.owners.insert(backup_id);
            }
            PendingVerdict::UnreadableYoung => unreadable_markers.push(marker.name),
            PendingVerdict::Abandoned if !dry_run => {
                tracing::warn!(
                    "removing {}: the create-backup that wrote it is gone",
                    marker.name
                );
                store.delete(&marker.name).await?;
            }
            PendingVerdict::Abandoned => {}
        }
    }
    if !unreadable_markers.is_empty() {
        return Err(Error::refused(Refusal::UnreadableBackups, format!(
            "{} pending marker(s) of a create-backup cannot be read and are less than a day old, so no media volume was condemned or deleted (the create might use any of them): {}; they are removed once a day old, or delete them yourself when no create-backup is running",
            unreadable_markers.len(),
            unreadable_markers.join(", ")
        )));
    }
    // Only objects named like backups are bases; strays name no volume. Any header that opens
    // counts, even one stored under another backup's name: its volumes are kept.
    let bases: Vec<String> = split_listing(store.list().await?)
        .backups
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| !leaving.contains(id))
        .map(|id| id.to_string())
        .collect();
    let headers = futures::stream::iter(bases)
        .map(|id| async move {
            let header = read_stored_header(store, &id, passphrase, cancel).await;
            (id, header)
        })
        .buffer_unordered(HEADER_READS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    let mut unreadable = Vec::new();
    for (id, header) in headers {
        match header {
            Ok(Some(header)) => {
                if let Some(media) = header.media {
                    // Runs sit among the volumes and are kept by the same rules.
                    in_use
                        .volumes
                        .extend(media.volumes.into_iter().map(|v| v.name));
                    in_use
                        .volumes
                        .extend(media.runs.into_iter().map(|r| r.name));
                }
                if let Some(physical) = &header.database.physical {
                    note_physical(&mut in_use, &id, &physical.base, &physical.start_wal)?;
                }
                in_use.owners.insert(id);
            }
            // A charm backup or a format-1 one: no volumes.
            Ok(None) => {}
            Err(e) if matches!(e.kind(), ErrorKind::Storage | ErrorKind::Interrupted) => {
                return Err(e)
            }
            Err(e) => unreadable.push(format!("{id} ({e})")),
        }
    }
    // It may name volumes (a newer format's, another passphrase's): deleting any volume could
    // cost it.
    if !unreadable.is_empty() {
        unreadable.sort();
        return Err(Error::refused(Refusal::UnreadableBackups, format!(
            "{} object(s) named like backups do not open with the passphrase as themselves, so no media volume was condemned or deleted (they might use any of them): {}; check each, and delete those that are not your backups with delete-backup",
            unreadable.len(),
            unreadable.join("; ")
        )));
    }
    Ok(in_use)
}

/// Counts a physical backup's (or a running create's) base and start; one whose start cannot
/// be read stops the sweep: the WAL it needs cannot be told from the WAL it does not.
fn note_physical(in_use: &mut InUse, whose: &str, base: &str, start_wal: &str) -> Result<()> {
    in_use.note_physical(base, start_wal).map_err(|e| {
        Error::refused(
            Refusal::UnreadableBackups,
            format!("{whose} names a WAL start that cannot be placed ({e}), so nothing was condemned or deleted; check it, and delete it with delete-backup if it is not your backup"),
        )
    })
}

/// The bytes of a bookkeeping object, up to [`MARKER_READ_CAP`], and whether that was all.
async fn read_small_object(store: &dyn Store, name: &str) -> Result<(Vec<u8>, bool)> {
    let mut stream = store.get(name).await?;
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match ReadFailed::find(&e) {
            Some(failed) => Error::Storage {
                store: failed.store.clone(),
                detail: format!("reading {name} failed: {}", failed.detail),
                cause: StorageCause::PartWay,
            },
            None => Error::Other(format!("reading {name}: {e}")),
        })?;
        body.extend_from_slice(&chunk);
        if body.len() > MARKER_READ_CAP {
            return Ok((body, false));
        }
    }
    Ok((body, true))
}
/// Refuses, before anything is deleted, to delete backups from a store with media volumes or
/// archived WAL without the passphrase that tells which of them the remaining backups use.
pub async fn require_passphrase_for_shared(ctx: &OpContext<'_>) -> Result<()> {
    if ctx.passphrase.is_some() {
        return Ok(());
    }
    for (folder, what) in [
        ("volumes", "media volumes of incremental backups"),
        (
            WAL_FOLDER,
            "archived WAL and base backups of physical backups",
        ),
    ] {
        if !ctx.store.list_folder(folder).await?.is_empty() {
            return Err(Error::config(format!(
                "this store holds {what}, and the passphrase is needed to read which of them the remaining backups use; set [backup] passphrase-file or SYNAPSE_BACKUP_PASSPHRASE"
            )));
        }
    }
    Ok(())
}

/// Deletes the base of backup `id` and its index; its volumes are the sweep's business.
pub async fn delete_base(store: &dyn Store, id: &BackupId) -> Result<()> {
    store.delete(id.as_str()).await?;
    match store.delete(&index_name(id.as_str())).await {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            tracing::warn!("could not delete the index of {id} (a later prune removes it): {e}")
        }
        _ => {}
    }
    Ok(())
}

/// Sweeps the volumes; a failure leaves them in place, which is safe, and is reported.
pub async fn sweep_after(
    ctx: &OpContext<'_>,
    grace: std::time::Duration,
    dry_run: bool,
    leaving: &HashSet<BackupId>,
) -> (SweepReport, Option<String>) {
    match sweep(ctx, grace, dry_run, leaving).await {
        Ok(report) => (report, None),
        Err(e) => {
            let warning = format!("media volumes and archived WAL were left in place: {e}");
            tracing::warn!("{warning}");
            (SweepReport::default(), Some(warning))
        }
    }
}
