//! The S3 server dies in the middle of create-backup, restore-backup and verify-backup. Kept in
//! its own test binary: it stops and restarts the shared loopback server, so nothing else may use
//! the server meanwhile (cargo runs test binaries one after another).

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn server_script(action: &str) {
    let dir = std::env::var("S3_TEST_SERVER_DIR").expect("S3_TEST_SERVER_DIR");
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/s3-test-server.sh"))
        .arg(action)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "s3-test-server.sh {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn throttled(world: &World) -> (String, String) {
    let config = fs::read_to_string(&world.config).unwrap();
    let slow = config.replace(
        "max-retries = 2\n",
        "max-retries = 2\nmax-upload-rate = \"4MiB\"\n",
    );
    (config, slow)
}

#[test]
fn the_server_dying_mid_operation_loses_nothing_and_a_rerun_succeeds() {
    let Some(s3) = S3Env::from_env() else { return };
    let world = World::with(WorldOptions {
        s3: Some(s3),
        size_mib: 24.0,
        ..Default::default()
    });

    // create-backup: the server goes away in the middle of the multipart upload.
    let (config, slow) = throttled(&world);
    fs::write(&world.config, slow).unwrap();
    let child = Command::new(binary())
        .arg("--config")
        .arg(&world.config)
        .arg("create-backup")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server_script("stop");
    let out = child.wait_with_output().unwrap();
    server_script("restart");
    assert_fails(&out, 7, "object store");
    fs::write(&world.config, &config).unwrap();
    assert_no_backups(&world);

    // The rerun succeeds.
    let id = world.create_backup();

    // restore-backup: the server goes away while the restore downloads.
    let before = tree_hashes(&world.data);
    fs::write(world.data.join("media_store/local_content/after"), b"x").unwrap();
    let before_with_new = tree_hashes(&world.data);
    let child = Command::new(binary())
        .arg("--config")
        .arg(&world.config)
        .args(["restore-backup", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server_script("stop");
    let out = child.wait_with_output().unwrap();
    server_script("restart");
    if !out.status.success() {
        let mut now = tree_hashes(&world.data);
        now.retain(|k, _| !k.starts_with(".synapse-backup"));
        let mut expected = before_with_new.clone();
        expected.retain(|k, _| !k.starts_with(".synapse-backup"));
        assert_eq!(
            now.len(),
            expected.len(),
            "a failed restore changed the live data"
        );
        assert!(now == expected, "a failed restore changed the live data");
    } else {
        eprintln!("the restore finished before the server stopped");
    }
    drop(before);

    // verify-backup and restore-backup work once the server is back.
    assert_success(&world.run(&["verify-backup", &id]), "verify after restart");
    world.restore_drill(&id, "restore after restart");
}
