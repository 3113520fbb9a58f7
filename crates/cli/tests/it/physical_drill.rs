//! `drill` of a physical backup, without a Synapse (a program that exits at once stands in for
//! one; the real one boots in the end-to-end scenario `physical`): the restore lays the data
//! directory in the drill's scratch folder, a private server recovers it to the backup's
//! restore point on a socket inside that folder, the database check counts its rows, and the
//! server is stopped and the folder removed when the drill ends.

use std::time::Duration;

use crate::common::pg_cluster::{self, Cluster};
use crate::common::*;
use crate::exit;
use crate::physical::{created, stderr};

/// Processes whose working directory lies under `dir` (a postmaster runs in its data dir).
fn processes_in(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A world whose homeserver runs on a private cluster archiving into the store, in physical
/// mode, with Synapse-shaped tables and one backup; the drill boots `synapse_command`.
fn physical_world(
    bin: &std::path::Path,
    synapse_command: &str,
    timeout: u32,
    drills: &str,
) -> (World, Cluster, String) {
    let world = World::new();
    let tool = pg_cluster::share_world_with_postgres(&world, false);
    pg_cluster::append(
        &world.config,
        &format!(
            "\n[postgres]\nmode = \"physical\"\narchive-timeout-secs = 120\nrecovery-timeout-secs = 120\n\n[drill]\nwork-dir = \"{}\"\nsynapse-command = \"{synapse_command}\"\nstart-timeout-secs = {timeout}\n",
            world.path(drills).display()
        ),
    );
    let cluster = Cluster::init(
        bin,
        world.dir.path(),
        "primary",
        &format!("archive_mode = on\narchive_command = '{tool} wal-push %p'\n"),
    );
    cluster.start();
    pg_cluster::point_homeserver_at(&world, &cluster);
    cluster.sql(
        "CREATE TABLE users (name text); CREATE TABLE rooms (room_id text); \
         CREATE TABLE events (event_id text); \
         CREATE TABLE local_media_repository (media_id text, media_length int, url_cache text); \
         INSERT INTO users VALUES ('@a:x'), ('@b:x'); INSERT INTO rooms VALUES ('!r:x'); \
         INSERT INTO events SELECT 'e' || g FROM generate_series(1, 5) g",
    );
    let id = created(&world);
    (world, cluster, id)
}

#[test]
fn a_physical_backup_is_drilled_on_a_private_server_that_is_stopped_afterwards() {
    let Some(bin) = pg_cluster::available() else {
        return;
    };
    // A work dir deep enough that the socket's own path would not fit in a Unix socket.
    let deep =
        "drills-in-a-folder-whose-name-is-long-enough-to-push-the-socket-path-past-108-bytes";
    let (world, cluster, id) = physical_world(&bin, "/bin/false", 10, deep);
    let drills = world.path(deep);
    // After the restore point: the drill's database must not have it.
    cluster.sql("INSERT INTO users VALUES ('@later:x')");
    let out = world.run(&["--json", "drill", &id]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit::CORRUPT)),
        "{}",
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {report}"))
            .clone()
    };
    assert_eq!(status("restore")["status"], "passed", "{report}");
    let database = status("database");
    assert_eq!(database["status"], "passed", "{report}\n{}", stderr(&out));
    let detail = database["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("restore point {id}")), "{detail}");
    assert!(detail.contains("users 2, rooms 1"), "{detail}");
    assert_eq!(status("isolation")["status"], "passed", "{report}");
    assert_eq!(status("health")["status"], "failed", "{report}");
    assert_eq!(
        names_in(&drills),
        Vec::<String>::new(),
        "the scratch folder is removed"
    );
    assert_eq!(processes_in(&drills), Vec::<String>::new(), "a server left");
    // The live server was never touched.
    assert_eq!(cluster.sql("SELECT count(*) FROM users"), "3");

    // --keep stops the server too, and says how to start it again.
    let out = world.run(&["--json", "drill", &id, "--keep"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let notes = report["notes"].to_string();
    assert!(notes.contains("pg_ctl"), "{report}\n{}", stderr(&out));
    assert_eq!(
        processes_in(&drills),
        Vec::<String>::new(),
        "a kept server left running"
    );
    cluster.stop();
}

#[test]
fn a_killed_drills_private_server_is_stopped_by_the_next_cleaning() {
    let Some(bin) = pg_cluster::available() else {
        return;
    };
    let fake = std::env::temp_dir().join(format!("fake-synapse-{}", std::process::id()));
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (world, cluster, id) = physical_world(&bin, &fake.display().to_string(), 600, "drills");
    let drills = world.path("drills");
    let drill = Kill(spawn(&world, &["drill", &id], &[]));
    // Synapse is started once the server has recovered.
    let (folder, _) = crate::drill::wait_for_synapse_pid(&drills);
    signal(&drill.0, "KILL");
    drop(drill);
    let _ = std::fs::remove_file(&fake);
    assert!(
        !processes_in(&folder).is_empty(),
        "no server ran in the drill's folder"
    );
    let out = world.run(&["check"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
    assert!(said.contains("stopped its PostgreSQL"), "{said}");
    assert!(!folder.exists(), "check removed {}", folder.display());
    let links: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&folder)))
        .collect();
    assert!(
        links.is_empty(),
        "a link into the removed folder is left: {links:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !processes_in(&drills).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        processes_in(&drills),
        Vec::<String>::new(),
        "the server outlived the cleaning"
    );
    cluster.stop();
}
