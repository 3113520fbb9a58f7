//! Media Synapse keeps only in its storage providers (`synapse::providers`): the files the
//! database's media rows name that media_store_path lacks, looked up in each provider in
//! Synapse's order, and read from there into the backup's volumes.
//!
//! A file in neither place is never left out silently: the backup refuses, naming the count
//! and the first media ids, unless `--allow-missing-media`, and then records them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use crate::config::{Config, S3Config};
use crate::database::media_rows::{postgres_media_rows, sqlite_media_rows, MediaRow};
use crate::database::postgres::Postgres;
use crate::error::{Error, Refusal, Result};
use crate::manifest::{MissingMedia, ProviderRecord, Role, MISSING_RECORDED};
use crate::provider::ProviderAccess;
use crate::synapse::{Database, HomeserverConfig, MediaProvider};

use super::sources::{Location, Source};

/// How many missing media an error message names.
const MISSING_NAMED: usize = 5;

/// What the providers add to a backup.
#[derive(Default)]
pub(super) struct Offloaded {
    /// Files to read from a provider, each with the path it is fetched into.
    pub files: Vec<Source>,
    pub providers: Vec<ProviderRecord>,
    pub missing: Option<MissingMedia>,
    /// How to read each provider, by its place in Synapse's list (`None`: cannot be read).
    pub access: Vec<Option<ProviderAccess>>,
}

/// Finds the media rows whose file `local` (the media files listed under media_store_path)
/// lacks, and where each of them is. `sqlite_snapshot` is the backup's own copy of a SQLite
/// database, so that the rows are those the backup holds.
pub(super) async fn find_offloaded(
    config: &Config,
    hs: &HomeserverConfig,
    sqlite_snapshot: Option<&Path>,
    local: &[Source],
    temp: &Path,
    allow_missing: bool,
) -> Result<Offloaded> {
    if hs.media_providers.is_empty() {
        return Ok(Offloaded::default());
    }
    let rows = media_rows(hs, sqlite_snapshot).await?;
    let here: HashSet<&str> = local
        .iter()
        .filter_map(|s| s.member.strip_prefix("media/"))
        .collect();
    let mut seen = HashSet::new();
    let mut wanted: Vec<MediaRow> = rows
        .into_iter()
        .filter(|row| !here.contains(row.path.as_str()) && seen.insert(row.path.clone()))
        .collect();
    let store_s3 = config.store.s3();
    let concurrency = config.backup.provider_downloads;
    let mut offloaded = Offloaded::default();
    let mut reasons = Vec::new();
    let copies: Arc<Path> = Arc::from(provider_copies(temp));
    for (index, provider) in hs.media_providers.iter().enumerate() {
        offloaded.providers.push(ProviderRecord {
            module: provider.module.clone(),
            location: provider.location(),
        });
        let access = open_access(provider, store_s3)
            .map_err(|why| reasons.push(why))
            .ok();
        if let (Some(reader), false) = (&access, wanted.is_empty()) {
            let paths: Vec<String> = wanted.iter().map(|row| row.path.clone()).collect();
            match reader.find(&paths, concurrency).await {
                Ok(found) => {
                    wanted.retain(|row| match found.get(&row.path) {
                        Some(size) => {
                            offloaded.files.push(Source {
                                member: format!("media/{}", row.path),
                                location: Location::Under(Arc::clone(&copies)),
                                role: Role::Media,
                                size: *size,
                                provider: Some(index as u32),
                                stamp: None,
                            });
                            false
                        }
                        None => true,
                    });
                }
                Err(e) => reasons.push(format!("the {} cannot be read: {e}", reader.describe)),
            }
        }
        offloaded.access.push(access);
    }
    if !offloaded.files.is_empty() {
        let bytes: u64 = offloaded.files.iter().map(|f| f.size).sum();
        tracing::info!(
            "{} media files ({bytes} bytes) are not under {} and are read from storage providers",
            offloaded.files.len(),
            hs.media_store.display()
        );
    }
    if !wanted.is_empty() {
        let message = missing_message(hs, &wanted, &reasons);
        if !allow_missing {
            return Err(Error::refused(Refusal::MissingMedia, format!(
                "{message}; nothing was stored. Find the files, or pass --allow-missing-media to back up without them (the backup records which are missing)"
            )));
        }
        tracing::warn!("{message}; backing up without them, as --allow-missing-media asks");
        offloaded.missing = Some(MissingMedia {
            count: wanted.len(),
            first: wanted
                .iter()
                .take(MISSING_RECORDED)
                .map(|row| format!("{} ({})", row.path, row.media_id))
                .collect(),
            reasons,
        });
    } else if !reasons.is_empty() {
        // Nothing was missing, so nothing depended on them; still worth knowing.
        for reason in reasons {
            tracing::info!("{reason}");
        }
    }
    Ok(offloaded)
}

/// How to read `provider`, or why it cannot be read.
fn open_access(
    provider: &MediaProvider,
    store_s3: Option<&S3Config>,
) -> std::result::Result<ProviderAccess, String> {
    match ProviderAccess::open(provider, store_s3) {
        Ok(Some(access)) => Ok(access),
        Ok(None) => Err(format!(
            "{} is not a provider this tool can read (it reads {} and Synapse's file provider)",
            provider.describe(),
            crate::synapse::S3_MODULE
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn missing_message(hs: &HomeserverConfig, missing: &[MediaRow], reasons: &[String]) -> String {
    let ids: Vec<&str> = missing
        .iter()
        .take(MISSING_NAMED)
        .map(|row| row.media_id.as_str())
        .collect();
    let mut message = format!(
        "{} media files the database lists are neither under {} nor in a media storage provider (media ids {}{})",
        missing.len(),
        hs.media_store.display(),
        ids.join(", "),
        if missing.len() > ids.len() { ", …" } else { "" }
    );
    if !reasons.is_empty() {
        message.push_str(&format!("; {}", reasons.join("; ")));
    }
    message
}

async fn media_rows(
    hs: &HomeserverConfig,
    sqlite_snapshot: Option<&Path>,
) -> Result<Vec<MediaRow>> {
    let database = hs.database.clone();
    let snapshot = sqlite_snapshot.map(Path::to_path_buf);
    let (rows, unusable) = tokio::task::spawn_blocking(move || match (&database, snapshot) {
        (Database::Sqlite { .. }, Some(snapshot)) => sqlite_media_rows(&snapshot),
        (Database::Sqlite { path }, None) => sqlite_media_rows(path),
        (Database::Postgres(args), _) => postgres_media_rows(&Postgres::new(args)),
    })
    .await
    .map_err(|e| Error::task_failed("media row listing", e))??;
    if unusable > 0 {
        tracing::warn!(
            "{unusable} media rows have an id or thumbnail type Synapse could not make a path of; their files are not looked for in storage providers"
        );
    }
    Ok(rows)
}

/// Where the files read from storage providers are copied, in the backup's temp folder.
pub(super) fn provider_copies(temp: &Path) -> PathBuf {
    temp.join("provider")
}

/// Reads the provider files among `files` into their temp paths, several at once. Files a
/// provider no longer holds are dropped and named in the returned list (deleted meanwhile).
async fn fetch_from_providers(
    files: &mut Vec<Source>,
    access: &[Option<ProviderAccess>],
    concurrency: usize,
) -> Result<Vec<String>> {
    let wanted: Vec<(usize, u32, String, PathBuf)> = files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let rel = f.member.strip_prefix("media/")?.to_string();
            Some((i, f.provider?, rel, f.path().into_owned()))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let fetched: Vec<(usize, Option<u64>)> = futures::stream::iter(wanted)
        .map(|(i, provider, rel, dest)| async move {
            let reader = access
                .get(provider as usize)
                .and_then(Option::as_ref)
                .ok_or_else(|| Error::Other(format!("no access to the provider of {rel}")))?;
            let size = reader.fetch(&rel, &dest).await?;
            if size.is_some() {
                set_media_mode(&dest)?;
            }
            Ok::<_, Error>((i, size))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let mut gone = HashSet::new();
    for (i, size) in fetched {
        match size {
            Some(size) => files[i].size = size,
            None => {
                gone.insert(i);
            }
        }
    }
    let mut vanished = Vec::new();
    let mut index = 0;
    files.retain(|f| {
        let keep = !gone.contains(&index);
        if !keep {
            vanished.push(f.member.clone());
        }
        index += 1;
        keep
    });
    if !vanished.is_empty() {
        tracing::warn!(
            "{} media files were gone from their storage provider when read (deleted since they were looked up); not in this backup: {}",
            vanished.len(),
            vanished.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(vanished)
}

/// Synapse writes media readable by all (0644 under its usual umask); the copy keeps that
/// mode in the backup, whatever this tool's umask.
fn set_media_mode(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io("set the mode of", path, e))
}

/// A volume's files, its provider media downloaded.
pub(super) struct FetchedVolume {
    pub files: Vec<Source>,
    /// Provider media gone before they could be read.
    pub gone: Vec<String>,
}

/// Downloads the provider media among a volume's `files`.
pub(super) async fn fetch_volume(
    mut files: Vec<Source>,
    access: &[Option<ProviderAccess>],
    concurrency: usize,
) -> Result<FetchedVolume> {
    let gone = fetch_from_providers(&mut files, access, concurrency).await?;
    Ok(FetchedVolume { files, gone })
}

/// The temp copies among `files` (those read from a provider).
pub(super) fn fetched_paths(files: &[Source]) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| f.provider.is_some())
        .map(|f| f.path().into_owned())
        .collect()
}

/// Removes the temp copies of the provider files among `files`.
pub(super) fn remove_fetched(files: &[PathBuf]) {
    for path in files {
        let _ = std::fs::remove_file(path);
    }
}
