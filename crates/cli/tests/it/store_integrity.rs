//! A damaged or tampered store never spreads into new backups and never costs a kept one. Each
//! test is named after the failure it guards against and runs twice, on the local folder and on
//! the loopback Garage: the store is changed behind the tool's back (`RawStore`) as a bucket
//! writer without the passphrase, a lifecycle rule or a disk fault would change it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::exit;

/// A world on one backend, the raw view of its store, and (on Garage) the shared server.
struct Case {
    world: World,
    raw: RawStore,
    _server: Option<std::sync::RwLockReadGuard<'static, ()>>,
}

impl Case {
    /// `None` when the backend is Garage and no server was started (outside scripts/test.sh).
    fn new(backend: Backend, backup_settings: &str) -> Option<Case> {
        let (world, s3) = world_on(backend)?;
        // [backup] is the config's last section: settings appended land in it.
        let scratch = world.path("scratch");
        fs::create_dir_all(&scratch).unwrap();
        let mut config = fs::read_to_string(&world.config).unwrap();
        config.push_str(&format!(
            "temp-dir = \"{}\"\n{backup_settings}\n[retention]\ndelete-grace-secs = 0\n",
            scratch.display()
        ));
        fs::write(&world.config, config).unwrap();
        let raw = RawStore::of(&world, s3.as_ref());
        Some(Case {
            _server: s3.as_ref().map(|_| s3_shared()),
            world,
            raw,
        })
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.world.run(&all);
        assert_success(&out, &args.join(" "));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// create-backup with `extra` flags; its JSON document and its stderr.
    fn create(&self, extra: &[&str]) -> (Value, String) {
        let mut args = vec!["--json", "create-backup"];
        args.extend_from_slice(extra);
        let out = self.world.run(&args);
        assert_success(&out, "create-backup");
        (
            serde_json::from_slice(&out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    fn create_id(&self, extra: &[&str]) -> String {
        id_of(&self.create(extra).0)
    }

    /// The shared objects backup `id` wrote: its media volumes and its run.
    fn volumes_of(&self, id: &str) -> Vec<String> {
        self.raw
            .names("volumes")
            .into_iter()
            .filter(|v| v.starts_with(&format!("volumes/{id}-")))
            .collect()
    }

    /// The media volumes backup `id` wrote (not its run).
    fn media_volumes_of(&self, id: &str) -> Vec<String> {
        let run = format!("volumes/{id}-files");
        let mut volumes = self.volumes_of(id);
        volumes.retain(|v| *v != run);
        volumes
    }

    fn scratch(&self) -> PathBuf {
        self.world.path("scratch")
    }
}

fn id_of(doc: &Value) -> String {
    doc["backup-id"].as_str().unwrap().to_string()
}

/// Runs `body` as two tests, `local_folder` and `garage` (skipped outside scripts/test.sh
/// unless the S3 server is required), each with a fresh world; `$settings` go to [backup].
macro_rules! on_both_stores {
    ($name:ident, $settings:expr, $body:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn local_folder() {
                let case = Case::new(Backend::Local, $settings).unwrap();
                ($body)(&case);
            }

            #[test]
            fn garage() {
                if let Some(case) = Case::new(Backend::Garage, $settings) {
                    ($body)(&case);
                }
            }
        }
    };
}

// A lifecycle rule expired a volume the newest backup uses, then a disk fault truncated one:
// each next backup stores those files again and verifies; nothing new refers to the damage.
on_both_stores!(
    damage_in_a_parent_volume_never_spreads_into_the_next_backup,
    "",
    |case: &Case| {
        let first = case.create_id(&[]);
        let lost = case.media_volumes_of(&first);
        assert_eq!(lost.len(), 1, "{lost:?}");
        case.raw.delete(&lost[0]);

        let (second, stderr) = case.create(&[]);
        let again = &second["stored-again"][0];
        assert_eq!(again["volume"], lost[0].as_str(), "{second}");
        assert!(
            again["why"].as_str().unwrap().contains("missing"),
            "{second}"
        );
        assert!(again["files"].as_u64().unwrap() > 10, "{second}");
        assert!(
            stderr.contains(&lost[0]) && stderr.contains("stored anew"),
            "{stderr}"
        );
        assert_eq!(second["kind"], "full", "no usable volume is left: {second}");
        let second = id_of(&second);
        assert_success(&case.world.run(&["verify-backup", &second]), "verify");

        // A disk fault cut the second backup's volume in half.
        let cut = case.volumes_of(&second);
        let bytes = case.raw.read(&cut[0]);
        case.raw.write(&cut[0], &bytes[..bytes.len() / 2]);
        case.world
            .upload_media("newAAAAAAAAAAAAAAAAAAAAA", 50_000, 0);
        let (third, stderr) = case.create(&[]);
        let again = &third["stored-again"][0];
        assert_eq!(again["volume"], cut[0].as_str(), "{third}");
        let why = again["why"].as_str().unwrap();
        assert!(
            why.contains(&format!("{} bytes in the store", bytes.len() / 2)),
            "{why}"
        );
        assert!(stderr.contains(&cut[0]), "{stderr}");
        let third = id_of(&third);
        assert_success(&case.world.run(&["verify-backup", &third]), "verify");
        let drill = case.world.restore_drill(&third, "restore the third backup");
        for local in ["local_content", "local_thumbnails"] {
            assert_same_tree(
                &tree_hashes(&drill.join("media").join(local)),
                &tree_hashes(&case.world.data.join("media_store").join(local)),
                local,
            );
        }

        // The damaged backups themselves are named as damaged, with the volume.
        let out = case.world.run(&["verify-backup", &first]);
        assert_fails(&out, exit::CORRUPT, &[&lost[0], "missing"]);
        let out = case.world.run(&["verify-backup", &second]);
        assert_fails(&out, exit::CORRUPT, &[&cut[0], "bytes in the store"]);
    }
);

/// A name newer than every real backup.
const FORGED_GARBAGE: &str = "backup-20991231235959000001";
const FORGED_OTHER_KEY: &str = "backup-20991231235959000002";

// Objects named like the newest backups that are not ours (random bytes; a real gpg message
// under another passphrase): prune keeps the real newest and deletes neither; they are never
// latest nor a parent; list names them.
on_both_stores!(
    objects_named_like_backups_that_do_not_open_are_never_counted_nor_deleted,
    "",
    |case: &Case| {
        let oldest = case.create_id(&["--full"]);
        case.world
            .upload_media("newBBBBBBBBBBBBBBBBBBBBB", 50_000, 0);
        let newest = case.create_id(&[]);
        case.raw.write(FORGED_GARBAGE, &[0x8c; 4096]);
        let other_key = case.world.path("other-passphrase");
        fs::write(&other_key, "not the passphrase\n").unwrap();
        let tar = real_tar(&case.world.data, &["homeserver.yaml"]);
        case.raw
            .write(FORGED_OTHER_KEY, &gpg_encrypt(&tar, &other_key, &[]));

        let listed = case.json(&["list-backups"]);
        let rows = listed["backups"].as_array().unwrap();
        assert_eq!(rows.len(), 4, "{listed}");
        for forged in [FORGED_GARBAGE, FORGED_OTHER_KEY] {
            let row = rows.iter().find(|r| r["backup-id"] == forged).unwrap();
            assert!(row["error"].is_string(), "{row}");
        }

        let latest = case.json(&["verify-backup", "latest"]);
        assert_eq!(latest["backup-id"], newest.as_str(), "{latest}");

        let pruned = case.json(&["prune-backups", "--keep-last", "1"]);
        let kept: Vec<&Value> = pruned["backups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["keep"] == true)
            .map(|b| &b["backup-id"])
            .collect();
        assert_eq!(kept, [newest.as_str()], "{pruned}");
        assert_eq!(pruned["deleted"], 1, "{pruned}");
        let unverified: Vec<&str> = pruned["unverified"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["backup-id"].as_str().unwrap())
            .collect();
        assert_eq!(unverified, [FORGED_GARBAGE, FORGED_OTHER_KEY], "{pruned}");
        // They might name volumes (another passphrase's backup would): none is freed.
        assert!(
            pruned["volume-warning"]
                .as_str()
                .is_some_and(|w| w.contains(FORGED_GARBAGE)),
            "{pruned}"
        );
        for name in [&newest, FORGED_GARBAGE, FORGED_OTHER_KEY] {
            assert!(case.raw.exists(name), "{name} was deleted");
        }
        assert!(!case.raw.exists(&oldest));
        assert_success(&case.world.run(&["verify-backup", &newest]), "verify");

        let (next, _) = case.create(&[]);
        assert_eq!(next["parent"], newest.as_str(), "{next}");
    }
);

// `notes.txt`, `backup-foo` and `backup-2026` at the top of the prefix: never backups, never
// touched, and they do not stop volumes from being freed.
on_both_stores!(
    stray_objects_neither_block_garbage_collection_nor_are_touched,
    "",
    |case: &Case| {
        let first = case.create_id(&["--full"]);
        let second = case.create_id(&["--full"]);
        let strays = ["backup-2026", "backup-foo", "notes.txt"];
        for stray in strays {
            case.raw.write(stray, stray.as_bytes());
        }
        // Strays inside the tool's own folders are not its objects either: the sweep, which
        // removes orphan indexes, leaves one that is not named after a backup id alone.
        let index_stray = "index/notes.txt";
        case.raw.write(index_stray, b"not an index");

        let listed = case.json(&["list-backups"]);
        let ids: Vec<&str> = listed["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["backup-id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [first.as_str(), second.as_str()], "{listed}");
        assert_eq!(listed["not-backups"], serde_json::json!(strays), "{listed}");
        let table = case.world.run(&["list-backups"]);
        assert!(
            String::from_utf8_lossy(&table.stderr)
                .contains("not a backup (ignored): backup-2026, backup-foo, notes.txt"),
            "{}",
            String::from_utf8_lossy(&table.stderr)
        );

        let freed = case.volumes_of(&first);
        let deleted = case.json(&["delete-backup", &first]);
        assert!(deleted["volume-warning"].is_null(), "{deleted}");
        assert_eq!(
            deleted["volumes"]["condemned"],
            serde_json::json!(freed),
            "{deleted}"
        );
        // Past the (zero) grace period, the next sweep deletes them.
        let pruned = case.json(&["prune-backups", "--keep-last", "1"]);
        assert!(pruned["volume-warning"].is_null(), "{pruned}");
        assert_eq!(
            pruned["volumes"]["deleted"],
            serde_json::json!(freed),
            "{pruned}"
        );
        assert_eq!(pruned["not-backups"], serde_json::json!(strays), "{pruned}");
        for volume in &freed {
            assert!(!case.raw.exists(volume), "{volume} is still there");
        }

        let out = case.world.run(&["delete-backup", "notes.txt"]);
        assert_fails(&out, exit::CONFIG, &["notes.txt", "not a valid backup id"]);
        assert_eq!(case.raw.read(index_stray), b"not an index");
        for stray in strays {
            assert_eq!(
                case.raw.read(stray),
                stray.as_bytes(),
                "{stray} was changed"
            );
        }
        let latest = case.json(&["verify-backup", "latest"]);
        assert_eq!(latest["backup-id"], second.as_str());
    }
);

// An older backup's base copied over a newer backup's name is not the newer backup: verify
// and restore refuse it naming both ids, and nothing counts it.
on_both_stores!(
    an_older_base_copied_over_a_newer_name_is_refused_as_a_rollback,
    "",
    |case: &Case| {
        let older = case.create_id(&[]);
        case.world
            .upload_media("newCCCCCCCCCCCCCCCCCCCCC", 50_000, 0);
        let newer = case.create_id(&[]);
        case.raw.write(&newer, &case.raw.read(&older));

        let out = case.world.run(&["verify-backup", &newer]);
        assert_fails(&out, exit::CORRUPT, &[&older, &newer, "rollback"]);
        let drill = case.world.path("drill");
        let out = case.world.run(&[
            "restore-backup",
            &newer,
            "--target-dir",
            drill.to_str().unwrap(),
        ]);
        assert_fails(&out, exit::CORRUPT, &[&older, &newer]);
        assert!(
            !drill.exists() || names_in(&drill).is_empty(),
            "{:?}",
            names_in(&drill)
        );

        let plan = case.json(&["prune-backups", "--keep-last", "1", "--dry-run"]);
        assert_eq!(plan["backups"].as_array().unwrap().len(), 1, "{plan}");
        assert_eq!(plan["backups"][0]["backup-id"], older.as_str(), "{plan}");
        assert_eq!(plan["unverified"][0]["backup-id"], newer.as_str(), "{plan}");
        let latest = case.json(&["verify-backup", "latest"]);
        assert_eq!(latest["backup-id"], older.as_str());
    }
);

// The newest backup's run replaced by another backup's: the next backup cannot build on it,
// so it is full and says why.
on_both_stores!(
    a_parent_run_that_is_not_its_own_makes_the_next_backup_full_saying_why,
    "",
    |case: &Case| {
        let older = case.create_id(&[]);
        case.world
            .upload_media("newDDDDDDDDDDDDDDDDDDDDD", 50_000, 0);
        let newer = case.create_id(&[]);
        let older_run = case.raw.read(&format!("volumes/{older}-files"));
        case.raw
            .write(&format!("volumes/{newer}-files"), &older_run);

        let (next, stderr) = case.create(&[]);
        assert_eq!(next["kind"], "full", "{next}");
        let why = next["full-reason"].as_str().unwrap();
        assert!(
            why.contains(&newer) && why.contains(&format!("written by {older}")),
            "{why}"
        );
        assert!(stderr.contains("full"), "{stderr}");
        assert_success(&case.world.run(&["verify-backup", &id_of(&next)]), "verify");
    }
);

// A volume replaced by another backup's volume (same passphrase): the backup is refused before
// anything is restored, naming the volume.
on_both_stores!(
    a_volume_replaced_by_another_backups_is_refused_before_a_restore_starts,
    "",
    |case: &Case| {
        let older = case.create_id(&["--full"]);
        case.world
            .upload_media("newEEEEEEEEEEEEEEEEEEEEE", 300_000, 0);
        let newer = case.create_id(&["--full"]);
        let replaced = &case.volumes_of(&newer)[0];
        case.raw
            .write(replaced, &case.raw.read(&case.volumes_of(&older)[0]));
        let out = case.world.run(&["verify-backup", &newer]);
        assert_fails(&out, exit::CORRUPT, &[replaced, "bytes in the store"]);
        let before = live_state(&case.world.data);
        let drill = case.world.path("drill");
        let out = case.world.run(&[
            "restore-backup",
            &newer,
            "--target-dir",
            drill.to_str().unwrap(),
        ]);
        assert_fails(&out, exit::CORRUPT, &[replaced]);
        assert_same_tree(&live_state(&case.world.data), &before, "live data");
    }
);

/// Waits until `dir` holds a scratch folder with a file in it; returns the folder.
fn scratch_with_a_file(dir: &Path, child: &mut std::process::Child) -> PathBuf {
    let started = Instant::now();
    loop {
        let found = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .find(|e| fs::read_dir(e.path()).is_ok_and(|mut inside| inside.next().is_some()));
        if let Some(entry) = found {
            return entry.path();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the create ended before its scratch folder was seen"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no scratch folder appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts a create and kills it (SIGKILL) once its scratch folder holds the database snapshot;
/// returns the folder left behind.
fn kill_a_create(case: &Case) -> PathBuf {
    // Enough media that the create is still at work when it is stopped.
    for i in 0..40 {
        case.world.upload_media(
            &format!("k{i:02}FFFFFFFFFFFFFFFFFFFFFF"),
            1_000_000,
            i as u8,
        );
    }
    let mut child = spawn(&case.world, &["create-backup", "--full"], &[]);
    let scratch = scratch_with_a_file(&case.scratch(), &mut child);
    signal(&child, "STOP");
    assert!(
        scratch.exists(),
        "the create finished before it could be stopped; the test proves nothing"
    );
    signal(&child, "KILL");
    child.wait().unwrap();
    assert!(scratch.exists());
    let mode = fs::metadata(&scratch).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", scratch.display());
    scratch
}

// SIGKILL during create-backup: the scratch folder (with the unencrypted snapshot) is private,
// and the next check or create removes it and says so.
on_both_stores!(
    a_killed_create_leaves_no_plaintext_behind,
    "",
    |case: &Case| {
        let left = kill_a_create(case);
        let out = case.world.run(&["--json", "check"]);
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let item = doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "scratch-leftovers")
            .unwrap()
            .clone();
        assert_eq!(item["status"], "warn", "{item}");
        let shown = left.display().to_string();
        assert!(item["detail"].as_str().unwrap().contains(&shown), "{item}");
        assert!(!left.exists(), "check left {shown}");

        let left = kill_a_create(case);
        let (created, stderr) = case.create(&[]);
        assert!(
            stderr.contains(&format!("removed {}", left.display())),
            "{stderr}"
        );
        assert_eq!(
            created["removed-leftovers"][0]["path"],
            left.display().to_string()
        );
        assert!(!left.exists());
        assert!(
            names_in(&case.scratch()).is_empty(),
            "{:?}",
            names_in(&case.scratch())
        );
    }
);

// Restore and verify of a backup whose entries are in runs group them per volume in files of a
// scratch folder in temp-dir: every file comes back from both volumes, and the folder is gone
// after each command.
on_both_stores!(
    restore_and_verify_read_entries_from_scratch_lists_and_leave_none_behind,
    "",
    |case: &Case| {
        let first = case.create_id(&[]);
        case.world
            .upload_media("newDDDDDDDDDDDDDDDDDDDDD", 20_000, 3);
        let newer = case.create_id(&[]);
        let new_volumes = case.media_volumes_of(&newer).len();
        assert_eq!(new_volumes, 1, "{newer}");
        let volumes = case.media_volumes_of(&first).len() + new_volumes;
        let assert_no_scratch = || assert_eq!(names_in(&case.scratch()), Vec::<String>::new());

        let verified = case.json(&["verify-backup", &newer]);
        assert_eq!(verified["volumes"], volumes, "{verified}");
        assert_no_scratch();

        let drill = case
            .world
            .restore_drill(&newer, "restore-backup --target-dir");
        assert_no_scratch();
        assert_same_tree(
            &tree_hashes(&drill.join("media/local_content")),
            &tree_hashes(&case.world.data.join("media_store/local_content")),
            &newer,
        );
    }
);
