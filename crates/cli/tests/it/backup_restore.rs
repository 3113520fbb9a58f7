//! End-to-end behaviour of the real binary against the local-folder store, the real `gpg` and
//! the real `tar`: round trips, the restore rules, and the charm's own backups.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;
use crate::exit;

#[test]
fn round_trip_into_target_dir_is_byte_identical() {
    let world = World::new();
    let id = world.create_backup();

    let listed = world.run(&["--json", "list-backups"]);
    assert_success(&listed, "list-backups");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rows = &listed["backups"];
    assert_eq!(rows[0]["backup-id"], id.as_str());
    assert_eq!(rows[0]["server-name"], SERVER_NAME);
    assert!(rows[0]["restore-bytes"].as_u64().unwrap() > 1_000_000);
    assert_eq!(rows[0]["kind"], "full");

    assert_success(&world.run(&["verify-backup", &id]), "verify-backup");

    let drill = world.path("drill");
    let out = world.run(&[
        "restore-backup",
        &id,
        "--target-dir",
        drill.to_str().unwrap(),
    ]);
    assert_success(&out, "restore-backup --target-dir");

    for folder in ["local_content", "local_thumbnails"] {
        let original = tree_hashes(&world.data.join("media_store").join(folder));
        assert!(!original.is_empty());
        assert_same_tree(
            &tree_hashes(&drill.join("media").join(folder)),
            &original,
            folder,
        );
    }
    assert!(
        !drill.join("media/remote_content").exists(),
        "remote cache must be skipped by default"
    );
    assert!(
        !drill.join("media/url_cache").exists(),
        "URL cache must be skipped by default"
    );
    let key = format!("{SERVER_NAME}.signing.key");
    assert_eq!(
        file_hash(&drill.join("keys").join(&key)),
        file_hash(&world.data.join(&key))
    );
    assert_eq!(
        file_hash(&drill.join("config/homeserver.yaml")),
        file_hash(&world.data.join("homeserver.yaml"))
    );
    let db = rusqlite_count(&drill.join("database/homeserver.db"));
    assert_eq!(db, rusqlite_count(&world.data.join("homeserver.db")));
}

fn rusqlite_count(db: &Path) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('pragma integrity_check').fetchone()[0], c.execute('select count(*) from events').fetchone()[0])")
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(text.starts_with("ok "), "integrity check: {text}");
    text
}

#[test]
fn gpg_and_tar_open_a_backup_by_hand() {
    let world = World::new();
    let id = world.create_backup();
    let out = gpg_decrypt(&world.object(&id), &world.passphrase_file);
    assert!(
        out.status.success(),
        "gpg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unpacked = world.path("byhand");
    fs::create_dir_all(&unpacked).unwrap();
    let mut tar = std::process::Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&unpacked)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    tar.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    assert!(tar.wait().unwrap().success());
    let first = tar_member_names(&out.stdout);
    assert_eq!(first.first().map(String::as_str), Some("manifest.json"));
    assert_eq!(
        first.last().map(String::as_str),
        Some("manifest-files.json")
    );
    // Format 3: the media are in volumes, and which file is in which in the runs the base
    // names (volumes/runs.list); docs/format.md's loop merges them with awk.
    restore_by_hand(&world, &unpacked, "");
    assert_eq!(
        tree_hashes(&unpacked.join("media/local_content")),
        tree_hashes(&world.data.join("media_store/local_content"))
    );
}

fn tar_member_names(tar_bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string())
        .collect()
}

#[test]
fn live_restore_brings_back_the_backup_and_keeps_the_previous_data() {
    let world = World::new();
    let before = live_state(&world.data);
    let id = world.create_backup();

    // Life goes on after the backup: new media, a lost file, a changed key, a -wal file.
    let media = world.data.join("media_store/local_content");
    fs::write(media.join("new-upload"), b"after the backup").unwrap();
    let victim = tree_hashes(&media).keys().next().unwrap().clone();
    fs::remove_file(media.join(&victim)).unwrap();
    let key = world.data.join(format!("{SERVER_NAME}.signing.key"));
    fs::write(&key, "ed25519 a_XXXX somethingelse\n").unwrap();
    fs::write(world.data.join("homeserver.db-wal"), b"stale wal").unwrap();

    let out = world.run(&["restore-backup", &id]);
    assert_success(&out, "restore-backup");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pre-restore"), "{stdout}");

    let after = tree_hashes(&world.data.join("media_store/local_content"));
    let expected: std::collections::BTreeMap<_, _> = before
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("media_store/local_content/")
                .map(|r| (r.to_string(), v.clone()))
        })
        .collect();
    assert_same_tree(&after, &expected, "local_content after restore");
    assert_eq!(
        file_hash(&key),
        before[&format!("{SERVER_NAME}.signing.key")]
    );
    assert!(
        !world.data.join("homeserver.db-wal").exists(),
        "the old -wal must not meet the restored db"
    );
    let kept = world
        .data
        .join(format!("homeserver.db-wal.pre-restore-{id}"));
    assert_eq!(fs::read(&kept).unwrap(), b"stale wal");
    let kept_media = world.data.join(format!(
        "media_store/local_content.pre-restore-{id}/new-upload"
    ));
    assert_eq!(fs::read(kept_media).unwrap(), b"after the backup");
    rusqlite_count(&world.data.join("homeserver.db"));
    assert!(world
        .data
        .join(format!("restored-config-{id}/homeserver.yaml"))
        .exists());
    assert_no_staging_left(&world);

    // --remove-previous on a second restore leaves no copies behind.
    let id2 = world.create_backup();
    let out = world.run(&["restore-backup", &id2, "--remove-previous"]);
    assert_success(&out, "restore-backup --remove-previous");
    assert!(!world
        .data
        .join(format!("media_store/local_content.pre-restore-{id2}"))
        .exists());
}

#[test]
fn wrong_passphrase_changes_nothing() {
    let world = World::new();
    let id = world.create_backup();
    let before = live_state(&world.data);
    world.set_passphrase("not the passphrase");
    let out = world.run(&["restore-backup", &id]);
    assert_fails(&out, exit::WRONG_PASSPHRASE, &["passphrase"]);
    assert_same_tree(&live_state(&world.data), &before, "live data");
    assert_no_staging_left(&world);
    assert_fails(
        &world.run(&["verify-backup", &id]),
        exit::WRONG_PASSPHRASE,
        &["passphrase"],
    );
}

fn corrupt_and_expect(
    world: &World,
    id: &str,
    damage: impl Fn(&mut Vec<u8>),
    code: u8,
    needle: &str,
) {
    let object = world.object(id);
    let original = fs::read(&object).unwrap();
    let mut bytes = original.clone();
    damage(&mut bytes);
    fs::write(&object, &bytes).unwrap();
    let before = live_state(&world.data);
    assert_fails(&world.run(&["verify-backup", id]), code, &[needle]);
    assert_fails(&world.run(&["restore-backup", id]), code, &[needle]);
    assert_same_tree(
        &live_state(&world.data),
        &before,
        "live data after a failed restore",
    );
    assert_no_staging_left(world);
    fs::write(&object, &original).unwrap();
}

#[test]
fn damaged_objects_are_refused_and_change_nothing() {
    let world = World::new();
    let id = world.create_backup();
    corrupt_and_expect(
        &world,
        &id,
        |b| {
            let m = b.len() / 2;
            b[m] ^= 0x40
        },
        exit::CORRUPT,
        "damaged",
    );
    corrupt_and_expect(
        &world,
        &id,
        |b| {
            let n = b.len() - 30;
            b[n] ^= 0x01
        },
        exit::CORRUPT,
        "damaged",
    );
    // Inside the S2K salt: OpenPGP cannot tell that from a wrong passphrase.
    corrupt_and_expect(
        &world,
        &id,
        |b| b[8] ^= 0x01,
        exit::WRONG_PASSPHRASE,
        "passphrase",
    );
    for keep in [100, 5000] {
        corrupt_and_expect(
            &world,
            &id,
            |b| b.truncate(keep),
            exit::CORRUPT,
            "truncated",
        );
    }
    corrupt_and_expect(
        &world,
        &id,
        |b| b.truncate(b.len() / 3),
        exit::CORRUPT,
        "truncated",
    );
    corrupt_and_expect(
        &world,
        &id,
        |b| b.truncate(b.len() * 2 / 3),
        exit::CORRUPT,
        "truncated",
    );
    corrupt_and_expect(
        &world,
        &id,
        |b| b.truncate(b.len() - 1),
        exit::CORRUPT,
        "damaged",
    );
    corrupt_and_expect(&world, &id, |b| b.clear(), exit::CORRUPT, "empty");
    corrupt_and_expect(
        &world,
        &id,
        |b| *b = b"just some text, not OpenPGP".to_vec(),
        exit::CORRUPT,
        "OpenPGP",
    );
    // The object is fine again: restore works.
    assert_success(&world.run(&["verify-backup", &id]), "verify after repair");
}

#[test]
fn another_server_name_is_refused() {
    let source = World::new();
    let id = source.create_backup();
    let other = World::with(WorldOptions {
        server_name: "other.test",
        ..Default::default()
    });
    fs::create_dir_all(&other.store).unwrap();
    copy_backup(&source, &other, &id);
    let before = live_state(&other.data);
    let stderr = assert_fails(
        &other.run(&["restore-backup", &id]),
        exit::REFUSED,
        &["server_name"],
    );
    assert!(
        stderr.contains("example.test") && stderr.contains("other.test"),
        "{stderr}"
    );
    assert_same_tree(&live_state(&other.data), &before, "live data");
}

#[test]
fn a_running_synapse_is_not_restored_over() {
    let world = World::new();
    let id = world.create_backup();
    // The pid file names a live process: this test itself.
    fs::write(
        world.data.join("homeserver.pid"),
        std::process::id().to_string(),
    )
    .unwrap();
    let before = live_state(&world.data);
    assert_fails(
        &world.run(&["restore-backup", &id]),
        exit::REFUSED,
        &["running"],
    );
    assert_same_tree(&live_state(&world.data), &before, "live data");
    assert_no_staging_left(&world);
}

#[test]
fn stop_command_runs_before_the_restore() {
    let pid_file_holder = tempfile::tempdir().unwrap();
    let marker = pid_file_holder.path().join("stopped");
    let world = World::with(WorldOptions {
        extra_config: "",
        ..Default::default()
    });
    let pid_file = world.data.join("homeserver.pid");
    let config = fs::read_to_string(&world.config).unwrap();
    fs::write(
        &world.config,
        format!(
            "{config}[restore]\nstop-command = \"rm -f {} && touch {}\"\n",
            pid_file.display(),
            marker.display()
        ),
    )
    .unwrap();
    let id = world.create_backup();
    fs::write(&pid_file, std::process::id().to_string()).unwrap();
    let out = world.run(&["restore-backup", &id]);
    assert_success(&out, "restore-backup with stop-command");
    assert!(marker.exists(), "stop-command did not run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("start it yourself"));
}

#[test]
fn unknown_ids_are_errors() {
    let world = World::new();
    world.create_backup();
    assert_fails(
        &world.run(&["delete-backup", "backup-19990101000000000000"]),
        exit::NOT_FOUND,
        &["not found"],
    );
    assert_fails(
        &world.run(&["restore-backup", "backup-19990101000000000000"]),
        exit::NOT_FOUND,
        &["not found"],
    );
    assert_fails(
        &world.run(&["verify-backup", "../etc/passwd"]),
        exit::CONFIG,
        &["not a valid backup id"],
    );
}

#[test]
fn delete_removes_a_backup() {
    let world = World::new();
    let id = world.create_backup();
    assert_success(
        &world.run(&["delete-backup", &format!("backup-id={id}")]),
        "delete-backup",
    );
    assert_no_backups(&world);
}

#[test]
fn configuration_mistakes_are_named() {
    let world = World::new();
    let missing = run_with_config(&world.path("nope.toml"), &["list-backups"]);
    assert_fails(&missing, exit::CONFIG, &["nope.toml"]);

    let config = fs::read_to_string(&world.config).unwrap();
    fs::write(&world.config, format!("{config}typo-key = 1\n")).unwrap();
    assert_fails(&world.run(&["list-backups"]), exit::CONFIG, &["typo-key"]);

    fs::write(&world.config, &config).unwrap();
    world.set_passphrase("");
    assert_fails(&world.run(&["create-backup"]), exit::CONFIG, &["empty"]);
    assert!(!world.store.exists() || fs::read_dir(&world.store).unwrap().next().is_none());

    // Readable by everyone: works, with a warning that says how to fix it.
    world.set_passphrase(PASSPHRASE);
    fs::set_permissions(&world.passphrase_file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = world.run(&["create-backup"]);
    assert_success(&out, "create-backup with a world-readable passphrase file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("readable by every user") && stderr.contains("chmod o-rwx"),
        "{stderr}"
    );
    fs::set_permissions(&world.passphrase_file, fs::Permissions::from_mode(0o600)).unwrap();

    let no_pass = config.replace(
        &format!("passphrase-file = \"{}\"", world.passphrase_file.display()),
        "",
    );
    fs::write(&world.config, no_pass).unwrap();
    assert_fails(
        &world.run(&["create-backup"]),
        exit::CONFIG,
        &["never written unencrypted"],
    );
}

#[test]
fn secrets_never_reach_the_output() {
    let world = World::new();
    let id = world.create_backup();
    world.set_passphrase("wrong-passphrase-sentinel");
    for args in [
        vec!["-vv", "restore-backup", &id],
        vec!["-vv", "verify-backup", &id],
        vec!["-vv", "list-backups"],
    ] {
        let out = world.run(&args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("wrong-passphrase-sentinel"),
            "passphrase printed by {args:?}:\n{all}"
        );
        assert!(!all.contains(PASSPHRASE), "passphrase printed by {args:?}");
    }
}

#[test]
fn backups_hold_no_plaintext() {
    let world = World::new();
    let id = world.create_backup();
    let object = fs::read(world.object(&id)).unwrap();
    let media = tree_hashes(&world.data.join("media_store/local_content"));
    let (some_file, _) = media.iter().next().unwrap();
    let some_bytes =
        fs::read(world.data.join("media_store/local_content").join(some_file)).unwrap();
    assert_no_plaintext(
        &object,
        &[
            SERVER_NAME.as_bytes(),
            b"manifest.json",
            b"local_content",
            &some_bytes[..64],
        ],
    );
}

/// Builds the object the charm's pipeline makes: `tar -c /data/... | gpg --symmetric`.
fn charm_object(world: &World, gpg_args: &[&str]) -> Vec<u8> {
    charm_object_with(world, gpg_args, &[])
}

/// A charm object that also holds `extra` files (paths under the charm root, e.g. `data/x`).
fn charm_object_with(world: &World, gpg_args: &[&str], extra: &[&str]) -> Vec<u8> {
    let root = world.path("charm-root");
    let data = root.join("data");
    fs::create_dir_all(&data).unwrap();
    let key = format!("{SERVER_NAME}.signing.key");
    fs::copy(world.data.join(&key), data.join(&key)).unwrap();
    fs::copy(world.data.join("homeserver.db"), data.join("homeserver.db")).unwrap();
    copy_tree(
        &world.data.join("media_store/local_content"),
        &data.join("media_store/local_content"),
    );
    copy_tree(
        &world.data.join("media_store/local_thumbnails"),
        &data.join("media_store/local_thumbnails"),
    );
    for path in extra {
        let file = root.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, path.as_bytes()).unwrap();
    }
    let key_member = format!("data/{key}");
    let mut members = vec![
        key_member.as_str(),
        "data/homeserver.db",
        "data/media_store/local_content",
        "data/media_store/local_thumbnails",
    ];
    members.extend_from_slice(extra);
    let tar = real_tar(&root, &members);
    gpg_encrypt(&tar, &world.passphrase_file, gpg_args)
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let dest = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            fs::create_dir_all(&dest).unwrap();
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn charm_backups_restore_into_the_configured_paths() {
    for (n, gpg_args) in [vec![], vec!["--compress-algo", "none"]].iter().enumerate() {
        let source = World::new();
        let object = charm_object(&source, gpg_args);
        // A fresh host: same server_name, different data dir, different media.
        let target = World::with(WorldOptions {
            seed: 7,
            ..Default::default()
        });
        fs::create_dir_all(&target.store).unwrap();
        let id = format!("backup-2024010112000000000{n}");
        fs::write(target.object(&id), object).unwrap();

        assert_success(&target.run(&["verify-backup", &id]), "verify charm backup");
        let out = target.run(&["restore-backup", &id]);
        assert_success(&out, "restore charm backup");
        let key = format!("{SERVER_NAME}.signing.key");
        assert_eq!(
            file_hash(&target.data.join(&key)),
            file_hash(&source.data.join(&key))
        );
        assert_eq!(
            tree_hashes(&target.data.join("media_store/local_content")),
            tree_hashes(&source.data.join("media_store/local_content"))
        );
        assert_eq!(
            file_hash(&target.data.join("homeserver.db")),
            file_hash(&source.data.join("homeserver.db"))
        );
        let listed = target.run(&["list-backups"]);
        assert!(String::from_utf8_lossy(&listed.stdout).contains("charm"));
    }
}

/// The charm archived whatever matched `media_store/local_*`, so a folder an earlier restore
/// left on the host (`local_thumbnails.pre-restore-…`) is in every later backup of it: skipped
/// with one warning that names it, counted, and never called damage.
#[test]
fn charm_backups_with_unknown_folders_restore_and_name_what_they_skipped() {
    let source = World::new();
    let leftover = "data/media_store/local_thumbnails.pre-restore-backup-1";
    let extra = [
        format!("{leftover}/ab/cd/one"),
        format!("{leftover}/ab/cd/two"),
        "data/homeserver.yaml".to_string(),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let object = charm_object_with(&source, &[], &extra);
    let target = World::with(WorldOptions {
        seed: 5,
        ..Default::default()
    });
    fs::create_dir_all(&target.store).unwrap();
    let id = "backup-20240101120000000005";
    fs::write(target.object(id), object).unwrap();

    assert_success(&target.run(&["verify-backup", id]), "verify charm backup");
    let out = target.run(&["restore-backup", id]);
    assert_success(&out, "restore charm backup with unknown folders");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("3 skipped"), "{stdout}");
    let warning = format!("data/homeserver.yaml (1 file), {leftover}/ (2 files)");
    assert_eq!(stderr.matches(&warning).count(), 1, "one warning: {stderr}");
    assert!(!target
        .data
        .join("media_store/local_thumbnails.pre-restore-backup-1")
        .exists());
    assert_eq!(
        tree_hashes(&target.data.join("media_store/local_content")),
        tree_hashes(&source.data.join("media_store/local_content"))
    );
}

#[test]
fn gnupg_backups_with_a_wrong_charm_root_are_refused() {
    let source = World::new();
    let object = charm_object(&source, &[]);
    let target = World::with(WorldOptions {
        seed: 3,
        ..Default::default()
    });
    fs::create_dir_all(&target.store).unwrap();
    let id = "backup-20240101120000000000";
    fs::write(target.object(id), object).unwrap();
    let before = live_state(&target.data);
    assert_fails(
        &target.run(&["restore-backup", id, "--charm-source-root", "/srv"]),
        exit::CORRUPT,
        &["signing key"],
    );
    assert_same_tree(&live_state(&target.data), &before, "live data");
}

#[test]
fn prune_keeps_what_the_policy_says_and_touches_nothing_else() {
    let world = World::new();
    let newest = world.create_backup();
    // Older backups (copies of the real one under older ids, renamed inside too) and a file
    // that is not a backup.
    let older = [
        "backup-20260301100000000000",
        "backup-20260301230000000000",
        "backup-20260228120000000000",
        "backup-20260115120000000000",
    ];
    for id in older {
        store_renamed_copy(&world, &newest, id);
    }
    fs::write(world.store.join("notes.txt"), b"not a backup").unwrap();

    assert_fails(&world.run(&["prune-backups"]), exit::CONFIG, &["keep"]);

    let dry = world.run(&["--json", "prune-backups", "--keep-daily", "2", "--dry-run"]);
    assert_success(&dry, "prune-backups --dry-run");
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let kept: Vec<&str> = plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["backup-id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [newest.as_str(), "backup-20260301230000000000"]);
    assert_eq!(plan["backups"].as_array().unwrap().len(), 5);
    assert_eq!(plan["would-delete"], 3, "{plan}");
    assert_eq!(plan["deleted"], 0, "{plan}");
    for id in older {
        assert!(world.object(id).exists(), "a dry run deleted {id}");
    }

    let out = world.run(&["prune-backups", "--keep-daily", "2", "--keep-monthly", "3"]);
    assert_success(&out, "prune-backups");
    let mut left = backups_in_store(&world);
    left.extend(
        names_in(&world.store)
            .into_iter()
            .filter(|name| name.ends_with(".txt")),
    );
    left.sort();
    // Daily: today and March 1 (its newest); monthly: November, March, February.
    assert_eq!(
        left,
        [
            "backup-20260228120000000000",
            "backup-20260301230000000000",
            newest.as_str(),
            "notes.txt",
        ]
    );
    assert_success(
        &world.run(&["verify-backup", &newest]),
        "verify after prune",
    );
    // A backup counts as kept only once it opens: no prune without the passphrase.
    fs::remove_file(&world.passphrase_file).unwrap();
    let out = world.run(&["prune-backups", "--keep-last", "1"]);
    assert_fails(&out, exit::CONFIG, &["passphrase"]);
    assert_eq!(backups_in_store(&world).len(), 3);
}

/// Issue 10: a media store that is not where homeserver.yaml says (a relative path resolved
/// elsewhere) is an error naming it, never a backup with 0 media files; an empty one is fine.
#[test]
fn a_missing_media_store_is_an_error_not_an_empty_backup() {
    let world = World::new();
    let media = world.data.join("media_store");
    fs::rename(&media, world.data.join("media_store.elsewhere")).unwrap();
    let out = world.run(&["create-backup"]);
    assert_fails(&out, exit::CONFIG, &["media store", "does not exist"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&media.display().to_string()),
        "the error names the path"
    );
    assert_no_backups(&world);
    fs::create_dir(&media).unwrap();
    let out = world.run(&["create-backup"]);
    assert_success(&out, "create-backup of an empty media store");
}
