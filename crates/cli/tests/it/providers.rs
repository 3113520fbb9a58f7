//! Media that Synapse keeps in storage providers (`media_storage_providers`) rather than under
//! media_store_path: a backup reads them from the provider, a restore puts them back locally
//! (or, with `--media-to-provider`, into the provider), media found nowhere stop the backup.
//! The file provider here; the S3 provider against the loopback Garage in `s3`. The real
//! `synapse-s3-storage-provider` with a real Synapse is in the end-to-end test.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;
use crate::exit;

fn json(out: &std::process::Output, what: &str) -> Value {
    assert_success(out, what);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub(crate) fn add_providers(world: &World, yaml: &str) {
    let path = world.data.join("homeserver.yaml");
    let mut config = fs::read_to_string(&path).unwrap();
    config.push_str(&format!("\nmedia_storage_providers:\n{yaml}"));
    fs::write(&path, config).unwrap();
}

pub(crate) fn file_provider(world: &World) -> PathBuf {
    let dir = world.path("provider");
    fs::create_dir_all(&dir).unwrap();
    add_providers(
        world,
        &format!(
            "- module: file_system\n  store_local: true\n  store_synchronous: true\n  config:\n    directory: {}\n",
            dir.display()
        ),
    );
    dir
}

/// The media files under media_store_path, by path relative to it.
pub(crate) fn media(world: &World) -> BTreeMap<String, String> {
    let root = world.data.join("media_store");
    let mut all = BTreeMap::new();
    for dir in ["local_content", "local_thumbnails"] {
        for (name, hash) in tree_hashes(&root.join(dir)) {
            all.insert(format!("{dir}/{name}"), hash);
        }
    }
    all
}

/// Moves every `nth` media file (content and thumbnails) out of media_store_path with
/// `offload`, as `s3_media_upload upload --delete` does; the moved paths.
pub(crate) fn offload_every(
    world: &World,
    nth: usize,
    mut offload: impl FnMut(&str, &Path),
) -> Vec<String> {
    let mut moved = Vec::new();
    for (i, rel) in media(world).keys().enumerate() {
        if i % nth == 0 {
            let path = world.data.join("media_store").join(rel);
            offload(rel, &path);
            fs::remove_file(&path).unwrap();
            moved.push(rel.clone());
        }
    }
    moved
}

pub(crate) fn move_into(dir: &Path) -> impl FnMut(&str, &Path) + '_ {
    move |rel, path| {
        let dest = dir.join(rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(path, dest).unwrap();
    }
}

#[test]
fn offloaded_media_are_read_from_the_file_provider_and_restored_locally_or_to_it() {
    // Small volumes: the next volume's provider media download while one is written.
    let world = World::with(WorldOptions {
        size_mib: 3.0,
        extra_config: "volume-size = \"512KiB\"\nprovider-downloads = 3\n",
        ..WorldOptions::default()
    });
    let everything = media(&world);
    let provider = file_provider(&world);
    let moved = offload_every(&world, 3, move_into(&provider));
    assert!(moved.len() > 50, "only {} files offloaded", moved.len());

    let created = json(&world.run(&["--json", "create-backup"]), "create-backup");
    assert_eq!(created["provider-files"], moved.len(), "{created}");
    assert_eq!(created["missing-media"], 0, "{created}");
    let id = created["backup-id"].as_str().unwrap().to_string();
    assert!(names_in(&world.store.join("volumes")).len() >= 4);
    assert_success(&world.run(&["verify-backup", &id]), "verify-backup");

    // The provider is lost along with the data: the default restore brings every file back
    // under media_store_path, where Synapse serves it first.
    fs::remove_dir_all(&provider).unwrap();
    fs::remove_dir_all(world.data.join("media_store")).unwrap();
    assert_success(
        &world.run(&["restore-backup", &id, "--remove-previous"]),
        "restore-backup",
    );
    assert_same_tree(&media(&world), &everything, "the restored media store");
    assert!(
        !provider.exists(),
        "a default restore wrote to the provider"
    );

    // --media-to-provider puts them back where they were.
    fs::remove_dir_all(world.data.join("media_store")).unwrap();
    let restored = json(
        &world.run(&[
            "--json",
            "restore-backup",
            &id,
            "--remove-previous",
            "--media-to-provider",
        ]),
        "restore-backup --media-to-provider",
    );
    assert_eq!(restored["provider-files"], moved.len(), "{restored}");
    let local = media(&world);
    for rel in &moved {
        assert!(!local.contains_key(rel), "{rel} was restored locally");
        assert_eq!(
            file_hash(&provider.join(rel)),
            everything[rel],
            "{rel} in the provider"
        );
    }
    assert_eq!(local.len() + moved.len(), everything.len());
    assert_no_staging_left(&world);
}

#[test]
fn media_found_nowhere_stop_the_backup_unless_allowed_and_are_recorded() {
    let world = World::new();
    let provider = file_provider(&world);
    let moved = offload_every(&world, 4, move_into(&provider));
    let lost = &moved[1];
    fs::remove_file(provider.join(lost)).unwrap();
    let media_id: String = lost.split('/').skip(1).take(3).collect();

    let err = assert_fails(
        &world.run(&["create-backup"]),
        exit::REFUSED,
        &["1 media files", "--allow-missing-media"],
    );
    assert!(err.contains(&media_id[..media_id.len().min(24)]), "{err}");
    assert_no_backups(&world);

    let created = json(
        &world.run(&["--json", "create-backup", "--allow-missing-media"]),
        "create-backup --allow-missing-media",
    );
    assert_eq!(created["missing-media"], 1, "{created}");
    assert_eq!(created["provider-files"], moved.len() - 1, "{created}");
    let first = created["missing-media-first"][0].as_str().unwrap();
    assert!(first.starts_with(lost.as_str()), "{first} vs {lost}");
    // Recorded in the backup: verify says so too.
    let id = created["backup-id"].as_str().unwrap();
    let verified = json(
        &world.run(&["--json", "verify-backup", id]),
        "verify-backup",
    );
    assert_eq!(verified["missing-media"], 1, "{verified}");
    let out = world.run(&["verify-backup", id]);
    assert_success(&out, "verify-backup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lacks 1 media files") && stderr.contains(lost.as_str()),
        "{stderr}"
    );
}

#[test]
fn an_unknown_provider_module_is_named_when_media_are_missing() {
    let world = World::new();
    add_providers(
        &world,
        "- module: my_company.SwiftStorageProvider\n  store_local: true\n  config: {}\n",
    );
    // Nothing missing: the unknown provider does not matter.
    assert_success(&world.run(&["create-backup"]), "create-backup");
    offload_every(&world, 10, |_, _| {});
    assert_fails(
        &world.run(&["create-backup"]),
        exit::REFUSED,
        &["my_company.SwiftStorageProvider", "media ids"],
    );
}

#[test]
fn a_provider_folder_that_is_gone_is_named_and_its_media_reported_missing() {
    let world = World::new();
    let provider = file_provider(&world);
    let moved = offload_every(&world, 5, move_into(&provider));
    // The provider's disk is not mounted.
    fs::remove_dir_all(&provider).unwrap();
    let stderr = assert_fails(
        &world.run(&["create-backup"]),
        exit::REFUSED,
        &[&format!("{} media files", moved.len()), "file provider"],
    );
    assert!(stderr.contains(&provider.display().to_string()), "{stderr}");
    let created = json(
        &world.run(&["--json", "create-backup", "--allow-missing-media"]),
        "create-backup --allow-missing-media",
    );
    assert_eq!(created["missing-media"], moved.len(), "{created}");
}

#[test]
fn an_incremental_backup_takes_provider_media_over_without_reading_them() {
    let world = World::with(WorldOptions {
        size_mib: 3.0,
        ..WorldOptions::default()
    });
    let everything = media(&world);
    let first = json(&world.run(&["--json", "create-backup"]), "first backup");
    // Offloaded after the first backup: the same files, now only in the provider.
    let provider = file_provider(&world);
    let moved = offload_every(&world, 2, move_into(&provider));
    let second = json(&world.run(&["--json", "create-backup"]), "second backup");
    assert_eq!(second["kind"], "incremental", "{second}");
    assert_eq!(second["provider-files"], moved.len(), "{second}");
    // Every media file, local or offloaded since, is taken over; none is read again.
    assert_eq!(second["reused-files"], everything.len(), "{second}");
    assert!(
        second["object-bytes"].as_u64().unwrap() < first["object-bytes"].as_u64().unwrap() / 2,
        "the second backup stored media again: {second}"
    );
    let id = second["backup-id"].as_str().unwrap().to_string();
    let drill = world.restore_drill(&id, "restore of the incremental backup");
    let mut restored = BTreeMap::new();
    for dir in ["local_content", "local_thumbnails"] {
        for (name, hash) in tree_hashes(&drill.join("media").join(dir)) {
            restored.insert(format!("{dir}/{name}"), hash);
        }
    }
    assert_same_tree(&restored, &everything, "the drill's media");
}

mod s3 {
    use super::*;
    use futures::TryStreamExt;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn offloaded_media_are_read_from_the_s3_provider_and_written_back_to_it() {
        let Some(s3) = S3Env::from_env() else { return };
        let _shared = s3_shared();
        let world = World::with(WorldOptions {
            size_mib: 2.0,
            ..WorldOptions::default()
        });
        let everything = media(&world);
        // The provider prepends its prefix as it is, without a separator.
        let prefix = format!("{}/media-", unique_prefix("provider"));
        add_providers(
            &world,
            &format!(
                "- module: s3_storage_provider.S3StorageProviderBackend\n  store_local: True\n  config:\n    bucket: {}\n    endpoint_url: {}\n    region_name: {}\n    access_key_id: {}\n    secret_access_key: {}\n    prefix: {prefix}\n",
                s3.bucket, s3.endpoint, s3.region, s3.access_key, s3.secret_key
            ),
        );
        let client = s3.client();
        let rt = runtime();
        let moved = offload_every(&world, 3, |rel, path| {
            let bytes = fs::read(path).unwrap();
            rt.block_on(client.put(
                &ObjectPath::from(format!("{prefix}{rel}")),
                PutPayload::from(bytes),
            ))
            .unwrap();
        });
        let created = json(&world.run(&["--json", "create-backup"]), "create-backup");
        assert_eq!(created["provider-files"], moved.len(), "{created}");
        let id = created["backup-id"].as_str().unwrap().to_string();
        let out = world.run(&["create-backup"]);
        assert_success(&out, "create-backup");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains(&s3.secret_key), "{stderr}");

        // The bucket emptied, the media store lost: the default restore is whole locally.
        let keys = |rt: &tokio::runtime::Runtime| -> Vec<String> {
            let root = ObjectPath::from(prefix.split('/').next().unwrap());
            rt.block_on(client.list(Some(&root)).try_collect::<Vec<_>>())
                .unwrap()
                .into_iter()
                .map(|m| m.location.to_string())
                .collect()
        };
        for key in keys(&rt) {
            rt.block_on(client.delete(&ObjectPath::from(key))).unwrap();
        }
        fs::remove_dir_all(world.data.join("media_store")).unwrap();
        assert_success(
            &world.run(&["restore-backup", &id, "--remove-previous"]),
            "restore-backup",
        );
        assert_same_tree(&media(&world), &everything, "the restored media store");
        assert!(
            keys(&rt).is_empty(),
            "a default restore wrote to the bucket"
        );

        fs::remove_dir_all(world.data.join("media_store")).unwrap();
        assert_success(
            &world.run(&[
                "restore-backup",
                &id,
                "--remove-previous",
                "--media-to-provider",
            ]),
            "restore-backup --media-to-provider",
        );
        let mut in_bucket = keys(&rt);
        in_bucket.sort();
        let mut expected: Vec<String> = moved.iter().map(|rel| format!("{prefix}{rel}")).collect();
        expected.sort();
        assert_eq!(in_bucket, expected);
        let rel = &moved[0];
        let bytes = rt
            .block_on(async {
                client
                    .get(&ObjectPath::from(format!("{prefix}{rel}")))
                    .await?
                    .bytes()
                    .await
            })
            .unwrap();
        assert_eq!(sha256_hex(&bytes), everything[rel]);
        assert!(!media(&world).contains_key(rel));
        for key in keys(&rt) {
            rt.block_on(client.delete(&ObjectPath::from(key))).unwrap();
        }
    }

    #[test]
    fn an_unreachable_provider_bucket_stops_the_backup_and_is_named() {
        let Some(s3) = S3Env::from_env() else { return };
        let _shared = s3_shared();
        // An S3 store (max-retries = 2, which the provider's requests follow too).
        let world = World::with(WorldOptions {
            s3: Some(s3.clone()),
            ..WorldOptions::default()
        });
        add_providers(
            &world,
            "- module: s3_storage_provider.S3StorageProviderBackend\n  store_local: True\n  config:\n    bucket: gone\n    endpoint_url: http://127.0.0.1:9\n    access_key_id: AK\n    secret_access_key: never-shown\n",
        );
        offload_every(&world, 10, |_, _| {});
        let stderr = assert_fails(
            &world.run(&["create-backup"]),
            exit::REFUSED,
            &["s3://gone/", "cannot be read", "--allow-missing-media"],
        );
        assert!(!stderr.contains("never-shown"), "{stderr}");
    }
}
