//! A private PostgreSQL cluster for the tests of WAL archiving: the installed server's `initdb`
//! and `pg_ctl`, run as the `postgres` user (initdb refuses root), in a folder of the test's,
//! on its own port and socket folder. The machine's own server is never touched.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    log: PathBuf,
}

/// The folder of the installed server's programs (`pg_config --bindir`, else the newest
/// /usr/lib/postgresql/*/bin).
fn server_bin() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// Whether a private cluster can be made here: root (to run as `postgres`), that user, and
/// the server's programs. Otherwise the test is skipped, unless
/// `SYNAPSE_BACKUP_REQUIRE_POSTGRES=1` (as in CI), where it fails.
pub fn available() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let user = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .is_ok_and(|out| out.status.success());
    let bin = server_bin();
    if root && user && bin.is_some() {
        return bin;
    }
    let why = format!(
        "root: {root}, a postgres user: {user}, initdb found: {}",
        bin.is_some()
    );
    if std::env::var("SYNAPSE_BACKUP_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("SYNAPSE_BACKUP_REQUIRE_POSTGRES=1 but no private cluster can be made ({why})");
    }
    eprintln!("no private PostgreSQL cluster can be made ({why}): skipping");
    None
}

/// Gives `path` to the postgres user (a file it must read, a folder it must write).
pub fn give_to_postgres(path: &Path) {
    let out = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .output()
        .expect("chown");
    assert!(out.status.success(), "chown {}: {out:?}", path.display());
}

/// Lets every user pass through `dir` (a test's temp dir is 0700).
pub fn open_folder(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn as_postgres(program: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("runuser")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// `initdb` in `dir/name`, with `settings` appended to postgresql.conf. Not started.
    pub fn init(bin: &Path, dir: &Path, name: &str, settings: &str) -> Cluster {
        let data = dir.join(name);
        let socket_dir = dir.join(format!("{name}-socket"));
        fs::create_dir_all(&socket_dir).unwrap();
        give_to_postgres(&socket_dir);
        fs::create_dir_all(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
        give_to_postgres(&data);
        let out = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
             fsync = off\nwal_level = replica\nmax_wal_senders = 2\n{settings}\n",
            socket_dir.display()
        );
        append(&data.join("postgresql.conf"), &conf);
        Cluster::at(bin, data, socket_dir, port, dir.join(format!("{name}.log")))
    }

    /// A cluster already laid out in `data` (a restored base backup), run on a new port.
    pub fn at(bin: &Path, data: PathBuf, socket_dir: PathBuf, port: u16, log: PathBuf) -> Cluster {
        if !log.exists() {
            fs::write(&log, b"").unwrap();
        }
        give_to_postgres(&log);
        Cluster {
            bin: bin.to_path_buf(),
            data,
            socket_dir,
            port,
            log,
        }
    }

    pub fn start(&self) {
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                self.log.to_str().unwrap(),
                "-w",
                "-t",
                "120",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
    }

    pub fn stop(&self) {
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `sql` in database postgres and returns its unaligned output, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until `sql` returns `expected` (or fails the test after `timeout`).
    pub fn wait_for(&self, sql: &str, expected: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.sql(sql) == expected {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{sql:?} did not become {expected:?} within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A base backup into `dest` over the replication protocol, leaving WAL to the archive.
    pub fn base_backup(&self, dest: &Path) {
        fs::create_dir_all(dest).unwrap();
        fs::set_permissions(dest, fs::Permissions::from_mode(0o700)).unwrap();
        give_to_postgres(dest);
        let out = as_postgres(
            &self.bin.join("pg_basebackup"),
            &[
                "-h",
                self.socket_dir.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-D",
                dest.to_str().unwrap(),
                "-X",
                "none",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Lets the postgres user run the tool with the world's config (archive_command and
/// restore_command run as that user): the config, the passphrase, the store, the S3 secret and
/// a `[backup] temp-dir` of its own. Returns the tool's command line with `--config`.
pub fn share_world_with_postgres(world: &super::World, garage: bool) -> String {
    open_folder(world.dir.path());
    fs::create_dir_all(&world.store).unwrap();
    for path in [&world.config, &world.passphrase_file, &world.store] {
        give_to_postgres(path);
    }
    if garage {
        give_to_postgres(&world.path("s3-secret"));
    }
    let scratch = world.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    give_to_postgres(&scratch);
    let config = fs::read_to_string(&world.config).unwrap().replace(
        "[backup]\n",
        &format!("[backup]\ntemp-dir = \"{}\"\n", scratch.display()),
    );
    fs::write(&world.config, config).unwrap();
    format!(
        "{} --config {}",
        super::binary().display(),
        world.config.display()
    )
}

/// Makes the world's homeserver.yaml use `cluster` as its database.
pub fn point_homeserver_at(world: &super::World, cluster: &Cluster) {
    let yaml_path = world.data.join("homeserver.yaml");
    let yaml = fs::read_to_string(&yaml_path).unwrap();
    let start = yaml.find("database:").unwrap();
    let end = yaml[start..].find("log_config").unwrap() + start;
    let database = format!(
        "database:\n  name: psycopg2\n  args:\n    user: postgres\n    dbname: postgres\n    host: {}\n    port: {}\n",
        cluster.socket_dir.display(),
        cluster.port
    );
    fs::write(
        &yaml_path,
        format!("{}{database}{}", &yaml[..start], &yaml[end..]),
    )
    .unwrap();
}

/// A port no one listens on now.
pub fn unused_port() -> u16 {
    free_port()
}
