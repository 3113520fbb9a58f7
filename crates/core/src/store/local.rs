//! A folder on a local (or mounted) filesystem.
//!
//! An object is written to a hidden temp file in the same folder, fsynced, then renamed into
//! place, so a crash or an error never leaves a half-written backup under a backup's name.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::owner::UploadOwner;
use super::{check_folder, check_name, ByteStream, ObjectInfo, ReadFailed, Store};
use crate::error::{Error, IoContext, Result};

const READ_CHUNK: usize = 1 << 20;
const PARTIAL_MARK: &str = ".partial-";

#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A folder root makes in the store goes to the store's owner: PostgreSQL's user writes
    /// `wal/` through wal-push while root's create-backup may be the first to write there.
    fn give_to_the_store_owner(&self, folder: &Path) {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        if let Ok(root) = std::fs::metadata(&self.root) {
            if root.uid() != 0 {
                let _ = std::os::unix::fs::chown(folder, Some(root.uid()), Some(root.gid()));
            }
        }
    }

    pub fn new(root: &Path) -> LocalStore {
        LocalStore {
            root: root.to_path_buf(),
        }
    }

    fn object_path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    fn not_found(&self, name: &str) -> Error {
        Error::NotFound {
            id: name.to_string(),
            store: self.describe(),
        }
    }

    fn info(name: &str, meta: &std::fs::Metadata) -> ObjectInfo {
        let modified: DateTime<Utc> = meta
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_default();
        ObjectInfo {
            name: name.to_string(),
            size: meta.len(),
            last_modified: modified,
        }
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local folder {}", self.root.display())
    }

    async fn check_access(&self) -> Result<()> {
        match tokio::fs::metadata(&self.root).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(Error::config(format!(
                "[local] path {} is not a directory",
                self.root.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::create_dir_all(&self.root)
                    .await
                    .at("create backup folder", &self.root)
            }
            Err(e) => Err(Error::io("open backup folder", &self.root, e)),
        }
    }

    async fn put(&self, name: &str, mut body: ByteStream, _size_hint: Option<u64>) -> Result<u64> {
        let final_path = self.object_path(name)?;
        // In the top level whatever the folder, so that one scan finds every leftover; `/`
        // cannot be in a file name, `~` cannot be in an object name.
        let temp_path = self.root.join(format!(
            ".{}{PARTIAL_MARK}{}",
            name.replace('/', "~"),
            UploadOwner::current().token()
        ));
        if let Some(folder) = final_path.parent() {
            if tokio::fs::metadata(folder).await.is_err() {
                tokio::fs::create_dir_all(folder)
                    .await
                    .at("create the store folder", folder)?;
                self.give_to_the_store_owner(folder);
            }
        }
        let mut file = tokio::fs::File::create(&temp_path)
            .await
            .at("create", &temp_path)?;
        let result: Result<u64> = async {
            let mut written = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| Error::Other(format!("backup stream failed: {e}")))?;
                file.write_all(&chunk).await.at("write", &temp_path)?;
                written += chunk.len() as u64;
            }
            file.sync_all().await.at("fsync", &temp_path)?;
            Ok(written)
        }
        .await;
        drop(file);
        match result {
            Ok(written) => {
                tokio::fs::rename(&temp_path, &final_path)
                    .await
                    .at("rename into place", &final_path)?;
                let folder = final_path.parent().unwrap_or(&self.root);
                if let Ok(dir) = tokio::fs::File::open(folder).await {
                    // Makes the rename itself durable.
                    let _ = dir.sync_all().await;
                }
                Ok(written)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp_path).await;
                Err(e)
            }
        }
    }

    async fn get(&self, name: &str) -> Result<ByteStream> {
        let path = self.object_path(name)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => {
                let store = self.describe();
                Ok(ReaderStream::with_capacity(file, READ_CHUNK)
                    .map(move |item| {
                        item.map_err(|e| {
                            ReadFailed {
                                store: store.clone(),
                                detail: format!("reading {}: {e}", path.display()),
                            }
                            .into_io()
                        })
                    })
                    .boxed())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(name)),
            Err(e) => Err(Error::io("open", path, e)),
        }
    }

    async fn head(&self, name: &str) -> Result<ObjectInfo> {
        let path = self.object_path(name)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Self::info(name, &meta)),
            Ok(_) => Err(self.not_found(name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(name)),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.root).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list", &self.root, e)),
        };
        while let Some(entry) = dir.next_entry().await.at("list", &self.root)? {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let meta = entry.metadata().await.at("stat", entry.path())?;
            if meta.is_file() {
                out.push(Self::info(&name, &meta));
            }
        }
        Ok(out)
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<ObjectInfo>> {
        check_folder(folder)?;
        let path = self.root.join(folder);
        let mut out = Vec::new();
        let mut dir = match tokio::fs::read_dir(&path).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list", &path, e)),
        };
        while let Some(entry) = dir.next_entry().await.at("list", &path)? {
            let name = entry.file_name().to_string_lossy().to_string();
            let meta = entry.metadata().await.at("stat", entry.path())?;
            if meta.is_file() && check_name(&name).is_ok() {
                out.push(Self::info(&format!("{folder}/{name}"), &meta));
            }
        }
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.object_path(name)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(name)),
            Err(e) => Err(Error::io("delete", path, e)),
        }
    }

    async fn remove_interrupted_uploads(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.root).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(Error::io("list", &self.root, e)),
        };
        while let Some(entry) = dir.next_entry().await.at("list", &self.root)? {
            let file_name = entry.file_name().to_string_lossy().to_string();
            let Some((name, token)) = file_name
                .strip_prefix('.')
                .and_then(|rest| rest.rsplit_once(PARTIAL_MARK))
            else {
                continue;
            };
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .unwrap_or_default();
            if meta.is_file() && UploadOwner::is_abandoned(token, age) {
                match tokio::fs::remove_file(entry.path()).await {
                    Ok(()) => removed.push(name.replace('~', "/")),
                    // Another run cleaned it up first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove the leftover", entry.path(), e)),
                }
            }
        }
        Ok(removed)
    }
}
