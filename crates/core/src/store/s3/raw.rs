//! Objects named by their whole key rather than by a backup name: a media storage provider's
//! bucket (`crate::provider`), whose keys are Synapse's media paths. The same clients, retries,
//! timeouts and error wording as the backup store; none of the `Store` trait's name rules.

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::S3Store;
use crate::error::Result;
use crate::store::ByteStream;

impl S3Store {
    /// Every object under `dir` (a key prefix that ends where a path segment ends), by key,
    /// with its size.
    pub(crate) async fn list_keys_under(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let dir = ObjectPath::from(dir);
        self.inner
            .list(Some(&dir))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .map_err(|e| self.storage_error(e))
    }

    /// The size of the object `key`, or `None` when there is none.
    pub(crate) async fn key_size(&self, key: &str) -> Result<Option<u64>> {
        match self.inner.head(&ObjectPath::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.storage_error(e)),
        }
    }

    /// The content of the object `key`, streamed.
    pub(crate) async fn get_key(&self, key: &str) -> Result<ByteStream> {
        self.download(&ObjectPath::from(key), key).await
    }

    /// Writes `bytes` as the object `key` (media files: one request each, as the provider
    /// itself uploads them).
    pub(crate) async fn put_key(&self, key: &str, bytes: bytes::Bytes) -> Result<()> {
        let mut attributes = object_store::Attributes::new();
        if let Some(class) = &self.storage_class {
            attributes.insert(object_store::Attribute::StorageClass, class.clone().into());
        }
        let options = object_store::PutOptions {
            attributes,
            ..Default::default()
        };
        self.inner
            .put_opts(&ObjectPath::from(key), PutPayload::from(bytes), options)
            .await
            .map(|_| ())
            .map_err(|e| self.object_error(key, e))
    }
}
