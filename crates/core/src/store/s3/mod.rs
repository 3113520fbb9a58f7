//! S3-compatible object storage through the `object_store` crate (request signing, retries with
//! backoff, multipart uploads).
//!
//! Uploads (multipart, with markers for cleaning up after a killed run) are in [`upload`].
//! (Over 400 lines with its tests: the failure classification is tested next to the code.)

mod raw;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig,
};
use secrecy::ExposeSecret;

use super::{check_folder, check_name, ByteStream, ObjectInfo, ReadFailed, Store};
use crate::config::{S3Config, UriStyle};
use crate::error::{Error, Result, StorageCause};

pub struct S3Store {
    inner: Arc<AmazonS3>,
    /// The same client without an overall request timeout, for streaming whole backups.
    downloads: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    endpoint: String,
    concurrency: usize,
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
    /// The bandwidth caps of `config` are not applied here: [`crate::store::open`] wraps the
    /// store in [`crate::store::throttle::Throttled`] for them.
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
            storage_class: config.storage_class.clone(),
        })
    }

    fn key(&self, name: &str) -> Result<ObjectPath> {
        check_name(name)?;
        Ok(self.under_prefix(name))
    }

    /// The objects directly under `dir` (the bucket's root when `None`), each named by `name`
    /// from its file name; those `name` rejects are left out.
    async fn list_directly_under(
        &self,
        dir: Option<ObjectPath>,
        name: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<ObjectInfo>> {
        let listing = self
            .inner
            .list_with_delimiter(dir.as_ref())
            .await
            .map_err(|e| self.storage_error(e))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|meta| {
                Some(ObjectInfo {
                    name: name(meta.location.filename()?)?,
                    size: meta.size,
                    last_modified: meta.last_modified,
                })
            })
            .collect())
    }

    fn under_prefix(&self, relative: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// Object `key` (named `name` in errors), streamed; a failure mid-stream is a typed
    /// [`ReadFailed`], which restore and verify tell apart from damage.
    async fn download(&self, key: &ObjectPath, name: &str) -> Result<ByteStream> {
        let result = self
            .downloads
            .get(key)
            .await
            .map_err(|e| self.object_error(name, e))?;
        let store = self.describe();
        Ok(result
            .into_stream()
            .map(move |item| {
                item.map_err(|e| {
                    ReadFailed {
                        store: store.clone(),
                        detail: error_text(&e),
                    }
                    .into_io()
                })
            })
            .boxed())
    }

    /// A failure of a request that is not about one object (a listing, starting an upload):
    /// "not found" there means the bucket.
    fn storage_error(&self, err: object_store::Error) -> Error {
        let text = error_text(&err);
        let detail = match Failure::of(&err) {
            Failure::MissingBucket => format!(
                "bucket {} does not exist or cannot be accessed at {}{}",
                self.bucket,
                self.endpoint,
                server_message(&text)
            ),
            Failure::Denied => format!(
                "access to bucket {} at {} was refused{}; check access-key, the secret key and the key's permissions on the bucket",
                self.bucket,
                self.endpoint,
                server_message(&text)
            ),
            Failure::Other => text,
        };
        Error::Storage {
            store: self.describe(),
            detail,
            cause: StorageCause::Access,
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

/// What a failed request tells about the bucket, judged by the error's variant or the HTTP
/// status of the answer, never by words in a message (a port, a request id or a key name can
/// contain "403").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    MissingBucket,
    Denied,
    Other,
}

impl Failure {
    fn of(err: &object_store::Error) -> Failure {
        match err {
            object_store::Error::NotFound { .. } => Failure::MissingBucket,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Failure::Denied,
            // object_store maps the status of most requests to the variants above, but not of
            // listings (how check_access reaches the bucket): those are Generic.
            _ => match response_status(err) {
                Some(404) => Failure::MissingBucket,
                Some(401 | 403) => Failure::Denied,
                _ => Failure::Other,
            },
        }
    }
}

/// The innermost cause object_store gives a request the server answered with a failure status.
const STATUS_CAUSE: &str = "Server returned non-2xx status code: ";

/// The HTTP status the server answered a failed request with; `None` when no answer came (a
/// connection, TLS or timeout failure) or the failure is not a request's.
///
/// object_store 0.14 holds the status in its `RetryError`, whose module is private, so it cannot
/// be downcast to from here. Its innermost cause, `RequestError::Status`, is always rendered as
/// `STATUS_CAUSE` followed by the status, and only that exact form is read; a transport failure
/// is told apart by its type, `HttpError`, which object_store does export.
fn response_status(err: &object_store::Error) -> Option<u16> {
    let mut innermost: &(dyn std::error::Error + 'static) = err;
    while let Some(cause) = innermost.source() {
        if cause.is::<object_store::client::HttpError>() {
            return None;
        }
        innermost = cause;
    }
    let rest = innermost.to_string();
    let code = rest.strip_prefix(STATUS_CAUSE)?.get(..3)?;
    code.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| code.parse().ok())
        .flatten()
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
        self.download(&key, name).await
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
        self.list_directly_under(prefix, |file| Some(file.to_string()))
            .await
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<ObjectInfo>> {
        check_folder(folder)?;
        self.list_directly_under(Some(self.under_prefix(folder)), |file| {
            let name = format!("{folder}/{file}");
            check_name(&name).ok().map(|()| name)
        })
        .await
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
    use object_store::client::{HttpError, HttpErrorKind};

    /// Stands in for the layers object_store wraps a failed request in: a named operation whose
    /// source is the request's cause.
    #[derive(Debug, thiserror::Error)]
    #[error("Error performing list request: {0}")]
    struct Layer(#[source] Box<dyn std::error::Error + Send + Sync>);

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Leaf(String);

    fn answered(status: &str, body: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(Layer(Box::new(Leaf(format!(
                "{STATUS_CAUSE}{status}: {body}"
            ))))),
        }
    }

    fn boxed(text: &str) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(Leaf(text.to_string()))
    }

    const DENIED_BODY: &str =
        "<Error><Code>AccessDenied</Code><Message>Forbidden: no such key</Message></Error>";

    #[test]
    fn typed_variants_decide() {
        let path = || "p".to_string();
        assert_eq!(
            Failure::of(&object_store::Error::NotFound {
                path: path(),
                source: boxed("whatever")
            }),
            Failure::MissingBucket
        );
        for err in [
            object_store::Error::PermissionDenied {
                path: path(),
                source: boxed("x"),
            },
            object_store::Error::Unauthenticated {
                path: path(),
                source: boxed("x"),
            },
        ] {
            assert_eq!(Failure::of(&err), Failure::Denied);
        }
    }

    #[test]
    fn a_generic_error_is_judged_by_the_status_of_the_answer() {
        assert_eq!(
            Failure::of(&answered("403 Forbidden", DENIED_BODY)),
            Failure::Denied
        );
        assert_eq!(
            Failure::of(&answered("401 Unauthorized", "")),
            Failure::Denied
        );
        assert_eq!(
            Failure::of(&answered(
                "404 Not Found",
                "<Error><Code>NoSuchBucket</Code></Error>"
            )),
            Failure::MissingBucket
        );
        // The words of a denial under another status decide nothing.
        assert_eq!(
            Failure::of(&answered("500 Internal Server Error", DENIED_BODY)),
            Failure::Other
        );
    }

    #[test]
    fn words_in_a_message_decide_nothing() {
        let transport = object_store::Error::Generic {
            store: "S3",
            source: Box::new(Layer(Box::new(HttpError::new(
                HttpErrorKind::Connect,
                Leaf(format!(
                    "{STATUS_CAUSE}403 AccessDenied NoSuchBucket at 10.0.0.1:9403"
                )),
            )))),
        };
        assert_eq!(Failure::of(&transport), Failure::Other);
        let text_only = object_store::Error::Generic {
            store: "S3",
            source: boxed("request 403 failed: AccessDenied, SignatureDoesNotMatch, NoSuchBucket"),
        };
        assert_eq!(Failure::of(&text_only), Failure::Other);
        assert_eq!(Failure::of(&answered("40", "")), Failure::Other);
    }

    fn store() -> S3Store {
        S3Store::new(&S3Config {
            endpoint: Some("http://127.0.0.1:3900".into()),
            bucket: "b".into(),
            path: "p".into(),
            region: Some("garage".into()),
            uri_style: UriStyle::Path,
            access_key: "GK1".into(),
            secret_key: "s".to_string().into(),
            storage_class: None,
            tls_ca_chain: None,
            upload_concurrency: 2,
            max_upload_rate: None,
            max_download_rate: None,
            max_retries: 0,
            request_timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    fn detail(err: Error) -> String {
        match err {
            Error::Storage { detail, .. } => detail,
            other => panic!("expected a storage error, got {other:?}"),
        }
    }

    #[test]
    fn the_messages_keep_their_words() {
        let store = store();
        assert_eq!(
            detail(store.storage_error(answered("403 Forbidden", DENIED_BODY))),
            "access to bucket b at http://127.0.0.1:3900 was refused (AccessDenied: Forbidden: no such key); check access-key, the secret key and the key's permissions on the bucket"
        );
        assert_eq!(
            detail(store.storage_error(answered(
                "404 Not Found",
                "<Error><Code>NoSuchBucket</Code><Message>Bucket not found: b</Message></Error>"
            ))),
            "bucket b does not exist or cannot be accessed at http://127.0.0.1:3900 (NoSuchBucket: Bucket not found: b)"
        );
        let other = detail(store.storage_error(answered("500 Internal Server Error", "boom")));
        assert!(other.contains("500 Internal Server Error: boom"), "{other}");
        assert!(!other.contains("Generic S3 error"), "{other}");
        // An object that is missing is NotFound, not a missing bucket.
        let missing = store.object_error(
            "backup-1",
            object_store::Error::NotFound {
                path: "p/backup-1".into(),
                source: boxed("404"),
            },
        );
        assert!(matches!(missing, Error::NotFound { ref id, .. } if id == "backup-1"));
    }

    #[test]
    fn host_style_puts_the_bucket_in_the_host() {
        assert_eq!(
            with_bucket_host("http://s3.example:3900", "b").unwrap(),
            "http://b.s3.example:3900"
        );
    }
}
