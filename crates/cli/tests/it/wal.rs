//! PostgreSQL's continuous archiving through `wal-push` and `wal-fetch`: on files laid out as
//! PostgreSQL lays them (pg_wal and its archive_status marks), then with a private cluster
//! whose archive_command and restore_command are the built binary, on the local folder and on
//! Garage.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::pg_cluster::{self, Cluster};
use crate::common::*;
use crate::exit;

/// Smaller than PostgreSQL's 16 MiB: wal-push takes any size, and the tests stay quick.
const SEGMENT: usize = 1 << 20;

fn segment_name(n: u32) -> String {
    format!("0000000100000000{n:08X}")
}

/// A segment as a busy server writes it: records that compress, some bytes that do not.
fn segment_bytes(seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..SEGMENT)
        .map(|i| {
            if (i / 4096) % 4 == 0 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            } else {
                (i % 251) as u8
            }
        })
        .collect()
}

/// Runs the tool as PostgreSQL does: in the data directory, with `%p` relative to it.
fn run_in(dir: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("SYNAPSE_BACKUP_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("run synapse-backup")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A data directory with segments 1–9 in pg_wal, all marked ready.
fn lay_out_segments(data: &Path) {
    let status = data.join("pg_wal/archive_status");
    fs::create_dir_all(&status).unwrap();
    for n in 1..=9 {
        fs::write(data.join("pg_wal").join(segment_name(n)), segment_bytes(n)).unwrap();
        fs::write(status.join(format!("{}.ready", segment_name(n))), b"").unwrap();
    }
}

fn wal_files_round_trip_and_are_never_overwritten(backend: Backend) {
    let _s3 = s3_shared();
    let Some((world, s3)) = world_on(backend) else {
        return;
    };
    let raw = RawStore::of(&world, s3.as_ref());
    let pgdata = world.path("pgdata");
    lay_out_segments(&pgdata);
    let first = format!("pg_wal/{}", segment_name(1));

    // The first call stores its file and the next seven ready ones, in parallel.
    let out = run_in(&pgdata, &world.config, &["--json", "wal-push", &first]);
    assert_success(&out, "wal-push");
    let report = json(&out);
    assert_eq!(report["file"]["name"], segment_name(1));
    assert_eq!(report["file"]["stored"], true);
    let ahead: Vec<&str> = report["ahead"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ahead, (2..=8).map(segment_name).collect::<Vec<_>>());
    for n in 1..=8 {
        assert!(
            raw.exists(&format!("wal/{}", segment_name(n))),
            "segment {n}"
        );
    }
    assert!(!raw.exists(&format!("wal/{}", segment_name(9))));
    // WAL compresses, and the object says nothing in clear.
    let object = raw.read(&format!("wal/{}", segment_name(1)));
    assert!(object.len() < SEGMENT * 3 / 4, "{} bytes", object.len());
    assert_no_plaintext(&object, &[&segment_bytes(1)[4096..4096 + 64]]);

    // PostgreSQL's next call finds its segment stored ahead: nothing is uploaded again.
    let second = format!("pg_wal/{}", segment_name(2));
    let out = run_in(&pgdata, &world.config, &["--json", "wal-push", &second]);
    assert_success(&out, "wal-push of a segment stored ahead");
    assert_eq!(json(&out)["file"]["stored"], false);

    // A retry of a file already stored (no record of it any more) compares the content.
    let out = run_in(&pgdata, &world.config, &["--json", "wal-push", &first]);
    assert_success(&out, "wal-push again");
    assert_eq!(json(&out)["file"]["stored"], false);

    // Another cluster's segment 3 (other content, same name) is refused, nothing overwritten.
    let before = raw.read(&format!("wal/{}", segment_name(3)));
    fs::write(
        pgdata.join("pg_wal").join(segment_name(3)),
        segment_bytes(99),
    )
    .unwrap();
    let third = format!("pg_wal/{}", segment_name(3));
    let out = run_in(&pgdata, &world.config, &["wal-push", &third]);
    assert_fails(
        &out,
        exit::REFUSED,
        &["other content", "nothing was overwritten", &segment_name(3)],
    );
    assert_eq!(raw.read(&format!("wal/{}", segment_name(3))), before);

    // wal-fetch writes the file as it was archived, and reads the next segments ahead, each
    // checked in full first: segment 6, damaged in the store, is not among them.
    let mut damaged = raw.read(&format!("wal/{}", segment_name(6)));
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    raw.write(&format!("wal/{}", segment_name(6)), &damaged);
    let dest = pgdata.join("pg_wal/RECOVERYXLOG");
    let out = run_in(
        &pgdata,
        &world.config,
        &[
            "--json",
            "wal-fetch",
            &segment_name(3),
            "pg_wal/RECOVERYXLOG",
        ],
    );
    assert_success(&out, "wal-fetch");
    assert_eq!(fs::read(&dest).unwrap(), segment_bytes(3));
    let fetched = json(&out);
    assert_eq!(fetched["from-read-ahead"], false);
    assert_eq!(fetched["read-ahead"], 4, "{fetched}");
    let prefetch = pgdata.join("pg_wal/.synapse-backup-prefetch");
    let mut read_ahead = names_in(&prefetch);
    read_ahead.sort();
    assert_eq!(
        read_ahead,
        [4, 5, 7, 8].map(segment_name).to_vec(),
        "segment 9 is not archived, 6 is damaged"
    );
    let out = run_in(
        &pgdata,
        &world.config,
        &[
            "--json",
            "wal-fetch",
            &segment_name(4),
            "pg_wal/RECOVERYXLOG",
        ],
    );
    assert_success(&out, "wal-fetch of a segment read ahead");
    assert_eq!(json(&out)["from-read-ahead"], true);
    assert_eq!(fs::read(&dest).unwrap(), segment_bytes(4));
    assert!(out.stderr.is_empty(), "{out:?}");

    // The damaged segment, asked for: named, exit 5, nothing written in place of the file.
    let out = run_in(
        &pgdata,
        &world.config,
        &["wal-fetch", &segment_name(6), "pg_wal/RECOVERYXLOG6"],
    );
    assert_fails(&out, exit::CORRUPT, &[&segment_name(6)]);
    assert!(!pgdata.join("pg_wal/RECOVERYXLOG6").exists());
    let temp_left = |dir: &Path| {
        names_in(dir)
            .into_iter()
            .filter(|n| n.starts_with('.') && n != ".synapse-backup-prefetch")
            .collect::<Vec<_>>()
    };
    assert!(temp_left(&pgdata.join("pg_wal")).is_empty());
    assert!(temp_left(&prefetch).is_empty());

    // A file the store does not hold: exit 3, which recovery takes as "not archived".
    let out = run_in(
        &pgdata,
        &world.config,
        &["wal-fetch", "00000002.history", "pg_wal/RECOVERYHISTORY"],
    );
    assert_fails(&out, exit::NOT_FOUND, &["00000002.history", "is not in"]);
    assert!(!pgdata.join("pg_wal/RECOVERYHISTORY").exists());

    // Names that are not WAL files are configuration errors, never objects.
    let out = run_in(&pgdata, &world.config, &["wal-push", "pg_wal/RECOVERYXLOG"]);
    assert_fails(&out, exit::CONFIG, &["not a WAL file name", "wal-push %p"]);
    let out = run_in(&pgdata, &world.config, &["wal-fetch", "../x", "pg_wal/x"]);
    assert_fails(
        &out,
        exit::CONFIG,
        &["not a WAL file name", "wal-fetch %f %p"],
    );
}

#[test]
fn wal_files_round_trip_and_are_never_overwritten_in_a_local_folder() {
    wal_files_round_trip_and_are_never_overwritten(Backend::Local);
}

#[test]
fn wal_files_round_trip_and_are_never_overwritten_in_garage() {
    wal_files_round_trip_and_are_never_overwritten(Backend::Garage);
}

#[test]
fn gpg_and_tar_open_a_wal_object_by_hand() {
    let world = World::new();
    let pgdata = world.path("pgdata");
    lay_out_segments(&pgdata);
    let history = pgdata.join("pg_wal/00000002.history");
    fs::write(&history, b"1\t0/3000000\tbefore 2026-12-07 08:00:00+00\n").unwrap();
    for file in [
        format!("pg_wal/{}", segment_name(5)),
        "pg_wal/00000002.history".to_string(),
    ] {
        assert_success(
            &run_in(&pgdata, &world.config, &["wal-push", &file]),
            "wal-push",
        );
    }
    let out_dir = world.path("by-hand");
    fs::create_dir_all(&out_dir).unwrap();
    for name in [segment_name(5), "00000002.history".to_string()] {
        let decrypted = gpg_decrypt(&world.store.join("wal").join(&name), &world.passphrase_file);
        assert_success(&decrypted, "gpg --decrypt");
        let mut tar = Command::new("tar")
            .arg("-x")
            .current_dir(&out_dir)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        tar.stdin
            .take()
            .unwrap()
            .write_all(&decrypted.stdout)
            .unwrap();
        assert!(tar.wait().unwrap().success());
        assert_eq!(
            fs::read(out_dir.join(&name)).unwrap(),
            fs::read(pgdata.join("pg_wal").join(&name)).unwrap(),
            "{name}"
        );
    }
}

/// A real cluster archives through wal-push; a base backup restored with wal-fetch as its
/// restore_command recovers to a named restore point: the rows before it, none after.
fn a_cluster_archives_and_recovers_to_a_restore_point(backend: Backend) {
    let Some(bin) = pg_cluster::available() else {
        return;
    };
    let _s3 = s3_shared();
    let Some((world, s3)) = world_on(backend) else {
        return;
    };
    let tool = pg_cluster::share_world_with_postgres(&world, s3.is_some());

    let cluster = Cluster::init(
        &bin,
        world.dir.path(),
        "primary",
        &format!("archive_mode = on\narchive_command = '{tool} wal-push %p'\n"),
    );
    cluster.start();
    cluster.sql("CREATE TABLE t (i int, phase text)");
    cluster.sql("INSERT INTO t SELECT g, 'before-base' FROM generate_series(1, 1000) g");
    let base = world.path("base");
    cluster.base_backup(&base);
    cluster.sql("INSERT INTO t SELECT g, 'after-base' FROM generate_series(1, 500) g");
    cluster.sql("SELECT pg_create_restore_point('nightly')");
    cluster.sql("INSERT INTO t SELECT g, 'after-point' FROM generate_series(1, 200) g");
    let last = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    cluster.sql("SELECT pg_switch_wal()");
    cluster.wait_for(
        &format!("SELECT coalesce(last_archived_wal >= '{last}', false) FROM pg_stat_archiver"),
        "t",
        Duration::from_secs(120),
    );
    assert_eq!(
        cluster.sql("SELECT failed_count FROM pg_stat_archiver"),
        "0",
        "{}",
        cluster.log_text()
    );
    if backend == Backend::Local {
        check_reports_the_archiver(&world, &cluster, &tool);
    }
    cluster.stop();

    // The base backup, recovered from the store alone.
    fs::write(base.join("recovery.signal"), b"").unwrap();
    pg_cluster::append(
        &base.join("postgresql.auto.conf"),
        &format!(
            "restore_command = '{tool} wal-fetch %f %p'\nrecovery_target_name = 'nightly'\n\
             recovery_target_action = 'promote'\narchive_mode = off\n"
        ),
    );
    pg_cluster::give_to_postgres(&base);
    let socket = world.path("restored-socket");
    fs::create_dir_all(&socket).unwrap();
    pg_cluster::give_to_postgres(&socket);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    pg_cluster::append(
        &base.join("postgresql.auto.conf"),
        &format!(
            "port = {port}\nunix_socket_directories = '{}'\n",
            socket.display()
        ),
    );
    let restored = Cluster::at(&bin, base, socket, port, world.path("restored.log"));
    restored.start();
    restored.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(120));
    assert_eq!(
        restored.sql("SELECT phase || '=' || count(*) FROM t GROUP BY phase ORDER BY phase"),
        "after-base=500\nbefore-base=1000",
        "{}",
        restored.log_text()
    );
    assert!(
        restored
            .log_text()
            .contains("recovery stopping at restore point \"nightly\""),
        "{}",
        restored.log_text()
    );
}

#[test]
fn a_cluster_archives_and_recovers_to_a_restore_point_in_a_local_folder() {
    a_cluster_archives_and_recovers_to_a_restore_point(Backend::Local);
}

#[test]
fn a_cluster_archives_and_recovers_to_a_restore_point_in_garage() {
    a_cluster_archives_and_recovers_to_a_restore_point(Backend::Garage);
}

/// `check` on a homeserver whose database is `cluster`: archiving through wal-push is reported
/// healthy, then, with an archive_command that fails, as failing (exit non-zero).
fn check_reports_the_archiver(world: &World, cluster: &Cluster, tool: &str) {
    pg_cluster::point_homeserver_at(world, cluster);
    let archiving = || {
        let out = world.run(&["--json", "check"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let item = doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "wal-archiving")
            .unwrap_or_else(|| panic!("no wal-archiving check: {doc}"))
            .clone();
        (out, item)
    };
    let (_, item) = archiving();
    assert_eq!(item["status"], "ok", "{item}");
    let detail = item["detail"].as_str().unwrap();
    assert!(detail.contains("through wal-push, last archived"), "{item}");
    assert!(detail.contains("into this store"), "{item}");

    // wal-push given another config, whose store is not the backups' one: a warning naming both.
    let other = world.path("other.toml");
    let config = fs::read_to_string(&world.config).unwrap();
    let elsewhere = world.path("elsewhere");
    assert!(
        config.contains("[local]"),
        "the archiver's check runs on the local-folder world"
    );
    let other_text = config.replace(
        &format!("path = \"{}\"", world.store.display()),
        &format!("path = \"{}\"", elsewhere.display()),
    );
    fs::write(&other, other_text).unwrap();
    let other_tool = tool.replace(world.config.to_str().unwrap(), other.to_str().unwrap());
    cluster.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{other_tool} wal-push %p'"
    ));
    cluster.sql("SELECT pg_reload_conf()");
    cluster.wait_for(
        "SHOW archive_command",
        &format!("{other_tool} wal-push %p"),
        Duration::from_secs(60),
    );
    let (_, item) = archiving();
    assert_eq!(item["status"], "warn", "{item}");
    let detail = item["detail"].as_str().unwrap();
    assert!(detail.contains("not into this config's store"), "{item}");
    assert!(detail.contains(elsewhere.to_str().unwrap()), "{item}");

    let broken = tool.replace("--config ", "--config /nonexistent/");
    cluster.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{broken} wal-push %p'"
    ));
    cluster.sql("SELECT pg_reload_conf()");
    cluster.sql("INSERT INTO t VALUES (0, 'switch')");
    cluster.sql("SELECT pg_switch_wal()");
    cluster.wait_for(
        "SELECT failed_count > 0 FROM pg_stat_archiver",
        "t",
        Duration::from_secs(120),
    );
    let (out, item) = archiving();
    assert_eq!(item["status"], "fail", "{item}");
    assert!(
        item["detail"].as_str().unwrap().contains("is failing"),
        "{item}"
    );
    assert!(!out.status.success());
    // Put right, the archive catches up.
    cluster.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{tool} wal-push %p'"
    ));
    cluster.sql("SELECT pg_reload_conf()");
    cluster.wait_for(
        "SELECT last_archived_time > last_failed_time FROM pg_stat_archiver",
        "t",
        Duration::from_secs(120),
    );
    let (_, item) = archiving();
    assert_eq!(item["status"], "ok", "{item}");
}

/// Backups come and go around the WAL archive: list-backups, prune-backups and delete-backup
/// never show, count or delete anything under wal/.
#[test]
fn prune_and_delete_leave_the_wal_archive_alone() {
    let world = World::new();
    let pgdata = world.path("pgdata");
    lay_out_segments(&pgdata);
    let first = format!("pg_wal/{}", segment_name(1));
    assert_success(
        &run_in(&pgdata, &world.config, &["wal-push", &first]),
        "wal-push",
    );
    let archived = names_in(&world.store.join("wal"));
    assert_eq!(archived.len(), 8, "{archived:?}");
    let older = world.create_backup();
    world.create_backup();
    let listed = world.run(&["list-backups"]);
    assert_success(&listed, "list-backups");
    let text = String::from_utf8_lossy(&listed.stdout).to_string()
        + &String::from_utf8_lossy(&listed.stderr);
    assert!(
        !text.contains("wal") && !text.contains("not a backup"),
        "{text}"
    );
    assert_success(&world.run(&["prune-backups", "--keep-last", "1"]), "prune");
    assert!(!world.object(&older).exists());
    let newest = backups_in_store(&world);
    assert_success(&world.run(&["delete-backup", &newest[0]]), "delete-backup");
    assert_success(
        &world.run(&["prune-backups", "--keep-last", "1"]),
        "prune of nothing",
    );
    assert_eq!(names_in(&world.store.join("wal")), archived);
}
