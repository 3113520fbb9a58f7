//! prune-backups and delete-backup in `wal/`: a base no kept backup names and the WAL below the
//! oldest kept backup's start are condemned first and deleted by a later sweep (the grace
//! period is 0 here), while every kept backup stays whole; a create whose shared base a prune
//! condemned meanwhile takes a base of its own. With a private cluster archiving through the
//! built binary, on the local folder and on Garage.

use crate::common::pg_cluster::{self, Cluster};
use crate::common::*;
use crate::physical::{created, json, listed, stderr};

fn physical_field(world: &World, id: &str, field: &str) -> String {
    listed(world, id)["database"]["physical"][field]
        .as_str()
        .unwrap_or_else(|| panic!("{id} has no {field}"))
        .to_string()
}

/// The log and segment part of a WAL file's name (its place in the WAL, whatever the
/// timeline): fixed-width hex, so it orders as text.
fn place(object: &str) -> &str {
    let name = object.trim_start_matches("wal/");
    &name[8..24]
}

fn is_wal_file(object: &str) -> bool {
    let name = object.trim_start_matches("wal/");
    name.len() >= 24 && name[..24].bytes().all(|b| b.is_ascii_hexdigit())
}

fn names(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn prune(world: &World, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "prune-backups"];
    all.extend(args);
    let out = world.run(&all);
    assert!(out.status.success(), "prune {args:?}: {}", stderr(&out));
    json(&out)
}

fn verified(world: &World, id: &str) {
    let out = world.run(&["verify-backup", id]);
    assert!(out.status.success(), "verify {id}: {}", stderr(&out));
}

fn prune_frees_old_wal_and_keeps_what_kept_backups_need(backend: Backend) {
    let Some(bin) = pg_cluster::available() else {
        return;
    };
    let _s3 = s3_shared();
    let Some((world, s3)) = world_on(backend) else {
        return;
    };
    let raw = RawStore::of(&world, s3.as_ref());
    let tool = pg_cluster::share_world_with_postgres(&world, s3.is_some());
    pg_cluster::append(
        &world.config,
        "\n[postgres]\nmode = \"physical\"\narchive-timeout-secs = 120\n\n[retention]\ndelete-grace-secs = 0\n",
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
    cluster.sql("INSERT INTO t SELECT g, 'first' FROM generate_series(1, 500) g");
    let first = created(&world);
    cluster.sql("INSERT INTO t SELECT g, 'second' FROM generate_series(1, 500) g");
    let out = world.run(&["--json", "create-backup", "--full"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = json(&out)["backup-id"].as_str().unwrap().to_string();
    cluster.sql("INSERT INTO t SELECT g, 'third' FROM generate_series(1, 500) g");
    let third = created(&world);
    let old_base = physical_field(&world, &first, "base");
    let kept_base = physical_field(&world, &second, "base");
    assert_ne!(old_base, kept_base, "--full takes a new base");
    assert_eq!(physical_field(&world, &third, "base"), kept_base);
    let floor = physical_field(&world, &second, "start-wal");
    let before = raw.names("wal");
    let below: Vec<String> = before
        .iter()
        .filter(|n| is_wal_file(n) && place(n) < &floor[8..24])
        .cloned()
        .collect();
    assert!(!below.is_empty(), "the first backup's WAL: {before:?}");

    // A dry run says what would be condemned and changes nothing.
    let dry = prune(&world, &["--keep-last", "2", "--dry-run"]);
    let would = names(&dry["wal"]["would-condemn"]);
    assert!(would.contains(&old_base), "{dry}");
    for name in &below {
        assert!(would.contains(name), "{name} not condemned: {dry}");
    }
    assert!(!would.contains(&kept_base), "{dry}");
    assert_eq!(raw.names("wal"), before);

    // The first prune deletes the first backup and condemns; nothing in wal/ goes yet.
    let pruned = prune(&world, &["--keep-last", "2"]);
    assert_eq!(names(&pruned["wal"]["condemned"]), would, "{pruned}");
    assert!(names(&pruned["wal"]["deleted"]).is_empty(), "{pruned}");
    for name in &before {
        assert!(raw.exists(name), "{name} deleted before its grace period");
    }
    // The next one deletes what was condemned, and only that.
    let swept = prune(&world, &["--keep-last", "2"]);
    assert_eq!(names(&swept["wal"]["deleted"]), would, "{swept}");
    let after = raw.names("wal");
    for name in &before {
        let gone = !after.contains(name);
        assert_eq!(gone, would.contains(name), "{name}: {after:?}");
    }
    assert!(after.contains(&kept_base));
    verified(&world, &second);
    verified(&world, &third);

    // A prune condemned the base the next create would share (as if it ran between the
    // create's choice and its check): the create takes a base of its own.
    raw.write(
        "wal/condemned",
        format!("{{\"floors\": [], \"bases\": {{\"{kept_base}\": \"2026-01-01T00:00:00Z\"}}}}")
            .as_bytes(),
    );
    cluster.sql("INSERT INTO t SELECT g, 'fourth' FROM generate_series(1, 500) g");
    let out = world.run(&["--json", "create-backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("takes a new base"),
        "{}",
        stderr(&out)
    );
    let fourth = json(&out)["backup-id"].as_str().unwrap().to_string();
    assert_eq!(
        physical_field(&world, &fourth, "base"),
        format!("wal/base-{fourth}")
    );
    // The base kept backups name is reprieved, not deleted, however often prune runs.
    for _ in 0..2 {
        let kept = prune(&world, &["--keep-last", "3"]);
        assert!(names(&kept["wal"]["deleted"]).is_empty(), "{kept}");
    }
    assert!(raw.exists(&kept_base));
    verified(&world, &second);

    // delete-backup sweeps too: with the second and third gone, their base goes as well. With
    // no physical backup left no WAL file is deleted: nothing places a floor.
    let wal_files = |names: Vec<String>| -> Vec<String> {
        names.into_iter().filter(|n| is_wal_file(n)).collect()
    };
    let files_before = wal_files(raw.names("wal"));
    for id in [&second, &third] {
        let out = world.run(&["delete-backup", id]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = world.run(&["--json", "delete-backup", &fourth]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!raw.exists(&kept_base), "{:?}", raw.names("wal"));

    assert_eq!(wal_files(raw.names("wal")), files_before);
    cluster.stop();
}

#[test]
fn prune_frees_old_wal_and_keeps_what_kept_backups_need_in_a_local_folder() {
    prune_frees_old_wal_and_keeps_what_kept_backups_need(Backend::Local);
}

#[test]
fn prune_frees_old_wal_and_keeps_what_kept_backups_need_in_garage() {
    prune_frees_old_wal_and_keeps_what_kept_backups_need(Backend::Garage);
}
