//! PostgreSQL's physical side: a base backup streamed by `pg_basebackup` over the replication
//! protocol, named restore points, and what a physical backup records of both, so that its
//! header alone names every object a restore needs.

use std::io::Read;
use std::process::{Child, ChildStdout, Stdio};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{DatabaseTool, Error, Result};

use super::postgres::{missing_program, stderr_of, Postgres};
use super::wal_names::WalFileName;

/// What a physical backup's header records (`database.physical`): the base it restores from
/// and the restore point it recovers to; the WAL from `start_wal` to `end_wal` lies between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalInfo {
    /// The base object, `wal/base-<id of the backup that took it>`.
    pub base: String,
    pub base_object_bytes: u64,
    /// When the base was taken.
    pub base_taken: DateTime<Utc>,
    /// The timeline of the base and of the restore point (a base is shared only on its own).
    pub timeline: u32,
    /// The segment the base's recovery starts in (its backup_label's START WAL LOCATION).
    pub start_wal: String,
    /// The restore point's name: the backup id.
    pub restore_point: String,
    pub restore_point_lsn: String,
    /// The segment holding the restore point: the last one a restore needs.
    pub end_wal: String,
    pub segment_bytes: u64,
    /// The server's clock at the restore point.
    pub at: DateTime<Utc>,
}

impl PhysicalInfo {
    /// Every WAL segment from `start_wal` to `end_wal`, in order. Errors name what is wrong
    /// with the header rather than looping on it.
    pub fn needed_segments(&self) -> std::result::Result<Vec<WalFileName>, String> {
        let start = WalFileName::parse(&self.start_wal)?;
        let end = WalFileName::parse(&self.end_wal)?;
        if start.timeline() != end.timeline() || start.as_str() > end.as_str() {
            return Err(format!(
                "the WAL span {} .. {} is not one timeline in order",
                self.start_wal, self.end_wal
            ));
        }
        let mut segments = vec![start];
        while let Some(last) = segments.last().filter(|s| s.as_str() < end.as_str()) {
            let next = last.next_segment(self.segment_bytes).ok_or_else(|| {
                format!(
                    "no segment follows {last} with {} B segments",
                    self.segment_bytes
                )
            })?;
            segments.push(next);
        }
        Ok(segments)
    }
}

/// Where a physical restore's recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// A backup's named restore point.
    RestorePoint(String),
    /// A moment (`restore-backup --to-time`): transactions committed until then, inclusive.
    Time(DateTime<Utc>),
}

impl RecoveryTarget {
    /// The `recovery_target_*` line of postgresql.auto.conf.
    pub fn setting(&self) -> String {
        match self {
            RecoveryTarget::RestorePoint(name) => {
                format!("recovery_target_name = '{}'", name.replace('\'', "''"))
            }
            RecoveryTarget::Time(at) => format!(
                "recovery_target_time = '{}'",
                at.format("%Y-%m-%d %H:%M:%S%.6f+00")
            ),
        }
    }

    /// For messages: `restore point backup-…` or `2026-12-07T10:00:00+00:00`.
    pub fn describe(&self) -> String {
        match self {
            RecoveryTarget::RestorePoint(name) => format!("restore point {name}"),
            RecoveryTarget::Time(at) => at.to_rfc3339(),
        }
    }
}

/// A restore point just created, and the segment it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePoint {
    pub lsn: String,
    pub wal: WalFileName,
    pub at: DateTime<Utc>,
}

impl Postgres {
    /// The server's WAL segment size in bytes.
    pub fn segment_bytes(&self) -> Result<u64> {
        let text = self.rows("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?;
        text.parse().map_err(|_| {
            Error::database(
                DatabaseTool::Psql,
                format!(
                    "unexpected wal_segment_size {text:?} from {}",
                    self.describe()
                ),
            )
        })
    }

    /// `pg_create_restore_point(name)`, then `pg_switch_wal()` so the segment holding it is
    /// finished and handed to the archiver now.
    pub fn create_restore_point(&self, name: &str) -> Result<RestorePoint> {
        let sql = format!(
            "SELECT lsn, pg_walfile_name(lsn), \
             to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM pg_create_restore_point('{}') AS lsn",
            name.replace('\'', "''")
        );
        let row = self.rows(&sql)?;
        let unexpected = || {
            Error::database(
                DatabaseTool::Psql,
                format!(
                    "unexpected answer to pg_create_restore_point from {}: {row:?}",
                    self.describe()
                ),
            )
        };
        let fields: Vec<&str> = row.split('\t').collect();
        let [lsn, wal, at] = fields.as_slice() else {
            return Err(unexpected());
        };
        let point = RestorePoint {
            lsn: lsn.to_string(),
            wal: WalFileName::parse(wal).map_err(|_| unexpected())?,
            at: DateTime::parse_from_rfc3339(at)
                .map_err(|_| unexpected())?
                .with_timezone(&Utc),
        };
        self.rows("SELECT pg_switch_wal()")?;
        Ok(point)
    }

    /// Starts `pg_basebackup -D - -Ft -X none -c fast`: one tar of the data directory on
    /// stdout, the WAL left to the archive (pg_basebackup waits until the archiver has stored
    /// the backup's last segment).
    pub fn start_base_backup(&self) -> Result<BaseBackupProcess> {
        let mut child = self
            .command("pg_basebackup")
            .args([
                "-D",
                "-",
                "-F",
                "t",
                "-X",
                "none",
                "-c",
                "fast",
                "--no-password",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| missing_program(DatabaseTool::PgBasebackup, e))?;
        let stdout = child.stdout.take().ok_or_else(|| {
            Error::database(DatabaseTool::PgBasebackup, "pg_basebackup has no stdout")
        })?;
        Ok(BaseBackupProcess {
            child,
            stdout,
            head: Vec::new(),
            describe: self.describe(),
        })
    }
}

/// A running pg_basebackup. Keeps the first bytes of its tar, where the server puts
/// `backup_label`, which says where recovery must start.
pub struct BaseBackupProcess {
    child: Child,
    stdout: ChildStdout,
    head: Vec<u8>,
    describe: String,
}

const HEAD_KEPT: usize = 64 << 10;

impl Read for BaseBackupProcess {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        let room = HEAD_KEPT.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

/// Where the base's recovery starts: `backup_label`'s START WAL LOCATION segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseStart {
    pub start_wal: WalFileName,
}

impl BaseBackupProcess {
    /// Stops pg_basebackup (the backup failed on this side).
    pub fn abort(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for pg_basebackup; its own words on failure. On success, the base's start.
    pub fn finish(mut self) -> Result<BaseStart> {
        let status = self.child.wait().map_err(|e| {
            Error::database(
                DatabaseTool::PgBasebackup,
                format!("waiting for pg_basebackup: {e}"),
            )
        })?;
        if !status.success() {
            return Err(Error::database(
                DatabaseTool::PgBasebackup,
                format!(
                    "pg_basebackup of {} failed ({status}): {}; it needs a role with REPLICATION, a replication line in pg_hba.conf, and a single tablespace",
                    self.describe,
                    stderr_of(&mut self.child)
                ),
            ));
        }
        let label = backup_label(&self.head).ok_or_else(|| {
            Error::database(
                DatabaseTool::PgBasebackup,
                format!(
                    "pg_basebackup of {}: no backup_label at the start of its tar",
                    self.describe
                ),
            )
        })?;
        parse_start_wal(&label)
            .map(|start_wal| BaseStart { start_wal })
            .ok_or_else(|| {
                Error::database(
                    DatabaseTool::PgBasebackup,
                    format!(
                        "pg_basebackup of {}: backup_label has no START WAL LOCATION: {label:?}",
                        self.describe
                    ),
                )
            })
    }
}

/// The text of the `backup_label` member among the tar's first bytes.
fn backup_label(head: &[u8]) -> Option<String> {
    let mut archive = tar::Archive::new(head);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        let is_label = entry.path().ok()?.as_os_str() == "backup_label";
        if is_label {
            let mut text = String::new();
            entry.read_to_string(&mut text).ok()?;
            return Some(text);
        }
    }
    None
}

/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)` → the file.
fn parse_start_wal(label: &str) -> Option<WalFileName> {
    let line = label
        .lines()
        .find(|l| l.starts_with("START WAL LOCATION:"))?;
    let file = line.split("(file ").nth(1)?.trim_end_matches(')').trim();
    WalFileName::parse(file).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_targets_are_written_as_postgresql_reads_them() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T10:43:44.129711Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            RecoveryTarget::Time(at).setting(),
            "recovery_target_time = '2026-12-07 10:43:44.129711+00'"
        );
        assert_eq!(
            RecoveryTarget::RestorePoint("backup-1".into()).setting(),
            "recovery_target_name = 'backup-1'"
        );
    }

    #[test]
    fn the_base_start_is_read_from_backup_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nSTART TIMELINE: 1\n";
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(label.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, "backup_label", label.as_bytes())
            .unwrap();
        let bytes = tar.into_inner().unwrap();
        let found = backup_label(&bytes).unwrap();
        assert_eq!(
            parse_start_wal(&found).unwrap().as_str(),
            "000000010000000000000002"
        );
        assert!(backup_label(&bytes[..100]).is_none());
    }

    #[test]
    fn a_backup_needs_every_segment_of_its_span() {
        let info = PhysicalInfo {
            base: "wal/base-backup-1".into(),
            base_object_bytes: 1,
            base_taken: Utc::now(),
            timeline: 1,
            start_wal: "0000000100000000000000FE".into(),
            restore_point: "backup-1".into(),
            restore_point_lsn: "1/1000090".into(),
            end_wal: "000000010000000100000001".into(),
            segment_bytes: 16 << 20,
            at: Utc::now(),
        };
        let names: Vec<String> = info
            .needed_segments()
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        let backwards = PhysicalInfo {
            end_wal: "0000000100000000000000FD".into(),
            ..info
        };
        assert!(backwards.needed_segments().is_err());
    }
}
