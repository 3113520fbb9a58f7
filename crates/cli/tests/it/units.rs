//! What the package ships besides the binary. The systemd units in packaging/systemd:
//! `systemd-analyze verify` finds nothing to say about them, and the commands they run do the
//! night's work on a real data dir and store. The example config loads; the man pages and
//! completions the package build generates say what they should. (scripts/package-test.sh
//! builds the .deb and installs it with dpkg.)

use std::fs;
use std::process::Command;

use crate::common::*;

fn units() -> Vec<(String, String)> {
    let dir = repo_root().join("packaging/systemd");
    let mut units: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    units.sort();
    units
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("SYNAPSE_BACKUP_REQUIRE_SYSTEMD").as_deref() == Ok("1") {
            panic!("SYNAPSE_BACKUP_REQUIRE_SYSTEMD=1 but systemd-analyze is missing");
        }
        eprintln!("no systemd-analyze: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = units();
    assert_eq!(
        units.len(),
        6,
        "{:?}",
        units.iter().map(|u| &u.0).collect::<Vec<_>>()
    );
    for (name, text) in &units {
        // The test's binary stands where the package installs it (verify checks it exists).
        let text = text.replace("/usr/bin/synapse-backup", binary().to_str().unwrap());
        fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|(name, _)| dir.path().join(name)))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown or misspelt keys are only warnings to it: none is acceptable here.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// Every `ExecStart` of the units, run in order against a world configured with
/// `[retention]`: a backup, the prune the policy asks for, and a verify of the newest.
#[test]
fn the_units_commands_do_the_nights_work() {
    let world = World::with(WorldOptions {
        extra_config: "[retention]\nkeep-last = 2\n",
        ..Default::default()
    });
    let old = world.create_backup();
    store_renamed_copy(&world, &old, "backup-20200101000000000000");
    // The drill's unit boots Synapse, which this world has not: its command is run by the
    // end-to-end tests (tests/e2e, scenario `drill`); here it is only read.
    let drill_unit = units()
        .into_iter()
        .find(|(name, _)| name == "synapse-backup-drill.service")
        .expect("the drill's unit");
    assert!(
        drill_unit
            .1
            .lines()
            .any(|l| l == "ExecStart=/usr/bin/synapse-backup drill latest"),
        "{}",
        drill_unit.1
    );
    let commands: Vec<String> = units()
        .iter()
        .filter(|(name, _)| name.ends_with(".service") && !name.contains("-drill"))
        .rev() // synapse-backup.service before synapse-backup-verify.service
        .flat_map(|(_, text)| {
            text.lines()
                .filter_map(|l| l.strip_prefix("ExecStart="))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    for command in &commands {
        let mut words = command.split_whitespace();
        assert_eq!(words.next(), Some("/usr/bin/synapse-backup"));
        let args: Vec<&str> = words.collect();
        // The units rely on the default config path; the world's stands in for it.
        let out = Command::new(binary())
            .args(&args)
            .env("SYNAPSE_BACKUP_CONFIG", &world.config)
            .output()
            .unwrap();
        assert_success(&out, command);
    }
    // Three backups existed before the prune (the copy, the first, the unit's): two are left.
    let left = backups_in_store(&world);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&"backup-20200101000000000000".to_string()));
}

/// The package's /etc/synapse-backup/config.toml is valid as shipped, names no secret, and
/// sets the Debian layout and a retention policy.
#[test]
fn the_packaged_config_loads() {
    let config = repo_root().join("packaging/config.toml");
    let out = run_with_config(&config, &["--json", "config", "show"]);
    assert_success(&out, "config show on packaging/config.toml");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let settings = &doc["settings"];
    assert_eq!(
        settings["synapse"]["config"],
        serde_json::json!([
            "/etc/matrix-synapse/homeserver.yaml",
            "/etc/matrix-synapse/conf.d"
        ])
    );
    assert_eq!(
        settings["backup"]["passphrase-file"],
        "/etc/synapse-backup/passphrase"
    );
    assert!(
        settings["retention"]["keep-daily"].as_u64().unwrap_or(0) > 0,
        "{doc}"
    );
}

/// `generate`: a page per command with the exit codes and environment, and completions that
/// know the commands, for the three shells.
#[test]
fn generated_man_pages_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let (man, completions) = (dir.path().join("man"), dir.path().join("completions"));
    let out = Command::new(binary())
        .args(["generate", "--man-dir", man.to_str().unwrap()])
        .args(["--completions-dir", completions.to_str().unwrap()])
        .env_remove("SYNAPSE_BACKUP_CONFIG")
        .output()
        .unwrap();
    assert_success(&out, "generate");
    let main_page = fs::read_to_string(man.join("synapse-backup.1")).unwrap();
    for needle in [
        "EXIT STATUS",
        "ENVIRONMENT",
        "SYNAPSE_BACKUP_PASSPHRASE",
        "create\\-backup",
    ] {
        assert!(
            main_page.contains(needle),
            "{needle} missing from the man page"
        );
    }
    for command in ["create-backup", "restore-backup", "prune-backups", "check"] {
        let page = man.join(format!("synapse-backup-{command}.1"));
        assert!(page.is_file(), "no man page {}", page.display());
    }
    let restore = fs::read_to_string(man.join("synapse-backup-restore-backup.1")).unwrap();
    assert!(
        restore.contains("target\\-dir"),
        "restore page lacks --target-dir"
    );
    for (file, option) in [
        ("synapse-backup.bash", "--target-dir"),
        ("_synapse-backup", "--target-dir"),
        ("synapse-backup.fish", "-l target-dir"),
    ] {
        let text = fs::read_to_string(completions.join(file)).unwrap();
        assert!(
            text.contains("restore-backup"),
            "{file} lacks restore-backup"
        );
        assert!(text.contains(option), "{file} lacks {option}");
    }
    let bash = Command::new("bash")
        .arg("-n")
        .arg(completions.join("synapse-backup.bash"))
        .output()
        .unwrap();
    assert_success(&bash, "bash -n on the completion script");
}
