//! Reading and writing the media a Synapse media storage provider holds (`synapse::providers`
//! says which there are): the S3 provider's bucket through the backup store's S3 client, and
//! the file provider's folder. Both are keyed by the path Synapse uses under media_store_path
//! (`local_content/ab/cd/rest`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

use crate::config::{S3Config, UriStyle};
use crate::error::{Error, Result, StorageCause};
use crate::store::s3::S3Store;
use crate::synapse::media::LOCAL_MEDIA_DIRS;
use crate::synapse::{MediaProvider, ProviderKind, S3Provider};

/// Above this many files, an S3 provider is listed rather than asked file by file: a listing
/// answers 1,000 keys per request.
const HEAD_LIMIT: usize = 1000;

/// Retries and timeouts of provider requests when the backup store is not S3 (whose settings
/// apply otherwise): those of `[s3]`'s defaults.
const DEFAULT_RETRIES: usize = 10;
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// One provider this tool can read and write.
pub struct ProviderAccess {
    pub describe: String,
    kind: Access,
}

enum Access {
    S3 { store: S3Store, prefix: String },
    Directory(PathBuf),
}

impl ProviderAccess {
    /// Access to `provider`, with the retry and timeout rules of `store_s3` (the backup store's
    /// S3 settings) when there are some; `None` for a module this tool does not know.
    pub fn open(provider: &MediaProvider, store_s3: Option<&S3Config>) -> Result<Option<Self>> {
        let kind = match &provider.kind {
            ProviderKind::S3(s3) => Access::S3 {
                store: S3Store::new(&s3_config(provider, s3, store_s3)?)
                    .map_err(|e| Error::config(format!("{}: {e}", provider.describe())))?,
                prefix: s3.prefix.clone(),
            },
            ProviderKind::Directory(path) => Access::Directory(path.clone()),
            ProviderKind::Unknown => return Ok(None),
        };
        Ok(Some(ProviderAccess {
            describe: provider.describe(),
            kind,
        }))
    }

    /// A failure to reach this provider is the provider's, not the backup store's: its advice
    /// points at homeserver.yaml, not at `[s3]`. A transfer that stopped part-way keeps its own
    /// advice (run again).
    fn own_error(&self, e: Error) -> Error {
        match e {
            Error::Storage {
                detail,
                cause: StorageCause::Access | StorageCause::UploadAborted,
                ..
            } => Error::Storage {
                store: self.describe.clone(),
                detail,
                cause: StorageCause::Provider,
            },
            other => other,
        }
    }

    /// Whether the provider answers: its bucket can be read with its credentials, or its
    /// folder exists.
    pub async fn probe(&self) -> Result<()> {
        match &self.kind {
            Access::S3 { store, prefix } => store
                .key_size(&format!("{prefix}local_content"))
                .await
                .map(|_| ()),
            Access::Directory(root) if root.is_dir() => Ok(()),
            Access::Directory(_) => Err(Error::config(format!(
                "the {} does not exist or is not a folder",
                self.describe
            ))),
        }
        .map_err(|e| match e {
            Error::Config(_) => e,
            other => Error::Storage {
                store: self.describe.clone(),
                detail: other.to_string(),
                cause: StorageCause::Provider,
            },
        })
    }

    /// Which of `wanted` (paths relative to media_store_path) the provider holds, with sizes.
    pub async fn find(
        &self,
        wanted: &[String],
        concurrency: usize,
    ) -> Result<HashMap<String, u64>> {
        self.find_here(wanted, concurrency)
            .await
            .map_err(|e| self.own_error(e))
    }

    async fn find_here(
        &self,
        wanted: &[String],
        concurrency: usize,
    ) -> Result<HashMap<String, u64>> {
        match &self.kind {
            Access::S3 { store, prefix } if wanted.len() > HEAD_LIMIT => {
                let mut found = HashMap::new();
                let wanted: std::collections::HashSet<&str> =
                    wanted.iter().map(String::as_str).collect();
                for dir in LOCAL_MEDIA_DIRS {
                    for (key, size) in store.list_keys_under(&format!("{prefix}{dir}")).await? {
                        if let Some(rel) = key.strip_prefix(prefix.as_str()) {
                            if wanted.contains(rel) {
                                found.insert(rel.to_string(), size);
                            }
                        }
                    }
                }
                Ok(found)
            }
            Access::S3 { store, prefix } => {
                let sizes: Vec<(String, Option<u64>)> = futures::stream::iter(wanted)
                    .map(|rel| async move {
                        let size = store.key_size(&format!("{prefix}{rel}")).await?;
                        Ok::<_, Error>((rel.clone(), size))
                    })
                    .buffer_unordered(concurrency)
                    .try_collect()
                    .await?;
                Ok(sizes
                    .into_iter()
                    .filter_map(|(rel, size)| Some((rel, size?)))
                    .collect())
            }
            Access::Directory(root) => {
                if !root.is_dir() {
                    return Err(Error::config(format!(
                        "the {} is not a folder that can be read",
                        self.describe
                    )));
                }
                let mut found = HashMap::new();
                for rel in wanted {
                    match std::fs::metadata(root.join(rel)) {
                        Ok(meta) if meta.is_file() => {
                            found.insert(rel.clone(), meta.len());
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("stat", root.join(rel), e)),
                    }
                }
                Ok(found)
            }
        }
    }

    /// Copies the provider's file `rel` to `dest`, streamed; its size. A file the provider no
    /// longer holds is `Ok(None)` (deleted meanwhile, as a purge does).
    pub async fn fetch(&self, rel: &str, dest: &Path) -> Result<Option<u64>> {
        self.fetch_here(rel, dest)
            .await
            .map_err(|e| self.own_error(e))
    }

    async fn fetch_here(&self, rel: &str, dest: &Path) -> Result<Option<u64>> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| Error::io("create", parent, e))?;
        }
        match &self.kind {
            Access::S3 { store, prefix } => {
                let mut stream = match store.get_key(&format!("{prefix}{rel}")).await {
                    Ok(stream) => stream,
                    Err(Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let mut file = tokio::fs::File::create(dest)
                    .await
                    .map_err(|e| Error::io("create", dest, e))?;
                let mut size = 0u64;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| Error::Storage {
                        store: self.describe.clone(),
                        detail: format!("reading {rel}: {e}"),
                        cause: StorageCause::PartWay,
                    })?;
                    size += chunk.len() as u64;
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| Error::io("write", dest, e))?;
                }
                file.flush()
                    .await
                    .map_err(|e| Error::io("write", dest, e))?;
                Ok(Some(size))
            }
            Access::Directory(root) => match tokio::fs::copy(root.join(rel), dest).await {
                Ok(size) => Ok(Some(size)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("copy", root.join(rel), e)),
            },
        }
    }

    /// Writes the local file `source` into the provider as `rel`.
    pub async fn put(&self, rel: &str, source: &Path) -> Result<()> {
        self.put_here(rel, source)
            .await
            .map_err(|e| self.own_error(e))
    }

    async fn put_here(&self, rel: &str, source: &Path) -> Result<()> {
        match &self.kind {
            Access::S3 { store, prefix } => {
                let bytes = tokio::fs::read(source)
                    .await
                    .map_err(|e| Error::io("read", source, e))?;
                store.put_key(&format!("{prefix}{rel}"), bytes.into()).await
            }
            Access::Directory(root) => {
                let dest = root.join(rel);
                if let Some(parent) = dest.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|e| Error::io("create", parent, e))?;
                }
                tokio::fs::copy(source, &dest)
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::io("write", &dest, e))
            }
        }
    }
}

/// The backup store's S3 client settings for the provider's bucket. Credentials missing from
/// the provider's config are taken from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, where
/// boto3 (which the provider uses) finds them too.
fn s3_config(
    provider: &MediaProvider,
    s3: &S3Provider,
    store_s3: Option<&S3Config>,
) -> Result<S3Config> {
    let access_key = s3
        .access_key_id
        .clone()
        .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
    let secret_key = s3.secret_access_key.clone().or_else(|| {
        std::env::var("AWS_SECRET_ACCESS_KEY")
            .ok()
            .map(SecretString::from)
    });
    let (Some(access_key), Some(secret_key)) = (access_key, secret_key) else {
        return Err(Error::config(format!(
            "the {} has no credentials: neither access_key_id and secret_access_key in its config nor AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (instance roles are not supported)",
            provider.describe()
        )));
    };
    Ok(S3Config {
        endpoint: s3.endpoint_url.clone(),
        bucket: s3.bucket.clone(),
        path: String::new(),
        region: s3.region_name.clone(),
        // boto3 addresses a custom endpoint by path, AWS itself by host.
        uri_style: if s3.endpoint_url.is_some() {
            UriStyle::Path
        } else {
            UriStyle::Host
        },
        access_key,
        secret_key: SecretString::from(secret_key.expose_secret().to_string()),
        storage_class: s3.storage_class.clone(),
        tls_ca_chain: None,
        upload_concurrency: 4,
        max_upload_rate: None,
        max_download_rate: None,
        max_retries: store_s3.map_or(DEFAULT_RETRIES, |c| c.max_retries),
        request_timeout: store_s3.map_or(DEFAULT_TIMEOUT, |c| c.request_timeout),
    })
}
