//! `create-backup`: snapshot the database, list the files, and stream them into one encrypted
//! object (`pipeline`), in named steps:
//!
//! 1. lock the data dir (shared: backups may run together, not with a restore), check the
//!    store, clean up after interrupted uploads, choose an unused id (`id`);
//! 2. snapshot the database (`snapshot`) before the media are listed, so every media row in
//!    the snapshot has its file in the backup (Synapse writes the file before the row);
//! 3. list the key, config and media (`sources`);
//! 4. stream tar → OpenPGP → store; report the root cause when something failed.

mod id;
mod pipeline;
mod snapshot;
mod sources;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::manifest::{DatabaseInfo, Header, FILES_MEMBER, FORMAT_VERSION, TOOL_NAME};
use crate::store::{ByteStream, Store};
use crate::synapse::media::backed_up_media_dirs;
use crate::synapse::{check_working_dir, HomeserverConfig};

use super::pipe::QUEUE_DEPTH;
use super::state_dir::StateDir;
use super::OpContext;

pub use id::new_backup_id;
use pipeline::{run_pipeline, ArchiveContents, Archived, PipelineError};
use sources::{MediaListing, Source};

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub include_remote_media: bool,
    /// Leave a PostgreSQL database out (backed up with other tools, such as pgBackRest).
    pub skip_database: bool,
}

#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub backup_id: String,
    pub server_name: String,
    pub files: usize,
    pub file_bytes: u64,
    pub object_bytes: u64,
    pub database: DatabaseInfo,
    pub elapsed: Duration,
    pub vanished: Vec<String>,
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
    let temp = temp_dir(config)?;

    let mut sources = sources::key_and_config_sources(&hs)?;
    let snapshot = snapshot::take(&hs, options, temp.path(), ctx.progress.as_ref()).await?;
    sources.extend(snapshot.file);
    let media = list_media(&hs, options).await?;
    sources.extend(media.files);

    let header = new_header(&hs, &backup_id, snapshot.info.clone(), options, &sources);
    tracing::info!(
        "backing up {} files ({} bytes) of {} as {backup_id} to {}",
        sources.len(),
        header.expected_bytes,
        hs.server_name,
        ctx.store.describe()
    );
    let contents = ArchiveContents {
        header,
        folders: media.folders,
        sources,
        dump: snapshot.dump,
        list_path: temp.path().join(FILES_MEMBER),
    };
    let streamed = stream_to_store(ctx, &backup_id, contents).await;
    drop(lock);
    drop(temp);
    let (archived, object_bytes) = streamed?;
    Ok(BackupSummary {
        backup_id,
        server_name: hs.server_name,
        files: archived.totals.files,
        file_bytes: archived.totals.file_bytes,
        object_bytes,
        database: snapshot.info,
        elapsed: started.elapsed(),
        vanished: archived.vanished,
    })
}

fn temp_dir(config: &Config) -> Result<tempfile::TempDir> {
    let parent = config
        .backup
        .temp_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("synapse-backup-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io("create temp dir in", &parent, e))
}

async fn list_media(hs: &HomeserverConfig, options: &BackupOptions) -> Result<MediaListing> {
    let dirs = backed_up_media_dirs(options.include_remote_media);
    let media_store = hs.media_store.clone();
    tokio::task::spawn_blocking(move || sources::list_media(&media_store, &dirs))
        .await
        .map_err(|e| Error::task_failed("media listing", e))?
}

fn new_header(
    hs: &HomeserverConfig,
    backup_id: &str,
    database: DatabaseInfo,
    options: &BackupOptions,
    sources: &[Source],
) -> Header {
    Header {
        format_version: FORMAT_VERSION,
        tool: TOOL_NAME.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        backup_id: backup_id.to_string(),
        server_name: hs.server_name.clone(),
        created: Utc::now(),
        database,
        include_remote_media: options.include_remote_media,
        expected_bytes: sources.iter().map(|s| s.size).sum(),
        files_member: FILES_MEMBER.into(),
    }
}

/// Runs the pipeline into an upload of `backup_id`; the archive's totals and the object's size.
async fn stream_to_store(
    ctx: &OpContext<'_>,
    backup_id: &str,
    contents: ArchiveContents,
) -> Result<(Archived, u64)> {
    let expected_bytes = contents.header.expected_bytes;
    ctx.progress.start("backing up", Some(expected_bytes));
    let (sender, mut receiver) = mpsc::channel::<std::io::Result<bytes::Bytes>>(QUEUE_DEPTH);
    let body: ByteStream = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed();
    let pipeline = {
        let passphrase = ctx.passphrase.clone();
        let progress = Arc::clone(&ctx.progress);
        let cancel = ctx.cancel.clone();
        tokio::task::spawn_blocking(move || {
            run_pipeline(contents, passphrase, sender, progress, cancel)
        })
    };
    // Tar and OpenPGP add a little; the hint only sizes multipart parts.
    let size_hint = expected_bytes + expected_bytes / 50 + (1 << 20);
    let uploaded = ctx.store.put(backup_id, body, Some(size_hint)).await;
    let archived = pipeline
        .await
        .map_err(|e| Error::task_failed("backup", e))?;
    ctx.progress.finish();
    if ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    // The root cause: a store failure stops the pipeline, and a pipeline failure makes the
    // upload fail; each side's error names the other one only as a symptom.
    match (archived, uploaded) {
        (Ok(archived), Ok(object_bytes)) => Ok((archived, object_bytes)),
        (Err(PipelineError::Failed(e)), _) => Err(e),
        (Err(PipelineError::UploadStopped), Err(e)) | (Ok(_), Err(e)) => Err(e),
        (Err(PipelineError::UploadStopped), Ok(_)) => Err(Error::Other(
            "the upload ended before the whole backup was written".into(),
        )),
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
