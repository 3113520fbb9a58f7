//! Where backups are kept, behind one small trait.
//!
//! The backup and restore logic only see [`Store`]; [`s3::S3Store`] and [`local::LocalStore`]
//! implement it. Guarantees every implementation gives:
//! - `put` makes an object visible only when its body stream ended without an error item; an
//!   error item (or a dropped future) leaves nothing visible (multipart uploads are aborted,
//!   local temp files removed).
//! - `get` streams; a body shorter than `head` announced surfaces as an error, never as EOF.
//! - names are backup ids: no `/`, no leading `.`; the store adds its own prefix.

pub mod local;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::config::StoreConfig;
use crate::error::{Error, Result};

/// A stream of object bytes; an `Err` item in a `put` body aborts the upload.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

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

    /// Deletes `name`; a missing object is [`Error::NotFound`].
    async fn delete(&self, name: &str) -> Result<()>;
}

/// Opens the store a configuration names.
pub fn open(config: &StoreConfig) -> Result<Box<dyn Store>> {
    match config {
        StoreConfig::S3(s3) => Ok(Box::new(s3::S3Store::new(s3)?)),
        StoreConfig::Local(local) => Ok(Box::new(local::LocalStore::new(&local.path))),
    }
}

/// Rejects names that could escape the store's prefix or collide with its temp files.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name
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
