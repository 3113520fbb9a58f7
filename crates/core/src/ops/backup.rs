//! `create-backup`: snapshot the database, list the files, and stream
//! tar → OpenPGP → store in one pass, with bounded memory.
//!
//! Three stages run at once: a blocking thread writes the tar (reading and hashing files), a
//! second blocking thread encrypts, and the async store uploads. They are joined by an OS pipe
//! and a bounded channel. If any stage fails the upload is aborted, so a half backup never
//! becomes visible.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use secrecy::SecretString;
use tokio::sync::mpsc;

use crate::archive::ArchiveWriter;
use crate::config::Config;
use crate::crypto;
use crate::database::postgres::{DumpProcess, Postgres};
use crate::database::sqlite;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{
    DatabaseInfo, DatabaseKind, FileListWriter, Header, ListTotals, Role, FILES_MEMBER,
    FORMAT_VERSION, HEADER_MEMBER, POSTGRES_DUMP_PREFIX, TOOL_NAME,
};
use crate::progress::{Cancel, Progress};
use crate::store::{ByteStream, Store};
use crate::synapse::{Database, HomeserverConfig};

use super::pipe::{chunk_pipe, ChannelWriter, ChunkWriter, CHUNK, QUEUE_DEPTH};
use super::restore::StateDir;

/// Media folders Synapse keeps for its own users' uploads: always backed up.
pub const LOCAL_MEDIA_DIRS: [&str; 2] = ["local_content", "local_thumbnails"];
/// Caches of other servers' media and URL previews: re-fetchable, so skipped by default.
pub const CACHE_MEDIA_DIRS: [&str; 5] = [
    "remote_content",
    "remote_thumbnail",
    "remote_thumbnails",
    "url_cache",
    "url_cache_thumbnails",
];

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub include_remote_media: bool,
    /// Leave a PostgreSQL database out (backed up with other tools, such as pgBackRest).
    pub skip_database: bool,
}

type Dump = std::io::BufReader<DumpProcess>;

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

/// One file to archive.
#[derive(Debug, Clone)]
struct Source {
    member: String,
    path: PathBuf,
    role: Role,
    size: u64,
}

/// A new backup id: `backup-` and the UTC time to the microsecond, as the charm names them.
pub fn new_backup_id() -> String {
    format!("backup-{}", Utc::now().format("%Y%m%d%H%M%S%6f"))
}

pub async fn create_backup(
    config: &Config,
    store: &dyn Store,
    passphrase: SecretString,
    options: &BackupOptions,
    progress: Arc<dyn Progress>,
    cancel: Cancel,
) -> Result<BackupSummary> {
    let started = Instant::now();
    let hs = HomeserverConfig::load(&config.homeserver_yaml)?;
    let state = StateDir::at(hs.media_store.parent().unwrap_or(Path::new("/")));
    let lock = state.lock_shared()?;
    store.check_access().await?;
    remove_interrupted_uploads(store).await;
    let backup_id = unused_backup_id(store, &state).await?;

    let temp_parent = config
        .backup
        .temp_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::Builder::new()
        .prefix("synapse-backup-")
        .tempdir_in(&temp_parent)
        .map_err(|e| Error::io("create temp dir in", &temp_parent, e))?;

    let mut sources = Vec::new();
    sources.extend(key_and_config_sources(&hs)?);
    let mut dump: Option<Dump> = None;

    // The database comes before the media are listed, so every media row in the snapshot has
    // its file in the backup (Synapse writes the file before the row).
    let database = match &hs.database {
        Database::Sqlite { path } => {
            progress.start("snapshotting SQLite database", None);
            let snapshot_path = temp.path().join("homeserver.db");
            let source = path.clone();
            let dest = snapshot_path.clone();
            tokio::task::spawn_blocking(move || sqlite::snapshot(&source, &dest))
                .await
                .map_err(|e| Error::Other(format!("snapshot task failed: {e}")))??;
            progress.finish();
            let size = file_size(&snapshot_path)?;
            sources.push(Source {
                member: "database/homeserver.db".into(),
                path: snapshot_path,
                role: Role::Database,
                size,
            });
            DatabaseInfo {
                kind: DatabaseKind::Sqlite,
                included: true,
                note: None,
                postgres: None,
            }
        }
        Database::Postgres(_) if options.skip_database => DatabaseInfo {
            kind: DatabaseKind::Postgresql,
            included: false,
            note: Some("--skip-database: the PostgreSQL database is not in this backup; restore it with its own tools (e.g. pgBackRest) before restoring this backup".into()),
            postgres: None,
        },
        Database::Postgres(args) => {
            progress.start("starting pg_dump", None);
            let postgres = Postgres::new(args);
            let (info, started_dump) = tokio::task::spawn_blocking(move || -> Result<_> {
                let info = postgres.info()?;
                let mut dump = std::io::BufReader::with_capacity(CHUNK, postgres.start_dump()?);
                // The first bytes mean pg_dump holds its snapshot: only then are the media
                // listed, so every media row in the dump has its file.
                dump.fill_buf()
                    .map_err(|e| Error::Other(format!("reading pg_dump: {e}")))?;
                Ok((info, dump))
            })
            .await
            .map_err(|e| Error::Other(format!("pg_dump task failed: {e}")))??;
            progress.finish();
            dump = Some(started_dump);
            DatabaseInfo {
                kind: DatabaseKind::Postgresql,
                included: true,
                note: None,
                postgres: Some(info),
            }
        }
    };

    let media_dirs = media_dirs(options.include_remote_media);
    let media_store = hs.media_store.clone();
    let media = tokio::task::spawn_blocking(move || list_media(&media_store, &media_dirs))
        .await
        .map_err(|e| Error::Other(format!("media listing failed: {e}")))??;
    sources.extend(media);

    let expected_bytes: u64 = sources.iter().map(|s| s.size).sum();
    let header = Header {
        format_version: FORMAT_VERSION,
        tool: TOOL_NAME.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        backup_id: backup_id.clone(),
        server_name: hs.server_name.clone(),
        created: Utc::now(),
        database: database.clone(),
        include_remote_media: options.include_remote_media,
        expected_bytes,
        files_member: FILES_MEMBER.into(),
    };
    tracing::info!(
        "backing up {} files ({} bytes) of {} as {backup_id} to {}",
        sources.len(),
        expected_bytes,
        hs.server_name,
        store.describe()
    );

    progress.start("backing up", Some(expected_bytes));
    let (sender, mut receiver) = mpsc::channel::<std::io::Result<bytes::Bytes>>(QUEUE_DEPTH);
    let body: ByteStream = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed();
    let pipeline = {
        let list_path = temp.path().join(FILES_MEMBER);
        let header = header.clone();
        let progress = Arc::clone(&progress);
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            run_pipeline(
                header, sources, dump, list_path, passphrase, sender, progress, cancel,
            )
        })
    };
    // Tar and OpenPGP add a little; the hint only sizes multipart parts.
    let size_hint = expected_bytes + expected_bytes / 50 + (1 << 20);
    let uploaded = store.put(&backup_id, body, Some(size_hint)).await;
    let archived = pipeline
        .await
        .map_err(|e| Error::Other(format!("backup task failed: {e}")))?;
    drop(lock);
    progress.finish();
    drop(temp);
    if cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    // Report the root cause: a store failure makes the pipeline fail with a broken pipe, and a
    // pipeline failure makes the upload fail with "stream failed".
    let ((totals, vanished), object_bytes) = match (archived, uploaded) {
        (Ok(archived), Ok(uploaded)) => (archived, uploaded),
        (_, Err(e)) if e.kind() == crate::error::ErrorKind::Storage => return Err(e),
        (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
    };
    Ok(BackupSummary {
        backup_id,
        server_name: hs.server_name,
        files: totals.files,
        file_bytes: totals.file_bytes,
        object_bytes,
        database,
        elapsed: started.elapsed(),
        vanished,
    })
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

/// Chooses a backup id no backup in the store has.
///
/// Ids are times to the microsecond. Two create-backups on one host that read the clock in the
/// same microsecond would pick the same id, and the later upload would replace the earlier
/// backup (seen once in the concurrency test), which asking the store cannot prevent, since
/// neither has uploaded yet. So the id is chosen under a host-wide lock held until the clock
/// has moved past it.
async fn unused_backup_id(store: &dyn Store, state: &StateDir) -> Result<String> {
    let _choosing = state.lock_id_choice();
    for _ in 0..20 {
        let id = new_backup_id();
        match store.head(&id).await {
            Err(Error::NotFound { .. }) => {
                while new_backup_id() <= id {
                    std::hint::spin_loop();
                }
                return Ok(id);
            }
            Err(other) => return Err(other),
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    Err(Error::Other("could not find an unused backup id".into()))
}

/// Writes tar into an OS pipe on one thread and encrypts from it into `sender` on this one.
#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    header: Header,
    sources: Vec<Source>,
    dump: Option<Dump>,
    list_path: PathBuf,
    passphrase: SecretString,
    sender: mpsc::Sender<std::io::Result<bytes::Bytes>>,
    progress: Arc<dyn Progress>,
    cancel: Cancel,
) -> Result<(ListTotals, Vec<String>)> {
    let (pipe_writer, pipe_reader) = chunk_pipe(QUEUE_DEPTH);
    let tar_thread = {
        let cancel = cancel.clone();
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || {
                write_archive(
                    header,
                    sources,
                    dump,
                    &list_path,
                    pipe_writer,
                    progress.as_ref(),
                    &cancel,
                )
            })
            .map_err(|e| Error::Other(format!("cannot start the archive thread: {e}")))?
    };
    let mut out = ChannelWriter::new(sender, cancel);
    let encrypted = crypto::encrypt(pipe_reader, &mut out, &passphrase);
    let archived = tar_thread
        .join()
        .map_err(|_| Error::Other("the archive thread panicked".into()))?;
    match (archived, encrypted) {
        (Ok(list), Ok(())) => {
            out.flush()
                .map_err(|e| Error::Other(format!("upload stopped: {e}")))?;
            Ok(list)
        }
        (Err(e), _) | (Ok(_), Err(e)) => {
            out.fail(std::io::Error::other(e.to_string()));
            Err(e)
        }
    }
}

/// Writes the whole archive; the file list is built in a temp file at `list_path` as members
/// are written, and goes in last.
fn write_archive(
    header: Header,
    sources: Vec<Source>,
    mut dump: Option<Dump>,
    list_path: &Path,
    out: ChunkWriter,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(ListTotals, Vec<String>)> {
    let id = header.backup_id.clone();
    let mtime = header.created.timestamp();
    let mut archive = ArchiveWriter::new(BufWriter::with_capacity(CHUNK, out));
    let header_json = serde_json::to_vec_pretty(&header)
        .map_err(|e| Error::Other(format!("cannot encode the manifest: {e}")))?;
    archive.append_bytes(HEADER_MEMBER, &header_json, mtime)?;
    let list_file = std::fs::File::create(list_path).at("create", list_path)?;
    let mut files = FileListWriter::new(BufWriter::new(list_file), &id)
        .at("write the file list to", list_path)?;
    let mut vanished = Vec::new();
    // By value: each source's paths are freed once archived, while the file list grows.
    for source in sources {
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        // The dump goes after keys and config and before the media, as it was taken.
        if source.role == Role::Media {
            if let Some(dump) = dump.take() {
                for entry in write_dump(&mut archive, dump, mtime, progress, cancel)? {
                    files.push(&entry).at("write the file list to", list_path)?;
                }
            }
        }
        match archive.append_file(&source.member, &source.path, source.role, progress, cancel)? {
            Some(entry) => files.push(&entry).at("write the file list to", list_path)?,
            None if source.role == Role::Media => {
                tracing::info!(
                    "{} was deleted during the backup; skipped",
                    source.path.display()
                );
                vanished.push(source.member);
            }
            None => {
                return Err(Error::Other(format!(
                    "{} disappeared during the backup",
                    source.path.display()
                )))
            }
        }
    }
    if let Some(dump) = dump.take() {
        for entry in write_dump(&mut archive, dump, mtime, progress, cancel)? {
            files.push(&entry).at("write the file list to", list_path)?;
        }
    }
    let (_, totals) = files.finish().at("write the file list to", list_path)?;
    archive.append_generated_file(FILES_MEMBER, list_path, mtime)?;
    let out = archive.finish()?;
    out.into_inner()
        .map_err(|e| Error::Other(format!("cannot write the archive: {}", e.error())))?
        .finish()
        .map_err(|e| Error::Other(format!("cannot write the archive: {e}")))?;
    Ok((totals, vanished))
}

fn write_dump<W: Write>(
    archive: &mut ArchiveWriter<W>,
    mut dump: Dump,
    mtime: i64,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Vec<crate::manifest::FileEntry>> {
    let written = archive.append_stream_in_parts(
        POSTGRES_DUMP_PREFIX,
        &mut dump,
        Role::Database,
        mtime,
        progress,
        cancel,
    );
    // pg_dump's exit status says whether the stream was complete.
    let finished = dump.into_inner().finish();
    let entries = written?;
    finished?;
    Ok(entries)
}

fn media_dirs(include_remote: bool) -> Vec<&'static str> {
    let mut dirs: Vec<&'static str> = LOCAL_MEDIA_DIRS.to_vec();
    if include_remote {
        dirs.extend(CACHE_MEDIA_DIRS);
    }
    dirs
}

fn key_and_config_sources(hs: &HomeserverConfig) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    if !hs.signing_key.is_file() {
        return Err(Error::config(format!(
            "the signing key {} named by {} does not exist; without it the server cannot federate under its name",
            hs.signing_key.display(),
            hs.path.display()
        )));
    }
    sources.push(source_for(
        &hs.signing_key,
        format!("keys/{}", file_name(&hs.signing_key)),
        Role::SigningKey,
    )?);
    sources.push(source_for(
        &hs.path,
        "config/homeserver.yaml".into(),
        Role::Config,
    )?);
    if let Some(log_config) = &hs.log_config {
        if log_config.is_file() {
            sources.push(source_for(
                log_config,
                format!("config/log/{}", file_name(log_config)),
                Role::Config,
            )?);
        } else {
            tracing::warn!(
                "log_config {} does not exist; not backed up",
                log_config.display()
            );
        }
    }
    for app_service in &hs.app_service_files {
        if app_service.is_file() {
            sources.push(source_for(
                app_service,
                format!("config/appservices/{}", file_name(app_service)),
                Role::Config,
            )?);
        } else {
            tracing::warn!(
                "app service registration {} does not exist; not backed up",
                app_service.display()
            );
        }
    }
    Ok(sources)
}

fn source_for(path: &Path, member: String, role: Role) -> Result<Source> {
    Ok(Source {
        size: file_size(path)?,
        member,
        path: path.to_path_buf(),
        role,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into())
}

fn file_size(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| Error::io("stat", path, e))
}

/// Lists regular files under each media folder, sorted so archives are reproducible.
fn list_media(media_store: &Path, dirs: &[&str]) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for dir in dirs {
        let root = media_store.join(dir);
        if !root.exists() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
            let entry = match entry {
                Ok(entry) => entry,
                // A folder removed while we walk is not an error for a live server.
                Err(e)
                    if e.io_error().map(|io| io.kind()) == Some(std::io::ErrorKind::NotFound) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(Error::Other(format!(
                        "cannot list media under {}: {e}",
                        root.display()
                    )))
                }
            };
            let kind = entry.file_type();
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                tracing::warn!("{} is not a regular file; skipped", entry.path().display());
                continue;
            }
            let relative = entry.path().strip_prefix(media_store).map_err(|_| {
                Error::Other(format!(
                    "{} escaped the media store",
                    entry.path().display()
                ))
            })?;
            let Some(relative) = relative.to_str() else {
                tracing::warn!(
                    "{} has a name that is not UTF-8; skipped",
                    entry.path().display()
                );
                continue;
            };
            let size = match entry.metadata() {
                Ok(meta) => meta.len(),
                Err(_) => continue,
            };
            out.push(Source {
                member: format!("media/{relative}"),
                path: entry.path().to_path_buf(),
                role: Role::Media,
                size,
            });
        }
    }
    Ok(out)
}
