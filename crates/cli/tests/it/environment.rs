//! Settings from the environment: `SYNAPSE_BACKUP_<SECTION>_<KEY>` over the file, or alone
//! when there is no config file; `config show` names where each setting came from and never
//! prints a secret.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use synapse_backup_core::config::DEFAULT_CONFIG_PATH;

use crate::common::*;
use crate::exit;

/// Runs the binary with `env` and none of the tool's variables from this process.
fn run_with_env(config: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("SYNAPSE_BACKUP_") || name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn the_environment_alone_configures_the_tool() {
    if Path::new(DEFAULT_CONFIG_PATH).exists() {
        eprintln!("{DEFAULT_CONFIG_PATH} exists on this machine: skipping");
        return;
    }
    let world = World::new();
    let hs = world.data.join("homeserver.yaml");
    let store = world.path("env-store");
    let env = [
        ("SYNAPSE_BACKUP_SYNAPSE_CONFIG", hs.to_str().unwrap()),
        ("SYNAPSE_BACKUP_LOCAL_PATH", store.to_str().unwrap()),
        ("SYNAPSE_BACKUP_PASSPHRASE", PASSPHRASE),
    ];
    let out = run_with_env(None, &["create-backup"], &env);
    assert_success(&out, "create-backup configured by the environment");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(store.join(&id).is_file());

    // Without any store setting, the error says which variables would do.
    let out = run_with_env(None, &["list-backups"], &env[..1]);
    assert_fails(
        &out,
        exit::CONFIG,
        &[DEFAULT_CONFIG_PATH, "SYNAPSE_BACKUP_LOCAL_PATH"],
    );
}

#[test]
fn variables_override_the_file_and_a_misspelt_one_is_refused() {
    let world = World::new();
    let elsewhere = world.path("elsewhere");
    let out = run_with_env(
        Some(&world.config),
        &["create-backup"],
        &[("SYNAPSE_BACKUP_LOCAL_PATH", elsewhere.to_str().unwrap())],
    );
    assert_success(&out, "create-backup with [local] path from the environment");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(elsewhere.join(&id).is_file());
    assert!(!world.store.join(&id).exists());

    let out = run_with_env(
        Some(&world.config),
        &["list-backups"],
        &[("SYNAPSE_BACKUP_LOCAL_PAHT", "/tmp")],
    );
    assert_fails(
        &out,
        exit::CONFIG,
        &["SYNAPSE_BACKUP_LOCAL_PAHT", "SYNAPSE_BACKUP_LOCAL_PATH"],
    );
}

#[test]
fn config_show_names_origins_and_redacts_secrets() {
    let world = World::new();
    let config = world.path("s3.toml");
    fs::write(
        &config,
        format!(
            "[synapse]\nconfig = \"{}\"\n[s3]\nbucket = \"from-file\"\nendpoint = \"http://127.0.0.1:9\"\naccess-key = \"AKFILE\"\n",
            world.data.join("homeserver.yaml").display()
        ),
    )
    .unwrap();
    let secret = "s3cr3t-from-the-environment";
    let env = [
        ("SYNAPSE_BACKUP_S3_SECRET_KEY", secret),
        ("SYNAPSE_BACKUP_S3_BUCKET", "from-env"),
        ("AWS_REGION", "eu-test-1"),
    ];
    let out = run_with_env(Some(&config), &["config", "show"], &env);
    assert_success(&out, "config show");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bucket = \"from-env\"   # SYNAPSE_BACKUP_S3_BUCKET"),
        "{text}"
    );
    assert!(
        text.contains("region = \"eu-test-1\"   # AWS_REGION"),
        "{text}"
    );
    assert!(text.contains("access-key = \"AKFILE\"\n"), "{text}");
    assert!(text.contains("secret-key = \"<redacted>\""), "{text}");
    let json = run_with_env(Some(&config), &["--json", "config", "show"], &env);
    assert_success(&json, "config show --json");
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["settings"]["s3"]["bucket"], "from-env");
    assert_eq!(
        doc["from-environment"]["s3"]["secret-key"],
        "SYNAPSE_BACKUP_S3_SECRET_KEY"
    );
    for out in [&out, &json] {
        for stream in [&out.stdout, &out.stderr] {
            assert!(
                !String::from_utf8_lossy(stream).contains(secret),
                "the secret was printed"
            );
        }
    }
}
