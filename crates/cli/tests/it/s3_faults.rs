//! Faults between synapse-backup and a real S3 server: the server dies in the middle of
//! create-backup, restore-backup and verify-backup; the tool is killed or interrupted in the
//! middle of an upload; the server answers with transient errors. These tests stop and restart
//! the shared loopback server and read the bucket's count of unfinished multipart uploads, so
//! each has the server to itself ([`s3_exclusive`]): no other S3 test of this binary runs
//! meanwhile.

use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::exit;

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

/// The bucket's count of multipart uploads begun and neither completed nor aborted, from
/// Garage's admin API.
fn unfinished_uploads() -> u64 {
    let endpoint = std::env::var("S3_TEST_ADMIN_ENDPOINT").expect("S3_TEST_ADMIN_ENDPOINT");
    let token = std::env::var("S3_TEST_ADMIN_TOKEN").expect("S3_TEST_ADMIN_TOKEN");
    let bucket = std::env::var("S3_TEST_BUCKET").expect("S3_TEST_BUCKET");
    let script = "import json, os, sys, urllib.request as u\n\
        r = u.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + os.environ['TOKEN']})\n\
        print(json.load(u.urlopen(r, timeout=10))['unfinishedMultipartUploads'])";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(format!("{endpoint}/v2/GetBucketInfo?globalAlias={bucket}"))
        .env("TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Garage admin API: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Waits until `check` holds (Garage updates its counters asynchronously, later still on a
/// busy machine).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn s3_world(size_mib: f64) -> Option<World> {
    let s3 = S3Env::from_env()?;
    Some(World::with(WorldOptions {
        s3: Some(s3),
        size_mib,
        ..Default::default()
    }))
}

/// Adds `settings` to the [s3] section; returns the config as it was.
fn with_s3_settings(world: &World, settings: &str) -> String {
    let config = fs::read_to_string(&world.config).unwrap();
    let changed = config.replace("max-retries = 2\n", &format!("max-retries = 2\n{settings}"));
    assert_ne!(config, changed);
    fs::write(&world.config, changed).unwrap();
    config
}

/// The markers (`.uploads-in-progress/<name>`) naming the multipart uploads of `world`'s
/// prefix that a create-backup has under way: objects, so reading them involves no counter
/// Garage updates in the background.
fn upload_markers(world: &World) -> Vec<String> {
    let s3 = S3Env::from_env().expect("S3_TEST_*");
    RawStore::of(world, Some(&s3)).names(".uploads-in-progress")
}

/// Starts a throttled create-backup and returns once its multipart upload is under way: begun
/// on the server, and its marker written.
fn backup_in_the_middle_of_its_upload(world: &World, before: u64) -> Child {
    with_s3_settings(world, "max-upload-rate = \"4MiB\"\n");
    let child = spawn(world, &["create-backup"], &[]);
    eventually("the upload has begun", || {
        unfinished_uploads() > before && !upload_markers(world).is_empty()
    });
    child
}

/// Runs create-backup after an interrupted one: it removes the leftover upload and succeeds.
fn rerun_cleans_up(world: &World, config: &str, before: u64) {
    fs::write(&world.config, config).unwrap();
    let out = world.run(&["create-backup"]);
    assert_success(&out, "create-backup after the fault");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("removed the unfinished upload of volumes/backup-")
            || stderr.contains("removed the unfinished upload of backup-"),
        "the rerun did not report the cleanup:\n{stderr}"
    );
    eventually("no stray multipart upload is left", || {
        unfinished_uploads() == before
    });
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_success(&world.run(&["verify-backup", &id]), "verify the rerun");
    let listed = world.run(&["--json", "list-backups"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["backups"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
}

#[test]
fn the_server_dying_mid_backup_leaves_nothing_and_the_next_run_cleans_up() {
    let Some(world) = s3_world(24.0) else { return };
    let _server = s3_exclusive();
    let before = unfinished_uploads();
    let config = fs::read_to_string(&world.config).unwrap();
    let child = backup_in_the_middle_of_its_upload(&world, before);
    server_script("kill");
    let out = child.wait_with_output().unwrap();
    server_script("restart");
    assert_fails(&out, exit::STORAGE, &["object store"]);
    assert_no_backups(&world);
    // The abort could not reach the server: the marker naming the upload is still there for
    // the next run. (Not Garage's count of unfinished uploads, which it may rebuild in the
    // background after the restart, and read low meanwhile.)
    assert!(!upload_markers(&world).is_empty());
    rerun_cleans_up(&world, &config, before);
}

#[test]
fn sigkill_mid_backup_leaves_nothing_and_the_next_run_cleans_up() {
    let Some(world) = s3_world(24.0) else { return };
    let _server = s3_exclusive();
    let before = unfinished_uploads();
    let config = fs::read_to_string(&world.config).unwrap();
    let mut child = backup_in_the_middle_of_its_upload(&world, before);
    signal(&child, "KILL");
    child.wait().unwrap();
    assert_no_backups(&world);
    assert!(!upload_markers(&world).is_empty());
    rerun_cleans_up(&world, &config, before);
}

#[test]
fn ctrl_c_mid_backup_aborts_the_upload() {
    let Some(world) = s3_world(24.0) else { return };
    let _server = s3_exclusive();
    let before = unfinished_uploads();
    let config = fs::read_to_string(&world.config).unwrap();
    for name in ["INT", "TERM"] {
        let child = backup_in_the_middle_of_its_upload(&world, before);
        signal(&child, name);
        let out = child.wait_with_output().unwrap();
        assert_fails(&out, exit::INTERRUPTED, &["interrupted"]);
        eventually("the upload is aborted", || unfinished_uploads() == before);
        assert_no_backups(&world);
        fs::write(&world.config, &config).unwrap();
    }
    // Nothing was left for the next run to clean.
    let out = world.run(&["create-backup"]);
    assert_success(&out, "create-backup after Ctrl-C");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("removed the unfinished upload"));
}

#[test]
fn another_runs_live_upload_is_left_alone() {
    let Some(world) = s3_world(24.0) else { return };
    let _server = s3_exclusive();
    let before = unfinished_uploads();
    let config = fs::read_to_string(&world.config).unwrap();
    let slow = backup_in_the_middle_of_its_upload(&world, before);
    fs::write(&world.config, &config).unwrap();
    let out = world.run(&["create-backup"]);
    assert_success(&out, "a second create-backup during the first");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("removed the unfinished upload"));
    let out = slow.wait_with_output().unwrap();
    assert_success(&out, "the first create-backup");
    let listed = world.run(&["--json", "list-backups"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["backups"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
}

/// Runs `args` with downloads throttled, kills the server after a second (a SIGTERM would let
/// it finish the download) and restarts it.
fn server_dies_during(world: &World, args: &[&str]) -> Output {
    let config = with_s3_settings(world, "max-download-rate = \"4MiB\"\n");
    let child = spawn(world, args, &[]);
    std::thread::sleep(Duration::from_secs(1));
    server_script("kill");
    let out = child.wait_with_output().unwrap();
    server_script("restart");
    fs::write(&world.config, config).unwrap();
    out
}

#[test]
fn the_server_dying_mid_restore_changes_nothing() {
    let Some(world) = s3_world(24.0) else { return };
    let _server = s3_exclusive();
    let id = world.create_backup();
    fs::write(world.data.join("media_store/local_content/after"), b"x").unwrap();
    let before = live_state(&world.data);

    let out = server_dies_during(&world, &["restore-backup", &id]);
    assert_fails(&out, exit::STORAGE, &["object store"]);
    assert_same_tree(
        &live_state(&world.data),
        &before,
        "live data after a failed restore",
    );
    assert!(staging_left(&world.data).is_empty(), "staging left");

    let drill = world.restore_drill(&id, "restore after restart");
    assert!(!drill.join("media_store/local_content/after").exists());
}

#[test]
fn the_server_dying_mid_verify_fails_the_verification() {
    let Some(world) = s3_world(24.0) else { return };
    let _server = s3_exclusive();
    let id = world.create_backup();
    let out = server_dies_during(&world, &["verify-backup", &id]);
    let stderr = assert_fails(&out, exit::STORAGE, &["object store"]);
    assert!(
        stderr.contains(&id),
        "the error does not name the backup: {stderr}"
    );
    eprintln!("{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("OK"),
        "a verify that could not read the object said OK"
    );
    assert_success(&world.run(&["verify-backup", &id]), "verify after restart");
}

/// Starts the fault proxy in front of the test server (extra arguments: see fault_proxy.py),
/// points the world's config at it with `settings` added, and returns the proxy and its log.
fn behind_fault_proxy(world: &World, s3: &S3Env, args: &[&str], settings: &str) -> (Kill, PathBuf) {
    let fault_log = world.path("faults.log");
    let address = s3.endpoint.trim_start_matches("http://");
    let (host, port) = address.split_once(':').unwrap();
    let mut proxy = Command::new("python3")
        .arg(repo_root().join("crates/cli/tests/it/fixtures/fault_proxy.py"))
        .args([host, port, fault_log.to_str().unwrap()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = proxy.stdout.take().unwrap();
    let proxy = Kill(proxy);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let config = fs::read_to_string(&world.config)
        .unwrap()
        .replace(&s3.endpoint, &format!("http://127.0.0.1:{}", line.trim()));
    fs::write(
        &world.config,
        config.replace(
            "max-retries = 2\n",
            &format!("max-retries = 10\n{settings}"),
        ),
    )
    .unwrap();
    (proxy, fault_log)
}

/// create, verify and restore all succeed; returns the fault log.
fn every_command_succeeds(world: &World, fault_log: &Path) -> String {
    let id = world.create_backup();
    assert_success(&world.run(&["verify-backup", &id]), "verify through faults");
    let drill = world.restore_drill(&id, "restore through faults");
    assert_same_tree(
        &tree_hashes(&drill.join("media/local_content")),
        &tree_hashes(&world.data.join("media_store/local_content")),
        "media restored through faults",
    );
    fs::read_to_string(fault_log).unwrap()
}

#[test]
fn transient_errors_are_retried_part_by_part() {
    let Some(s3) = S3Env::from_env() else { return };
    let world = s3_world(24.0).unwrap();
    let _server = s3_exclusive();
    // Three of every six requests fail; a retry may land on another failing slot.
    let (_proxy, fault_log) = behind_fault_proxy(&world, &s3, &[], "");
    let log = every_command_succeeds(&world, &fault_log);
    for kind in ["503 PUT", "500 PUT", "reset PUT", "cut-body GET"] {
        assert!(log.contains(kind), "no {kind} fault was injected:\n{log}");
    }
    eprintln!("faults injected and survived: {}", log.lines().count());
}

#[test]
fn a_hanging_server_is_timed_out_and_retried() {
    let Some(s3) = S3Env::from_env() else { return };
    let world = s3_world(24.0).unwrap();
    let _server = s3_exclusive();
    // Every fourth request hangs for five minutes; the tool gives up on it after 2 s.
    let (_proxy, fault_log) =
        behind_fault_proxy(&world, &s3, &["300"], "request-timeout-secs = 2\n");
    let started = Instant::now();
    let log = every_command_succeeds(&world, &fault_log);
    for kind in ["stall PUT", "stall GET", "stalled-body GET"] {
        assert!(log.contains(kind), "no {kind} fault was injected:\n{log}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "a hung request was waited out instead of timed out"
    );
    eprintln!("hangs injected and survived: {}", log.lines().count());
}
