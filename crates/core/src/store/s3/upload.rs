//! Multipart uploads, and the markers that let a later run clean up after one that was killed.
//!
//! Uploads are always multipart with several parts in flight; on any failure the upload is
//! aborted, so no half backup ever becomes visible. While an upload runs, a small marker object
//! `PREFIX/.uploads-in-progress/BACKUP-ID` holds its upload id and owner, so that when the abort
//! itself cannot happen (SIGKILL, server gone) a later create-backup aborts it: object_store has
//! no ListMultipartUploads, and the marker is also what tells a live upload from a dead one.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, MultipartId, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutPayload,
};
use serde::{Deserialize, Serialize};

use super::S3Store;
use crate::error::{Error, Result, StorageCause};
use crate::store::owner::{UploadOwner, FOREIGN_STALE_AFTER};
use crate::store::{check_name, ByteStream, Store};

/// S3 allows at most 10,000 parts; part sizes are chosen to stay well below that.
const MAX_PARTS: u64 = 9_000;
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_SIZE: u64 = 512 * 1024 * 1024;
/// Used when the size is unknown: parts of 7.3 MiB, so up to 64 GiB fit.
const DEFAULT_EXPECTED_SIZE: u64 = 64 * 1024 * 1024 * 1024;
/// Under the store's prefix; `list` only sees objects directly under the prefix, so markers are
/// never taken for backups.
const IN_PROGRESS_DIR: &str = ".uploads-in-progress";
/// A marker is rewritten this often, so that its age says when its upload was last alive (an
/// upload from another machine is judged by that age alone).
const MARKER_REFRESH: Duration = Duration::from_secs(3600);

/// The body of an in-progress marker. Holds nothing about the server being backed up.
#[derive(Serialize, Deserialize)]
struct UploadMarker {
    upload_id: MultipartId,
    owner: String,
}

/// One multipart upload under way.
struct Upload<'a> {
    store: &'a S3Store,
    name: &'a str,
    key: ObjectPath,
    id: MultipartId,
    marker: Bytes,
}

impl S3Store {
    fn marker_key(&self, name: &str) -> ObjectPath {
        self.under_prefix(&format!("{IN_PROGRESS_DIR}/{name}"))
    }

    fn part_size(size_hint: Option<u64>) -> usize {
        let expected = size_hint.unwrap_or(DEFAULT_EXPECTED_SIZE);
        expected
            .div_ceil(MAX_PARTS)
            .clamp(MIN_PART_SIZE, MAX_PART_SIZE) as usize
    }

    /// Stores `body` under `name` as a multipart upload, visible only once it completed.
    pub(super) async fn upload(
        &self,
        name: &str,
        body: ByteStream,
        size_hint: Option<u64>,
    ) -> Result<u64> {
        // S3 servers refuse an empty part (Garage: "Empty body"), so an empty object is one plain
        // PUT; anything else goes as a multipart upload, its first bytes put back in front.
        let mut body = body;
        let first = loop {
            match body.next().await {
                Some(Ok(bytes)) if bytes.is_empty() => continue,
                Some(Ok(bytes)) => break bytes,
                Some(Err(e)) => return Err(Error::Other(format!("backup stream failed: {e}"))),
                None => {
                    let key = self.key(name)?;
                    self.inner
                        .put(&key, PutPayload::default())
                        .await
                        .map_err(|e| self.storage_error(e))?;
                    return Ok(0);
                }
            }
        };
        let body: ByteStream = futures::stream::once(async move { Ok(first) })
            .chain(body)
            .boxed();
        let upload = Upload::begin(self, name).await?;
        let result = match upload.send_parts(body, Self::part_size(size_hint)).await {
            Ok((parts, total)) => upload.complete(parts).await.map(|()| total),
            Err(e) => Err(e),
        };
        match result {
            Ok(total) => {
                upload.remove_marker().await;
                Ok(total)
            }
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    /// Aborts the uploads whose markers name a process that is gone, and removes the markers.
    /// A marker that cannot be handled is reported and skipped; the next run tries again.
    pub(super) async fn abort_abandoned_uploads(&self) -> Result<Vec<String>> {
        let markers: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(&self.under_prefix(IN_PROGRESS_DIR)))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.storage_error(e))?;
        let mut aborted = Vec::new();
        let root = self.under_prefix(IN_PROGRESS_DIR);
        for meta in markers {
            // The marker of `volumes/x` is `<IN_PROGRESS_DIR>/volumes/x`.
            let Some(name) = meta.location.prefix_match(&root).map(|parts| {
                parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            }) else {
                continue;
            };
            if check_name(&name).is_err() {
                continue;
            }
            match self.abort_if_abandoned(&name, &meta).await {
                Ok(true) => aborted.push(name),
                Ok(false) => {}
                Err(e) => tracing::warn!("could not clean up the unfinished upload of {name}: {e}"),
            }
        }
        Ok(aborted)
    }

    /// Returns whether an unfinished upload was aborted.
    async fn abort_if_abandoned(
        &self,
        name: &str,
        meta: &object_store::ObjectMeta,
    ) -> Result<bool> {
        let body = match self.inner.get(&meta.location).await {
            Ok(result) => result.bytes().await.map_err(|e| self.storage_error(e))?,
            // Its upload finished meanwhile.
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.storage_error(e)),
        };
        let age = (chrono::Utc::now() - meta.last_modified)
            .to_std()
            .unwrap_or_default();
        let aborted = match serde_json::from_slice::<UploadMarker>(&body) {
            Ok(marker) if !UploadOwner::is_abandoned(&marker.owner, age) => return Ok(false),
            Ok(marker) => {
                let key = self.key(name)?;
                match self.inner.abort_multipart(&key, &marker.upload_id).await {
                    Ok(()) => true,
                    // The upload completed (and its marker outlived it) or is already gone:
                    // S3 answers NoSuchUpload, and the finished backup is left alone.
                    Err(object_store::Error::NotFound { .. }) => false,
                    Err(e) => return Err(self.storage_error(e)),
                }
            }
            Err(_) if age <= FOREIGN_STALE_AFTER => return Ok(false),
            Err(_) => false,
        };
        match self.inner.delete(&meta.location).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(aborted),
            Err(e) => Err(self.storage_error(e)),
        }
    }
}

impl<'a> Upload<'a> {
    /// Starts the multipart upload and writes its marker.
    async fn begin(store: &'a S3Store, name: &'a str) -> Result<Upload<'a>> {
        let key = store.key(name)?;
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::ContentType,
            "application/octet-stream".to_string().into(),
        );
        if let Some(class) = &store.storage_class {
            attributes.insert(Attribute::StorageClass, class.clone().into());
        }
        let options = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let id = store
            .inner
            .create_multipart_opts(&key, options)
            .await
            .map_err(|e| store.storage_error(e))?;
        let marker = serde_json::to_vec(&UploadMarker {
            upload_id: id.clone(),
            owner: UploadOwner::current().token(),
        })
        .map_err(|e| Error::Other(format!("upload marker: {e}")))?;
        let upload = Upload {
            store,
            name,
            key,
            id,
            marker: marker.into(),
        };
        if let Err(e) = upload.write_marker().await {
            upload.abort().await;
            return Err(e);
        }
        Ok(upload)
    }

    async fn write_marker(&self) -> Result<()> {
        self.store
            .inner
            .put(
                &self.store.marker_key(self.name),
                self.marker.clone().into(),
            )
            .await
            .map(|_| ())
            .map_err(|e| self.store.storage_error(e))
    }

    async fn remove_marker(&self) {
        if let Err(e) = self
            .store
            .inner
            .delete(&self.store.marker_key(self.name))
            .await
        {
            // Harmless: the next create-backup finds the upload complete (S3 answers
            // NoSuchUpload to its abort) and removes the marker.
            tracing::warn!("could not remove the upload marker of {}: {e}", self.name);
        }
    }

    /// Sends `body` as parts, several at a time, and returns them in order with the byte count.
    async fn send_parts(
        &self,
        mut body: ByteStream,
        part_size: usize,
    ) -> Result<(Vec<PartId>, u64)> {
        let mut in_flight = FuturesUnordered::new();
        let mut parts: Vec<Option<PartId>> = Vec::new();
        // Chunks are gathered, not copied, into a part; S3 only needs every part but the last
        // to be at least 5 MiB, not all parts to be the same size.
        let mut gathered: Vec<Bytes> = Vec::new();
        let mut gathered_len = 0usize;
        let mut total = 0u64;
        let mut marker_written = Instant::now();
        let mut finished = false;
        while !finished {
            let ready = match body.next().await {
                Some(Ok(bytes)) => {
                    total += bytes.len() as u64;
                    gathered_len += bytes.len();
                    gathered.push(bytes);
                    gathered_len >= part_size
                }
                Some(Err(e)) => return Err(Error::Other(format!("backup stream failed: {e}"))),
                None => {
                    finished = true;
                    !gathered.is_empty()
                }
            };
            if !ready {
                continue;
            }
            let part: PutPayload = std::mem::take(&mut gathered).into_iter().collect();
            gathered_len = 0;
            while in_flight.len() >= self.store.concurrency {
                if let Some((index, result)) = in_flight.next().await {
                    parts[index] = Some(self.part_result(result)?);
                }
            }
            if marker_written.elapsed() >= MARKER_REFRESH {
                self.write_marker().await?;
                marker_written = Instant::now();
            }
            let index = parts.len();
            parts.push(None);
            let (inner, key, id) = (&self.store.inner, &self.key, &self.id);
            in_flight.push(async move { (index, inner.put_part(key, id, index, part).await) });
        }
        while let Some((index, result)) = in_flight.next().await {
            parts[index] = Some(self.part_result(result)?);
        }
        Ok((parts.into_iter().flatten().collect(), total))
    }

    fn part_result(&self, result: object_store::Result<PartId>) -> Result<PartId> {
        result.map_err(|e| self.error(e))
    }

    async fn complete(&self, parts: Vec<PartId>) -> Result<()> {
        self.store
            .inner
            .complete_multipart(&self.key, &self.id, parts)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    /// Aborts the upload and removes its marker. A failure is only logged: the marker stays, and
    /// the next create-backup aborts the upload.
    async fn abort(&self) {
        match self.store.inner.abort_multipart(&self.key, &self.id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => self.remove_marker().await,
            Err(e) => tracing::warn!(
                "could not abort the unfinished upload of {} in {}: {}; the next create-backup will",
                self.name,
                self.store.describe(),
                self.store.storage_error(e)
            ),
        }
    }

    /// Once an upload exists, "not found" means the upload vanished, not the bucket.
    fn error(&self, err: object_store::Error) -> Error {
        match err {
            object_store::Error::NotFound { .. } => Error::Storage {
                store: self.store.describe(),
                detail: format!(
                    "the multipart upload of {} no longer exists (aborted by another process or a lifecycle rule)",
                    self.name
                ),
                cause: StorageCause::UploadAborted,
            },
            other => self.store.storage_error(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_stay_within_limits() {
        assert_eq!(S3Store::part_size(Some(1 << 30)) as u64, MIN_PART_SIZE);
        let big = 1u64 << 40;
        assert!(big.div_ceil(S3Store::part_size(Some(big)) as u64) <= MAX_PARTS);
    }
}
