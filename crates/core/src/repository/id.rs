//! Backup ids: `backup-` and the UTC creation time to the microsecond
//! (`backup-YYYYMMDDHHMMSSffffff`), as the Synapse charm names its backups.
//!
//! This is the one definition of "an object that is a backup": a top-level object whose name
//! parses as a [`BackupId`]. Anything else in the store's prefix (`notes.txt`, `backup-foo`,
//! `backup-2026`) is not a backup, and list, latest, parent, delete and prune all ignore it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};

const PREFIX: &str = "backup-";
/// `YYYYMMDDHHMMSS` and six digits of microseconds.
const STAMP_DIGITS: usize = 20;

/// A valid backup id. Ordering is by creation time (the digits are fixed-width, so the string
/// order is the time order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId {
    name: String,
    created: DateTime<Utc>,
}

/// Why a name is not a backup id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid backup id (backup-YYYYMMDDHHMMSSffffff, as list-backups shows)")]
pub struct NotABackupId {
    pub name: String,
}

impl BackupId {
    /// Parses `name`, accepting the charm's `backup-id=ID` spelling too.
    pub fn parse(name: &str) -> Result<BackupId, NotABackupId> {
        let name = name.strip_prefix("backup-id=").unwrap_or(name);
        let not = || NotABackupId {
            name: name.to_string(),
        };
        let stamp = name.strip_prefix(PREFIX).ok_or_else(not)?;
        if stamp.len() != STAMP_DIGITS || !stamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not());
        }
        let (seconds, micros) = stamp.split_at(14);
        let time = NaiveDateTime::parse_from_str(seconds, "%Y%m%d%H%M%S").map_err(|_| not())?;
        let micros: u32 = micros.parse().map_err(|_| not())?;
        Ok(BackupId {
            name: name.to_string(),
            created: time.and_utc() + chrono::Duration::microseconds(micros.into()),
        })
    }

    /// The id of a backup created at `time`.
    pub fn at(time: DateTime<Utc>) -> BackupId {
        let name = format!("{PREFIX}{}", time.format("%Y%m%d%H%M%S%6f"));
        // The format above always parses back; the time is truncated to the microsecond.
        BackupId::parse(&name).unwrap_or_else(|_| unreachable!("{name} is a backup id"))
    }

    /// The id of a backup created now.
    pub fn now() -> BackupId {
        BackupId::at(Utc::now())
    }

    /// Whether `name` (a top-level object's name) is a backup.
    pub fn is_backup_name(name: &str) -> bool {
        !name.starts_with("backup-id=") && BackupId::parse(name).is_ok()
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// When the backup was created, as its id says.
    pub fn created(&self) -> DateTime<Utc> {
        self.created
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// As its name: the JSON documents and the manifest spell ids as strings.
impl serde::Serialize for BackupId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

/// Only a name that parses: a journal or marker naming anything else is refused when read.
impl<'de> serde::Deserialize<'de> for BackupId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        BackupId::parse(&name).map_err(serde::de::Error::custom)
    }
}

impl FromStr for BackupId {
    type Err = NotABackupId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackupId::parse(s)
    }
}

impl AsRef<str> for BackupId {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl PartialEq<str> for BackupId {
    fn eq(&self, other: &str) -> bool {
        self.name == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_creation_time() {
        let id = BackupId::parse("backup-20261126071112123456").unwrap();
        assert_eq!(
            id.created().to_rfc3339(),
            "2026-11-26T07:11:12.123456+00:00"
        );
        assert_eq!(id.to_string(), "backup-20261126071112123456");
        assert_eq!(BackupId::at(id.created()), id);
    }

    #[test]
    fn the_charm_spelling_is_accepted() {
        let id = BackupId::parse("backup-id=backup-20261126071112123456").unwrap();
        assert_eq!(id.as_str(), "backup-20261126071112123456");
        // But an object so named is not a backup.
        assert!(!BackupId::is_backup_name(
            "backup-id=backup-20261126071112123456"
        ));
    }

    #[test]
    fn names_that_only_look_like_backups_are_not_backups() {
        for name in [
            "notes.txt",
            "backup-foo",
            "backup-2026",
            "backup-20261326071112123456",
            "backup-202611260711121234567",
            "backup-2026112607111212345x",
            "Backup-20261126071112123456",
            "backup-20261126071112123456.partial",
            "",
        ] {
            assert!(BackupId::parse(name).is_err(), "{name:?}");
            assert!(!BackupId::is_backup_name(name), "{name:?}");
        }
        let err = BackupId::parse("backup-foo").unwrap_err();
        assert!(err.to_string().contains("\"backup-foo\""), "{err}");
    }

    #[test]
    fn ids_order_by_time() {
        let older = BackupId::parse("backup-20261126071112123456").unwrap();
        let newer = BackupId::parse("backup-20261126071112123457").unwrap();
        assert!(older < newer);
        assert!(BackupId::now() > newer);
    }
}
