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
    let drill = world.restore_drill(&id, "restore-backup");
    assert_eq!(
        tree_hashes(&drill.join("media/local_content")),
        tree_hashes(&world.data.join("media_store/local_content"))
    );

    assert_success(&world.run(&["delete-backup", &id]), "delete-backup");
    assert_fails(&world.run(&["delete-backup", &id]), 3, "not found");
    assert_no_backups(&world);
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

/// A self-signed HTTPS endpoint (a TLS proxy in front of the test server) fails without
/// `tls-ca-chain` and works with it.
#[test]
fn private_tls_endpoints_need_their_ca() {
    let Some(s3) = S3Env::from_env() else { return };
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
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut proxy = std::process::Command::new("python3")
        .arg(repo_root().join("crates/cli/tests/fixtures/tls_proxy.py"))
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
    let stderr = assert_fails(&out, 7, "127.0.0.1");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    let with_ca = config.replace(
        "[s3]\n",
        &format!("[s3]\ntls-ca-chain = \"{}\"\n", ca.display()),
    );
    fs::write(&world.config, with_ca).unwrap();
    let id = world.create_backup();
    assert_success(&world.run(&["verify-backup", &id]), "verify over TLS");
}
