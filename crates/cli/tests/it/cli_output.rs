//! How the CLI writes for programs rather than people: a closed pipe on stdout and logs that
//! go to a file or journald.

use std::fs;
use std::process::{Command, Stdio};

use crate::common::*;
use crate::exit;

/// Runs `args` with stdout closed before the tool writes (`head` exiting at once) and asserts
/// that it ends quietly: exit 0, no panic.
fn assert_quiet_with_closed_stdout(world: &World, args: &[&str]) {
    let mut child = Command::new(binary())
        .args(["--config", world.config.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(exit::OK.into()),
        "{args:?}: {stderr}"
    );
}

/// `list-backups | head -1`: the reader goes away; the tool ends quietly, without a panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let world = World::new();
    world.create_backup();
    world.create_backup();
    assert_quiet_with_closed_stdout(&world, &["list-backups"]);
}

/// Logs on stderr that is not a terminal carry no colour escape codes.
#[test]
fn logs_off_a_terminal_have_no_colour_codes() {
    let world = World::new();
    let out = world.run(&["-v", "create-backup"]);
    assert_success(&out, "create-backup -v");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INFO"),
        "expected info logs at -v: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "colour codes in: {stderr:?}");
}

/// The one JSON document `--json` promises: exactly one value on stdout, an object, every key
/// lowercase with hyphens (a Juju action result's rule), `ok` saying whether it worked.
fn one_json_document(out: &std::process::Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let documents: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            panic!("{what}: stdout is not JSON ({e}): {stdout:?}; stderr: {stderr}")
        });
    assert_eq!(documents.len(), 1, "{what}: {stdout:?}; stderr: {stderr}");
    let document = documents.into_iter().next().unwrap();
    assert!(document.is_object(), "{what}: not an object: {document}");
    let mut bad = Vec::new();
    keys_not_kebab(&document, "", &mut bad);
    assert!(
        bad.is_empty(),
        "{what}: keys not lowercase-with-hyphens: {bad:?} in {document}"
    );
    let ok = document["ok"].as_bool();
    assert_eq!(
        ok,
        Some(out.status.success()),
        "{what}: `ok` vs exit {:?}: {document}",
        out.status
    );
    document
}

fn keys_not_kebab(value: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
    let kebab = |key: &str| {
        !key.is_empty()
            && key.split('-').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    };
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let path = format!("{at}/{key}");
                if !kebab(key) {
                    bad.push(path.clone());
                }
                keys_not_kebab(inner, &path, bad);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                keys_not_kebab(inner, &format!("{at}/{i}"), bad);
            }
        }
        _ => {}
    }
}

/// The commands `--help` lists (what a new command must be added to the audit below for).
fn listed_commands() -> Vec<String> {
    let out = Command::new(binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    help.split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

/// Every command, as it succeeds and as it fails, prints exactly one JSON document on stdout
/// under `--json`; logs and progress stay on stderr.
#[test]
fn every_command_prints_exactly_one_json_document() {
    // The drill's Synapse is a program that exits at once: the drill fails its health check.
    let world = World::with(WorldOptions {
        extra_config: "[drill]\nsynapse-command = \"/bin/false\"\n",
        ..Default::default()
    });
    let id = world.create_backup();
    let second = world.create_backup();
    let out_dir = world.path("generated");
    let drill = world.path("drill");
    let (man, completions) = (out_dir.join("man"), out_dir.join("completions"));
    let segment = world.path("pg_wal/000000010000000000000001");
    fs::create_dir_all(segment.parent().unwrap()).unwrap();
    fs::write(&segment, vec![1u8; 4096]).unwrap();
    let fetched = world.path("pg_wal/RECOVERYXLOG");
    let succeed: Vec<Vec<&str>> = vec![
        vec!["wal-push", segment.to_str().unwrap()],
        vec![
            "wal-fetch",
            "000000010000000000000001",
            fetched.to_str().unwrap(),
        ],
        vec!["check"],
        vec!["config", "show"],
        vec!["create-backup"],
        vec!["list-backups"],
        vec!["verify-backup", &id],
        vec!["verify-backup", "latest"],
        vec![
            "restore-backup",
            &id,
            "--target-dir",
            drill.to_str().unwrap(),
        ],
        vec!["prune-backups", "--keep-last", "1", "--dry-run"],
        vec!["delete-backup", &second],
        vec!["prune-backups", "--keep-last", "1"],
        vec![
            "generate",
            "--man-dir",
            man.to_str().unwrap(),
            "--completions-dir",
            completions.to_str().unwrap(),
        ],
    ];
    let mut covered = std::collections::BTreeSet::new();
    for args in &succeed {
        let mut full = vec!["--json"];
        full.extend(args);
        let out = world.run(&full);
        assert_success(&out, &args.join(" "));
        let document = one_json_document(&out, &args.join(" "));
        covered.insert(args[0].to_string());
        if args[0] == "generate" {
            let written = document["written"].as_array().unwrap();
            assert!(written.len() >= 4, "man page + 3 completions: {document}");
        }
    }
    // A failed drill: its report (each check) is the one document, exit 5.
    let out = world.run(&["--json", "drill", "latest"]);
    assert_eq!(out.status.code(), Some(exit::CORRUPT.into()), "{out:?}");
    let document = one_json_document(&out, "drill");
    assert_eq!(document["ok"], false, "{document}");
    covered.insert("drill".to_string());
    let missing: Vec<_> = listed_commands()
        .into_iter()
        .filter(|name| !covered.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "commands the --json audit does not run: {missing:?}"
    );

    // Failures: the error as a document, with the exit code the process returns.
    let failures: Vec<(Vec<&str>, u8, &str)> = vec![
        (
            vec!["verify-backup", "backup-20200101000000000000"],
            exit::NOT_FOUND,
            "not-found",
        ),
        (
            vec!["delete-backup", "backup-20200101000000000000"],
            exit::NOT_FOUND,
            "not-found",
        ),
        (
            vec!["create-backup", "--no-such-option"],
            exit::CONFIG,
            "config",
        ),
        (vec!["restore-backup"], exit::CONFIG, "config"),
    ];
    for (args, code, kind) in failures {
        let mut full = vec!["--json"];
        full.extend(&args);
        let out = world.run(&full);
        let what = args.join(" ");
        assert_eq!(out.status.code(), Some(code.into()), "{what}: {out:?}");
        let document = one_json_document(&out, &what);
        assert_eq!(document["exit-code"], code, "{what}: {document}");
        assert_eq!(document["error-kind"], kind, "{what}: {document}");
        assert!(
            document["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {document}"
        );
    }

    // A configuration that cannot be read fails before any command runs.
    let out = run_with_config(
        &world.path("no-such-config.toml"),
        &["--json", "list-backups"],
    );
    let document = one_json_document(&out, "list-backups with a missing config");
    assert_eq!(document["exit-code"], exit::CONFIG, "{document}");

    // The error names no secret: a wrong passphrase is not echoed.
    world.set_passphrase("wrong passphrase entirely");
    let out = world.run(&["--json", "verify-backup", "latest"]);
    let document = one_json_document(&out, "verify-backup with a wrong passphrase");
    assert_eq!(document["error-kind"], "wrong-passphrase", "{document}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("wrong passphrase entirely"));
}

/// `check` reports every item and fails: its report is the one document, not a second error.
#[test]
fn a_failing_check_prints_its_report_only() {
    let world = World::new();
    fs::remove_file(world.data.join("example.test.signing.key")).unwrap();
    let out = world.run(&["--json", "check"]);
    assert!(!out.status.success(), "{out:?}");
    let document = one_json_document(&out, "check with a missing key");
    assert!(
        document["checks"].as_array().is_some_and(|c| !c.is_empty()),
        "{document}"
    );
}

/// A closed stdout ends every kind of output quietly: tables, JSON, and the long `config show`.
#[test]
fn a_closed_stdout_is_quiet_for_json_and_tables() {
    let world = World::new();
    world.create_backup();
    for args in [
        &["--json", "list-backups"][..],
        &["config", "show"],
        &["--json", "check"],
        &["prune-backups", "--keep-last", "3", "--dry-run"],
    ] {
        assert_quiet_with_closed_stdout(&world, args);
    }
}
