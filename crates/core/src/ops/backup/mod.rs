//! `create-backup`: snapshot the database, list the files, and stream them into one encrypted
//! object (`pipeline`), in named steps:
//!
//! 1. lock the data dir (shared: backups may run together, not with a restore), check the
//!    store, clean up after interrupted uploads, choose an unused id (`id`);
//! 2. snapshot the database (`snapshot`) before the media are listed, so every media row in
//!    the snapshot has its file in the backup (Synapse writes the file before the row);
//! 3. list the key, config and media (`sources`), and the media the database lists that only
//!    Synapse's storage providers hold (`offloaded`);
//! 4. decide which media the newest earlier backup already stores (`reuse`), announce the
//!    backup (`sweep::Pending`) and leave out volumes a prune has condemned;
//! 5. stream the other media into new volumes, then the index, then the base (key, config,
//!    database, and the file list naming every file's volume), each tar → OpenPGP → store; the
//!    base is written last, so its existence means the backup is complete (`volumes`,
//!    `pipeline`; docs/format.md).

mod id;
mod offloaded;
mod pipeline;
mod reuse;
mod snapshot;
mod sources;
mod volumes;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::manifest::{
    index_name, volume_name, volume_owner, BackupKind, DatabaseInfo, Header, MediaVolumes,
    MissingMedia, VolumeRef, FILES_MEMBER, FORMAT_VERSION, TOOL_NAME,
};
use crate::progress::Cancel;
use crate::store::{ByteStream, Store};
use crate::synapse::media::backed_up_media_dirs;
use crate::synapse::{check_working_dir, HomeserverConfig};

use super::pipe::{ChunkWriter, QUEUE_DEPTH};
use super::scratch;
use super::state_dir::StateDir;
use super::sweep::{condemned_volumes, Pending};
use super::OpContext;

pub use id::new_backup_id;
use pipeline::{run_pipeline, ArchiveContents, PipelineError};
use reuse::ParentChoice;
use sources::{MediaListing, Source};

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub include_remote_media: bool,
    /// Leave a PostgreSQL database out (backed up with other tools, such as pgBackRest).
    pub skip_database: bool,
    /// Store every media file anew, taking nothing from earlier backups.
    pub full: bool,
    /// Make the backup even when media the database lists are found nowhere (they are
    /// reported and recorded).
    pub allow_missing_media: bool,
}

#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub backup_id: String,
    pub server_name: String,
    pub kind: BackupKind,
    /// The backup whose stored media this one takes unchanged files from.
    pub parent: Option<String>,
    pub files: usize,
    pub file_bytes: u64,
    /// Media files taken from earlier volumes, and their bytes: neither read nor uploaded.
    pub reused_files: usize,
    pub reused_bytes: u64,
    /// Bytes written to the store: the base, the index and the new volumes.
    pub object_bytes: u64,
    /// Media files the backup holds that were read from (or live in) a storage provider.
    pub provider_files: usize,
    pub provider_bytes: u64,
    /// Media the database lists that the backup lacks (only with `--allow-missing-media`).
    pub missing: Option<MissingMedia>,
    pub database: DatabaseInfo,
    pub elapsed: Duration,
    pub vanished: Vec<String>,
    /// Volumes of the parent that are missing or damaged in the store, and how many of this
    /// backup's files each held: those files were read and stored anew.
    pub stored_again: Vec<StoredAgain>,
    /// Why the backup is full although an earlier one exists (its index could not be read).
    pub full_reason: Option<String>,
    /// Scratch folders of killed create-backups removed before this one started.
    pub leftovers: Vec<scratch::Leftover>,
}

/// A parent volume that could not be used, and the files stored anew because of it.
#[derive(Debug, Clone)]
pub struct StoredAgain {
    pub volume: String,
    pub why: String,
    pub files: usize,
}

pub async fn create_backup(
    config: &Config,
    ctx: &OpContext<'_>,
    options: &BackupOptions,
) -> Result<BackupSummary> {
    let started = Instant::now();
    let hs = HomeserverConfig::load(&config.synapse)?;
    check_working_dir(&hs)?;
    sources::check_paths(&hs)?;
    let state = StateDir::at(hs.media_store.parent().unwrap_or(Path::new("/")));
    let lock = state.lock_shared()?;
    ctx.store.check_access().await?;
    remove_interrupted_uploads(ctx.store).await;
    let backup_id = id::unused_backup_id(ctx.store, &state).await?;
    let leftovers = scratch::remove_leftovers(config);
    let temp = scratch::create(&scratch::scratch_parent(config))?;

    let mut sources = sources::key_and_config_sources(&hs)?;
    let snapshot = snapshot::take(&hs, options, temp.path(), ctx.progress.as_ref()).await?;
    let sqlite_snapshot = snapshot.file.as_ref().map(|s| s.path.clone());
    sources.extend(snapshot.file);
    let mut media = list_media(&hs, options).await?;
    let offloaded = offloaded::find_offloaded(
        config,
        &hs,
        sqlite_snapshot.as_deref(),
        &media.files,
        temp.path(),
        options.allow_missing_media,
    )
    .await?;
    let mut offloaded = offloaded;
    media.files.append(&mut offloaded.files);
    media.files.sort_by(|a, b| a.member.cmp(&b.member));

    let (parent, full_reason) = if options.full {
        (None, None)
    } else {
        match reuse::find_parent(ctx, &hs.server_name).await? {
            ParentChoice::Parent(parent) => (Some(parent), None),
            ParentChoice::None => (None, None),
            ParentChoice::Unusable(why) => {
                tracing::warn!("this backup is full, storing every media file anew: {why}");
                (None, Some(why))
            }
        }
    };
    // Announced before the condemned volumes are looked at (`ops::sweep`): every volume the
    // parent uses, a superset of those this backup will take files from.
    let parent_volumes: Vec<String> = parent
        .as_ref()
        .map(|p| p.volumes.keys().cloned().collect())
        .unwrap_or_default();
    let pending = Pending::announce(ctx.store, &backup_id, &parent_volumes).await?;
    let written = async {
        let condemned = condemned_volumes(ctx.store).await?;
        let plan = reuse::plan_media(media.files, parent.as_ref(), &condemned);
        // The parent's index is not needed any more: freed before the writing starts.
        let parent = parent.map(|p| p.backup_id);
        let contents = BackupContents {
            backup_id: &backup_id,
            hs: &hs,
            options,
            parent,
            sources,
            folders: media.folders,
            dump: snapshot.dump,
            snapshot_info: snapshot.info.clone(),
            plan,
            providers: offloaded,
            temp: temp.path(),
        };
        write_backup(config, ctx, contents).await
    }
    .await;
    pending.withdraw().await;
    drop(lock);
    drop(temp);
    let written = written?;
    Ok(BackupSummary {
        backup_id,
        server_name: hs.server_name,
        database: snapshot.info,
        elapsed: started.elapsed(),
        full_reason,
        leftovers,
        ..written
    })
}

/// Everything one backup stores, decided.
struct BackupContents<'a> {
    backup_id: &'a str,
    hs: &'a HomeserverConfig,
    options: &'a BackupOptions,
    parent: Option<String>,
    sources: Vec<Source>,
    folders: Vec<sources::Folder>,
    dump: Option<pipeline::Dump>,
    snapshot_info: DatabaseInfo,
    plan: reuse::MediaPlan,
    /// The storage providers, how to read them, and what none of them had.
    providers: offloaded::Offloaded,
    temp: &'a Path,
}

/// Writes the new volumes, the index and the base; on failure removes what it wrote, which no
/// other backup can name yet.
async fn write_backup(
    config: &Config,
    ctx: &OpContext<'_>,
    contents: BackupContents<'_>,
) -> Result<BackupSummary> {
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
) -> Result<BackupSummary> {
    let BackupContents {
        backup_id,
        hs,
        options,
        parent,
        sources,
        folders,
        dump,
        snapshot_info,
        plan,
        providers,
        temp,
    } = contents;
    let offloaded::Offloaded {
        access,
        providers,
        missing,
        ..
    } = providers;
    let reuse::MediaPlan {
        to_store,
        reused,
        reused_volumes,
        stored_again,
    } = plan;
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
    let new_bytes: u64 = to_store.iter().map(|s| s.size).sum();
    let base_bytes: u64 = sources.iter().map(|s| s.size).sum();
    let reused_files = reused.len();
    let reused_bytes: u64 = reused.iter().map(|e| e.size).sum();
    tracing::info!(
        "backing up {} as {backup_id} to {}: {} media files ({new_bytes} bytes) to store, {reused_files} ({reused_bytes} bytes) already stored{}",
        hs.server_name,
        ctx.store.describe(),
        to_store.len(),
        parent
            .as_deref()
            .map(|p| format!(" (compared with {p})"))
            .unwrap_or_default(),
    );
    ctx.progress
        .start("backing up", Some(new_bytes + base_bytes));
    let mut media_entries = reused;
    let mut volume_refs = reused_volumes;
    let mut vanished = Vec::new();
    let mut object_bytes = 0u64;
    let downloads = config.backup.provider_downloads;
    let mut queue = volumes::split_into_volumes(to_store, config.backup.volume_size)
        .into_iter()
        .enumerate();
    let mut next = offloaded::fetch_volume(queue.next(), &access, downloads).await?;
    while let Some(offloaded::FetchedVolume { index, files, gone }) = next.take() {
        vanished.extend(gone);
        let name = volume_name(backup_id, index);
        let fetched = offloaded::fetched_paths(&files);
        let bytes: u64 = files.iter().map(|s| s.size).sum();
        let progress = Arc::clone(&ctx.progress);
        let volume = name.clone();
        written.push(name.clone());
        // The next volume's provider media download while this one is written: at most two
        // volumes of them in the temp dir.
        let (stored, following) = futures::join!(
            stream_to_store(ctx, &name, bytes, move |out, cancel| {
                volumes::write_volume(&volume, files, out, progress.as_ref(), cancel)
            }),
            offloaded::fetch_volume(queue.next(), &access, downloads)
        );
        offloaded::remove_fetched(&fetched);
        let (contents, size) = stored?;
        next = following?;
        let file_bytes = contents.entries.iter().map(|e| e.size).sum();
        volume_refs.push(VolumeRef {
            name,
            file_bytes,
            used_bytes: file_bytes,
            object_bytes: size,
        });
        object_bytes += size;
        media_entries.extend(contents.entries);
        vanished.extend(contents.vanished);
    }
    media_entries.sort_by(|a, b| a.path.cmp(&b.path));

    let created = Utc::now();
    let index = index_name(backup_id);
    let index_entries = Arc::new(media_entries);
    {
        let entries = Arc::clone(&index_entries);
        let id = backup_id.to_string();
        written.push(index.clone());
        let ((), size) = stream_to_store(ctx, &index, 0, move |out, _| {
            volumes::write_index(&id, &entries, created.timestamp(), out)
        })
        .await?;
        object_bytes += size;
    }
    let media_entries = Arc::try_unwrap(index_entries).unwrap_or_else(|shared| (*shared).clone());

    // Incremental when it takes anything from an earlier backup's volumes.
    let kind = if volume_refs
        .iter()
        .any(|v| volume_owner(&v.name) != Some(backup_id))
    {
        BackupKind::Incremental
    } else {
        BackupKind::Full
    };
    let parent = parent.filter(|_| kind == BackupKind::Incremental);
    let database = snapshot_info.clone();
    let media_bytes: u64 = media_entries.iter().map(|e| e.size).sum();
    let (provider_files, provider_bytes) = media_entries
        .iter()
        .filter(|e| e.provider.is_some())
        .fold((0, 0), |(n, b), e| (n + 1, b + e.size));
    let header = Header {
        format_version: FORMAT_VERSION,
        tool: TOOL_NAME.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        backup_id: backup_id.to_string(),
        server_name: hs.server_name.clone(),
        created,
        database: snapshot_info,
        include_remote_media: options.include_remote_media,
        expected_bytes: base_bytes + media_bytes,
        files_member: FILES_MEMBER.into(),
        media: Some(MediaVolumes {
            kind,
            parent: parent.clone(),
            volumes: volume_refs.clone(),
            providers,
            missing: missing.clone(),
        }),
    };
    let volume_lists = volume_refs
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                volumes::volume_list(&v.name, &media_entries),
            )
        })
        .collect();
    let contents = ArchiveContents {
        header,
        folders,
        sources,
        dump,
        list_path: temp.join(FILES_MEMBER),
        volume_lists,
        media_entries,
    };
    let progress = Arc::clone(&ctx.progress);
    written.push(backup_id.to_string());
    let (archived, size) = stream_to_store(ctx, backup_id, base_bytes, move |out, cancel| {
        pipeline::write_archive(contents, out, progress.as_ref(), cancel)
    })
    .await?;
    object_bytes += size;
    ctx.progress.finish();
    vanished.extend(archived.vanished);
    Ok(BackupSummary {
        backup_id: backup_id.to_string(),
        server_name: hs.server_name.clone(),
        kind,
        parent,
        files: archived.totals.files,
        file_bytes: archived.totals.file_bytes,
        reused_files,
        reused_bytes,
        object_bytes,
        provider_files,
        provider_bytes,
        missing,
        database,
        elapsed: Duration::ZERO,
        vanished,
        stored_again,
        full_reason: None,
        leftovers: Vec::new(),
    })
}

async fn list_media(hs: &HomeserverConfig, options: &BackupOptions) -> Result<MediaListing> {
    let dirs = backed_up_media_dirs(options.include_remote_media);
    let media_store = hs.media_store.clone();
    tokio::task::spawn_blocking(move || sources::list_media(&media_store, &dirs))
        .await
        .map_err(|e| Error::task_failed("media listing", e))?
}

/// Runs `write` through the pipeline into an upload of `name`; what `write` returned and the
/// object's size.
async fn stream_to_store<T: Send + 'static>(
    ctx: &OpContext<'_>,
    name: &str,
    expected_bytes: u64,
    write: impl FnOnce(ChunkWriter, &Cancel) -> Result<T> + Send + 'static,
) -> Result<(T, u64)> {
    let (sender, mut receiver) = mpsc::channel::<std::io::Result<bytes::Bytes>>(QUEUE_DEPTH);
    let body: ByteStream = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed();
    let pipeline = {
        let passphrase = ctx.passphrase.clone();
        let cancel = ctx.cancel.clone();
        tokio::task::spawn_blocking(move || run_pipeline(write, passphrase, sender, cancel))
    };
    // Tar and OpenPGP add a little; the hint only sizes multipart parts.
    let size_hint = expected_bytes + expected_bytes / 50 + (1 << 20);
    let uploaded = ctx.store.put(name, body, Some(size_hint)).await;
    let archived = pipeline
        .await
        .map_err(|e| Error::task_failed("backup", e))?;
    if ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    // The root cause: a store failure stops the pipeline, and a pipeline failure makes the
    // upload fail; each side's error names the other one only as a symptom.
    match (archived, uploaded) {
        (Ok(archived), Ok(object_bytes)) => Ok((archived, object_bytes)),
        (Err(PipelineError::Failed(e)), _) => Err(e),
        (Err(PipelineError::UploadStopped), Err(e)) | (Ok(_), Err(e)) => Err(e),
        (Err(PipelineError::UploadStopped), Ok(_)) => Err(Error::Other(format!(
            "the upload of {name} ended before the whole object was written"
        ))),
    }
}

/// Cleans up after create-backups that were killed or lost the store half-way. Never fatal:
/// leftovers are invisible to list and restore, and the next run tries again.
async fn remove_interrupted_uploads(store: &dyn Store) {
    match store.remove_interrupted_uploads().await {
        Ok(names) => {
            for name in names {
                tracing::warn!(
                    "removed the unfinished upload of {name} that an interrupted create-backup left in {}",
                    store.describe()
                );
            }
        }
        Err(e) => tracing::warn!("could not look for unfinished uploads: {e}"),
    }
}
