//! `--media-to-provider`: the media a backup read from a storage provider go back to that
//! provider instead of under media_store_path, as they were before the restore.
//!
//! They are staged in a temp folder beside the media store like every other file, checked
//! against the file list, and written to the provider only once the whole backup has been
//! staged, before the swap: a restore that fails before the swap has changed nothing live
//! (objects written to a provider are the bytes it held, under the names it used).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt};

use crate::config::Config;
use crate::error::{Error, Refusal, Result};
use crate::manifest::{FileEntry, Header};
use crate::provider::ProviderAccess;
use crate::synapse::HomeserverConfig;

/// Where provider-held media of a restore go.
pub(super) struct ProviderSink {
    staging: tempfile::TempDir,
    /// For each provider the backup recorded (by its place in the header's list), the one
    /// homeserver.yaml configures now at the same location, if any.
    targets: Vec<Option<ProviderAccess>>,
    recorded: Vec<String>,
    staged: Mutex<Vec<(u32, String, PathBuf)>>,
    concurrency: usize,
}

impl ProviderSink {
    pub fn new(config: &Config, hs: &HomeserverConfig, header: &Header) -> Result<ProviderSink> {
        let store_s3 = config.store.s3();
        let recorded = header
            .media
            .as_ref()
            .map(|m| m.providers.clone())
            .unwrap_or_default();
        let mut targets = Vec::new();
        for record in &recorded {
            let configured = hs
                .media_providers
                .iter()
                .find(|p| p.location() == record.location);
            targets.push(match configured {
                Some(provider) => ProviderAccess::open(provider, store_s3)?,
                None => None,
            });
        }
        let parent = hs.media_store.parent().unwrap_or(Path::new("/"));
        let staging = tempfile::Builder::new()
            .prefix(".synapse-backup-provider-")
            .tempdir_in(parent)
            .map_err(|e| Error::io("create a staging folder in", parent, e))?;
        Ok(ProviderSink {
            staging,
            targets,
            recorded: recorded.into_iter().map(|r| r.location).collect(),
            staged: Mutex::new(Vec::new()),
            concurrency: config.backup.provider_downloads,
        })
    }

    /// The staging file for `entry` when it goes to a provider; `None` when it goes under
    /// media_store_path.
    pub fn create(&self, entry: &FileEntry) -> Result<Option<(PathBuf, BufWriter<File>)>> {
        let Some(provider) = entry.provider else {
            return Ok(None);
        };
        let recorded = self
            .recorded
            .get(provider as usize)
            .cloned()
            .unwrap_or_else(|| format!("provider #{provider}"));
        if self
            .targets
            .get(provider as usize)
            .is_none_or(Option::is_none)
        {
            return Err(Error::refused(Refusal::ProviderNotConfigured, format!(
                "{} was read from the storage provider {recorded}, which homeserver.yaml does not configure now (or this tool cannot write to); configure it, or restore without --media-to-provider to put the media under media_store_path",
                entry.path
            )));
        }
        let rel = entry.path.strip_prefix("media/").unwrap_or(&entry.path);
        let path = self.staging.path().join(format!("{provider}")).join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
        }
        let file = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        self.staged
            .lock()
            .map_err(|_| Error::task_failed("restore", "a volume's staging panicked"))?
            .push((provider, rel.to_string(), path.clone()));
        Ok(Some((path, BufWriter::new(file))))
    }

    /// Writes every staged file to its provider, several at once; how many.
    pub async fn write_to_providers(&self) -> Result<usize> {
        let staged = std::mem::take(
            &mut *self
                .staged
                .lock()
                .map_err(|_| Error::task_failed("restore", "a volume's staging panicked"))?,
        );
        let count = staged.len();
        futures::stream::iter(staged)
            .map(|(provider, rel, path)| async move {
                let target = self
                    .targets
                    .get(provider as usize)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| {
                        Error::Internal(format!(
                            "{rel} was staged for a provider that is not set up"
                        ))
                    })?;
                // The provider's own error keeps its kind and advice; only what was being
                // written is added.
                target.put(&rel, &path).await.map_err(|e| match e {
                    Error::Storage {
                        store,
                        detail,
                        cause,
                    } => Error::Storage {
                        store,
                        detail: format!("cannot write {rel}: {detail}; nothing live was changed"),
                        cause,
                    },
                    other => other,
                })?;
                let _ = std::fs::remove_file(&path);
                Ok::<_, Error>(())
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(count)
    }
}
