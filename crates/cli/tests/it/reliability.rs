//! Faults on purpose: the process killed while staging and in the middle of the swap, Ctrl-C,
//! a held lock, a full disk. Each time the live data is entirely old or entirely new, and the
//! next run cleans up or finishes.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::exit;

/// Waits until `path` exists; false if `child` ended first or 20 s passed.
fn wait_for(path: &Path, child: &mut Child) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if path.exists() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Restores `id` again after a crash: it succeeds and its report says it recovered (`what`:
/// "staging" removed, or a swap "completed").
fn rerun_reports_recovery(world: &World, id: &str, what: &str) {
    let out = world.run(&["--json", "restore-backup", id]);
    assert_success(&out, "restore after the crash");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["recovered"].as_str().unwrap_or("").contains(what),
        "the rerun did not report the recovery ({what}): {report}"
    );
}

fn big_world() -> World {
    World::with(WorldOptions {
        size_mib: 40.0,
        ..Default::default()
    })
}

#[test]
fn sigkill_while_staging_leaves_live_data_and_the_next_run_cleans_up() {
    let world = big_world();
    let id = world.create_backup();
    fs::write(
        world.data.join("media_store/local_content/after"),
        b"newer than the backup",
    )
    .unwrap();
    let before = live_state(&world.data);

    let mut child = spawn(&world, &["restore-backup", &id], &[]);
    assert!(
        wait_for(&world.journal(), &mut child),
        "the restore never started staging"
    );
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        live_state(&world.data),
        before,
        "a killed restore changed live data"
    );

    rerun_reports_recovery(&world, &id, "staging");
    assert!(staging_left(&world.data).is_empty());
    assert!(!world.data.join("media_store/local_content/after").exists());
}

#[test]
fn a_crash_in_the_middle_of_the_swap_is_completed_by_the_next_run() {
    let world = World::new();
    let id = world.create_backup();
    let backed_up = live_state(&world.data);
    let key = world.data.join(format!("{SERVER_NAME}.signing.key"));
    fs::write(&key, "ed25519 a_new changed-after-backup\n").unwrap();
    fs::write(world.data.join("media_store/local_content/after"), b"x").unwrap();

    let out = spawn(
        &world,
        &["restore-backup", &id],
        &[("SYNAPSE_BACKUP_CRASH_AFTER_SWAPS", "1")],
    )
    .wait_with_output()
    .unwrap();
    assert!(!out.status.success(), "the fault was not injected");
    assert!(
        world.journal().exists(),
        "no journal after a crash mid-swap"
    );

    rerun_reports_recovery(&world, &id, "completed");
    assert!(!world.journal().exists());
    let now = live_state(&world.data);
    for (name, hash) in &backed_up {
        // homeserver.db is restored from a snapshot (other bytes, same rows): checked by
        // backup_restore's integrity test, not here.
        if name.starts_with("media_store/local_") || name.ends_with(".signing.key") {
            assert_eq!(
                now.get(name),
                Some(hash),
                "{name} is not the backed-up version"
            );
        }
    }
    assert!(!world.data.join("media_store/local_content/after").exists());
}

#[test]
fn ctrl_c_while_staging_removes_the_staging() {
    let world = big_world();
    let id = world.create_backup();
    let before = live_state(&world.data);
    for signal in ["INT", "TERM"] {
        let mut child = spawn(&world, &["restore-backup", &id], &[]);
        assert!(
            wait_for(&world.journal(), &mut child),
            "the restore never started staging"
        );
        std::thread::sleep(Duration::from_millis(30));
        crate::common::signal(&child, signal);
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            eprintln!("the restore finished before SIG{signal} arrived; nothing to check");
            return;
        }
        assert_fails(&out, exit::INTERRUPTED, &["interrupted"]);
        assert_eq!(live_state(&world.data), before, "after SIG{signal}");
        assert!(
            staging_left(&world.data).is_empty(),
            "staging left after SIG{signal}: {:?}",
            staging_left(&world.data)
        );
        assert!(!world.journal().exists());
    }
}

#[test]
fn a_restore_is_refused_while_another_holds_the_lock() {
    let world = World::new();
    let id = world.create_backup();
    let lock = world.data.join(".synapse-backup.lock");
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg("import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)")
        .arg(&lock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let before = live_state(&world.data);
    assert_fails(
        &world.run(&["restore-backup", &id]),
        exit::REFUSED,
        &["another"],
    );
    assert_fails(
        &world.run(&["create-backup"]),
        exit::REFUSED,
        &["restore is running"],
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(live_state(&world.data), before);
    // The lock dies with its holder: the next run goes through.
    assert_success(
        &world.run(&["restore-backup", &id]),
        "restore after the lock holder died",
    );
}

#[test]
fn two_backups_at_once_get_distinct_ids() {
    let world = World::new();
    let a = spawn(&world, &["create-backup"], &[]);
    let b = spawn(&world, &["create-backup"], &[]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_success(&a, "first create-backup");
    assert_success(&b, "second create-backup");
    assert_ne!(a.stdout, b.stdout);
    let listed = world.run(&["--json", "list-backups"]);
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows["backups"].as_array().unwrap().len(), 2);
}

/// A full disk while staging: needs root to mount a small tmpfs; elsewhere it says so and passes.
#[test]
fn a_full_disk_while_staging_changes_nothing() {
    let source = World::with(WorldOptions {
        size_mib: 6.0,
        ..Default::default()
    });
    let id = source.create_backup();
    let mount = source.path("small-fs");
    fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=10m", "tmpfs"])
        .arg(&mount)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("cannot mount a tmpfs (not root?): skipping the full-disk test");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount);
    let data = mount.join("data");
    make_datadir(&data, SERVER_NAME, 3.0, 1);
    let config = source.path("small.toml");
    fs::write(
        &config,
        fs::read_to_string(&source.config).unwrap().replace(
            &source.data.display().to_string(),
            &data.display().to_string(),
        ),
    )
    .unwrap();
    let before = live_state(&data);
    // The free-space check refuses first…
    assert_fails(
        &run_with_config(&config, &["restore-backup", &id]),
        exit::REFUSED,
        &["free space"],
    );
    // …and without it, the disk fills up while staging: an error, and nothing changed.
    let out = run_with_config(&config, &["restore-backup", &id, "--skip-space-check"]);
    assert!(!out.status.success(), "the restore should not fit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left"), "{stderr}");
    assert_eq!(live_state(&data), before);
    assert!(staging_left(&data).is_empty());
}

#[test]
fn a_backup_taken_while_synapse_writes_is_consistent() {
    let world = World::with(WorldOptions {
        size_mib: 20.0,
        ..Default::default()
    });
    let stop = world.path("stop-writing");
    // A writer that keeps inserting rows, adding media and deleting media until told to stop.
    let writer = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import os, random, sqlite3, sys, time
data, stop = sys.argv[1], sys.argv[2]
db = sqlite3.connect(os.path.join(data, "homeserver.db"), timeout=30)
media = os.path.join(data, "media_store", "local_content")
existing = [os.path.join(r, f) for r, _, fs in os.walk(media) for f in fs]
i = 0
while not os.path.exists(stop):
    db.execute("INSERT INTO events (event_id, room_id, json) VALUES (?, ?, ?)", (f"$w{i}", "!r", "x" * 500))
    db.commit()
    path = os.path.join(media, "zz", "new", f"upload{i}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(20000))
    if existing and i % 3 == 0:
        os.remove(existing.pop(random.randrange(len(existing))))
    i += 1
print(i)
"#,
        )
        .arg(&world.data)
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = world.run(&["create-backup"]);
    fs::write(&stop, b"").unwrap();
    let written = writer.wait_with_output().unwrap();
    assert_success(&out, "create-backup during writes");
    let rounds: u32 = String::from_utf8_lossy(&written.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(rounds > 10, "the writer barely ran ({rounds} rounds)");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_success(&world.run(&["verify-backup", &id]), "verify-backup");
    let drill = world.restore_drill(&id, "restore");
    let check = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])")
        .arg(drill.join("database/homeserver.db"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "ok");
}

#[test]
fn sigkill_during_create_backup_leaves_no_backup_and_a_rerun_succeeds() {
    let world = big_world();
    let mut child = spawn(&world, &["create-backup"], &[]);
    // The local store writes into a hidden temp file first.
    let started = Instant::now();
    let mut partial_seen = false;
    while started.elapsed() < Duration::from_secs(20) && child.try_wait().unwrap().is_none() {
        if fs::read_dir(&world.store)
            .map(|d| {
                d.flatten().any(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    // A volume's or the base's, not the small pending marker's.
                    name.contains(".partial-") && !name.contains("pending~")
                })
            })
            .unwrap_or(false)
        {
            partial_seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    if !partial_seen {
        eprintln!("the backup finished before it could be killed; nothing to check");
        return;
    }
    assert_no_backups(&world);
    let out = world.run(&["create-backup"]);
    assert_success(&out, "create-backup after SIGKILL");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("removed the unfinished upload of volumes/backup-")
            || stderr.contains("removed the unfinished upload of backup-"),
        "the rerun did not clean up:\n{stderr}"
    );
    let left: Vec<String> = fs::read_dir(&world.store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|name| name.contains(".partial-"))
        .collect();
    assert!(left.is_empty(), "temp files left in the store: {left:?}");
}
