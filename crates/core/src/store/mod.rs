//! Where backups are kept, behind one small trait.
//!
//! The backup and restore logic only see [`Store`]; [`s3::S3Store`] and [`local::LocalStore`]
//! implement it, and [`throttle::Throttled`] caps the bandwidth of either. Guarantees every implementation gives:
//! - `put` makes an object visible only when its body stream ended without an error item; an
//!   error item (or a dropped future) leaves nothing visible (multipart uploads are aborted,
//!   local temp files removed).
//! - `get` streams; a body shorter than `head` announced surfaces as an error, never as EOF.
//! - names are backup ids (no `/`, no leading `.`), or one of them inside one of [`FOLDERS`]
//!   (`volumes/backup-…-0000`); the store adds its own prefix. `list` sees only the top level,
//!   so a tool that knows nothing of the folders never sees what they hold.
//! - what a `put` killed half-way leaves behind (an unfinished multipart upload, a temp file) is
//!   never listed, and `remove_interrupted_uploads` cleans it up once its writer is gone.

pub mod local;
pub mod owner;
pub mod s3;
pub mod throttle;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::config::StoreConfig;
use crate::error::{Error, Result, StorageCause};

/// A stream of object bytes; an `Err` item in a `put` body aborts the upload.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A failure to read an object's bytes from the store (connection lost, server gone, disk
/// error). `get` streams carry it inside their `std::io::Error`s through decryption and untar,
/// so that it is reported as a store failure, never as a damaged backup.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct ReadFailed {
    pub store: String,
    pub detail: String,
}

impl ReadFailed {
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }

    /// The `ReadFailed` inside `err` or anything it wraps.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ReadFailed> {
        crate::error::find_cause(err)
    }

    /// The library error for backup `id`.
    pub fn to_error(&self, id: &str) -> Error {
        Error::Storage {
            store: self.store.clone(),
            detail: format!("reading backup {id} failed: {}", self.detail),
            cause: StorageCause::PartWay,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Names the store for messages, e.g. `s3://bucket/prefix at http://host:port`.
    fn describe(&self) -> String;

    /// Checks that the store exists and can be read, before any work starts.
    async fn check_access(&self) -> Result<()>;

    /// Stores `body` under `name`; `size_hint` helps choose multipart part sizes.
    async fn put(&self, name: &str, body: ByteStream, size_hint: Option<u64>) -> Result<u64>;

    async fn get(&self, name: &str) -> Result<ByteStream>;

    async fn head(&self, name: &str) -> Result<ObjectInfo>;

    /// Every object directly under the store's prefix, in no particular order.
    async fn list(&self) -> Result<Vec<ObjectInfo>>;

    /// Every object in `folder` (one of [`FOLDERS`]), named as `put` took them
    /// (`volumes/backup-…`), in no particular order.
    async fn list_folder(&self, folder: &str) -> Result<Vec<ObjectInfo>>;

    /// Deletes `name`; a missing object is [`Error::NotFound`].
    async fn delete(&self, name: &str) -> Result<()>;

    /// Removes what earlier `put`s left when their process died or the store went away before
    /// they could clean up, skipping uploads whose process still runs. Returns the names of the
    /// backups whose leftovers were removed.
    async fn remove_interrupted_uploads(&self) -> Result<Vec<String>>;
}

/// Opens the store a configuration names, with the bandwidth caps it sets.
pub fn open(config: &StoreConfig) -> Result<Box<dyn Store>> {
    match config {
        StoreConfig::S3(s3) => {
            let store = s3::S3Store::new(s3)?;
            if s3.max_upload_rate.is_none() && s3.max_download_rate.is_none() {
                Ok(Box::new(store))
            } else {
                Ok(Box::new(throttle::Throttled::new(
                    store,
                    s3.max_upload_rate,
                    s3.max_download_rate,
                )))
            }
        }
        StoreConfig::Local(local) => Ok(Box::new(local::LocalStore::new(&local.path))),
    }
}

/// The folders a store keeps besides its top level: media volumes and file indexes of
/// incremental backups, PostgreSQL's archived WAL, and the markers that make prune safe
/// against a running create.
pub const FOLDERS: [&str; 5] = ["volumes", "index", "wal", ".pending", ".condemned"];

/// Rejects names that could escape the store's prefix or collide with its temp files.
pub fn check_name(name: &str) -> Result<()> {
    let base = match name.split_once('/') {
        Some((folder, rest)) if FOLDERS.contains(&folder) => rest,
        _ => name,
    };
    let ok = !base.is_empty()
        && !base.starts_with('.')
        && base.len() <= 200
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{name:?} is not a valid backup id (expected something like backup-20260101120000000000)"
        )))
    }
}

/// Rejects a folder that is not one of [`FOLDERS`].
pub fn check_folder(folder: &str) -> Result<()> {
    if FOLDERS.contains(&folder) {
        Ok(())
    } else {
        Err(Error::Other(format!("{folder:?} is not a store folder")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> ReadFailed {
        ReadFailed {
            store: "s".into(),
            detail: "connection reset".into(),
        }
    }

    #[test]
    fn read_failures_are_found_however_deeply_wrapped() {
        let direct = failed().into_io();
        assert!(ReadFailed::find(&direct).is_some());
        let twice = std::io::Error::other(failed().into_io());
        assert!(ReadFailed::find(&twice).is_some());
        #[derive(Debug, thiserror::Error)]
        #[error("parser failed")]
        struct Parser(#[source] std::io::Error);
        let behind_a_source = std::io::Error::other(Parser(failed().into_io()));
        assert!(ReadFailed::find(&behind_a_source).is_some());
        let unrelated = std::io::Error::other("cancelled");
        assert!(ReadFailed::find(&unrelated).is_none());
    }
}
