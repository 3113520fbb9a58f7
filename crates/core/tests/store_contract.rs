//! The behaviour every [`Store`] promises (see `store/mod.rs`), checked the same way against
//! every implementation, as restic's backend test suite does.
//!
//! Each check is a function of a `&dyn Store` (and, where leftovers matter, of a look behind the
//! store at what it keeps hidden). It runs against a local folder always, and against a real S3
//! server when `S3_TEST_*` are set (scripts/s3-test-server.sh starts one). With
//! `SYNAPSE_BACKUP_REQUIRE_S3=1` and no server the S3 tests fail instead of skipping. Every S3
//! test works under its own prefix, so they run in parallel against one bucket.
//!
//! Not covered, because the public API does not expose it: ranged reads (the S3 client resumes
//! a cut download with a range request inside `get`; there is no ranged `get` to call), and
//! unfinished multipart uploads themselves (object_store cannot list them; their markers are
//! what is checked).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use synapse_backup_core::config::Config;
use synapse_backup_core::store::local::LocalStore;
use synapse_backup_core::store::throttle::Throttled;
use synapse_backup_core::store::{self, ByteStream, Store};
use synapse_backup_core::{Error, ErrorKind};

const MIB: usize = 1024 * 1024;
/// Where the S3 store keeps its in-progress markers, under its prefix.
const MARKERS: &str = ".uploads-in-progress";

// ---------------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------------

/// Every size comes back byte for byte, with the size `put` and `head` report. 16 MiB with its
/// size announced makes the S3 store send four parts of 5 MiB and a last short one.
async fn round_trip_keeps_every_byte(store: &dyn Store, _: &Behind) {
    store.check_access().await.unwrap();
    let cases: [(usize, bool); 6] = [
        (0, true),
        (1, true),
        (4096 + 3, false),
        (MIB + 17, false),
        (6 * MIB + 1, false),
        (16 * MIB + 3, true),
    ];
    for (size, announce) in cases {
        let name = format!("backup-size-{size}");
        let data = pattern(size, size as u64);
        let hint = announce.then_some(size as u64);
        let written = store.put(&name, body(&data), hint).await.unwrap();
        assert_eq!(written, size as u64, "{name}: bytes written");
        let info = store.head(&name).await.unwrap();
        assert_eq!(info.name, name);
        assert_eq!(info.size, size as u64, "{name}: head size");
        let age = chrono::Utc::now() - info.last_modified;
        assert!(age.num_minutes().abs() < 60, "{name}: modified {age} ago");
        let back = read(store.get(&name).await.unwrap()).await;
        assert!(back == data, "{name}: {} bytes came back", back.len());
    }
    let mut listed = names(store).await;
    listed.sort();
    let mut expected: Vec<String> = cases
        .iter()
        .map(|(size, _)| format!("backup-size-{size}"))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
}

/// A body that fails half-way makes `put` fail and leaves nothing: not listed, not found, no
/// temp file or marker behind, and the name stays usable.
async fn a_failed_body_leaves_nothing(store: &dyn Store, behind: &Behind) {
    store.check_access().await.unwrap();
    let name = "backup-failed";
    let data = pattern(6 * MIB, 1);
    let failing = body(&data)
        .chain(futures::stream::once(async {
            Err(std::io::Error::other("the producer failed"))
        }))
        .boxed();
    let err = store
        .put(name, failing, Some(12 * MIB as u64))
        .await
        .expect_err("a put whose body failed succeeded");
    assert!(err.to_string().contains("the producer failed"), "{err}");
    assert_absent(store, name).await;
    assert_eq!(behind.hidden().await, Vec::<String>::new(), "left behind");
    assert!(store.remove_interrupted_uploads().await.unwrap().is_empty());

    let written = store.put(name, body(&data), None).await.unwrap();
    assert_eq!(written, data.len() as u64);
    assert!(read(store.get(name).await.unwrap()).await == data);
}

/// A `put` dropped half-way (its caller gave up) leaves nothing visible. What it leaves hidden
/// belongs to this process, which still runs, so cleaning up leaves it alone.
async fn a_dropped_put_leaves_nothing_visible(store: &dyn Store, _: &Behind) {
    store.check_access().await.unwrap();
    let name = "backup-dropped";
    drop_put_half_way(store, name).await;
    assert_absent(store, name).await;
    let removed = store.remove_interrupted_uploads().await.unwrap();
    assert!(
        !removed.iter().any(|n| n == name),
        "a live process's upload was cleaned: {removed:?}"
    );
    assert_absent(store, name).await;
}

async fn missing_names_are_not_found(store: &dyn Store, _: &Behind) {
    store.check_access().await.unwrap();
    let name = "backup-never-written";
    assert_not_found(store.head(name).await.map(|_| ()), name);
    assert_not_found(store.get(name).await.map(|_| ()), name);
    assert_not_found(store.delete(name).await, name);
}

/// `list` shows the objects put and nothing else: not the leftovers of a failed or a dropped
/// put, not the store's own bookkeeping.
async fn list_shows_exactly_the_objects_put(store: &dyn Store, behind: &Behind) {
    store.check_access().await.unwrap();
    assert!(store.list().await.unwrap().is_empty(), "a new store lists");
    drop_put_half_way(store, "backup-dropped").await;
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from(vec![1u8; 1000])),
        Err(std::io::Error::other("the producer failed")),
    ])
    .boxed();
    assert!(store.put("backup-failed", failing, None).await.is_err());
    let objects = [("backup-a", 10), ("backup-b", 0), ("backup-c", MIB + 5)];
    for (name, size) in objects {
        store
            .put(name, body(&pattern(size, 7)), None)
            .await
            .unwrap();
    }
    let mut listed: Vec<(String, u64)> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|info| (info.name, info.size))
        .collect();
    listed.sort();
    let expected: Vec<(String, u64)> = objects
        .iter()
        .map(|(name, size)| (name.to_string(), *size as u64))
        .collect();
    assert_eq!(listed, expected);
    // The dropped put did leave something; list must have skipped it, not missed it.
    assert!(
        !behind.hidden().await.is_empty(),
        "the dropped put left nothing to skip"
    );
}

async fn delete_removes_and_a_second_delete_is_not_found(store: &dyn Store, _: &Behind) {
    store.check_access().await.unwrap();
    let kept = pattern(1000, 3);
    store
        .put("backup-gone", body(&pattern(1000, 2)), None)
        .await
        .unwrap();
    store.put("backup-kept", body(&kept), None).await.unwrap();
    store.delete("backup-gone").await.unwrap();
    assert_absent(store, "backup-gone").await;
    assert_not_found(store.delete("backup-gone").await, "backup-gone");
    assert_eq!(names(store).await, vec!["backup-kept".to_string()]);
    assert!(read(store.get("backup-kept").await.unwrap()).await == kept);
}

/// Names that could escape the prefix or collide with the store's own files are refused before
/// anything is written.
async fn invalid_names_are_refused(store: &dyn Store, behind: &Behind) {
    store.check_access().await.unwrap();
    let too_long = "b".repeat(201);
    for name in [
        "../x",
        ".hidden",
        "a/b",
        "",
        "/abs",
        "x y",
        too_long.as_str(),
    ] {
        let put = store.put(name, body(b"data"), Some(4)).await;
        assert_config(put.map(|_| ()), name, "put");
        assert_config(store.get(name).await.map(|_| ()), name, "get");
        assert_config(store.head(name).await.map(|_| ()), name, "head");
        assert_config(store.delete(name).await, name, "delete");
    }
    assert!(store.list().await.unwrap().is_empty());
    assert_eq!(behind.hidden().await, Vec::<String>::new());
}

async fn cleaning_a_clean_store_changes_nothing(store: &dyn Store, behind: &Behind) {
    store.check_access().await.unwrap();
    assert!(store.remove_interrupted_uploads().await.unwrap().is_empty());
    let data = pattern(MIB + 1, 9);
    store.put("backup-live", body(&data), None).await.unwrap();
    assert!(store.remove_interrupted_uploads().await.unwrap().is_empty());
    assert_eq!(names(store).await, vec!["backup-live".to_string()]);
    assert!(read(store.get("backup-live").await.unwrap()).await == data);
    assert_eq!(behind.hidden().await, Vec::<String>::new());
}

/// Objects in the store's folders are reached by `folder/name`, listed only by `list_folder`,
/// and never by `list`, which a tool that knows no folders uses.
async fn folders_hold_their_own_objects(store: &dyn Store, _: &Behind) {
    store.check_access().await.unwrap();
    let volume = pattern(MIB + 3, 11);
    store.put("backup-a", body(b"base"), None).await.unwrap();
    store
        .put("volumes/backup-a-0000", body(&volume), None)
        .await
        .unwrap();
    store
        .put("volumes/backup-a-0001", body(b"v1"), None)
        .await
        .unwrap();
    store.put("index/backup-a", body(b"i"), None).await.unwrap();
    store
        .put(".pending/backup-b", body(b"p"), None)
        .await
        .unwrap();
    assert_eq!(names(store).await, vec!["backup-a".to_string()]);
    let mut volumes: Vec<(String, u64)> = store
        .list_folder("volumes")
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    volumes.sort();
    assert_eq!(
        volumes,
        vec![
            ("volumes/backup-a-0000".to_string(), volume.len() as u64),
            ("volumes/backup-a-0001".to_string(), 2)
        ]
    );
    let pending: Vec<String> = store
        .list_folder(".pending")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(pending, vec![".pending/backup-b".to_string()]);
    assert!(store.list_folder(".condemned").await.unwrap().is_empty());
    assert!(store.list_folder("other").await.is_err());
    assert!(read(store.get("volumes/backup-a-0000").await.unwrap()).await == volume);
    assert_eq!(store.head("index/backup-a").await.unwrap().size, 1);
    store.delete("volumes/backup-a-0001").await.unwrap();
    assert_not_found(
        store.delete("volumes/backup-a-0001").await,
        "volumes/backup-a-0001",
    );
    assert_eq!(store.list_folder("volumes").await.unwrap().len(), 1);
    for name in [
        "volumes/../x",
        "volumes/.x",
        "volumes/a/b",
        "other/x",
        "volumes/",
    ] {
        assert_config(store.head(name).await.map(|_| ()), name, "head");
    }
    assert!(store.remove_interrupted_uploads().await.unwrap().is_empty());
}

async fn check_access_prepares_a_new_store(store: &dyn Store, _: &Behind) {
    assert!(!store.describe().is_empty());
    store.check_access().await.unwrap();
    store.check_access().await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The same checks for every store
// ---------------------------------------------------------------------------------------------

macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let subject = super::Subject::local();
                    super::$check(&*subject.store, &subject.behind).await;
                }
            )*
        }
        mod local_throttled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let subject = super::Subject::local_throttled();
                    super::$check(&*subject.store, &subject.behind).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(subject) = super::Subject::s3(stringify!($check), "") else {
                        return;
                    };
                    super::$check(&*subject.store, &subject.behind).await;
                    subject.behind.clean_up().await;
                }
            )*
        }
        mod s3_throttled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    // Set through the configuration, as a deployment sets them.
                    let rates = "max-upload-rate = \"400MiB\"\nmax-download-rate = \"400MiB\"\n";
                    let Some(subject) = super::Subject::s3(stringify!($check), rates) else {
                        return;
                    };
                    super::$check(&*subject.store, &subject.behind).await;
                    subject.behind.clean_up().await;
                }
            )*
        }
    };
}

contract!(
    round_trip_keeps_every_byte,
    a_failed_body_leaves_nothing,
    a_dropped_put_leaves_nothing_visible,
    missing_names_are_not_found,
    list_shows_exactly_the_objects_put,
    delete_removes_and_a_second_delete_is_not_found,
    invalid_names_are_refused,
    cleaning_a_clean_store_changes_nothing,
    check_access_prepares_a_new_store,
    folders_hold_their_own_objects,
);

// ---------------------------------------------------------------------------------------------
// How S3 failures are reported (needs the real server's answers)
// ---------------------------------------------------------------------------------------------

mod s3_errors {
    use super::*;

    fn storage_detail(err: Error) -> String {
        match err {
            Error::Storage { detail, .. } => detail,
            other => panic!("expected a storage error, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_secret_key_is_refused() {
        let Some(env) = S3Env::from_env() else { return };
        let env = S3Env {
            secret_key: "0".repeat(64),
            ..env
        };
        let (store, _dir) = env.open("wrong-secret", "");
        let detail = storage_detail(store.check_access().await.unwrap_err());
        assert!(detail.contains("was refused"), "{detail}");
        assert!(detail.contains("check access-key"), "{detail}");
        assert!(!detail.contains(&"0".repeat(64)), "{detail}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bucket_the_key_may_not_read_is_refused() {
        let Some(env) = S3Env::from_env() else { return };
        let Ok(other) = std::env::var("S3_TEST_OTHER_BUCKET") else {
            eprintln!("S3_TEST_OTHER_BUCKET not set: skipping");
            return;
        };
        let env = S3Env {
            bucket: other,
            ..env
        };
        let (store, _dir) = env.open("other-bucket", "");
        let detail = storage_detail(store.check_access().await.unwrap_err());
        assert!(detail.contains("was refused"), "{detail}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_bucket_is_named() {
        let Some(env) = S3Env::from_env() else { return };
        let env = S3Env {
            bucket: "no-such-bucket-store-contract".into(),
            ..env
        };
        let (store, _dir) = env.open("no-bucket", "");
        let detail = storage_detail(store.check_access().await.unwrap_err());
        assert!(
            detail.contains("bucket no-such-bucket-store-contract does not exist"),
            "{detail}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A store under test, opened through its configuration as the tool opens it.
struct Subject {
    store: Box<dyn Store>,
    behind: Behind,
}

/// A look behind a store at what it keeps out of `list`.
enum Behind {
    Local {
        root: PathBuf,
        _dir: tempfile::TempDir,
    },
    S3 {
        client: AmazonS3,
        prefix: String,
        _dir: tempfile::TempDir,
    },
}

impl Subject {
    fn local() -> Subject {
        let dir = tempfile::tempdir().unwrap();
        // Not created yet: check_access creates it.
        let root = dir.path().join("backups");
        let config = parse(
            &format!("[local]\npath = \"{}\"\n", root.display()),
            dir.path(),
        );
        Subject {
            store: store::open(&config.store).unwrap(),
            behind: Behind::Local { root, _dir: dir },
        }
    }

    /// The local folder behind the bandwidth caps, set high enough not to slow the suite: what
    /// matters is that the wrapper keeps every promise of the store it wraps.
    fn local_throttled() -> Subject {
        let Subject { store: _, behind } = Subject::local();
        let Behind::Local { root, .. } = &behind else {
            unreachable!()
        };
        let store = Throttled::new(
            LocalStore::new(root),
            Some(400 * MIB as u64),
            Some(400 * MIB as u64),
        );
        Subject {
            store: Box::new(store),
            behind,
        }
    }

    fn s3(test: &str, settings: &str) -> Option<Subject> {
        let env = S3Env::from_env()?;
        let prefix = unique_prefix(test);
        let (store, dir) = env.open(&prefix, settings);
        Some(Subject {
            store,
            behind: Behind::S3 {
                client: env.client(),
                prefix,
                _dir: dir,
            },
        })
    }
}

impl Behind {
    /// What the store keeps besides its objects: temp files, upload markers.
    async fn hidden(&self) -> Vec<String> {
        match self {
            Behind::Local { root, .. } => {
                let mut hidden: Vec<String> = match std::fs::read_dir(root) {
                    Ok(entries) => entries
                        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
                        .filter(|name| name.starts_with('.'))
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => panic!("{}: {e}", root.display()),
                };
                hidden.sort();
                hidden
            }
            Behind::S3 { client, prefix, .. } => {
                let markers = ObjectPath::from(format!("{prefix}/{MARKERS}"));
                let mut hidden: Vec<String> = client
                    .list(Some(&markers))
                    .map_ok(|meta| meta.location.to_string())
                    .try_collect()
                    .await
                    .unwrap();
                hidden.sort();
                hidden
            }
        }
    }

    /// Aborts the uploads a dropped put left and deletes everything under the test's prefix,
    /// so that a long-lived test bucket does not fill up.
    async fn clean_up(&self) {
        let Behind::S3 { client, prefix, .. } = self else {
            return;
        };
        let root = ObjectPath::from(prefix.as_str());
        let Ok(objects) = client
            .list(Some(&root))
            .try_collect::<Vec<object_store::ObjectMeta>>()
            .await
        else {
            return;
        };
        for meta in objects {
            if meta.location.as_ref().contains(MARKERS) {
                abort_marked_upload(client, prefix, &meta.location).await;
            }
            let _ = client.delete(&meta.location).await;
        }
    }
}

async fn abort_marked_upload(client: &AmazonS3, prefix: &str, marker: &ObjectPath) {
    use object_store::multipart::MultipartStore;
    #[derive(serde::Deserialize)]
    struct Marker {
        upload_id: String,
    }
    let Some(name) = marker.filename() else {
        return;
    };
    let Ok(found) = client.get(marker).await else {
        return;
    };
    let Ok(bytes) = found.bytes().await else {
        return;
    };
    if let Ok(parsed) = serde_json::from_slice::<Marker>(&bytes) {
        let key = ObjectPath::from(format!("{prefix}/{name}"));
        let _ = client.abort_multipart(&key, &parsed.upload_id).await;
    }
}

#[derive(Clone)]
struct S3Env {
    endpoint: String,
    region: String,
    bucket: String,
    access_key: String,
    secret_key: String,
}

impl S3Env {
    /// Reads `S3_TEST_*`; without them the S3 tests are skipped, unless
    /// `SYNAPSE_BACKUP_REQUIRE_S3=1`, where that is a failure.
    fn from_env() -> Option<S3Env> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let env = (|| {
            Some(S3Env {
                endpoint: get("S3_TEST_ENDPOINT")?,
                region: get("S3_TEST_REGION").unwrap_or_else(|| "garage".into()),
                bucket: get("S3_TEST_BUCKET")?,
                access_key: get("S3_TEST_ACCESS_KEY")?,
                secret_key: get("S3_TEST_SECRET_KEY")?,
            })
        })();
        if env.is_none() && std::env::var("SYNAPSE_BACKUP_REQUIRE_S3").as_deref() == Ok("1") {
            panic!("SYNAPSE_BACKUP_REQUIRE_S3=1 but S3_TEST_* are not set: start scripts/s3-test-server.sh");
        }
        if env.is_none() {
            eprintln!("S3_TEST_* not set: skipping an S3 test");
        }
        env
    }

    /// Opens the store an `[s3]` section with `prefix` and `settings` describes, the secret in a
    /// 0600 file as a deployment keeps it. The directory holding it must outlive the test.
    fn open(&self, prefix: &str, settings: &str) -> (Box<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s3-secret");
        std::fs::write(&secret, &self.secret_key).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "[s3]\nendpoint = \"{}\"\nbucket = \"{}\"\npath = \"{prefix}\"\nregion = \"{}\"\ns3-uri-style = \"path\"\naccess-key = \"{}\"\nsecret-key-file = \"{}\"\nmax-retries = 2\n{settings}",
            self.endpoint,
            self.bucket,
            self.region,
            self.access_key,
            secret.display()
        );
        let config = parse(&text, dir.path());
        (store::open(&config.store).unwrap(), dir)
    }

    /// A plain client for looking behind the store.
    fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .build()
            .unwrap()
    }
}

fn parse(text: &str, dir: &Path) -> Config {
    Config::parse(text, &dir.join("config.toml")).unwrap()
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("store-contract-{test}-{}-{nanos}", std::process::id())
}

/// Starts a put whose body sends 6 MiB (more than one S3 part) and then stalls, and drops it
/// while it waits.
async fn drop_put_half_way(store: &dyn Store, name: &str) {
    let data = pattern(6 * MIB, 5);
    let sent = Arc::new(tokio::sync::Notify::new());
    let signal = sent.clone();
    let stalling = body(&data)
        .chain(
            futures::stream::once(async move {
                signal.notify_one();
                futures::future::pending::<()>().await;
            })
            .filter_map(|()| async { None::<std::io::Result<Bytes>> }),
        )
        .boxed();
    let put = store.put(name, stalling, Some(12 * MIB as u64));
    tokio::select! {
        result = put => panic!("a stalled put finished: {result:?}"),
        () = async {
            sent.notified().await;
            // Lets the part already handed over reach the store.
            tokio::time::sleep(Duration::from_millis(500)).await;
        } => {}
    }
}

/// Bytes that differ from offset to offset and from `seed` to seed, so that a misplaced or
/// repeated chunk is noticed.
fn pattern(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// `data` as a stream of chunks of uneven sizes, as the archive writer produces them.
fn body(data: &[u8]) -> ByteStream {
    let sizes = [1, 4093, 65536, MIB + 7, 300_000];
    let mut chunks = Vec::new();
    let mut offset = 0;
    let mut i = 0;
    while offset < data.len() {
        let end = (offset + sizes[i % sizes.len()]).min(data.len());
        chunks.push(Ok(Bytes::copy_from_slice(&data[offset..end])));
        offset = end;
        i += 1;
    }
    futures::stream::iter(chunks).boxed()
}

async fn read(stream: ByteStream) -> Vec<u8> {
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

async fn names(store: &dyn Store) -> Vec<String> {
    let mut names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.name)
        .collect();
    names.sort();
    names
}

async fn assert_absent(store: &dyn Store, name: &str) {
    assert!(
        !names(store).await.iter().any(|n| n == name),
        "{name} is listed"
    );
    assert_not_found(store.head(name).await.map(|_| ()), name);
    assert_not_found(store.get(name).await.map(|_| ()), name);
}

fn assert_not_found(result: Result<(), Error>, name: &str) {
    match result {
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::NotFound, "{name}: {err:?}");
            assert!(
                matches!(&err, Error::NotFound { id, .. } if id == name),
                "{name}: {err:?}"
            );
        }
        Ok(()) => panic!("{name}: expected NotFound, got success"),
    }
}

fn assert_config(result: Result<(), Error>, name: &str, what: &str) {
    match result {
        Err(err) => assert_eq!(err.kind(), ErrorKind::Config, "{what} {name:?}: {err:?}"),
        Ok(()) => panic!("{what} {name:?} was accepted"),
    }
}
