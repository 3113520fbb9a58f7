//! Step 5 of a create: the new volumes, then the index, then the base, each tar → OpenPGP →
//! store. The base goes last, so its existence means the backup is complete; on a failure,
//! what was written is removed again (no other backup can name it yet).

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::crypto::Packing;
use crate::error::Result;
use crate::manifest::{
    index_name, volume_name, volume_owner, BackupKind, DatabaseInfo, FileEntry, Header,
    MediaVolumes, MissingMedia, VolumeRef, FILES_MEMBER, FORMAT_VERSION, TOOL_NAME,
};
use crate::synapse::HomeserverConfig;

use crate::provider::ProviderAccess;

use super::offloaded;
use super::pipeline::{self, ArchiveContents};
use super::reuse::MediaPlan;
use super::sources::{self, Source};
use super::{stream_to_store, volumes, BackupOptions, OpContext, StoredAgain};

/// Everything one backup stores, decided.
pub(super) struct BackupContents<'a> {
    pub backup_id: &'a str,
    pub hs: &'a HomeserverConfig,
    pub options: &'a BackupOptions,
    pub parent: Option<String>,
    pub sources: Vec<Source>,
    pub folders: Vec<sources::Folder>,
    pub dump: Option<pipeline::Dump>,
    pub snapshot_info: DatabaseInfo,
    pub plan: MediaPlan,
    /// The storage providers, how to read them, and what none of them had.
    pub providers: offloaded::Offloaded,
    pub temp: &'a Path,
}

/// What a backup stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub kind: BackupKind,
    /// Only when the backup takes files from it.
    pub parent: Option<String>,
    pub files: usize,
    pub file_bytes: u64,
    pub reused_files: usize,
    pub reused_bytes: u64,
    pub object_bytes: u64,
    pub provider_files: usize,
    pub provider_bytes: u64,
    /// Media the database lists that the backup lacks (only with `--allow-missing-media`).
    pub missing: Option<MissingMedia>,
    /// Files that vanished between listing and reading (Synapse deleted them meanwhile).
    pub vanished: Vec<String>,
    /// Volumes of the parent that are missing or damaged in the store, and how many of this
    /// backup's files each held: those files were read and stored anew.
    pub stored_again: Vec<StoredAgain>,
}

/// Writes the new volumes, the index and the base; on failure removes what it wrote.
pub(super) async fn write_backup(
    config: &Config,
    ctx: &OpContext<'_>,
    contents: BackupContents<'_>,
) -> Result<Stored> {
    let mut written: Vec<String> = Vec::new();
    let outcome = write_objects(config, ctx, contents, &mut written).await;
    if outcome.is_err() {
        for name in written {
            if let Err(e) = ctx.store.delete(&name).await {
                tracing::warn!("could not remove {name} after the failed backup: {e}");
            }
        }
    }
    outcome
}

async fn write_objects(
    config: &Config,
    ctx: &OpContext<'_>,
    contents: BackupContents<'_>,
    written: &mut Vec<String>,
) -> Result<Stored> {
    let base_bytes: u64 = contents.sources.iter().map(|s| s.size).sum();
    let reused_files = contents.plan.reused.len();
    let reused_bytes: u64 = contents.plan.reused.iter().map(|e| e.size).sum();
    log_intent(ctx, &contents, reused_files, reused_bytes);
    let BackupContents {
        backup_id,
        plan,
        providers,
        ..
    } = contents;
    let stored_again = warn_stored_again(plan.stored_again);
    let new_bytes: u64 = plan.to_store.iter().map(|s| s.size).sum();
    ctx.progress
        .start("backing up", Some(new_bytes + base_bytes));

    let new = write_new_volumes(
        config,
        ctx,
        backup_id,
        plan.to_store,
        &providers.access,
        written,
    )
    .await?;
    let mut media_entries = plan.reused;
    media_entries.extend(new.entries);
    media_entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut volume_refs = plan.reused_volumes;
    volume_refs.extend(new.refs);

    let created = Utc::now();
    let (media_entries, index_bytes) =
        write_index(ctx, backup_id, media_entries, created, written).await?;
    let kind = kind_of(backup_id, &volume_refs);
    let parent = contents.parent.filter(|_| kind == BackupKind::Incremental);
    let (provider_files, provider_bytes) = provider_totals(&media_entries);
    let header = Header {
        format_version: FORMAT_VERSION,
        tool: TOOL_NAME.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        backup_id: backup_id.to_string(),
        server_name: contents.hs.server_name.clone(),
        created,
        database: contents.snapshot_info,
        include_remote_media: contents.options.include_remote_media,
        expected_bytes: base_bytes + media_entries.iter().map(|e| e.size).sum::<u64>(),
        files_member: FILES_MEMBER.into(),
        media: Some(MediaVolumes {
            kind,
            parent: parent.clone(),
            volumes: volume_refs,
            providers: providers.providers,
            missing: providers.missing.clone(),
        }),
    };
    let base = ArchiveContents {
        volume_lists: volume_lists(&header, &media_entries),
        header,
        folders: contents.folders,
        sources: contents.sources,
        dump: contents.dump,
        list_path: contents.temp.join(FILES_MEMBER),
        media_entries,
    };
    // A custom-format pg_dump is compressed already; everything else in a base shrinks.
    let packing = if base.dump.is_some() {
        Packing::Plain
    } else {
        Packing::Zlib
    };
    let progress = Arc::clone(&ctx.progress);
    written.push(backup_id.to_string());
    let (archived, stored_base_bytes) =
        stream_to_store(ctx, backup_id, base_bytes, packing, move |out, cancel| {
            pipeline::write_archive(base, out, progress.as_ref(), cancel)
        })
        .await?;
    ctx.progress.finish();
    let mut vanished = new.vanished;
    vanished.extend(archived.vanished);
    Ok(Stored {
        kind,
        parent,
        files: archived.totals.files,
        file_bytes: archived.totals.file_bytes,
        reused_files,
        reused_bytes,
        object_bytes: new.object_bytes + index_bytes + stored_base_bytes,
        provider_files,
        provider_bytes,
        missing: providers.missing,
        vanished,
        stored_again,
    })
}

/// The parent's unusable volumes, each said loudly: their files are stored anew.
fn warn_stored_again(
    stored_again: Vec<(String, crate::repository::trust::VolumeFault, usize)>,
) -> Vec<StoredAgain> {
    let stored_again: Vec<StoredAgain> = stored_again
        .into_iter()
        .map(|(volume, fault, files)| StoredAgain {
            volume,
            why: fault.to_string(),
            files,
        })
        .collect();
    for lost in &stored_again {
        tracing::warn!(
            "media volume {} of the parent backup is {}: its {} file(s) are read and stored anew, and nothing refers to it again (verify-backup of the backups that use it will fail: check the store)",
            lost.volume,
            lost.why,
            lost.files
        );
    }
    stored_again
}

fn log_intent(
    ctx: &OpContext<'_>,
    contents: &BackupContents<'_>,
    reused_files: usize,
    reused_bytes: u64,
) {
    let to_store = &contents.plan.to_store;
    let new_bytes: u64 = to_store.iter().map(|s| s.size).sum();
    tracing::info!(
        "backing up {} as {} to {}: {} media files ({new_bytes} bytes) to store, {reused_files} ({reused_bytes} bytes) already stored{}",
        contents.hs.server_name,
        contents.backup_id,
        ctx.store.describe(),
        to_store.len(),
        contents
            .parent
            .as_deref()
            .map(|p| format!(" (compared with {p})"))
            .unwrap_or_default(),
    );
}

/// What the new volumes hold.
struct NewVolumes {
    entries: Vec<FileEntry>,
    refs: Vec<VolumeRef>,
    vanished: Vec<String>,
    object_bytes: u64,
}

/// Streams the media to store into new volumes, one at a time, while the next volume's
/// provider media download.
async fn write_new_volumes(
    config: &Config,
    ctx: &OpContext<'_>,
    backup_id: &str,
    to_store: Vec<Source>,
    access: &[Option<ProviderAccess>],
    written: &mut Vec<String>,
) -> Result<NewVolumes> {
    let mut new = NewVolumes {
        entries: Vec::new(),
        refs: Vec::new(),
        vanished: Vec::new(),
        object_bytes: 0,
    };
    let downloads = config.backup.provider_downloads;
    let mut queue = volumes::split_into_volumes(to_store, config.backup.volume_size)
        .into_iter()
        .enumerate();
    let mut next = offloaded::fetch_volume(queue.next(), access, downloads).await?;
    while let Some(offloaded::FetchedVolume { index, files, gone }) = next.take() {
        new.vanished.extend(gone);
        let name = volume_name(backup_id, index);
        let fetched = offloaded::fetched_paths(&files);
        let bytes: u64 = files.iter().map(|s| s.size).sum();
        let packing = volumes::packing_for(&files);
        let progress = Arc::clone(&ctx.progress);
        let volume = name.clone();
        written.push(name.clone());
        // The next volume's provider media download while this one is written: at most two
        // volumes of them in the temp dir.
        let (stored, following) = futures::join!(
            stream_to_store(ctx, &name, bytes, packing, move |out, cancel| {
                volumes::write_volume(&volume, files, out, progress.as_ref(), cancel)
            }),
            offloaded::fetch_volume(queue.next(), access, downloads)
        );
        offloaded::remove_fetched(&fetched);
        let (contents, size) = stored?;
        next = following?;
        let file_bytes = contents.entries.iter().map(|e| e.size).sum();
        new.refs.push(VolumeRef {
            name,
            file_bytes,
            used_bytes: file_bytes,
            object_bytes: size,
        });
        new.object_bytes += size;
        new.entries.extend(contents.entries);
        new.vanished.extend(contents.vanished);
    }
    Ok(new)
}

/// Writes the index (the media entries alone, for the next backup); the entries back, and the
/// object's size.
async fn write_index(
    ctx: &OpContext<'_>,
    backup_id: &str,
    media_entries: Vec<FileEntry>,
    created: DateTime<Utc>,
    written: &mut Vec<String>,
) -> Result<(Vec<FileEntry>, u64)> {
    let index = index_name(backup_id);
    let entries = Arc::new(media_entries);
    let shared = Arc::clone(&entries);
    let id = backup_id.to_string();
    written.push(index.clone());
    let ((), size) = stream_to_store(ctx, &index, 0, Packing::Zlib, move |out, _| {
        volumes::write_index(&id, &shared, created.timestamp(), out)
    })
    .await?;
    let entries = Arc::try_unwrap(entries).unwrap_or_else(|shared| (*shared).clone());
    Ok((entries, size))
}

/// Each volume's own list of what it holds, kept in the base.
fn volume_lists(header: &Header, media_entries: &[FileEntry]) -> Vec<(String, Vec<u8>)> {
    header
        .media
        .iter()
        .flat_map(|m| &m.volumes)
        .map(|v| (v.name.clone(), volumes::volume_list(&v.name, media_entries)))
        .collect()
}

/// How many of the media files live in a storage provider, and their bytes.
fn provider_totals(media_entries: &[FileEntry]) -> (usize, u64) {
    media_entries
        .iter()
        .filter(|e| e.provider.is_some())
        .fold((0, 0), |(n, b), e| (n + 1, b + e.size))
}

/// Incremental when it takes anything from an earlier backup's volumes.
fn kind_of(backup_id: &str, volumes: &[VolumeRef]) -> BackupKind {
    if volumes
        .iter()
        .any(|v| volume_owner(&v.name) != Some(backup_id))
    {
        BackupKind::Incremental
    } else {
        BackupKind::Full
    }
}
