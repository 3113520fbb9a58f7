//! The same commands against a real S3 server (Garage on loopback, started by scripts/test.sh),
//! which checks request signatures.

use std::fs;

use crate::common::*;
use crate::exit;

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
    let _server = s3_shared();
    let id = world.create_backup();
    let listed = world.run(&["--json", "list-backups"]);
    assert_success(&listed, "list-backups");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rows = &listed["backups"];
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["backup-id"], id.as_str());
    assert_eq!(rows[0]["server-name"], SERVER_NAME);

    assert_success(&world.run(&["verify-backup", &id]), "verify-backup");
    let drill = world.restore_drill(&id, "restore-backup");
    assert_eq!(
        tree_hashes(&drill.join("media/local_content")),
        tree_hashes(&world.data.join("media_store/local_content"))
    );

    assert_success(&world.run(&["delete-backup", &id]), "delete-backup");
    assert_fails(
        &world.run(&["delete-backup", &id]),
        exit::NOT_FOUND,
        &["not found"],
    );
    assert_no_backups(&world);
}

/// What anyone with read access to the bucket sees, short of the passphrase: one key named after
/// the backup id, no metadata, no plaintext.
#[test]
fn stored_keys_and_metadata_reveal_only_the_backup_id() {
    use futures::TryStreamExt;
    use object_store::{path::Path, GetOptions, ObjectStore, ObjectStoreExt};

    let Some(s3) = S3Env::from_env() else { return };
    let _server = s3_shared();
    let world = s3_world().unwrap();
    let id = world.create_backup();
    let prefix = S3Env::prefix_of(&world);
    let media = world.data.join("media_store/local_content");
    let (some_file, _) = tree_hashes(&media).into_iter().next().unwrap();
    let some_bytes = fs::read(media.join(&some_file)).unwrap();
    let file_name = some_file.rsplit('/').next().unwrap().to_string();

    let client = s3.client();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let keys: Vec<String> = client
            .list(Some(&Path::from(prefix.as_str())))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            vec![
                format!("{prefix}/{id}"),
                format!("{prefix}/volumes/{id}-0000"),
                format!("{prefix}/volumes/{id}-files"),
            ]
        );
        // The base, the volume and the run: each named by the backup id alone, each opaque.
        for key in keys {
            let key = Path::from(key);
            let head = client
                .get_opts(
                    &key,
                    GetOptions {
                        head: true,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let attributes: Vec<String> = head
                .attributes
                .iter()
                .map(|(name, value)| format!("{name:?}={}", value.as_ref()))
                .collect();
            assert_eq!(
                attributes,
                vec!["ContentType=application/octet-stream".to_string()],
                "object metadata of {key}"
            );
            let object = client.get(&key).await.unwrap().bytes().await.unwrap();
            assert_no_plaintext(
                &object,
                &[
                    SERVER_NAME.as_bytes(),
                    file_name.as_bytes(),
                    b"homeserver",
                    b"signing.key",
                    &some_bytes[..64],
                ],
            );
        }
    });
}

#[test]
fn a_large_backup_uses_several_parts() {
    let Some(s3) = S3Env::from_env() else { return };
    let _server = s3_shared();
    // 30 MiB of media: more than three 8 MiB parts, uploaded several at a time.
    let world = World::with(WorldOptions {
        s3: Some(s3),
        size_mib: 30.0,
        ..Default::default()
    });
    let id = world.create_backup();
    let listed = world.run(&["--json", "list-backups"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rows = &listed["backups"];
    assert!(rows[0]["restore-bytes"].as_u64().unwrap() > 30 * 1024 * 1024);
    assert_success(&world.run(&["verify-backup", &id]), "verify-backup");
}

#[test]
fn wrong_secret_key_is_a_storage_error() {
    let Some(world) = s3_world() else { return };
    let _server = s3_shared();
    fs::write(world.path("s3-secret"), "0".repeat(64)).unwrap();
    let stderr = assert_fails(&world.run(&["create-backup"]), exit::STORAGE, &["refused"]);
    assert!(
        !stderr.contains(&"0".repeat(64)),
        "the secret leaked into the error"
    );
    assert_fails(
        &world.run(&["list-backups"]),
        exit::STORAGE,
        &["secret key"],
    );
}

#[test]
fn unknown_bucket_and_unreachable_endpoint_are_named() {
    let Some(s3) = S3Env::from_env() else { return };
    let _server = s3_shared();
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
    assert_fails(
        &world.run(&["list-backups"]),
        exit::STORAGE,
        &["no-such-bucket"],
    );

    fs::write(
        &world.config,
        config.replace(&s3.endpoint, "http://127.0.0.1:1"),
    )
    .unwrap();
    assert_fails(
        &world.run(&["create-backup"]),
        exit::STORAGE,
        &["127.0.0.1:1"],
    );
}

/// A self-signed HTTPS endpoint (a TLS proxy in front of the test server) fails without
/// `tls-ca-chain` and works with it.
#[test]
fn private_tls_endpoints_need_their_ca() {
    let Some(s3) = S3Env::from_env() else { return };
    let _server = s3_shared();
    let world = World::with(WorldOptions {
        s3: Some(s3.clone()),
        ..Default::default()
    });
    let cert = world.path("cert.pem");
    let key = world.path("key.pem");
    // A private CA and a server certificate it signed, as a private endpoint would have.
    let ca_key = world.path("ca-key.pem");
    let ca = world.path("ca.pem");
    let csr = world.path("server.csr");
    let ext = world.path("server.ext");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |path: &std::path::Path| path.to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    let target = s3.endpoint.trim_start_matches("http://").to_string();
    let (host, port) = target.rsplit_once(':').unwrap();
    let mut proxy = std::process::Command::new("python3")
        .arg(repo_root().join("crates/cli/tests/it/fixtures/tls_proxy.py"))
        .args([cert.to_str().unwrap(), key.to_str().unwrap(), host, port])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = proxy.stdout.take().unwrap();
    let _proxy = Kill(proxy);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let https = format!("https://127.0.0.1:{}", line.trim());

    let config = fs::read_to_string(&world.config)
        .unwrap()
        .replace(&s3.endpoint, &https);
    fs::write(&world.config, &config).unwrap();
    let out = world.run(&["list-backups"]);
    let stderr = assert_fails(&out, exit::STORAGE, &["127.0.0.1"]);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    let with_ca = config.replace(
        "[s3]\n",
        &format!("[s3]\ntls-ca-chain = \"{}\"\n", ca.display()),
    );
    fs::write(&world.config, with_ca).unwrap();
    let id = world.create_backup();
    assert_success(&world.run(&["verify-backup", &id]), "verify over TLS");
}

/// At the highest verbosity, and with `RUST_LOG=trace` in the environment (which must not open
/// the HTTP libraries' header logs), no output of any command holds the passphrase or the S3
/// secret key, in success or in failure.
#[test]
fn secrets_stay_out_of_s3_output_at_any_verbosity() {
    let Some(s3) = S3Env::from_env() else { return };
    let _server = s3_shared();
    let world = s3_world().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .arg("--config")
            .arg(&world.config)
            .arg("-vvv")
            .args(args)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    };
    let mut outputs = Vec::new();
    let created = run(&["create-backup"]);
    assert_success(&created, "create-backup -vvv");
    let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
    outputs.push(created);
    outputs.push(run(&["list-backups"]));
    outputs.push(run(&["verify-backup", &id]));
    let drill = world.path("drill");
    outputs.push(run(&[
        "restore-backup",
        &id,
        "--target-dir",
        drill.to_str().unwrap(),
    ]));
    world.set_passphrase("wrong-passphrase-sentinel-91c2");
    outputs.push(run(&["verify-backup", &id]));
    world.set_passphrase(PASSPHRASE);
    fs::write(world.path("s3-secret"), "wrong-secret-sentinel-4b7e").unwrap();
    outputs.push(run(&["list-backups"]));
    outputs.push(run(&["create-backup"]));
    fs::write(world.path("s3-secret"), &s3.secret_key).unwrap();
    outputs.push(run(&["delete-backup", &id]));

    for out in &outputs {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in [
            PASSPHRASE,
            "wrong-passphrase-sentinel-91c2",
            s3.secret_key.as_str(),
            "wrong-secret-sentinel-4b7e",
        ] {
            assert!(!all.contains(secret), "a secret in the output:\n{all}");
        }
    }
    // The failures did fail, so their messages were among what was searched.
    for (index, code) in [(4, exit::WRONG_PASSPHRASE), (5, exit::STORAGE)] {
        assert_eq!(
            outputs[index].status.code(),
            Some(code.into()),
            "{}",
            String::from_utf8_lossy(&outputs[index].stderr)
        );
    }
    // The logs were on: create-backup's info line is there.
    let create_log = String::from_utf8_lossy(&outputs[0].stderr);
    assert!(create_log.contains("backing up"), "{create_log}");
}
