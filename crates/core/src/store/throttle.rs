//! Bandwidth caps as a wrapper around any [`Store`].
//!
//! Only the byte streams are paced: a `put` body is read no faster than the upload rate and a
//! `get` body is handed on no faster than the download rate, so the store underneath never needs
//! to know about limits. Small requests (head, list, delete) are not counted.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use super::{ByteStream, ObjectInfo, Store};
use crate::error::Result;

/// A store whose uploads and downloads are capped, in bytes per second.
#[derive(Debug)]
pub struct Throttled<S> {
    inner: S,
    upload: Option<u64>,
    download: Option<u64>,
}

impl<S: Store> Throttled<S> {
    /// `None` (or 0, which would never let a byte through) means no cap in that direction.
    pub fn new(inner: S, upload: Option<u64>, download: Option<u64>) -> Throttled<S> {
        Throttled {
            inner,
            upload: upload.filter(|rate| *rate > 0),
            download: download.filter(|rate| *rate > 0),
        }
    }
}

#[async_trait]
impl<S: Store> Store for Throttled<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn check_access(&self) -> Result<()> {
        self.inner.check_access().await
    }

    async fn put(&self, name: &str, body: ByteStream, size_hint: Option<u64>) -> Result<u64> {
        let body = match self.upload {
            // The clock starts when the store first asks for bytes, not before the store has
            // set up its upload: that setup is not time the body could have been sent in.
            Some(rate) => Paced::new(body, rate, None).boxed(),
            None => body,
        };
        self.inner.put(name, body, size_hint).await
    }

    async fn get(&self, name: &str) -> Result<ByteStream> {
        let body = self.inner.get(name).await?;
        Ok(match self.download {
            Some(rate) => Paced::new(body, rate, Some(Instant::now())).boxed(),
            None => body,
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectInfo> {
        self.inner.head(name).await
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>> {
        self.inner.list().await
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list_folder(folder).await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name).await
    }

    async fn remove_interrupted_uploads(&self) -> Result<Vec<String>> {
        self.inner.remove_interrupted_uploads().await
    }
}

/// Holds each chunk back until the bytes passed so far, this chunk included, fit in `rate`
/// bytes per second since the clock started. Error items pass at once: an error is not traffic.
struct Paced {
    inner: ByteStream,
    rate: u64,
    started: Option<Instant>,
    passed: u64,
    held: Option<(Pin<Box<Sleep>>, bytes::Bytes)>,
}

impl Paced {
    fn new(inner: ByteStream, rate: u64, started: Option<Instant>) -> Paced {
        Paced {
            inner,
            rate,
            started,
            passed: 0,
            held: None,
        }
    }
}

impl Stream for Paced {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some((sleep, _)) = &mut this.held {
            ready!(sleep.as_mut().poll(cx));
            return Poll::Ready(this.held.take().map(|(_, bytes)| Ok(bytes)));
        }
        let started = *this.started.get_or_insert_with(Instant::now);
        let bytes = match ready!(this.inner.poll_next_unpin(cx)) {
            Some(Ok(bytes)) => bytes,
            other => return Poll::Ready(other),
        };
        this.passed += bytes.len() as u64;
        let due = started + Duration::from_secs_f64(this.passed as f64 / this.rate as f64);
        if due <= Instant::now() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        let mut sleep = Box::pin(tokio::time::sleep_until(due));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Ok(bytes))),
            Poll::Pending => {
                this.held = Some((sleep, bytes));
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;
    use bytes::Bytes;

    // Only lower bounds on time: a busy machine makes everything slower, never faster, so these
    // cannot fail for want of speed.

    fn chunks(count: usize, size: usize) -> ByteStream {
        futures::stream::iter((0..count).map(move |i| Ok(Bytes::from(vec![i as u8; size])))).boxed()
    }

    async fn read_all(mut stream: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_paced_stream_never_gets_ahead_of_its_rate() {
        let rate = 4000u64;
        let mut paced = Paced::new(chunks(10, 200), rate, None);
        let start = Instant::now();
        let mut passed = 0u64;
        while let Some(chunk) = paced.next().await {
            passed += chunk.unwrap().len() as u64;
            // Each chunk waits until it, too, fits under the rate.
            let allowed = Duration::from_secs_f64(passed as f64 / rate as f64);
            assert!(
                start.elapsed() >= allowed,
                "{passed} bytes by {:?}",
                start.elapsed()
            );
        }
        assert_eq!(passed, 2000);
    }

    #[tokio::test]
    async fn errors_pass_through() {
        let body = futures::stream::iter(vec![
            Ok(Bytes::from(vec![0u8; 100])),
            Err(std::io::Error::other("producer failed")),
        ])
        .boxed();
        let mut paced = Paced::new(body, 1000, None);
        assert!(paced.next().await.unwrap().is_ok());
        let err = paced.next().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "producer failed");
        assert!(paced.next().await.is_none());
    }

    #[tokio::test]
    async fn uploads_and_downloads_through_a_local_store_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Throttled::new(
            LocalStore::new(dir.path()),
            Some(512 * 1024),
            Some(256 * 1024),
        );
        store.check_access().await.unwrap();

        let start = Instant::now();
        let written = store
            .put("backup-1", chunks(16, 16 * 1024), Some(256 * 1024))
            .await
            .unwrap();
        assert_eq!(written, 256 * 1024);
        // 256 KiB at 512 KiB/s.
        let upload_took = start.elapsed();
        assert!(upload_took >= Duration::from_millis(500), "{upload_took:?}");

        let start = Instant::now();
        let body = read_all(store.get("backup-1").await.unwrap()).await;
        let download_took = start.elapsed();
        assert_eq!(body.len(), 256 * 1024);
        assert!(body
            .chunks(16 * 1024)
            .enumerate()
            .all(|(i, chunk)| chunk.iter().all(|b| *b == i as u8)));
        // 256 KiB at 256 KiB/s.
        assert!(download_took >= Duration::from_secs(1), "{download_took:?}");

        assert_eq!(store.head("backup-1").await.unwrap().size, 256 * 1024);
        assert_eq!(store.list().await.unwrap().len(), 1);
        store.delete("backup-1").await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_rates_the_bytes_pass_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        // A rate of 0 would never let a byte through; it means no cap.
        let store = Throttled::new(LocalStore::new(dir.path()), None, Some(0));
        assert!(store.upload.is_none() && store.download.is_none());
        store.check_access().await.unwrap();
        store
            .put("backup-1", chunks(16, 16 * 1024), None)
            .await
            .unwrap();
        let body = read_all(store.get("backup-1").await.unwrap()).await;
        assert_eq!(body.len(), 256 * 1024);
    }
}
