//! PostgreSQL's physical mode (`[postgres] mode = "physical"`) with a private cluster whose
//! archive_command is the built binary: create-backup takes a base, then only restore points;
//! verify reads the base and the WAL to the restore point and names a gap; restore-backup
//! `--target-dir` lays a data directory that recovers, from the store alone, to exactly the
//! backup's restore point. On the local folder and on Garage.

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::pg_cluster::{self, Cluster};
use crate::common::*;
use crate::exit;

pub(crate) fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) fn created(world: &World) -> String {
    let out = world.run(&["--json", "create-backup"]);
    assert!(out.status.success(), "create-backup: {}", stderr(&out));
    json(&out)["backup-id"].as_str().unwrap().to_string()
}

pub(crate) fn listed(world: &World, id: &str) -> serde_json::Value {
    let out = world.run(&["--json", "list-backups"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json(&out)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backup-id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed"))
        .clone()
}

/// `check`'s item `name` (status and detail).
fn check_item(world: &World, name: &str) -> serde_json::Value {
    let doc = json(&world.run(&["--json", "check"]));
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {doc}"))
        .clone()
}

fn phases(cluster: &Cluster) -> String {
    cluster.sql("SELECT phase || '=' || count(*) FROM t GROUP BY phase ORDER BY phase")
}

/// Starts the data directory `restore-backup --target-dir` laid, on a port of the test's.
fn start_restored(bin: &Path, world: &World, target: &Path, name: &str) -> Cluster {
    let data = target.join("postgres");
    let socket = world.path(&format!("{name}-socket"));
    fs::create_dir_all(&socket).unwrap();
    pg_cluster::give_to_postgres(&socket);
    let port = pg_cluster::unused_port();
    pg_cluster::append(
        &data.join("postgresql.auto.conf"),
        &format!(
            "port = {port}\nunix_socket_directories = '{}'\n",
            socket.display()
        ),
    );
    let restored = Cluster::at(bin, data, socket, port, world.path(&format!("{name}.log")));
    restored.start();
    restored.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(120));
    restored
}

fn physical_backups_restore_to_their_restore_point(backend: Backend) {
    let Some(bin) = pg_cluster::available() else {
        return;
    };
    let _s3 = s3_shared();
    let Some((world, s3)) = world_on(backend) else {
        return;
    };
    let tool = pg_cluster::share_world_with_postgres(&world, s3.is_some());
    pg_cluster::append(
        &world.config,
        "\n[postgres]\nmode = \"physical\"\narchive-timeout-secs = 120\n",
    );
    let cluster = Cluster::init(
        &bin,
        world.dir.path(),
        "primary",
        &format!("archive_mode = on\narchive_command = '{tool} wal-push %p'\n"),
    );
    cluster.start();
    pg_cluster::point_homeserver_at(&world, &cluster);
    cluster.sql("CREATE TABLE t (i int, phase text)");

    // Archiving elsewhere: refused before anything is written.
    cluster.sql("ALTER SYSTEM SET archive_command = 'true'");
    cluster.sql("SELECT pg_reload_conf()");
    cluster.wait_for("SHOW archive_command", "true", Duration::from_secs(60));
    let refused = world.run(&["create-backup"]);
    assert_eq!(
        refused.status.code(),
        Some(i32::from(exit::REFUSED)),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("archive_command"),
        "{}",
        stderr(&refused)
    );
    assert!(!world.run(&["--json", "list-backups"]).stdout.is_empty());
    assert_eq!(
        json(&world.run(&["--json", "list-backups"]))["backups"],
        serde_json::json!([])
    );
    // check says the same, and that a restore in place lacks its [postgres] settings.
    let archiving = check_item(&world, "wal-archiving");
    assert_eq!(archiving["status"], "fail", "{archiving}");
    assert!(
        archiving["detail"].as_str().unwrap().contains("physical"),
        "{archiving}"
    );
    let in_place = check_item(&world, "physical-restore");
    assert_eq!(in_place["status"], "warn", "{in_place}");
    assert!(
        in_place["detail"].as_str().unwrap().contains("data-dir"),
        "{in_place}"
    );
    cluster.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{tool} wal-push %p'"
    ));
    cluster.sql("SELECT pg_reload_conf()");
    cluster.wait_for(
        "SHOW archive_command",
        &format!("{tool} wal-push %p"),
        Duration::from_secs(60),
    );

    cluster.sql("INSERT INTO t SELECT g, 'before-first' FROM generate_series(1, 1000) g");
    let first = created(&world);
    let first_row = listed(&world, &first);
    assert_eq!(first_row["database"]["mode"], "physical", "{first_row}");
    assert_eq!(
        first_row["database"]["physical"]["took-base"], true,
        "{first_row}"
    );
    cluster.sql("INSERT INTO t SELECT g, 'between' FROM generate_series(1, 300) g");
    let second = created(&world);
    let second_row = listed(&world, &second);
    let physical = &second_row["database"]["physical"];
    assert_eq!(physical["took-base"], false, "{second_row}");
    assert_eq!(physical["base"], first_row["database"]["physical"]["base"]);
    assert_eq!(physical["restore-point"], second.as_str());
    // The span --to-time reaches starts at the oldest physical backup's restore point.
    let list = json(&world.run(&["--json", "list-backups"]));
    assert_eq!(
        list["restorable"]["from"], first_row["database"]["physical"]["restores-to"],
        "{list}"
    );
    assert!(list["restorable"]["wal-stored-until"].is_string(), "{list}");
    cluster.sql("INSERT INTO t SELECT g, 'after-second' FROM generate_series(1, 50) g");

    let verified = world.run(&["--json", "verify-backup", &second]);
    assert!(verified.status.success(), "{}", stderr(&verified));
    let report = json(&verified);
    assert!(report["wal-segments"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["base-bytes"].as_u64().unwrap() > 1 << 20, "{report}");

    // In place is refused before anything is stopped or moved.
    let in_place = world.run(&["restore-backup", &second]);
    assert_eq!(
        in_place.status.code(),
        Some(i32::from(exit::REFUSED)),
        "{}",
        stderr(&in_place)
    );
    assert!(
        stderr(&in_place).contains("--target-dir"),
        "{}",
        stderr(&in_place)
    );

    if backend == Backend::Local {
        a_base_that_does_not_fit_is_refused(&world, &second);
    }
    let target = world.path("restored");
    let out = world.run(&[
        "restore-backup",
        &second,
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(printed.contains("pg_ctl -D"), "{printed}");
    assert!(target.join("media").is_dir() || target.join("keys").is_dir());
    cluster.stop();
    let restored = start_restored(&bin, &world, &target, "restored");
    assert_eq!(
        phases(&restored),
        "before-first=1000\nbetween=300",
        "{}",
        restored.log_text()
    );
    assert!(
        restored
            .log_text()
            .contains(&format!("recovery stopping at restore point \"{second}\"")),
        "{}",
        restored.log_text()
    );
    restored.stop();

    if backend == Backend::Local {
        a_gap_in_the_wal_is_named(&world, &first);
    }
}

/// A `--target-dir` on a filesystem with room for the files but not for the base: refused
/// before anything is laid. A tmpfs of 68 MiB (the check keeps 64 MiB spare; the files are a
/// few KiB, the base tens of MiB); skipped where nothing can be mounted.
fn a_base_that_does_not_fit_is_refused(world: &World, id: &str) {
    let small = world.path("small-fs");
    fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=68m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|status| status.success());
    if !mounted {
        eprintln!("no tmpfs can be mounted here: the base's space check is not tested");
        return;
    }
    let target = small.join("restored");
    let out = world.run(&[
        "restore-backup",
        id,
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    let laid = target.join("postgres").exists();
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit::REFUSED)),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("not enough free space"),
        "{}",
        stderr(&out)
    );
    assert!(!laid);
}

/// A segment the first backup needs, gone from the store: verify names it (exit 5), and a
/// restore refuses before it writes anything.
fn a_gap_in_the_wal_is_named(world: &World, id: &str) {
    let row = listed(world, id);
    let start = row["database"]["physical"]["start-wal"]
        .as_str()
        .unwrap()
        .to_string();
    let object = world.store.join("wal").join(&start);
    let aside = world.path("segment-aside");
    fs::rename(&object, &aside).unwrap();
    let out = world.run(&["verify-backup", id]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit::CORRUPT)),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(&start), "{}", stderr(&out));
    let target = world.path("gap-target");
    let out = world.run(&[
        "restore-backup",
        id,
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit::CORRUPT)),
        "{}",
        stderr(&out)
    );
    assert!(!target.join("postgres").exists());
    fs::rename(&aside, &object).unwrap();
    let out = world.run(&["verify-backup", id]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn physical_backups_restore_to_their_restore_point_in_a_local_folder() {
    physical_backups_restore_to_their_restore_point(Backend::Local);
}

#[test]
fn physical_backups_restore_to_their_restore_point_in_garage() {
    physical_backups_restore_to_their_restore_point(Backend::Garage);
}

/// In place: a restore whose restored server does not start puts the old data directory back
/// and starts it; one that works leaves the database at the backup's restore point, with
/// e2e_one_time_keys_json emptied, the old directory kept aside, and a later backup taking a
/// new base on the new timeline.
#[test]
fn a_physical_backup_restores_in_place_and_a_failure_puts_the_old_one_back() {
    let Some(bin) = pg_cluster::available() else {
        return;
    };
    let Some((world, _)) = world_on(Backend::Local) else {
        return;
    };
    let tool = pg_cluster::share_world_with_postgres(&world, false);
    let cluster = Cluster::init(
        &bin,
        world.dir.path(),
        "primary",
        &format!("archive_mode = on\narchive_command = '{tool} wal-push %p'\n"),
    );
    let data = cluster.data.display().to_string();
    let pg_ctl = bin.join("pg_ctl").display().to_string();
    let log = world.path("primary.log").display().to_string();
    let start = format!("runuser -u postgres -- {pg_ctl} -D {data} -l {log} -w -t 120 start");
    let stop = format!("runuser -u postgres -- {pg_ctl} -D {data} -m fast -w stop");
    let config_with = |start: &str| {
        let base = fs::read_to_string(&world.config).unwrap();
        let base = base.split("\n[postgres]\n").next().unwrap().to_string();
        fs::write(
            &world.config,
            format!(
                "{base}\n[postgres]\nmode = \"physical\"\narchive-timeout-secs = 120\n\
                 data-dir = \"{data}\"\nstop-command = \"{stop}\"\nstart-command = \"{start}\"\n\
                 recovery-timeout-secs = 120\n"
            ),
        )
        .unwrap();
    };
    cluster.start();
    pg_cluster::point_homeserver_at(&world, &cluster);
    cluster.sql("CREATE TABLE t (i int, phase text)");
    cluster.sql("CREATE TABLE e2e_one_time_keys_json (key text)");
    cluster.sql("INSERT INTO e2e_one_time_keys_json VALUES ('used-since')");
    cluster.sql(
        "CREATE TABLE local_media_repository (media_id text, url_cache text, media_length bigint)",
    );
    cluster.sql("CREATE TABLE local_media_repository_thumbnails (media_id text, thumbnail_width int, thumbnail_height int, thumbnail_type text, thumbnail_method text)");
    cluster.sql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 1000) g");
    config_with(&start);
    assert_eq!(check_item(&world, "physical-restore")["status"], "ok");
    assert_eq!(check_item(&world, "wal-archiving")["status"], "ok");
    let id = created(&world);
    cluster.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(1, 100) g");
    // Uploaded after the backup: its row is in the database at --to-time, its file in no backup.
    cluster.sql("INSERT INTO local_media_repository VALUES ('UploadedLaterAbcdef', NULL, 10)");
    let moment = cluster.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    cluster.sql("INSERT INTO t SELECT g, 'late' FROM generate_series(1, 10) g");
    let last = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    cluster.sql("SELECT pg_switch_wal()");
    cluster.wait_for(
        &format!("SELECT coalesce(last_archived_wal >= '{last}', false) FROM pg_stat_archiver"),
        "t",
        Duration::from_secs(120),
    );
    let kept = std::path::PathBuf::from(format!("{data}.pre-restore-{id}"));

    // The restored server does not start: the old data directory is back, and running.
    config_with(&format!("test ! -e {data}/recovery.signal && {start}"));
    let failed = world.run(&["restore-backup", &id]);
    assert!(!failed.status.success(), "{}", stderr(&failed));
    assert!(stderr(&failed).contains("back in"), "{}", stderr(&failed));
    assert!(!kept.exists());
    assert!(!cluster.data.join("recovery.signal").exists());
    assert_eq!(phases(&cluster), "after=100\nbefore=1000\nlate=10");

    // To a moment between two inserts, with the media of the backup before it.
    config_with(&start);
    let out = world.run(&["restore-backup", "--to-time", &moment, "--remove-previous"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(printed.contains(&format!("from backup {id}")), "{printed}");
    assert!(
        printed.contains("1 media files the restored database names are not in"),
        "{printed}"
    );
    assert!(printed.contains("UploadedLaterAbcdef"), "{printed}");
    assert_eq!(
        phases(&cluster),
        "after=100\nbefore=1000",
        "{}",
        cluster.log_text()
    );
    assert!(
        !kept.exists(),
        "--remove-previous removes the old data directory"
    );
    let future = world.run(&["restore-backup", "--to-time", "2999-01-01T00:00:00Z"]);
    assert_eq!(
        future.status.code(),
        Some(i32::from(exit::CONFIG)),
        "{}",
        stderr(&future)
    );
    let bad = world.run(&["restore-backup", "--to-time", "yesterday"]);
    assert_eq!(
        bad.status.code(),
        Some(i32::from(exit::CONFIG)),
        "{}",
        stderr(&bad)
    );

    // The backup's own restore point, on the timeline before that restore's.
    let out = world.run(&["restore-backup", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(phases(&cluster), "before=1000", "{}", cluster.log_text());
    assert_eq!(
        cluster.sql("SELECT count(*) FROM e2e_one_time_keys_json"),
        "0"
    );
    assert!(kept.join("PG_VERSION").is_file());
    let auto_conf = fs::read_to_string(cluster.data.join("postgresql.auto.conf")).unwrap();
    assert!(!auto_conf.contains("recovery_target_name"), "{auto_conf}");

    // The server now writes a new timeline: the next backup takes a base of its own on it.
    cluster.sql("INSERT INTO t SELECT g, 'restored' FROM generate_series(1, 10) g");
    let next = created(&world);
    let row = listed(&world, &next);
    assert_eq!(row["database"]["physical"]["took-base"], true, "{row}");
    assert!(
        !row["database"]["physical"]["start-wal"]
            .as_str()
            .unwrap()
            .starts_with("00000001"),
        "{row}"
    );
    let verified = world.run(&["verify-backup", &next]);
    assert!(verified.status.success(), "{}", stderr(&verified));
}
