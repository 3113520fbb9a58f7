//! Monitoring: the node_exporter textfile (parsed by a real node_exporter) and the
//! Healthchecks-style pings (recorded by a small HTTP server here); neither fails a backup.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use crate::exit;

/// An HTTP server that answers 200 to everything and records `METHOD PATH` and the body.
struct PingServer {
    url: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl PingServer {
    fn start() -> PingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/ping/abc", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(request) = read_request(stream) {
                    record.lock().unwrap().push(request);
                }
            }
        });
        PingServer { url, seen }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// What it has seen once it has seen `n` requests (or after 30 s): a ping is recorded
    /// after it is answered, so the tool may have exited before its last one is in the list.
    fn seen_at_least(&self, n: usize) -> Vec<(String, String)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.seen().len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.seen()
    }
}

fn read_request(mut stream: TcpStream) -> Option<(String, String)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let request = line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
        .ok()?;
    Some((request, String::from_utf8_lossy(&body).into_owned()))
}

fn monitored_world(ping_url: &str, textfile_dir: &Path) -> World {
    let extra = format!(
        "[monitoring]\nping-url = \"{ping_url}\"\ntextfile-dir = \"{}\"\nping-timeout-secs = 2\n",
        textfile_dir.display()
    );
    World::with(WorldOptions {
        extra_config: &extra,
        ..Default::default()
    })
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("synapse_backup_{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn pings_and_textfile_tell_success_and_failure() {
    let server = PingServer::start();
    let textfiles = tempfile::tempdir().unwrap();
    let world = monitored_world(&server.url, textfiles.path());
    world.create_backup();
    let prom = textfiles.path().join("synapse_backup_create_backup.prom");
    let text = fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("command=\"create-backup\",server_name=\"example.test\""),
        "{text}"
    );
    let success = metric(&text, "last_success_timestamp_seconds").unwrap();
    assert_eq!(metric(&text, "last_exit_code"), Some(0.0));
    assert!(metric(&text, "last_files").unwrap() > 0.0);
    assert!(metric(&text, "last_size_bytes").unwrap() > 0.0);
    let seen = server.seen_at_least(2);
    assert_eq!(
        seen.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["POST /ping/abc/start", "POST /ping/abc"],
        "{seen:?}"
    );

    // A failing backup: /fail with the error (never a secret), and the last success kept.
    std::thread::sleep(Duration::from_millis(1100));
    let media = world.data.join("media_store");
    fs::rename(&media, world.path("media-elsewhere")).unwrap();
    assert_fails(
        &world.run(&["create-backup"]),
        exit::CONFIG,
        &["media store"],
    );
    let text = fs::read_to_string(&prom).unwrap();
    assert_eq!(
        metric(&text, "last_exit_code"),
        Some(f64::from(exit::CONFIG))
    );
    assert_eq!(
        metric(&text, "last_success_timestamp_seconds"),
        Some(success)
    );
    assert!(metric(&text, "last_attempt_timestamp_seconds").unwrap() > success);
    let seen = server.seen_at_least(4);
    let (request, body) = seen.last().unwrap();
    assert_eq!(request, "POST /ping/abc/fail");
    assert!(
        body.contains("media store") && body.contains("exit 2"),
        "{body}"
    );
    assert!(!body.contains(PASSPHRASE));
}

#[test]
fn an_unreachable_monitor_never_fails_the_backup() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ping", closed.local_addr().unwrap());
    drop(closed);
    let textfiles = tempfile::tempdir().unwrap();
    let world = monitored_world(&url, &textfiles.path().join("no-such-folder"));
    let out = world.run(&["create-backup"]);
    assert_success(&out, "create-backup with an unreachable monitor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("monitoring ping"), "{stderr}");
    assert!(
        stderr.contains("monitoring textfile not written"),
        "{stderr}"
    );
}

/// The real node_exporter's textfile collector parses what we write.
#[test]
fn node_exporter_reads_the_textfile() {
    let binary = ["prometheus-node-exporter", "node_exporter"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        });
    let Some(binary) = binary else {
        if std::env::var("SYNAPSE_BACKUP_REQUIRE_NODE_EXPORTER").as_deref() == Ok("1") {
            panic!("SYNAPSE_BACKUP_REQUIRE_NODE_EXPORTER=1 but node_exporter is not installed");
        }
        eprintln!("no node_exporter: skipping");
        return;
    };
    let server = PingServer::start();
    let textfiles = tempfile::tempdir().unwrap();
    let world = monitored_world(&server.url, textfiles.path());
    world.create_backup();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _exporter = Kill(
        std::process::Command::new(binary)
            .args([
                "--collector.disable-defaults",
                "--collector.textfile",
                &format!(
                    "--collector.textfile.directory={}",
                    textfiles.path().display()
                ),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut metrics = String::new();
    for _ in 0..50 {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            stream.read_to_string(&mut metrics).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        metrics.contains("node_textfile_scrape_error 0"),
        "node_exporter could not parse the file: {metrics}"
    );
    assert!(
        metrics.contains(
            "synapse_backup_last_success_timestamp_seconds{command=\"create-backup\",server_name=\"example.test\"}"
        ),
        "{metrics}"
    );
}

/// wal-push runs for every WAL file: its textfile says when archiving last succeeded, and it
/// never pings (a ping per file would drown the check).
#[test]
fn wal_push_writes_the_archive_time_and_never_pings() {
    let server = PingServer::start();
    let textfiles = tempfile::tempdir().unwrap();
    let world = monitored_world(&server.url, textfiles.path());
    let pgdata = world.path("pgdata");
    fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
    fs::write(
        pgdata.join("pg_wal/000000010000000000000001"),
        vec![7u8; 65536],
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .current_dir(&pgdata)
        .arg("--config")
        .arg(&world.config)
        .args(["wal-push", "pg_wal/000000010000000000000001"])
        .output()
        .unwrap();
    assert_success(&out, "wal-push");
    let text = fs::read_to_string(textfiles.path().join("synapse_backup_wal_push.prom")).unwrap();
    assert_eq!(metric(&text, "last_exit_code"), Some(0.0), "{text}");
    let archived = metric(&text, "last_wal_archived_timestamp_seconds").unwrap();
    assert_eq!(
        metric(&text, "last_success_timestamp_seconds"),
        Some(archived)
    );
    // The next pings the server sees are create-backup's own: wal-push sent none before them.
    world.create_backup();
    let seen = server.seen_at_least(2);
    assert_eq!(
        seen.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["POST /ping/abc/start", "POST /ping/abc"],
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|(_, body)| !body.contains("wal-push")),
        "{seen:?}"
    );
}
