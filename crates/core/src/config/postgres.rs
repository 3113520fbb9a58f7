//! `[postgres]`: how a PostgreSQL database is backed up. `mode = "logical"` (the default) is
//! the nightly `pg_dump`; `mode = "physical"` is base backups over the replication protocol plus
//! the WAL that `wal-push` archives, so that a backup restores to its own restore point.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPostgres {
    mode: Option<String>,
    connection: Option<String>,
    base_backup_every: Option<String>,
    archive_timeout_secs: Option<u64>,
    data_dir: Option<PathBuf>,
    stop_command: Option<String>,
    start_command: Option<String>,
    recovery_timeout_secs: Option<u64>,
}

/// How the database part of a backup is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatabaseMode {
    /// `pg_dump` into every backup.
    #[default]
    Logical,
    /// A base backup now and then, a restore point in every backup, the WAL archived between.
    Physical,
}

/// `[postgres]`, validated.
#[derive(Clone)]
pub struct PostgresSettings {
    pub mode: DatabaseMode,
    /// A libpq key/value string laid over homeserver.yaml's database args for the physical
    /// mode's connections (a role with REPLICATION, allowed to call pg_create_restore_point);
    /// parsed where it is used (`commands::backup::physical`), like `[drill] postgres`.
    pub connection: Option<String>,
    /// A physical backup takes a new base when the newest is older than this.
    pub base_backup_every: Duration,
    /// How long create-backup waits for the archiver to store the segment of its restore
    /// point.
    pub archive_timeout: Duration,
    /// The server's data directory, which a physical restore in place moves aside and lays anew.
    pub data_dir: Option<PathBuf>,
    /// How a physical restore in place stops and starts PostgreSQL.
    pub stop_command: Option<String>,
    pub start_command: Option<String>,
    /// How long the restored server may take to replay the WAL and promote.
    pub recovery_timeout: Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            mode: DatabaseMode::Logical,
            connection: None,
            base_backup_every: Duration::from_secs(7 * 86_400),
            archive_timeout: Duration::from_secs(300),
            data_dir: None,
            stop_command: None,
            start_command: None,
            recovery_timeout: Duration::from_secs(3600),
        }
    }
}

// Hand-written: the connection string may carry a password.
impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("mode", &self.mode)
            .field("connection", &self.connection.as_ref().map(|_| "<set>"))
            .field("base_backup_every", &self.base_backup_every)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

pub(super) fn postgres_settings(raw: RawPostgres, base: &Path) -> Result<PostgresSettings> {
    let defaults = PostgresSettings::default();
    let mode = match raw.mode.as_deref() {
        None | Some("logical") => DatabaseMode::Logical,
        Some("physical") => DatabaseMode::Physical,
        Some(other) => {
            return Err(Error::config(format!(
                "[postgres] mode is {other:?}; use \"logical\" (pg_dump in every backup) or \"physical\" (base backups and the WAL archive)"
            )))
        }
    };
    let connection = raw.connection.filter(|c| !c.trim().is_empty());
    let base_backup_every = match raw.base_backup_every.as_deref() {
        None => defaults.base_backup_every,
        Some(text) => parse_interval(text)
            .map_err(|e| Error::config(format!("[postgres] base-backup-every: {e}")))?,
    };
    Ok(PostgresSettings {
        mode,
        connection,
        base_backup_every,
        archive_timeout: raw
            .archive_timeout_secs
            .map(|s| Duration::from_secs(s.clamp(10, 86_400)))
            .unwrap_or(defaults.archive_timeout),
        data_dir: raw.data_dir.map(|p| base.join(p)),
        stop_command: raw.stop_command.filter(|c| !c.trim().is_empty()),
        start_command: raw.start_command.filter(|c| !c.trim().is_empty()),
        recovery_timeout: raw
            .recovery_timeout_secs
            .map(|s| Duration::from_secs(s.clamp(10, 7 * 86_400)))
            .unwrap_or(defaults.recovery_timeout),
    })
}

/// `"7d"`, `"36h"`, `"90m"`, `"2w"`, or plain seconds.
pub fn parse_interval(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"7d\", \"36h\" or \"90m\""))?;
    let unit_secs = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use s, m, h, d or w"
            ))
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(unit_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_as_an_admin_writes_them() {
        assert_eq!(parse_interval("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_interval("36h"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse_interval("90"), Ok(Duration::from_secs(90)));
        assert!(parse_interval("7 days").is_err());
        assert!(parse_interval("d").is_err());
    }

    #[test]
    fn the_mode_is_logical_unless_physical_is_asked_for() {
        let settings = postgres_settings(RawPostgres::default(), Path::new("/")).unwrap();
        assert_eq!(settings.mode, DatabaseMode::Logical);
        let raw = RawPostgres {
            mode: Some("physical".into()),
            connection: Some("user=replicator password=hunter2 host=db".into()),
            base_backup_every: Some("1d".into()),
            ..RawPostgres::default()
        };
        let settings = postgres_settings(raw, Path::new("/")).unwrap();
        assert_eq!(settings.mode, DatabaseMode::Physical);
        assert_eq!(settings.base_backup_every, Duration::from_secs(86_400));
        assert!(!format!("{settings:?}").contains("hunter2"));
        let wrong = RawPostgres {
            mode: Some("wal".into()),
            ..RawPostgres::default()
        };
        let message = postgres_settings(wrong, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"physical\""), "{message}");
    }
}
