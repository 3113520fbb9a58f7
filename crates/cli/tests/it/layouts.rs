//! The layouts Synapse really runs in: Debian's conf.d, relative paths against its working
//! directory, YAML merge keys, symlinked media folders and keys, folder modes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;
use crate::exit;

/// Rewrites the world's config file: `[synapse]` replaced by `synapse_section`.
fn set_synapse_section(world: &World, synapse_section: &str) {
    let text = fs::read_to_string(&world.config).unwrap();
    let rest: String = text
        .lines()
        .skip_while(|l| !l.starts_with("[local]") && !l.starts_with("[s3]"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&world.config, format!("{synapse_section}\n{rest}")).unwrap();
}

/// homeserver.yaml as Synapse 1.163.2's `--generate-config` wrote it (data dir, server name
/// and secrets replaced by placeholders), for the world's data dir. Its listener's port becomes
/// 1, which nothing answers, so that Synapse is "not running".
fn generated_config(world: &World) -> String {
    include_str!("fixtures/synapse-1.163.2-generated.yaml")
        .replace("@DATA@", world.data.to_str().unwrap())
        .replace("@SERVER_NAME@", SERVER_NAME)
        .replace("port: 8008", "port: 1")
}

/// The generated homeserver.yaml without the lines that start with any of `keys`.
fn homeserver_without(world: &World, keys: &[&str]) -> String {
    generated_config(world)
        .lines()
        .filter(|l| !keys.iter().any(|k| l.starts_with(k)))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Debian's layout: /etc/matrix-synapse/homeserver.yaml plus conf.d/*.yaml, server_name and
/// the database in conf.d. Read as Synapse reads it, every file backed up and restored beside
/// the main one.
#[test]
fn a_debian_conf_d_layout_is_read_backed_up_and_restored() {
    let world = World::new();
    let etc = world.path("etc/matrix-synapse");
    let conf_d = etc.join("conf.d");
    fs::create_dir_all(&conf_d).unwrap();
    // The main file still names a database that does not exist; conf.d overrides it.
    let main =
        homeserver_without(&world, &["server_name"]).replace("/homeserver.db", "/not-this-one.db");
    fs::write(etc.join("homeserver.yaml"), main).unwrap();
    fs::write(
        conf_d.join("server_name.yaml"),
        format!("server_name: \"{SERVER_NAME}\"\n"),
    )
    .unwrap();
    fs::write(
        conf_d.join("zz-database.yaml"),
        format!(
            "database:\n  name: sqlite3\n  args:\n    database: {}\n",
            world.data.join("homeserver.db").display()
        ),
    )
    .unwrap();
    fs::write(conf_d.join("README"), "not read by Synapse").unwrap();
    // A secret kept out of the config, named by a setting in conf.d.
    fs::write(etc.join("macaroon.key"), "not-a-real-secret\n").unwrap();
    fs::write(
        conf_d.join("secrets.yaml"),
        format!(
            "macaroon_secret_key_path: {}\n",
            etc.join("macaroon.key").display()
        ),
    )
    .unwrap();

    // Only the main file: server_name is missing, and the error says where to look.
    set_synapse_section(
        &world,
        &format!(
            "[synapse]\nconfig = \"{}\"",
            etc.join("homeserver.yaml").display()
        ),
    );
    let out = world.run(&["create-backup"]);
    let err = assert_fails(&out, exit::CONFIG, &["server_name", "conf.d"]);
    assert!(
        err.contains(&etc.join("homeserver.yaml").display().to_string()),
        "{err}"
    );

    set_synapse_section(
        &world,
        &format!(
            "[synapse]\nconfig = [\"{}\", \"{}\"]",
            etc.join("homeserver.yaml").display(),
            conf_d.display()
        ),
    );
    // The main file's database does not exist: the backup succeeds only with conf.d's.
    let id = world.create_backup();
    let drill = world.restore_drill(&id, "restore the Debian layout's backup");
    assert!(drill.join("database/homeserver.db").is_file());
    for (member, source) in [
        ("config/homeserver.yaml", etc.join("homeserver.yaml")),
        (
            "config/conf.d/server_name.yaml",
            conf_d.join("server_name.yaml"),
        ),
        (
            "config/conf.d/zz-database.yaml",
            conf_d.join("zz-database.yaml"),
        ),
        ("config/conf.d/secrets.yaml", conf_d.join("secrets.yaml")),
        (
            "config/referenced/macaroon_secret_key_path/macaroon.key",
            etc.join("macaroon.key"),
        ),
    ] {
        assert_eq!(
            file_hash(&drill.join(member)),
            file_hash(&source),
            "{member}"
        );
    }
    assert!(!drill.join("config/conf.d/README").exists());

    // A live restore puts them beside the main file, in the same tree.
    let out = world.run(&["restore-backup", &id]);
    assert_success(&out, "live restore of the Debian layout");
    let restored = etc.join(format!("restored-config-{id}"));
    assert_eq!(
        file_hash(&restored.join("conf.d/server_name.yaml")),
        file_hash(&conf_d.join("server_name.yaml"))
    );
}

/// `media_store_path: media_store` relative, the config elsewhere than the data: Synapse
/// resolves it against its working directory. Without `working-dir` the tool looks beside the
/// config, finds nothing there and refuses (naming the path and where it came from), rather
/// than backing up no media; with it, every media file is in the backup.
#[test]
fn relative_paths_resolve_against_the_working_directory() {
    let world = World::new();
    let etc = world.path("etc");
    fs::create_dir_all(&etc).unwrap();
    let main =
        homeserver_without(&world, &["media_store_path"]) + "media_store_path: media_store\n";
    fs::write(etc.join("homeserver.yaml"), main).unwrap();
    let config = etc.join("homeserver.yaml").display().to_string();

    set_synapse_section(&world, &format!("[synapse]\nconfig = \"{config}\""));
    let out = world.run(&["create-backup"]);
    let err = assert_fails(
        &out,
        exit::CONFIG,
        &["media store", "does not exist", "working-dir"],
    );
    assert!(
        err.contains(&etc.join("media_store").display().to_string()),
        "{err}"
    );
    assert!(err.contains(&config), "names the file that set it: {err}");
    assert_no_backups(&world);

    set_synapse_section(
        &world,
        &format!(
            "[synapse]\nconfig = \"{config}\"\nworking-dir = \"{}\"",
            world.data.display()
        ),
    );
    let id = world.create_backup();
    let drill = world.restore_drill(&id, "restore with a relative media store");
    let media = world.data.join("media_store");
    for dir in ["local_content", "local_thumbnails"] {
        let expected = tree_hashes(&media.join(dir));
        assert!(!expected.is_empty());
        assert_eq!(
            tree_hashes(&drill.join("media").join(dir)),
            expected,
            "{dir}"
        );
    }
}

/// A guess of the working directory that the running Synapse contradicts is an error, even
/// when the guessed folder has a (stale) media store: backing that up would miss the real one.
#[test]
fn a_running_synapse_elsewhere_than_the_guess_is_named() {
    let world = World::new();
    let etc = world.path("etc");
    fs::create_dir_all(etc.join("media_store/local_content")).unwrap();
    let main =
        homeserver_without(&world, &["media_store_path"]) + "media_store_path: media_store\n";
    fs::write(etc.join("homeserver.yaml"), main).unwrap();
    let config = etc.join("homeserver.yaml").display().to_string();
    set_synapse_section(&world, &format!("[synapse]\nconfig = \"{config}\""));
    // A process started as Synapse is, with this config, running in the data dir.
    let fake = Kill(
        std::process::Command::new("python3")
            .args([
                "-c",
                "import time; time.sleep(60)",
                "synapse.app.homeserver",
                "--config-path",
                &config,
            ])
            .current_dir(&world.data)
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let err = assert_fails(
        &world.run(&["create-backup"]),
        exit::CONFIG,
        &["working-dir"],
    );
    assert!(
        err.contains(&format!("runs in {}", world.data.display())),
        "{err}"
    );
    assert_no_backups(&world);
    drop(fake);
}

/// A missing signing key or SQLite database is a configuration error naming the path and the
/// file that named it.
#[test]
fn a_missing_key_or_database_names_the_path_and_its_origin() {
    let world = World::new();
    let hs = world.data.join("homeserver.yaml").display().to_string();
    let db = world.data.join("homeserver.db");
    fs::rename(&db, world.path("moved.db")).unwrap();
    let err = assert_fails(
        &world.run(&["create-backup"]),
        exit::CONFIG,
        &["SQLite database"],
    );
    assert!(
        err.contains(&db.display().to_string()) && err.contains(&hs),
        "{err}"
    );
    fs::rename(world.path("moved.db"), &db).unwrap();

    let key = world.data.join(format!("{SERVER_NAME}.signing.key"));
    fs::remove_file(&key).unwrap();
    let err = assert_fails(
        &world.run(&["create-backup"]),
        exit::CONFIG,
        &["signing key"],
    );
    assert!(
        err.contains(&key.display().to_string()) && err.contains(&hs),
        "{err}"
    );
    assert_no_backups(&world);
}

/// PyYAML applies merge keys; a config whose database section merges an anchor must be read
/// with the anchor's path. Dropping the merge key would give Synapse's default `homeserver.db`,
/// which is not there, and the backup would be refused.
#[test]
fn yaml_merge_keys_and_anchors_are_applied() {
    let world = World::new();
    let anchored = world.data.join("anchored.db");
    fs::rename(world.data.join("homeserver.db"), &anchored).unwrap();
    let main = homeserver_without(
        &world,
        &["database", "  name: sqlite3", "  args", "    database"],
    ) + &format!(
        "x-sqlite: &sqlite\n  name: sqlite3\n  args:\n    database: {}\n\
             database:\n  <<: *sqlite\n  allow_unsafe_locale: false\n",
        anchored.display()
    );
    fs::write(world.data.join("homeserver.yaml"), main).unwrap();
    let id = world.create_backup();
    let drill = world.restore_drill(&id, "restore a merge-key config's backup");
    assert!(drill.join("database/homeserver.db").is_file());
}

/// `local_content` a symlink to another disk and the key a Kubernetes-style `..data` chain: a
/// live restore writes through the links, into the targets' folders, and leaves the links.
#[test]
fn live_restores_write_through_symlinks_and_keep_them() {
    let world = World::new();
    let id = world.create_backup();
    let media = world.data.join("media_store");
    let other_disk = world.path("other-disk");
    fs::create_dir_all(&other_disk).unwrap();
    fs::rename(
        media.join("local_content"),
        other_disk.join("local_content"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        other_disk.join("local_content"),
        media.join("local_content"),
    )
    .unwrap();
    let expected_media = tree_hashes(&other_disk.join("local_content"));

    let key_name = format!("{SERVER_NAME}.signing.key");
    let key = world.data.join(&key_name);
    let secrets = world.path("secrets");
    let version = secrets.join("..2026_11_27_00_00_00.1");
    fs::create_dir_all(&version).unwrap();
    fs::rename(&key, version.join(&key_name)).unwrap();
    std::os::unix::fs::symlink("..2026_11_27_00_00_00.1", secrets.join("..data")).unwrap();
    std::os::unix::fs::symlink(format!("..data/{key_name}"), secrets.join(&key_name)).unwrap();
    std::os::unix::fs::symlink(secrets.join(&key_name), &key).unwrap();
    let expected_key = file_hash(&key);
    // Changes after the backup, which the restore must undo on the other disk.
    fs::write(other_disk.join("local_content/added-later"), b"new").unwrap();
    fs::write(version.join(&key_name), b"ed25519 a_zzzz changed\n").unwrap();

    let out = world.run(&["restore-backup", &id, "--remove-previous"]);
    assert_success(&out, "live restore through symlinks");
    let lc = media.join("local_content");
    assert!(
        fs::symlink_metadata(&lc).unwrap().file_type().is_symlink(),
        "link kept"
    );
    assert_eq!(
        tree_hashes(&other_disk.join("local_content")),
        expected_media
    );
    assert!(fs::symlink_metadata(&key).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(secrets.join("..data"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(file_hash(&version.join(&key_name)), expected_key);
    assert_no_staging_left(&world);

    // And a backup reads through the same links.
    let again = world.create_backup();
    let drill = world.restore_drill(&again, "restore the backup taken through symlinks");
    assert_eq!(
        tree_hashes(&drill.join("media/local_content")),
        expected_media
    );
    assert_eq!(
        file_hash(&drill.join(format!("keys/{key_name}"))),
        expected_key
    );
}

/// The SQLite file a symlink to another disk: the live restore writes the database there and
/// moves the old `-wal` that lies beside it there aside (SQLite would replay it onto the
/// restored file), and the link stays.
#[test]
fn a_symlinked_sqlite_database_is_restored_with_its_sidecars_beside_the_target() {
    let world = World::new();
    let id = world.create_backup();
    let db = world.data.join("homeserver.db");
    let db_disk = world.path("db-disk");
    fs::create_dir_all(&db_disk).unwrap();
    fs::rename(&db, db_disk.join("homeserver.db")).unwrap();
    let _ = fs::remove_file(world.data.join("homeserver.db-wal"));
    let _ = fs::remove_file(world.data.join("homeserver.db-shm"));
    std::os::unix::fs::symlink(db_disk.join("homeserver.db"), &db).unwrap();
    fs::write(db_disk.join("homeserver.db-wal"), b"an old write-ahead log").unwrap();

    let out = world.run(&["restore-backup", &id, "--remove-previous"]);
    assert_success(&out, "live restore of a symlinked database");
    assert!(
        fs::symlink_metadata(&db).unwrap().file_type().is_symlink(),
        "link kept"
    );
    assert!(db_disk.join("homeserver.db").is_file());
    assert!(
        !db_disk.join("homeserver.db-wal").exists(),
        "the old -wal beside the real file was moved aside: {:?}",
        names_in(&db_disk)
    );
    assert_no_staging_left(&world);
}

/// A media folder that is a symlink to a disk that is not mounted: the backup refuses, naming
/// the link, rather than backing up no media.
#[test]
fn a_dangling_media_link_is_an_error() {
    let world = World::new();
    let local_content = world.data.join("media_store/local_content");
    fs::remove_dir_all(&local_content).unwrap();
    std::os::unix::fs::symlink(world.path("unmounted/local_content"), &local_content).unwrap();
    let err = assert_fails(
        &world.run(&["create-backup"]),
        exit::CONFIG,
        &["symlink", "not mounted"],
    );
    assert!(err.contains(&local_content.display().to_string()), "{err}");
    assert_no_backups(&world);
}

/// Folder modes come back as they were: a 0700 media folder is 0700 after a restore, in a
/// live restore and into a fresh `--target-dir`; a folder of its parent's mode (which the
/// backup does not list) gets that mode again, not the umask's.
#[test]
fn folder_modes_are_restored() {
    let world = World::new();
    let local_content = world.data.join("media_store/local_content");
    let some_subfolder = fs::read_dir(&local_content)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a media subfolder");
    let grandchild = fs::read_dir(&some_subfolder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a media folder two levels down");
    // Three levels down, under a folder the backup does not list either.
    let great_grandchild = grandchild.join("deeper");
    fs::create_dir(&great_grandchild).unwrap();
    fs::write(great_grandchild.join("file"), b"x").unwrap();
    fs::set_permissions(&local_content, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&some_subfolder, fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(&grandchild, fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(&great_grandchild, fs::Permissions::from_mode(0o750)).unwrap();
    let id = world.create_backup();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;

    fs::set_permissions(&local_content, fs::Permissions::from_mode(0o755)).unwrap();
    let out = world.run(&["restore-backup", &id, "--remove-previous"]);
    assert_success(&out, "live restore");
    assert_eq!(mode(&local_content), 0o700);
    assert_eq!(mode(&some_subfolder), 0o750);
    assert_eq!(mode(&grandchild), 0o750);
    assert_eq!(mode(&great_grandchild), 0o750);

    let drill = world.restore_drill(&id, "restore into a fresh folder");
    let rel = some_subfolder
        .strip_prefix(world.data.join("media_store"))
        .unwrap();
    assert_eq!(mode(&drill.join("media/local_content")), 0o700);
    assert_eq!(mode(&drill.join("media").join(rel)), 0o750);
    let rel = great_grandchild
        .strip_prefix(world.data.join("media_store"))
        .unwrap();
    assert_eq!(mode(&drill.join("media").join(rel)), 0o750);
    assert_eq!(mode(drill.join("media").join(rel).parent().unwrap()), 0o750);
}
