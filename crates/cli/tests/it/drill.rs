//! `drill` without a Synapse: what the drill does around the Synapse it boots. A program that
//! exits at once, or one that never answers, stands in for a Synapse that cannot start; the
//! drill of a real Synapse is in the end-to-end tests (tests/e2e, scenario `drill`).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::exit;

fn drill_world(synapse_command: &str) -> World {
    let world = World::new();
    let drills = world.path("drills");
    let extra = format!(
        "[drill]\nwork-dir = \"{}\"\nsynapse-command = \"{synapse_command}\"\nstart-timeout-secs = 10\n",
        drills.display()
    );
    let text = std::fs::read_to_string(&world.config).unwrap() + &extra;
    std::fs::write(&world.config, text).unwrap();
    world
}

fn statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_synapse_that_does_not_start_fails_the_health_check_and_leaves_nothing() {
    let world = drill_world("/bin/false");
    world.create_backup();
    let before = live_state(&world.data);
    let out = world.run(&["--json", "drill", "latest"]);
    let stderr = assert_fails(&out, exit::CORRUPT, &["failed: health"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let expected: Vec<(String, String)> = [
        ("restore", "passed"),
        ("identity", "passed"),
        ("database", "passed"),
        ("isolation", "passed"),
        ("health", "failed"),
        ("signing-key", "skipped"),
        ("admin-user", "skipped"),
        ("media", "skipped"),
        ("client-api", "skipped"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(statuses(&report), expected, "{report}\n{stderr}");
    let database = &report["checks"][2]["detail"];
    assert!(
        database.as_str().unwrap().contains("users 3, rooms 17"),
        "{database}"
    );
    let health = report["checks"][4]["detail"].as_str().unwrap();
    assert!(health.contains("exited"), "{health}");
    assert_eq!(
        names_in(&world.path("drills")),
        Vec::<String>::new(),
        "the scratch folder is removed"
    );
    assert_same_tree(
        &before,
        &live_state(&world.data),
        "a drill changes nothing live",
    );
}

#[test]
fn a_config_naming_a_live_path_is_refused_before_anything_starts() {
    let world = drill_world("/bin/false");
    let yaml = world.data.join("homeserver.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let media = world.data.join("media_store");
    std::fs::write(
        &yaml,
        format!(
            "{text}\ncustom_module_config:\n  folder: {}/extra\n",
            media.display()
        ),
    )
    .unwrap();
    world.create_backup();
    let out = world.run(&["drill", "latest"]);
    assert_fails(
        &out,
        exit::REFUSED,
        &["custom_module_config.folder", "isolated"],
    );
    assert_eq!(names_in(&world.path("drills")), Vec::<String>::new());
}

/// A world whose drill "Synapse" never answers, with a drill killed while it runs: the
/// killed drill's folder and its "Synapse" pid.
fn world_with_a_killed_drill() -> (World, std::path::PathBuf, i32) {
    let world = World::new();
    let fake = world.path("fake-synapse");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let extra = format!(
        "[drill]\nwork-dir = \"{}\"\nsynapse-command = \"{}\"\nstart-timeout-secs = 600\n",
        world.path("drills").display(),
        fake.display()
    );
    let text = std::fs::read_to_string(&world.config).unwrap() + &extra;
    std::fs::write(&world.config, text).unwrap();
    world.create_backup();
    let drill = Kill(spawn(&world, &["drill", "latest"], &[]));
    let (folder, pid) = wait_for_synapse_pid(&world.path("drills"));
    signal(&drill.0, "KILL");
    // Reaped, so that its pid is gone as the cleaning asks.
    drop(drill);
    (world, folder, pid)
}

#[test]
fn a_killed_drill_leaves_no_synapse_running_and_check_cleans_its_folder() {
    let (world, folder, pid) = world_with_a_killed_drill();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the drill's Synapse (pid {pid}) outlived the killed drill"
    );
    assert!(
        folder.exists(),
        "the killed drill's folder is left for check to clean"
    );
    let out = world.run(&["check"]);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("drill-leftovers") && said.contains(&folder.display().to_string()),
        "{said}"
    );
    assert!(!folder.exists(), "check removed {}", folder.display());
}

#[test]
fn the_next_backup_cleans_a_killed_drills_folder_too() {
    let (world, folder, _) = world_with_a_killed_drill();
    let out = world.run(&["create-backup"]);
    assert_success(&out, "create-backup after a killed drill");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a drill killed") && stderr.contains(&folder.display().to_string()),
        "{stderr}"
    );
    assert!(
        !folder.exists(),
        "create-backup removed {}",
        folder.display()
    );
}

/// Waits until a drill in `drills` has recorded the pid of the Synapse it started.
pub(crate) fn wait_for_synapse_pid(drills: &Path) -> (std::path::PathBuf, i32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        for entry in std::fs::read_dir(drills).into_iter().flatten().flatten() {
            let marker = entry.path().join("drill.json");
            let Ok(text) = std::fs::read_to_string(&marker) else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let Some(pid) = value["synapse_pid"].as_i64() {
                return (entry.path(), pid as i32);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no drill recorded a Synapse pid in {}", drills.display());
}

#[test]
fn check_says_whether_a_drill_can_run_here() {
    let world = drill_world("/opt/some/python -m synapse.app.homeserver");
    let out = world.run(&["--json", "check"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "drill")
        .unwrap_or_else(|| panic!("no drill item: {report}"));
    assert_eq!(item["status"], "ok", "{item}");
    let detail = item["detail"].as_str().unwrap();
    for needle in [
        "a drill can run here",
        "/opt/some/python -m synapse.app.homeserver",
        "[drill] synapse-command",
        "127.0.0.1:",
        "GiB free in",
    ] {
        assert!(detail.contains(needle), "{needle:?} not in {detail}");
    }
}
