//! A physical backup's database for the drill: the data directory the restore laid in the
//! scratch folder (`restored/postgres`, set to recover from the store to the backup's restore
//! point, archiving off), started as a private server that listens on a socket folder inside the
//! scratch folder only (no TCP), with an hba of its own, then awaited until it has promoted.
//! Stopped again when the drill ends; a killed drill's is stopped by the next one
//! (`host::drills`, from the pid file in its data directory).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::super::restore::wait_until_promoted;
use crate::database::postgres::Postgres;
use crate::error::{Error, IoContext, Result};
use crate::progress::Cancel;
use crate::synapse::PostgresArgs;

/// The restored data directory, running.
pub struct RecoveredCluster {
    data: PathBuf,
    pg_ctl: PathBuf,
    /// The user the server runs as when this tool is root (the data directory's owner).
    run_as: Option<String>,
    log: PathBuf,
    /// A short link to the socket folder, when its own path is too long for a socket.
    short_link: Option<PathBuf>,
}

/// A Unix socket's path must fit in 108 bytes; PostgreSQL's socket file name takes ~20.
const SOCKET_FOLDER_MAX: usize = 80;

impl RecoveredCluster {
    /// Starts the server on `data` (laid by the restore) and waits until it has promoted.
    /// `restored` are the connection settings of the restored homeserver.yaml (user and
    /// database); the result has the socket folder and port of the private server instead.
    pub async fn start(
        scratch: &Path,
        data: &Path,
        restored: &PostgresArgs,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<(RecoveredCluster, PostgresArgs)> {
        let owner = fs::metadata(data).at("stat", data)?;
        let run_as = server_user(owner.uid())?;
        if run_as.is_some() {
            // The server user must reach its data directory and socket folder, which lie in
            // folders of root's that hold plaintext keys: traverse only, and only its group.
            for folder in data.ancestors().skip(1) {
                if folder == scratch.parent().unwrap_or(scratch) {
                    break;
                }
                give_group_passage(folder, owner.gid())?;
            }
        }
        let socket = scratch.join("pg-socket");
        fs::create_dir(&socket).at("create", &socket)?;
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o700)).at("chmod", &socket)?;
        std::os::unix::fs::chown(&socket, Some(owner.uid()), Some(owner.gid()))
            .at("chown", &socket)?;
        // A scratch folder deep in the tree makes the socket's path too long: PostgreSQL is
        // then given a short link in the system's temp folder to the same socket folder.
        let short_link = (socket.as_os_str().len() > SOCKET_FOLDER_MAX)
            .then(|| short_link_to(&socket))
            .transpose()?;
        let socket_path = short_link.clone().unwrap_or(socket);
        let port = crate::synapse::launch::free_loopback_port()?;
        write_private_settings(data, &socket_path, port)?;
        let cluster = RecoveredCluster {
            data: data.to_path_buf(),
            pg_ctl: pg_ctl_for(data),
            run_as,
            log: scratch.join("postgres.log"),
            short_link,
        };
        let log = fs::File::create(&cluster.log).at("create", &cluster.log)?;
        std::os::unix::fs::chown(&cluster.log, Some(owner.uid()), Some(owner.gid()))
            .at("chown", &cluster.log)?;
        drop(log);
        let mut args = restored.clone();
        args.host = Some(socket_path.display().to_string());
        args.port = Some(port);
        cluster.pg_ctl_run(&[
            "-D",
            &data.display().to_string(),
            "-l",
            &cluster.log.display().to_string(),
            "-w",
            "-t",
            &timeout.as_secs().max(1).to_string(),
            "start",
        ])?;
        let promoted = wait_until_promoted(&Postgres::new(&args), data, timeout, cancel).await;
        if let Err(e) = promoted {
            cluster.stop();
            return Err(Error::Other(format!("{e}; {}", cluster.log_tail())));
        }
        Ok((cluster, args))
    }

    /// Stops the server (fast: the drill's database is thrown away or kept as it is).
    pub fn stop(&self) {
        let data = self.data.display().to_string();
        if let Err(e) = self.pg_ctl_run(&["-D", &data, "-m", "fast", "-w", "stop"]) {
            tracing::warn!("stopping the drill's PostgreSQL on {data}: {e}");
        }
        if let Some(link) = &self.short_link {
            let _ = fs::remove_file(link);
        }
    }

    /// How to start it again on a kept drill folder.
    pub fn start_command(&self) -> String {
        let runner = match &self.run_as {
            Some(user) => format!("runuser -u {user} -- "),
            None => String::new(),
        };
        format!(
            "{runner}{} -D {} -l {} start",
            self.pg_ctl.display(),
            self.data.display(),
            self.log.display()
        )
    }

    fn pg_ctl_run(&self, args: &[&str]) -> Result<()> {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&self.pg_ctl);
                c
            }
            None => Command::new(&self.pg_ctl),
        };
        let out = command
            .args(args)
            .output()
            .map_err(|cause| Error::ToolMissing {
                program: "pg_ctl",
                needed_for: "the drill of a physical backup",
                cause,
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Other(format!(
            "pg_ctl {} failed: {}; {}",
            args.last().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim(),
            self.log_tail()
        )))
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        format!("its log ({}) ends: {tail}", self.log.display())
    }
}

/// A new symbolic link `/tmp/sb-drill-<pid>-<nanos>` (root's, in a sticky folder: nobody
/// else can replace it) to `socket`.
fn short_link_to(socket: &Path) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let link = PathBuf::from(format!("/tmp/sb-drill-{}-{nanos}", std::process::id()));
    std::os::unix::fs::symlink(socket, &link).at("link the socket folder as", &link)?;
    Ok(link)
}

/// The server user to run as, when this tool is root (PostgreSQL refuses to run as root).
fn server_user(uid: u32) -> Result<Option<String>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) if uid != 0 => Ok(Some(user.name)),
        _ => Err(Error::config(format!(
            "the restored data directory is owned by uid {uid}, not by a PostgreSQL user (is there a `postgres` user on this host?)"
        ))),
    }
}

/// Lets group `gid` pass through `folder` (0710), keeping its owner.
fn give_group_passage(folder: &Path, gid: u32) -> Result<()> {
    let meta = fs::metadata(folder).at("stat", folder)?;
    std::os::unix::fs::chown(folder, None, Some(gid)).at("chown", folder)?;
    let mode = (meta.mode() & 0o7700) | 0o010;
    fs::set_permissions(folder, fs::Permissions::from_mode(mode)).at("chmod", folder)
}

/// The drill's own block in `postgresql.auto.conf` (the last setting of a name wins): the
/// socket folder only, and an hba that lets local connections in (only root and the server
/// user can reach that folder).
fn write_private_settings(data: &Path, socket: &Path, port: u16) -> Result<()> {
    let hba = data.join("pg_hba.drill.conf");
    fs::write(
        &hba,
        "# synapse-backup drill: the socket folder is private\nlocal all all trust\n",
    )
    .at("write", &hba)?;
    let quote = |p: &Path| p.display().to_string().replace('\'', "''");
    let settings = format!(
        "\n# synapse-backup drill: a private server\nlisten_addresses = ''\nport = {port}\nunix_socket_directories = '{}'\nhba_file = '{}'\n",
        quote(socket),
        quote(&hba)
    );
    let auto_conf = data.join("postgresql.auto.conf");
    fs::OpenOptions::new()
        .append(true)
        .open(&auto_conf)
        .and_then(|mut f| f.write_all(settings.as_bytes()))
        .at("write", &auto_conf)?;
    let owner = fs::metadata(data).at("stat", data)?;
    std::os::unix::fs::chown(&hba, Some(owner.uid()), Some(owner.gid())).at("chown", &hba)
}

/// `pg_ctl` of the data directory's major version (Debian keeps it off PATH), else
/// `pg_config --bindir`'s, else the one on PATH.
fn pg_ctl_for(data: &Path) -> PathBuf {
    let version = fs::read_to_string(data.join("PG_VERSION")).unwrap_or_default();
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{}/bin/pg_ctl", version.trim()));
    if debian.is_file() {
        return debian;
    }
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("pg_ctl"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("pg_ctl"))
}
