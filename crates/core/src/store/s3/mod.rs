//! S3-compatible object storage through the `object_store` crate (request signing, retries with
//! backoff, multipart uploads).
//!
//! Uploads (multipart, with markers for cleaning up after a killed run) are in [`upload`].

mod upload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig,
};
use secrecy::ExposeSecret;

use super::{check_name, ByteStream, ObjectInfo, ReadFailed, Store};
use crate::config::{S3Config, UriStyle};
use crate::error::{Error, Result};

pub struct S3Store {
    inner: Arc<AmazonS3>,
    /// The same client without an overall request timeout, for streaming whole backups.
    downloads: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    endpoint: String,
    concurrency: usize,
    max_upload_rate: Option<u64>,
    max_download_rate: Option<u64>,
    storage_class: Option<String>,
}

// The inner client holds the credentials; this prints only what is safe to show.
impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    pub fn new(config: &S3Config) -> Result<S3Store> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_access_key_id(&config.access_key)
            .with_secret_access_key(config.secret_key.expose_secret())
            .with_region(config.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_virtual_hosted_style_request(config.uri_style == UriStyle::Host)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: config.max_retries,
                // Longer than one request's timeout, so a request that hangs is retried.
                retry_timeout: (config.request_timeout * 5).max(Duration::from_secs(600)),
            });
        let mut options = ClientOptions::new().with_connect_timeout(Duration::from_secs(10));
        if let Some(endpoint) = &config.endpoint {
            let endpoint = match config.uri_style {
                // object_store expects the bucket already in a virtual-hosted endpoint.
                UriStyle::Host => with_bucket_host(endpoint, &config.bucket)?,
                UriStyle::Path => endpoint.clone(),
            };
            options = options.with_allow_http(endpoint.starts_with("http://"));
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(ca_path) = &config.tls_ca_chain {
            let pem = std::fs::read(ca_path).map_err(|e| {
                Error::config(format!(
                    "cannot read [s3] tls-ca-chain {}: {e}",
                    ca_path.display()
                ))
            })?;
            let certificates = Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::config(format!(
                    "[s3] tls-ca-chain {} is not PEM: {e}",
                    ca_path.display()
                ))
            })?;
            for certificate in certificates {
                options = options.with_root_certificate(certificate);
            }
        }
        let build = |options: ClientOptions| {
            builder
                .clone()
                .with_client_options(options)
                .build()
                .map_err(|e| Error::config(format!("[s3] settings are not usable: {e}")))
        };
        // Every request but a download is small (a part is at most a few MiB): one silent for
        // request-timeout is stuck, not slow. A download streams a whole backup, so it gets no
        // overall limit; it is abandoned (and resumed) once no byte arrived for that long.
        let inner = build(options.clone().with_timeout(config.request_timeout))?;
        let downloads = build(
            options
                .with_timeout_disabled()
                .with_read_timeout(config.request_timeout),
        )?;
        Ok(S3Store {
            inner: Arc::new(inner),
            downloads: Arc::new(downloads),
            bucket: config.bucket.clone(),
            prefix: config.path.clone(),
            endpoint: config.endpoint.clone().unwrap_or_else(|| {
                format!("AWS region {}", config.region.as_deref().unwrap_or("?"))
            }),
            concurrency: config.upload_concurrency,
            max_upload_rate: config.max_upload_rate,
            max_download_rate: config.max_download_rate,
            storage_class: config.storage_class.clone(),
        })
    }

    fn key(&self, name: &str) -> Result<ObjectPath> {
        check_name(name)?;
        Ok(self.under_prefix(name))
    }

    fn under_prefix(&self, relative: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{}/{relative}", self.prefix))
        }
    }

    fn storage_error(&self, err: object_store::Error) -> Error {
        let text = error_text(&err);
        let server_says = server_message(&text);
        let denied = matches!(
            err,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || text.contains("403")
            || text.contains("AccessDenied")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("InvalidAccessKeyId");
        let missing_bucket =
            matches!(err, object_store::Error::NotFound { .. }) || text.contains("NoSuchBucket");
        let detail = if missing_bucket {
            format!(
                "bucket {} does not exist or cannot be accessed at {}{server_says}",
                self.bucket, self.endpoint
            )
        } else if denied {
            format!(
                "access to bucket {} at {} was refused{server_says}; check access-key, the secret key and the key's permissions on the bucket",
                self.bucket, self.endpoint
            )
        } else {
            text
        };
        Error::Storage {
            store: self.describe(),
            detail,
        }
    }

    fn object_error(&self, name: &str, err: object_store::Error) -> Error {
        match err {
            object_store::Error::NotFound { .. } => Error::NotFound {
                id: name.to_string(),
                store: self.describe(),
            },
            other => self.storage_error(other),
        }
    }
}

/// The error with its innermost cause (a TLS, DNS or connection failure), which is what tells
/// the user what to fix.
fn error_text(err: &object_store::Error) -> String {
    // object_store prefixes every layer with the same label.
    let text = err.to_string().replace("Generic S3 error: ", "");
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(err);
    let mut innermost = None;
    while let Some(current) = cause {
        innermost = Some(current.to_string());
        cause = current.source();
    }
    match innermost {
        Some(innermost) if !text.contains(&innermost) => format!("{text} ({innermost})"),
        _ => text,
    }
}

/// The `<Code>` and `<Message>` of an S3 error body, as ` (Code: Message)`.
fn server_message(text: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].to_string())
    };
    match (
        between("<Code>", "</Code>"),
        between("<Message>", "</Message>"),
    ) {
        (Some(code), Some(message)) => format!(" ({code}: {message})"),
        (Some(code), None) => format!(" ({code})"),
        _ => String::new(),
    }
}

/// Sleeps until sending `sent` bytes since `started` no longer exceeds `rate` bytes per second.
async fn throttle(started: Instant, sent: u64, rate: u64) {
    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        tokio::time::sleep(due - elapsed).await;
    }
}

fn with_bucket_host(endpoint: &str, bucket: &str) -> Result<String> {
    let mut url = url::Url::parse(endpoint)
        .map_err(|e| Error::config(format!("[s3] endpoint {endpoint:?} is not a URL: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| Error::config(format!("[s3] endpoint {endpoint:?} has no host")))?
        .to_string();
    if !host.starts_with(&format!("{bucket}.")) {
        url.set_host(Some(&format!("{bucket}.{host}")))
            .map_err(|e| Error::config(format!("[s3] endpoint {endpoint:?}: {e}")))?;
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{} at {}", self.bucket, self.endpoint)
        } else {
            format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
        }
    }

    async fn check_access(&self) -> Result<()> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut listing = self.inner.list(prefix.as_ref());
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(self.storage_error(e)),
        }
    }

    async fn put(&self, name: &str, body: ByteStream, size_hint: Option<u64>) -> Result<u64> {
        self.upload(name, body, size_hint).await
    }

    async fn get(&self, name: &str) -> Result<ByteStream> {
        let key = self.key(name)?;
        let result = self
            .downloads
            .get(&key)
            .await
            .map_err(|e| self.object_error(name, e))?;
        let store = self.describe();
        let stream = result.into_stream().map(move |item| {
            item.map_err(|e| {
                ReadFailed {
                    store: store.clone(),
                    detail: error_text(&e),
                }
                .into_io()
            })
        });
        let Some(rate) = self.max_download_rate else {
            return Ok(stream.boxed());
        };
        let started = Instant::now();
        let mut received = 0u64;
        Ok(stream
            .then(move |item| {
                if let Ok(bytes) = &item {
                    received += bytes.len() as u64;
                }
                let due = received;
                async move {
                    throttle(started, due, rate).await;
                    item
                }
            })
            .boxed())
    }

    async fn head(&self, name: &str) -> Result<ObjectInfo> {
        let key = self.key(name)?;
        let meta = self
            .inner
            .head(&key)
            .await
            .map_err(|e| self.object_error(name, e))?;
        Ok(ObjectInfo {
            name: name.to_string(),
            size: meta.size,
            last_modified: meta.last_modified,
        })
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let listing = self
            .inner
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| self.storage_error(e))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_string();
                Some(ObjectInfo {
                    name,
                    size: meta.size,
                    last_modified: meta.last_modified,
                })
            })
            .collect())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        // S3 answers a DELETE of a missing key with success; ask first so a typo is an error.
        self.head(name).await?;
        let key = self.key(name)?;
        self.inner
            .delete(&key)
            .await
            .map_err(|e| self.object_error(name, e))
    }

    async fn remove_interrupted_uploads(&self) -> Result<Vec<String>> {
        self.abort_abandoned_uploads().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_style_puts_the_bucket_in_the_host() {
        assert_eq!(
            with_bucket_host("http://s3.example:3900", "b").unwrap(),
            "http://b.s3.example:3900"
        );
    }
}
