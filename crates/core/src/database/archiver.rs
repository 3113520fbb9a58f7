//! PostgreSQL's WAL archiver as the server reports it (`archive_mode`, `archive_command`,
//! `pg_stat_archiver`), and what `check` makes of it.

use std::path::PathBuf;

use crate::error::{DatabaseTool, Error, Result};

use super::postgres::Postgres;

/// The archiver's settings and counters, as read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiverState {
    pub archive_mode: String,
    pub archive_command: String,
    /// The last file archived, if any.
    pub last_archived: Option<String>,
    /// Seconds since then.
    pub last_archived_age_secs: Option<u64>,
    pub failed_count: u64,
    pub last_failed: Option<String>,
    /// Whether the last attempt failed (a failure newer than the last success).
    pub failing: bool,
}

/// What `check` says of the archiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiverVerdict {
    /// Archiving is off: the nightly pg_dump is the database's backup.
    Off(String),
    /// On, through this tool, and the last attempt succeeded.
    Healthy(String),
    /// On, but WAL goes to another command than wal-push.
    Elsewhere(String),
    /// On through wal-push, and failing: PostgreSQL keeps the WAL until it succeeds.
    Failing(String),
}

const QUERY: &str = "SELECT current_setting('archive_mode'), current_setting('archive_command'), \
     coalesce(last_archived_wal, ''), \
     coalesce(floor(extract(epoch FROM now() - last_archived_time))::bigint::text, ''), \
     failed_count, coalesce(last_failed_wal, ''), \
     (last_failed_time IS NOT NULL AND (last_archived_time IS NULL OR last_failed_time > last_archived_time)) \
     FROM pg_stat_archiver";

impl ArchiverState {
    pub fn read(postgres: &Postgres) -> Result<ArchiverState> {
        let row = postgres.rows(QUERY)?;
        Self::parse(&row).ok_or_else(|| {
            Error::database(
                DatabaseTool::Psql,
                format!(
                    "unexpected answer about the WAL archiver from {}: {row:?}",
                    postgres.describe()
                ),
            )
        })
    }

    fn parse(row: &str) -> Option<ArchiverState> {
        let fields: Vec<&str> = row.split('\t').collect();
        let [mode, command, archived, age, failed, last_failed, failing] = fields.as_slice() else {
            return None;
        };
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Some(ArchiverState {
            archive_mode: mode.to_string(),
            archive_command: command.to_string(),
            last_archived: some(archived),
            last_archived_age_secs: age.parse().ok(),
            failed_count: failed.parse().ok()?,
            last_failed: some(last_failed),
            failing: *failing == "t",
        })
    }

    /// The configuration file archive_command's wal-push is given (`--config FILE` or
    /// `--config=FILE`), if it names one; without, wal-push reads its default.
    pub fn wal_push_config(&self) -> Option<PathBuf> {
        let mut words = self.archive_command.split_whitespace();
        while let Some(word) = words.next() {
            if word == "--config" {
                return words
                    .next()
                    .map(|w| PathBuf::from(w.trim_matches(['\'', '"'])));
            }
            if let Some(path) = word.strip_prefix("--config=") {
                return Some(PathBuf::from(path.trim_matches(['\'', '"'])));
            }
        }
        None
    }

    pub fn verdict(&self) -> ArchiverVerdict {
        if self.archive_mode == "off" {
            return ArchiverVerdict::Off(
                "archive_mode is off: the database is backed up by create-backup's pg_dump alone"
                    .to_string(),
            );
        }
        if !self.archive_command.contains("wal-push") {
            return ArchiverVerdict::Elsewhere(format!(
                "archive_mode is {} and archive_command ({:?}) does not call synapse-backup wal-push: this tool does not hold the WAL",
                self.archive_mode, self.archive_command
            ));
        }
        let last = match (&self.last_archived, self.last_archived_age_secs) {
            (Some(file), Some(age)) => format!("last archived {file}, {age} s ago"),
            _ => "nothing archived yet".to_string(),
        };
        if self.failing {
            return ArchiverVerdict::Failing(format!(
                "WAL archiving through wal-push is failing: {} failed attempts, the last on {} ({last}); PostgreSQL keeps every WAL file in pg_wal until it succeeds, so its disk fills: read the server's log for wal-push's error",
                self.failed_count,
                self.last_failed.as_deref().unwrap_or("?")
            ));
        }
        ArchiverVerdict::Healthy(format!("through wal-push, {last}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(row: &str) -> ArchiverState {
        ArchiverState::parse(row).unwrap()
    }

    #[test]
    fn the_archiver_is_judged_by_its_settings_and_last_attempt() {
        let off = state("off\t(disabled)\t\t\t0\t\tf");
        assert!(matches!(off.verdict(), ArchiverVerdict::Off(_)));
        let elsewhere = state("on\tcp %p /mnt/%f\t000000010000000000000003\t12\t0\t\tf");
        assert!(matches!(elsewhere.verdict(), ArchiverVerdict::Elsewhere(_)));
        let healthy = state(
            "on\tsynapse-backup --config /etc/x wal-push %p\t000000010000000000000003\t12\t2\t000000010000000000000002\tf",
        );
        match healthy.verdict() {
            ArchiverVerdict::Healthy(detail) => {
                assert!(
                    detail.contains("000000010000000000000003, 12 s ago"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
        let failing = state(
            "on\tsynapse-backup --config /etc/x wal-push %p\t000000010000000000000003\t600\t7\t000000010000000000000004\tt",
        );
        match failing.verdict() {
            ArchiverVerdict::Failing(detail) => {
                assert!(detail.contains("7 failed attempts"), "{detail}");
                assert!(detail.contains("000000010000000000000004"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(ArchiverState::parse("on\tx").is_none());
        assert_eq!(healthy.wal_push_config(), Some(PathBuf::from("/etc/x")));
        let quoted =
            state("on\t/usr/bin/synapse-backup --config='/etc/s b.toml' wal-push %p\t\t\t0\t\tf");
        assert_eq!(quoted.wal_push_config(), Some(PathBuf::from("/etc/s")));
        let bare = state("on\tsynapse-backup wal-push %p\t\t\t0\t\tf");
        assert_eq!(bare.wal_push_config(), None);
    }
}
