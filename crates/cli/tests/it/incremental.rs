//! Incremental backups (format 2) against the local-folder store, the real `gpg` and `tar`:
//! what a second backup stores, restores of a backup whose media sit in several backups'
//! volumes, deletes that keep what a remaining backup needs, a prune racing a create in
//! another process (local folder and S3), and the restore by hand that docs/format.md gives.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::*;
use crate::exit;

fn json(out: &std::process::Output, what: &str) -> Value {
    assert_success(out, what);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn create(world: &World, extra: &[&str]) -> Value {
    let mut args = vec!["--json", "create-backup"];
    args.extend_from_slice(extra);
    json(&world.run(&args), "create-backup")
}

fn volumes(world: &World) -> Vec<String> {
    let dir = world.store.join("volumes");
    if !dir.exists() {
        return Vec::new();
    }
    let mut names = names_in(&dir);
    names.sort();
    names
}

fn local_media(world: &World) -> std::collections::BTreeMap<String, String> {
    tree_hashes(&world.data.join("media_store/local_content"))
}

fn drill_media(drill: &Path) -> std::collections::BTreeMap<String, String> {
    tree_hashes(&drill.join("media/local_content"))
}

#[test]
fn a_second_backup_stores_only_what_changed_and_restores_whole() {
    let world = World::with(WorldOptions {
        size_mib: 4.0,
        ..WorldOptions::default()
    });
    let first = create(&world, &[]);
    assert_eq!(first["kind"], "full");
    let first_id = first["backup-id"].as_str().unwrap().to_string();
    world.upload_media("newmediaAAAAAAAAAAAAAAAA", 300_000, 1);
    let second = create(&world, &[]);
    let second_id = second["backup-id"].as_str().unwrap().to_string();
    assert_eq!(second["kind"], "incremental", "{second}");
    assert_eq!(second["parent"], first_id.as_str());
    let reused = second["reused-bytes"].as_u64().unwrap();
    assert!(reused > 3_000_000, "{second}");
    // The new file, the database and the config; not the 4 MiB already stored.
    let stored = second["object-bytes"].as_u64().unwrap();
    assert!(
        stored < first["object-bytes"].as_u64().unwrap() / 2,
        "the second backup stored {stored} bytes: {second}"
    );

    let listed = json(&world.run(&["--json", "list-backups"]), "list-backups");
    let rows = listed["backups"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["backup-id"] == id).unwrap().clone();
    assert_eq!(row(&first_id)["kind"], "full");
    assert_eq!(row(&second_id)["kind"], "incremental");
    assert!(
        row(&second_id)["added-bytes"].as_u64().unwrap()
            < row(&second_id)["restore-bytes"].as_u64().unwrap() / 2
    );
    let table = world.run(&["list-backups"]);
    assert_success(&table, "list-backups");
    assert!(String::from_utf8_lossy(&table.stdout).contains("incremental"));

    let verified = json(
        &world.run(&["--json", "verify-backup", &second_id]),
        "verify",
    );
    assert!(verified["volumes"].as_u64().unwrap() >= 2, "{verified}");
    let drill = world.restore_drill(&second_id, "restore-backup of the incremental");
    assert_same_tree(&drill_media(&drill), &local_media(&world), "local_content");

    // --full takes nothing from earlier backups.
    let full = create(&world, &["--full"]);
    assert_eq!(full["kind"], "full");
    assert_eq!(full["reused-files"], 0);
}

#[test]
fn a_changed_or_deleted_file_is_never_taken_from_the_old_volume() {
    let world = World::new();
    let path = world.upload_media("changingAAAAAAAAAAAAAAAA", 100_000, 1);
    let gone = world.upload_media("purgedAAAAAAAAAAAAAAAAAA", 50_000, 2);
    create(&world, &[]);
    // Same size, other bytes: the mtime moves, so it is read again.
    world.upload_media("changingAAAAAAAAAAAAAAAA", 100_000, 9);
    fs::remove_file(&gone).unwrap();
    let second = create(&world, &[]);
    let id = second["backup-id"].as_str().unwrap();
    let drill = world.restore_drill(id, "restore-backup");
    let restored = drill.join("media/local_content/zz/ch/changingAAAAAAAAAAAAAAAA");
    assert_eq!(file_hash(&restored), file_hash(&path));
    assert!(
        !drill
            .join("media/local_content/zz/pu/purgedAAAAAAAAAAAAAAAAAA")
            .exists(),
        "a purged file came back from the older volume"
    );
    assert_same_tree(&drill_media(&drill), &local_media(&world), "local_content");
}

#[test]
fn deleting_the_parent_keeps_the_volumes_its_child_uses() {
    let world = World::with(WorldOptions {
        extra_config: "[retention]\ndelete-grace-secs = 0\n",
        ..WorldOptions::default()
    });
    let first = create(&world, &[])["backup-id"]
        .as_str()
        .unwrap()
        .to_string();
    let first_volumes = volumes(&world);
    assert!(!first_volumes.is_empty());
    world.upload_media("newmediaBBBBBBBBBBBBBBBB", 10_000, 3);
    let second = create(&world, &[])["backup-id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..2 {
        let deleted = world.run(&["--json", "delete-backup", &first]);
        if deleted.status.success() {
            let doc: Value = serde_json::from_slice(&deleted.stdout).unwrap();
            assert_eq!(doc["volumes"]["condemned"], serde_json::json!([]), "{doc}");
        }
    }
    for volume in &first_volumes {
        assert!(
            world.store.join("volumes").join(volume).exists(),
            "{volume}, which {second} uses, was deleted with {first}"
        );
    }
    assert!(!world.store.join("index").join(&first).exists());
    assert_success(&world.run(&["verify-backup", &second]), "verify-backup");

    // Once nothing needs them, volumes are condemned, then deleted by the next sweep.
    let deleted = json(
        &world.run(&["--json", "delete-backup", &second]),
        "delete-backup",
    );
    let condemned = deleted["volumes"]["condemned"].as_array().unwrap().len();
    assert_eq!(condemned, volumes(&world).len(), "{deleted}");
    assert!(condemned >= 2);
    let third = world.create_backup();
    let deleted = json(
        &world.run(&["--json", "delete-backup", &third]),
        "delete-backup",
    );
    assert!(
        deleted["volumes"]["deleted"].as_array().unwrap().len() >= condemned,
        "{deleted}"
    );
    // Left: the volume of the backup just deleted, condemned by this sweep.
    let left = volumes(&world);
    assert!(
        !left.is_empty() && left.iter().all(|v| v.starts_with(&third)),
        "{left:?}"
    );
    let mut condemned_now = names_in(&world.store.join(".condemned"));
    condemned_now.sort();
    assert_eq!(condemned_now, left);
    // Format 3 writes no index; a format-2 index left over would have been removed.
    assert!(!world.store.join("index").exists());
}

#[test]
fn a_condemned_volume_is_not_used_again() {
    let world = World::new();
    let first = world.create_backup();
    let deleted = json(
        &world.run(&["--json", "delete-backup", &first]),
        "delete-backup",
    );
    // The default grace period: condemned, not deleted.
    assert!(!deleted["volumes"]["condemned"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(!volumes(&world).is_empty());
    // The index went with the base, so the next backup has no parent: it is full.
    let second = create(&world, &[]);
    assert_eq!(second["kind"], "full");
    assert_eq!(second["reused-files"], 0);
}

#[test]
fn a_missing_volume_is_named_and_nothing_live_is_touched() {
    let world = World::new();
    let first = world.create_backup();
    world.upload_media("newmediaCCCCCCCCCCCCCCCC", 10_000, 4);
    let second = world.create_backup();
    let lost = volumes(&world)
        .into_iter()
        .find(|v| v.starts_with(&first))
        .unwrap();
    fs::remove_file(world.store.join("volumes").join(&lost)).unwrap();
    let before = live_state(&world.data);
    for args in [
        vec!["verify-backup", second.as_str()],
        vec!["restore-backup", second.as_str()],
    ] {
        let out = world.run(&args);
        assert_fails(&out, exit::CORRUPT, &[lost.as_str()]);
    }
    assert_same_tree(&live_state(&world.data), &before, "live data");
    assert_no_staging_left(&world);
}

/// A run the backup names, missing, cut short, damaged or replaced by another backup's run:
/// verify and restore name it, exit 5, and nothing live is touched.
#[test]
fn a_missing_or_damaged_run_is_named_and_nothing_live_is_touched() {
    let world = World::new();
    let first = world.create_backup();
    world.upload_media("newmediaRRRRRRRRRRRRRRRR", 10_000, 6);
    let second = world.create_backup();
    let run = world.store.join(format!("volumes/{first}-files"));
    let other = fs::read(world.store.join(format!("volumes/{second}-files"))).unwrap();
    let original = fs::read(&run).unwrap();
    let mut flipped = original.clone();
    let third = flipped.len() / 3;
    flipped[third] ^= 0x55;
    let damages: [(&str, Option<Vec<u8>>); 4] = [
        ("missing", None),
        ("cut short", Some(original[..original.len() / 2].to_vec())),
        ("a byte changed", Some(flipped)),
        ("another backup's run", Some(other)),
    ];
    let before = live_state(&world.data);
    for (what, damaged) in damages {
        match damaged {
            None => fs::remove_file(&run).unwrap(),
            Some(bytes) => fs::write(&run, bytes).unwrap(),
        }
        for args in [
            vec!["verify-backup", second.as_str()],
            vec!["restore-backup", second.as_str()],
        ] {
            let out = world.run(&args);
            let name = format!("{first}-files");
            assert_fails(&out, exit::CORRUPT, &[name.as_str()]);
            // Damage, never the wrong-passphrase error (exit 4) that sends an admin to the
            // config.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.contains("passphrase does not open"),
                "{what}: {stderr}"
            );
        }
        assert_same_tree(&live_state(&world.data), &before, what);
        assert_no_staging_left(&world);
    }
    fs::write(&run, original).unwrap();
    assert_success(&world.run(&["verify-backup", &second]), "verify-backup");
}

#[test]
fn a_damaged_volume_fails_the_restore_before_the_swap() {
    let world = World::new();
    world.create_backup();
    world.upload_media("newmediaDDDDDDDDDDDDDDDD", 10_000, 5);
    let second = world.create_backup();
    let volume = world
        .store
        .join("volumes")
        .join(volumes(&world).first().unwrap());
    let mut bytes = fs::read(&volume).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&volume, bytes).unwrap();
    let before = live_state(&world.data);
    let out = world.run(&["restore-backup", &second]);
    assert_fails(&out, exit::CORRUPT, &[]);
    assert_same_tree(&live_state(&world.data), &before, "live data");
    assert_no_staging_left(&world);
}

/// The steps docs/format.md and the README give, run as written with the real gpg and tar.
#[test]
fn an_incremental_backup_restores_by_hand_with_gpg_and_tar() {
    let world = World::with(WorldOptions {
        extra_config: "[backup]\nvolume-size = \"1MiB\"\n",
        size_mib: 3.0,
        ..WorldOptions::default()
    });
    // The [backup] table is already in the config: append the key to it instead.
    let config = fs::read_to_string(&world.config)
        .unwrap()
        .replace("[backup]\nvolume-size = \"1MiB\"\n", "")
        .replace("[backup]\n", "[backup]\nvolume-size = \"1MiB\"\n");
    fs::write(&world.config, config).unwrap();
    world.create_backup();
    world.upload_media("newmediaEEEEEEEEEEEEEEEE", 200_000, 6);
    let id = world.create_backup();
    assert!(volumes(&world).len() >= 3, "{:?}", volumes(&world));
    let by_hand = world.path("by-hand");
    fs::create_dir(&by_hand).unwrap();
    restore_by_hand(
        &world,
        &by_hand,
        &format!("gpg -d \"$store/{id}\" | tar -x"),
    );
    assert_same_tree(
        &tree_hashes(&by_hand.join("media/local_content")),
        &local_media(&world),
        "local_content restored by hand",
    );
    let key = format!("{SERVER_NAME}.signing.key");
    assert_eq!(
        file_hash(&by_hand.join("keys").join(&key)),
        file_hash(&world.data.join(&key))
    );
}

/// Whether gpg finds a compressed data packet in `object` (it decrypts to list the packets).
fn gpg_sees_compression(world: &World, object: &Path) -> bool {
    let out = Command::new("gpg")
        .args(["--batch", "--quiet", "--list-packets", "--passphrase-file"])
        .arg(&world.passphrase_file)
        .arg(object)
        .env("GNUPGHOME", gnupg_home())
        .output()
        .unwrap();
    assert_success(&out, "gpg --list-packets");
    String::from_utf8_lossy(&out.stdout).contains(":compressed packet:")
}

/// The run is compressed (OpenPGP's own packet, which gpg undoes), a volume of small files
/// too; the base and a volume of larger media are not. All of them restore by hand.
#[test]
fn bookkeeping_and_volumes_of_small_files_are_compressed_and_restore_by_hand() {
    let world = World::new();
    let first = world.create_backup();
    for i in 0..40u8 {
        world.upload_media(
            &format!("tinymedia{i:02}AAAAAAAAAAAAAAA"),
            300 + usize::from(i),
            i,
        );
    }
    let second = world.create_backup();
    let first_volume = format!("{first}-0000");
    let second_volume = format!("{second}-0000");
    let second_run = format!("{second}-files");
    assert_eq!(
        volumes(&world),
        [
            first_volume.clone(),
            format!("{first}-files"),
            second_volume.clone(),
            second_run.clone()
        ]
    );
    let store = &world.store;
    assert!(!gpg_sees_compression(&world, &store.join(&second)), "base");
    assert!(
        gpg_sees_compression(&world, &store.join("volumes").join(&second_run)),
        "run"
    );
    assert!(
        gpg_sees_compression(&world, &store.join("volumes").join(&second_volume)),
        "a volume of 300-byte files"
    );
    assert!(
        !gpg_sees_compression(&world, &store.join("volumes").join(&first_volume)),
        "a volume of the example media"
    );
    let by_hand = world.path("by-hand");
    fs::create_dir(&by_hand).unwrap();
    restore_by_hand(
        &world,
        &by_hand,
        &format!("gpg -d \"$store/{second}\" | tar -x"),
    );
    assert_same_tree(
        &tree_hashes(&by_hand.join("media/local_content")),
        &local_media(&world),
        "local_content restored by hand",
    );
}

/// What the race test needs to see of a store: whether a create has announced itself, and
/// which objects exist.
trait StoreView {
    fn pending(&self) -> Vec<String>;
    fn exists(&self, name: &str) -> bool;
    fn volumes(&self) -> Vec<String>;
    /// The object's bytes, or `None` when it cannot be read (gone meanwhile).
    fn read(&self, name: &str) -> Option<Vec<u8>>;
}

struct LocalView<'a>(&'a World);

impl StoreView for LocalView<'_> {
    fn pending(&self) -> Vec<String> {
        let dir = self.0.store.join(".pending");
        if dir.exists() {
            names_in(&dir)
        } else {
            Vec::new()
        }
    }
    fn exists(&self, name: &str) -> bool {
        self.0.store.join(name).exists()
    }
    fn volumes(&self) -> Vec<String> {
        volumes(self.0)
    }
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.0.store.join(name)).ok()
    }
}

/// A prune in one process while a create in another has announced that it uses a volume that
/// only it uses (its parent is pruned meanwhile): the volume stays, even with no grace period,
/// and the new backup restores. The create is stopped (SIGSTOP) once its marker is there.
fn prune_racing_a_create(world: &World, view: &dyn StoreView) {
    let parent = create(world, &["--full"])["backup-id"]
        .as_str()
        .unwrap()
        .to_string();
    // Enough new media that the create is still writing when it is stopped.
    for i in 0..40 {
        world.upload_media(&format!("bulk{i:02}AAAAAAAAAAAAAAAAAAAA"), 1_000_000, i);
    }
    let racing = spawn(world, &["--json", "create-backup"], &[]);
    let started = std::time::Instant::now();
    // The marker is written before the create chooses its parent, and names the parent's
    // volumes once it has: that is when the race is on.
    let names_parent = |marker: &String| {
        view.read(&format!(".pending/{marker}"))
            .is_some_and(|body| String::from_utf8_lossy(&body).contains(&parent))
    };
    let marker = loop {
        if let Some(marker) = view.pending().into_iter().find(names_parent) {
            break marker;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the create never announced itself"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    signal(&racing, "STOP");
    assert!(
        !view.exists(&marker),
        "the create finished before it could be stopped; the test proves nothing"
    );
    // A newer backup, so that the policy prunes the racing create's parent.
    let newer = create(world, &["--full"]);
    for _ in 0..2 {
        let pruned = json(
            &world.run(&["--json", "prune-backups", "--keep-last", "1"]),
            "prune-backups",
        );
        assert_eq!(pruned["kept"], 1, "{pruned}");
        assert_eq!(
            pruned["volumes"]["condemned"],
            serde_json::json!([]),
            "{pruned}"
        );
    }
    assert!(!view.exists(&parent), "the prune kept the parent: {newer}");
    assert!(
        view.volumes().iter().any(|v| v.contains(&parent)),
        "the volumes the running create uses were deleted"
    );
    signal(&racing, "CONT");
    let out = racing.wait_with_output().unwrap();
    let doc = json(&out, "the create that was stopped");
    assert_eq!(doc["kind"], "incremental", "{doc}");
    assert_eq!(doc["parent"], parent.as_str(), "{doc}");
    let id = doc["backup-id"].as_str().unwrap();
    assert!(view.pending().is_empty(), "the marker stayed");
    let drill = world.restore_drill(id, "restore-backup");
    assert_same_tree(&drill_media(&drill), &local_media(world), "local_content");
    // Its own create done, the parent's volume is still used (by the backup just made).
    let pruned = json(
        &world.run(&["--json", "prune-backups", "--keep-last", "2"]),
        "prune-backups",
    );
    assert_eq!(
        pruned["volumes"]["condemned"],
        serde_json::json!([]),
        "{pruned}"
    );
}

#[test]
fn a_prune_racing_a_create_in_another_process_keeps_its_volumes() {
    let world = World::with(WorldOptions {
        extra_config: "[retention]\ndelete-grace-secs = 0\n",
        ..WorldOptions::default()
    });
    prune_racing_a_create(&world, &LocalView(&world));
}

mod s3 {
    use super::*;
    use futures::TryStreamExt;
    use object_store::{aws::AmazonS3, path::Path as Key, ObjectStore, ObjectStoreExt};

    struct S3View {
        client: AmazonS3,
        prefix: String,
        runtime: tokio::runtime::Runtime,
    }

    impl S3View {
        fn new(world: &World, s3: &S3Env) -> S3View {
            let prefix = S3Env::prefix_of(world);
            let client = s3.client();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            S3View {
                client,
                prefix,
                runtime,
            }
        }

        fn names(&self, folder: &str) -> Vec<String> {
            let root = Key::from(format!("{}/{folder}", self.prefix));
            self.runtime.block_on(async {
                let mut names: Vec<String> = self
                    .client
                    .list(Some(&root))
                    .map_ok(|meta| meta.location.filename().unwrap_or_default().to_string())
                    .try_collect()
                    .await
                    .unwrap();
                names.sort();
                names
            })
        }
    }

    impl StoreView for S3View {
        fn pending(&self) -> Vec<String> {
            self.names(".pending")
        }
        fn exists(&self, name: &str) -> bool {
            let key = Key::from(format!("{}/{name}", self.prefix));
            self.runtime
                .block_on(async { self.client.head(&key).await.is_ok() })
        }
        fn volumes(&self) -> Vec<String> {
            self.names("volumes")
        }
        fn read(&self, name: &str) -> Option<Vec<u8>> {
            let key = Key::from(format!("{}/{name}", self.prefix));
            self.runtime.block_on(async {
                let got = self.client.get(&key).await.ok()?;
                Some(got.bytes().await.ok()?.to_vec())
            })
        }
    }

    fn s3_world(extra_config: &'static str) -> Option<(World, S3Env)> {
        let s3 = S3Env::from_env()?;
        let world = World::with(WorldOptions {
            s3: Some(s3.clone()),
            extra_config,
            ..WorldOptions::default()
        });
        Some((world, s3))
    }

    #[test]
    fn a_prune_racing_a_create_on_s3_keeps_its_volumes() {
        let Some((world, s3)) = s3_world("[retention]\ndelete-grace-secs = 0\n") else {
            return;
        };
        let _server = s3_shared();
        let view = S3View::new(&world, &s3);
        prune_racing_a_create(&world, &view);
    }

    #[test]
    fn incremental_backups_round_trip_and_delete_safely_on_s3() {
        let Some((world, s3)) = s3_world("[retention]\ndelete-grace-secs = 0\n") else {
            return;
        };
        let _server = s3_shared();
        let view = S3View::new(&world, &s3);
        let first = create(&world, &[])["backup-id"]
            .as_str()
            .unwrap()
            .to_string();
        world.upload_media("newmediaFFFFFFFFFFFFFFFF", 300_000, 7);
        let second = create(&world, &[]);
        assert_eq!(second["kind"], "incremental", "{second}");
        let second = second["backup-id"].as_str().unwrap().to_string();
        assert_success(&world.run(&["verify-backup", &second]), "verify-backup");
        let drill = world.restore_drill(&second, "restore-backup");
        assert_same_tree(&drill_media(&drill), &local_media(&world), "local_content");
        let first_volumes: Vec<String> = view
            .volumes()
            .into_iter()
            .filter(|v| v.starts_with(&first))
            .collect();
        assert!(!first_volumes.is_empty());
        assert_success(&world.run(&["delete-backup", &first]), "delete-backup");
        // A second sweep, past the (zero) grace period.
        assert_success(
            &world.run(&["prune-backups", "--keep-last", "5"]),
            "prune-backups",
        );
        for volume in &first_volumes {
            assert!(view.volumes().contains(volume), "{volume} was deleted");
        }
        assert_success(&world.run(&["verify-backup", &second]), "verify-backup");
        json(&world.run(&["--json", "delete-backup", &second]), "delete");
        let third = world.create_backup();
        let deleted = json(&world.run(&["--json", "delete-backup", &third]), "delete");
        assert!(
            deleted["volumes"]["deleted"].as_array().unwrap().len() >= 2,
            "{deleted}"
        );
        assert!(view.volumes().iter().all(|v| v.starts_with(&third)));
        assert!(view.names("index").is_empty());
        assert_no_backups(&world);
    }
}

#[test]
fn a_dry_run_prune_shows_the_volumes_it_would_free_and_changes_nothing() {
    let world = World::new();
    let first = create(&world, &["--full"])["backup-id"]
        .as_str()
        .unwrap()
        .to_string();
    create(&world, &["--full"]);
    let before = volumes(&world);
    let plan = json(
        &world.run(&["--json", "prune-backups", "--keep-last", "1", "--dry-run"]),
        "prune-backups --dry-run",
    );
    assert_eq!(plan["would-delete"], 1, "{plan}");
    let would: Vec<&str> = plan["volumes"]["would-condemn"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !would.is_empty() && would.iter().all(|v| v.contains(&first)),
        "{plan}"
    );
    assert!(plan["volumes"]["would-condemn-bytes"].as_u64().unwrap() > 100_000);
    assert_eq!(volumes(&world), before);
    assert!(world.object(&first).exists());
    assert!(
        !world.store.join(".condemned").exists()
            || names_in(&world.store.join(".condemned")).is_empty()
    );
    let table = world.run(&["prune-backups", "--keep-last", "1", "--dry-run"]);
    assert_success(&table, "prune-backups --dry-run");
    assert!(
        String::from_utf8_lossy(&table.stderr).contains("would condemn"),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
}

/// The first member of `object`, decrypted with the real gpg: a base's header, a run's list.
fn first_member(world: &World, object: &Path) -> Vec<u8> {
    let out = gpg_decrypt(object, &world.passphrase_file);
    assert_success(&out, "gpg -d");
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut first = archive.entries().unwrap().next().unwrap().unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut first, &mut bytes).unwrap();
    bytes
}

fn restore_exactly(world: &World, id: &str, expected: &std::collections::BTreeMap<String, String>) {
    let drill = world.path("drill");
    if drill.exists() {
        fs::remove_dir_all(&drill).unwrap();
    }
    let drill = world.restore_drill(id, "restore-backup --target-dir");
    assert_same_tree(&drill_media(&drill), expected, id);
}

/// Format 3: nights with files added, then deleted and others added, stack runs of the night's
/// change (`gone` lines included) on the first night's whole list; every backup of the chain
/// restores exactly what was there that night, by the tool and by hand, and deleting the
/// backup in the middle keeps what the last one needs.
#[test]
fn a_chain_of_nights_stacks_runs_and_every_backup_restores_exactly() {
    let world = World::with(WorldOptions {
        extra_config: "[retention]\ndelete-grace-secs = 0\n",
        ..WorldOptions::default()
    });
    let first = world.create_backup();
    let night1 = local_media(&world);
    let added = world.upload_media("chainAAAAAAAAAAAAAAAAAAA", 3_000, 1);
    let second = world.create_backup();
    let night2 = local_media(&world);
    fs::remove_file(&added).unwrap();
    let victim = walkdir::WalkDir::new(world.data.join("media_store/local_content"))
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .find(|e| e.file_type().is_file())
        .unwrap();
    fs::remove_file(victim.path()).unwrap();
    world.upload_media("chainBBBBBBBBBBBBBBBBBBB", 3_000, 2);
    let third = world.create_backup();
    let night3 = local_media(&world);

    let header: Value =
        serde_json::from_slice(&first_member(&world, &world.object(&third))).unwrap();
    let runs: Vec<&str> = header["media"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    // The first night's whole list, under the third night's change merged with the second's.
    assert_eq!(
        runs,
        [
            format!("volumes/{first}-files"),
            format!("volumes/{third}-files")
        ],
        "{header}"
    );
    let own = String::from_utf8(first_member(&world, &world.store.join(runs[1]))).unwrap();
    let gone: Vec<&str> = own.lines().filter(|l| l.ends_with("\tgone")).collect();
    assert_eq!(gone.len(), 2, "{own}");

    for (id, expected) in [(&first, &night1), (&second, &night2), (&third, &night3)] {
        assert_success(&world.run(&["verify-backup", id]), "verify-backup");
        restore_exactly(&world, id, expected);
    }
    // The second night's run and volume: nothing the third needs (its run merged the second's).
    let deleted = json(&world.run(&["--json", "delete-backup", &second]), "delete");
    assert_eq!(
        deleted["volumes"]["condemned"],
        serde_json::json!([
            format!("volumes/{second}-0000"),
            format!("volumes/{second}-files")
        ]),
        "{deleted}"
    );
    json(
        &world.run(&["--json", "prune-backups", "--keep-last", "5"]),
        "prune",
    );
    assert!(!world.store.join(format!("volumes/{second}-files")).exists());
    assert_success(&world.run(&["verify-backup", &third]), "verify-backup");
    restore_exactly(&world, &third, &night3);

    let by_hand = world.path("by-hand");
    fs::create_dir(&by_hand).unwrap();
    restore_by_hand(
        &world,
        &by_hand,
        &format!("gpg -d \"$store/{third}\" | tar -x"),
    );
    assert_same_tree(
        &tree_hashes(&by_hand.join("media/local_content")),
        &night3,
        "the third night restored by hand",
    );
}
