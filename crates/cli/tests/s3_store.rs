//! The same commands against a real S3 server (Garage on loopback, started by scripts/test.sh),
//! which checks request signatures.

mod common;

use std::fs;

use common::*;

fn s3_world() -> Option<World> {
    let s3 = S3Env::from_env()?;
    Some(World::with(WorldOptions {
        s3: Some(s3),
        ..Default::default()
    }))
}

#[test]
fn round_trip_through_s3() {
    let Some(world) = s3_world() else { return };
    let id = world.create_backup();
    let listed = world.run(&["--json", "list-backups"]);
    assert_success(&listed, "list-backups");
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["backup-id"], id.as_str());
    assert_eq!(rows[0]["server-name"], SERVER_NAME);

    assert_success(&world.run(&["verify-backup", &id]), "verify-backup");
    let drill = world.path("drill");
    assert_success(
        &world.run(&[
            "restore-backup",
            &id,
            "--target-dir",
            drill.to_str().unwrap(),
        ]),
        "restore-backup",
    );
    assert_eq!(
        tree_hashes(&drill.join("media/local_content")),
        tree_hashes(&world.data.join("media_store/local_content"))
    );

    assert_success(&world.run(&["delete-backup", &id]), "delete-backup");
    assert_fails(&world.run(&["delete-backup", &id]), 3, "not found");
    let listed = world.run(&["--json", "list-backups"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&listed.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn a_large_backup_uses_several_parts() {
    let Some(s3) = S3Env::from_env() else { return };
    // 30 MiB of media: more than three 8 MiB parts, uploaded several at a time.
    let world = World::with(WorldOptions {
        s3: Some(s3),
        size_mib: 30.0,
        ..Default::default()
    });
    let id = world.create_backup();
    let listed = world.run(&["--json", "list-backups"]);
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(rows[0]["size"].as_u64().unwrap() > 30 * 1024 * 1024);
    assert_success(&world.run(&["verify-backup", &id]), "verify-backup");
}

#[test]
fn wrong_secret_key_is_a_storage_error() {
    let Some(world) = s3_world() else { return };
    fs::write(world.path("s3-secret"), "0".repeat(64)).unwrap();
    let stderr = assert_fails(&world.run(&["create-backup"]), 7, "refused");
    assert!(
        !stderr.contains(&"0".repeat(64)),
        "the secret leaked into the error"
    );
    assert_fails(&world.run(&["list-backups"]), 7, "secret key");
}

#[test]
fn unknown_bucket_and_unreachable_endpoint_are_named() {
    let Some(s3) = S3Env::from_env() else { return };
    let world = World::with(WorldOptions {
        s3: Some(s3.clone()),
        ..Default::default()
    });
    let config = fs::read_to_string(&world.config).unwrap();
    fs::write(
        &world.config,
        config.replace(
            &format!("bucket = \"{}\"", s3.bucket),
            "bucket = \"no-such-bucket\"",
        ),
    )
    .unwrap();
    assert_fails(&world.run(&["list-backups"]), 7, "no-such-bucket");

    fs::write(
        &world.config,
        config.replace(&s3.endpoint, "http://127.0.0.1:1"),
    )
    .unwrap();
    assert_fails(&world.run(&["create-backup"]), 7, "127.0.0.1:1");
}

#[test]
fn an_interrupted_backup_leaves_nothing_visible() {
    let Some(s3) = S3Env::from_env() else { return };
    let world = World::with(WorldOptions {
        s3: Some(s3),
        size_mib: 24.0,
        ..Default::default()
    });
    // Throttled so that the interrupt lands in the middle of the multipart upload.
    let config = fs::read_to_string(&world.config).unwrap();
    fs::write(
        &world.config,
        config.replace(
            "max-retries = 2\n",
            "max-retries = 2\nmax-upload-rate = \"4MiB\"\n",
        ),
    )
    .unwrap();
    let child = std::process::Command::new(binary())
        .arg("--config")
        .arg(&world.config)
        .arg("create-backup")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_fails(&out, 130, "interrupted");
    let listed = world.run(&["--json", "list-backups"]);
    assert_success(&listed, "list-backups");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&listed.stdout).unwrap(),
        serde_json::json!([])
    );
    // The next run succeeds.
    fs::write(&world.config, &config).unwrap();
    world.create_backup();
}
