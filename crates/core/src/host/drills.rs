//! A drill's footprint on this host: its work dir, the names of its database and config, and
//! what a drill killed part-way leaves, and its cleaning. The drill's scratch folder holds a
//! marker (`drill.json`) naming the backup, the Synapse it started and the throwaway database.
//! The next drill, `check`, create-backup, verify-backup or restore-backup stops that Synapse
//! (only if it still runs on this folder's config), drops that database (only a
//! `synapse_drill_` one) and removes the folder, naming each: the folder holds plaintext.

use std::path::Path;

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use crate::config::Config;
use crate::database::postgres::Postgres;
use crate::error::{Error, Result};
use crate::manifest::Header;
use crate::synapse::launch::stop_leftover;
use crate::synapse::{Database, HomeserverConfig, PostgresArgs};

use super::scratch::{abandoned_in, describe_age, scratch_parent, DRILL_MARKER};

/// Every drill database is named so; nothing else is ever dropped by a drill.
pub const DRILL_DATABASE_PREFIX: &str = "synapse_drill_";
/// The drill's config file in its scratch folder.
pub const DRILL_CONFIG: &str = "homeserver-drill.yaml";

/// `[drill] work-dir`, else `[backup] temp-dir`, else the system's.
pub fn work_dir(config: &Config) -> PathBuf {
    config
        .drill
        .work_dir
        .clone()
        .unwrap_or_else(|| scratch_parent(config))
}

/// The server a drill's PostgreSQL database is made on: `[drill] postgres`, else the live
/// homeserver.yaml's connection, else the backup's own config's.
pub fn drill_server(
    configured: Option<&str>,
    live: Option<&HomeserverConfig>,
    restored: Option<&PostgresArgs>,
) -> Result<PostgresArgs> {
    if let Some(conninfo) = configured {
        return PostgresArgs::from_conninfo(conninfo)
            .map_err(|e| Error::config(format!("[drill] postgres: {e}")));
    }
    if let Some(Database::Postgres(args)) = live.map(|hs| &hs.database) {
        return Ok(args.clone());
    }
    restored.cloned().ok_or_else(|| {
        Error::config("the backup's database is PostgreSQL but no server is known to drill it on: set [drill] postgres (a libpq connection string)")
    })
}

/// The name of this drill's database for backup `id`: the id's digits and this process's
/// pid, so that two drills at once (the timer's and an admin's) never share one.
pub fn drill_database_name(id: &str) -> String {
    let digits: String = id.chars().filter(char::is_ascii_digit).collect();
    format!("{DRILL_DATABASE_PREFIX}{digits}_{}", std::process::id())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub backup_id: String,
    pub server_name: String,
    pub synapse_pid: Option<i32>,
    pub database: Option<String>,
    /// A physical backup's recovered data directory, whose server may be running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_data: Option<PathBuf>,
}

impl Marker {
    pub fn new(id: &str, header: &Header) -> Marker {
        Marker {
            backup_id: id.to_string(),
            server_name: header.server_name.clone(),
            synapse_pid: None,
            database: None,
            postgres_data: None,
        }
    }

    /// Written through a temp file, so a kill never leaves half a marker.
    pub fn write(&self, folder: &Path) -> Result<()> {
        let text = serde_json::to_string(self)
            .map_err(|e| Error::Other(format!("cannot encode the drill marker: {e}")))?;
        let temp = folder.join(".drill.json.tmp");
        let path = folder.join(DRILL_MARKER);
        std::fs::write(&temp, text).map_err(|e| Error::io("write", &temp, e))?;
        std::fs::rename(&temp, &path).map_err(|e| Error::io("rename into place", &path, e))
    }
}

/// Cleans every drill folder in the work dir whose drill is gone; returns what it did, one
/// line each (never fails: what cannot be cleaned is said).
pub fn clean_leftovers(config: &Config) -> Vec<String> {
    let mut said = Vec::new();
    for leftover in abandoned_in(&work_dir(config)) {
        let marker_path = leftover.path.join(DRILL_MARKER);
        let Ok(text) = std::fs::read_to_string(&marker_path) else {
            continue;
        };
        let marker: Option<Marker> = serde_json::from_str(&text).ok();
        let age = describe_age(leftover.age);
        let mut parts = Vec::new();
        if let Some(pid) = marker.as_ref().and_then(|m| m.synapse_pid) {
            if stop_leftover(pid, &leftover.path.join(DRILL_CONFIG)) {
                parts.push(format!("stopped its Synapse (pid {pid})"));
            }
        }
        if let Some(name) = marker.as_ref().and_then(|m| m.database.clone()) {
            parts.push(drop_leftover_database(config, &name));
        }
        if let Some(data) = marker.as_ref().and_then(|m| m.postgres_data.clone()) {
            if let Some(pid) = stop_leftover_postgres(&data) {
                parts.push(format!("stopped its PostgreSQL (pid {pid})"));
            }
            remove_links_into(Path::new("/tmp"), &leftover.path);
        }
        match std::fs::remove_dir_all(&leftover.path) {
            Ok(()) => parts.push("removed the folder".into()),
            Err(e) => parts.push(format!(
                "could not remove the folder ({e}); remove it by hand"
            )),
        }
        let line = format!(
            "a drill killed {age} ago left {}: {}",
            leftover.path.display(),
            parts.join(", ")
        );
        tracing::warn!("{line}");
        said.push(line);
    }
    said
}

/// Removes the short links a drill's server was given to its socket folder (`sb-drill-*` in
/// `temp`) that point into `folder`.
fn remove_links_into(temp: &Path, folder: &Path) {
    for entry in std::fs::read_dir(temp).into_iter().flatten().flatten() {
        let is_ours = entry.file_name().to_string_lossy().starts_with("sb-drill-");
        let target = std::fs::read_link(entry.path());
        if is_ours && target.is_ok_and(|t| t.starts_with(folder)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Stops the server running on `data` (a killed drill's): the pid in its `postmaster.pid`, only
/// when that process runs in `data`; immediate shutdown, the data is thrown away.
fn stop_leftover_postgres(data: &Path) -> Option<i32> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    if std::fs::canonicalize(data).ok()? != cwd {
        return None;
    }
    kill(Pid::from_raw(pid), Signal::SIGQUIT).ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while kill(Pid::from_raw(pid), None).is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Some(pid)
}

fn drop_leftover_database(config: &Config, name: &str) -> String {
    if !name.starts_with(DRILL_DATABASE_PREFIX) {
        return format!("left the database {name} alone (not a drill's)");
    }
    let live = HomeserverConfig::load(&config.synapse).ok();
    match drill_server(config.drill.postgres.as_deref(), live.as_ref(), None) {
        Ok(server) => match Postgres::new(&server).drop_database(name) {
            Ok(()) => format!("dropped its database {name}"),
            Err(e) => format!("could not drop its database {name} ({e}); drop it by hand"),
        },
        Err(_) => {
            format!("its database {name} is on a server not configured here; drop it by hand")
        }
    }
}
