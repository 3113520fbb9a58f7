//! `check`: the preflight reports every item, changes nothing (its store probe is gone again)
//! and exits with the code of the first thing that would stop a backup.

use std::fs;

use crate::common::*;
use crate::exit;

/// The `--json` report: check name → (status, detail).
fn checks(out: &std::process::Output) -> Vec<(String, String, String)> {
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn status_of<'a>(checks: &'a [(String, String, String)], name: &str) -> (&'a str, &'a str) {
    checks
        .iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, s, d)| (s.as_str(), d.as_str()))
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

#[test]
fn check_passes_on_a_sound_setup_and_leaves_nothing_behind() {
    let world = World::new();
    fs::create_dir_all(&world.store).unwrap();
    let before = live_state(&world.data);
    let out = world.run(&["--json", "check"]);
    assert_success(&out, "check");
    let report = checks(&out);
    for name in [
        "synapse-config",
        "signing-key",
        "media-store",
        "config-files",
        "database",
        "temp-space",
        "store-access",
        "store-write",
        "passphrase",
    ] {
        assert_eq!(status_of(&report, name).0, "ok", "{name}: {report:?}");
    }
    // Synapse is not running in the test world: a warning, not a failure.
    assert_eq!(status_of(&report, "synapse").0, "warn");
    assert!(
        names_in(&world.store).is_empty(),
        "probe left: {:?}",
        names_in(&world.store)
    );
    assert_same_tree(&live_state(&world.data), &before, "live data");

    let id = world.create_backup();
    let out = world.run(&["check"]);
    assert_success(&out, "check with a backup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("passphrase") && l.contains(&id)),
        "{text}"
    );
    assert_eq!(backups_in_store(&world), vec![id]);
}

#[test]
fn check_reports_every_item_and_exits_with_the_first_failure() {
    let world = World::new();
    world.create_backup();
    world.set_passphrase("not the passphrase of that backup");
    let out = world.run(&["--json", "check"]);
    assert_eq!(out.status.code(), Some(i32::from(exit::WRONG_PASSPHRASE)));
    let report = checks(&out);
    assert_eq!(status_of(&report, "passphrase").0, "fail");
    // The others were still checked.
    assert_eq!(status_of(&report, "store-write").0, "ok");
    assert_eq!(status_of(&report, "media-store").0, "ok");

    world.set_passphrase(PASSPHRASE);
    let media = world.data.join("media_store");
    fs::rename(&media, world.path("media-elsewhere")).unwrap();
    let out = world.run(&["--json", "check"]);
    assert_eq!(out.status.code(), Some(i32::from(exit::CONFIG)));
    let report = checks(&out);
    let (status, detail) = status_of(&report, "media-store");
    assert_eq!(status, "fail");
    assert!(detail.contains(&media.display().to_string()), "{detail}");
    assert_eq!(status_of(&report, "passphrase").0, "ok");
}

/// The store-write probe against the real S3 server: written, read, deleted, nothing left.
#[test]
fn check_probes_a_real_s3_store_and_removes_the_probe() {
    let Some(s3) = S3Env::from_env() else { return };
    let _server = s3_shared();
    let world = World::with(WorldOptions {
        s3: Some(s3),
        ..Default::default()
    });
    let out = world.run(&["--json", "check"]);
    assert_success(&out, "check against S3");
    let report = checks(&out);
    assert_eq!(status_of(&report, "store-write").0, "ok", "{report:?}");
    let id = world.create_backup();
    let listed = world.run(&["--json", "list-backups"]);
    assert_success(&listed, "list-backups");
    let doc: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = doc["backups"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["backup-id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec![id.as_str()], "only the backup is in the prefix");
}
