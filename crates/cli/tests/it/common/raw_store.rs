//! Objects of a world's store, read and changed behind the tool's back, as a bucket writer, a
//! lifecycle rule or a disk fault would: the same calls for the local folder and for Garage.

use std::fs;
use std::path::PathBuf;

use futures::TryStreamExt;
use object_store::{aws::AmazonS3, path::Path as Key, ObjectStore, ObjectStoreExt, PutPayload};

use super::{S3Env, World};

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    Garage,
}

pub enum RawStore {
    Local(PathBuf),
    S3 {
        client: AmazonS3,
        prefix: String,
        runtime: tokio::runtime::Runtime,
    },
}

impl RawStore {
    /// The store of `world`, with `s3` when the world's config has an [s3] section.
    pub fn of(world: &World, s3: Option<&S3Env>) -> RawStore {
        match s3 {
            None => RawStore::Local(world.store.clone()),
            Some(s3) => RawStore::S3 {
                client: s3.client(),
                prefix: S3Env::prefix_of(world),
                runtime: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap(),
            },
        }
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        match self {
            RawStore::Local(root) => fs::read(root.join(name)).unwrap(),
            RawStore::S3 {
                client,
                prefix,
                runtime,
            } => runtime.block_on(async {
                let key = Key::from(format!("{prefix}/{name}"));
                let got = client.get(&key).await.unwrap();
                got.bytes().await.unwrap().to_vec()
            }),
        }
    }

    pub fn write(&self, name: &str, bytes: &[u8]) {
        match self {
            RawStore::Local(root) => {
                let path = root.join(name);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, bytes).unwrap()
            }
            RawStore::S3 {
                client,
                prefix,
                runtime,
            } => runtime.block_on(async {
                let key = Key::from(format!("{prefix}/{name}"));
                client
                    .put(&key, PutPayload::from(bytes.to_vec()))
                    .await
                    .unwrap();
            }),
        }
    }

    pub fn delete(&self, name: &str) {
        match self {
            RawStore::Local(root) => fs::remove_file(root.join(name)).unwrap(),
            RawStore::S3 {
                client,
                prefix,
                runtime,
            } => runtime.block_on(async {
                let key = Key::from(format!("{prefix}/{name}"));
                client.delete(&key).await.unwrap();
            }),
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        match self {
            RawStore::Local(root) => root.join(name).exists(),
            RawStore::S3 {
                client,
                prefix,
                runtime,
            } => runtime.block_on(async {
                let key = Key::from(format!("{prefix}/{name}"));
                client.head(&key).await.is_ok()
            }),
        }
    }

    /// The names in `folder` (`volumes`, `index`), sorted, as `folder/name`.
    pub fn names(&self, folder: &str) -> Vec<String> {
        let mut names: Vec<String> = match self {
            RawStore::Local(root) => match fs::read_dir(root.join(folder)) {
                Ok(entries) => entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .filter(|n| !n.starts_with('.'))
                    .collect(),
                Err(_) => Vec::new(),
            },
            RawStore::S3 {
                client,
                prefix,
                runtime,
            } => runtime.block_on(async {
                let root = Key::from(format!("{prefix}/{folder}"));
                client
                    .list(Some(&root))
                    .map_ok(|meta| meta.location.filename().unwrap_or_default().to_string())
                    .try_collect()
                    .await
                    .unwrap()
            }),
        };
        names.sort();
        names.into_iter().map(|n| format!("{folder}/{n}")).collect()
    }
}
