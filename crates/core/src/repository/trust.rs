//! Deciding what in a store listing can be trusted, as pure functions (the I/O that feeds them
//! is in `catalog`, `volumes` and `gc` beside this module).
//!
//! - [`split_listing`]: which top-level objects are backups and which are strays.
//! - [`check_header_names`]: a base whose header names another backup (an older base copied
//!   over a newer name: a rollback) is damage, never the backup its name claims.
//! - [`unusable_volumes`]: the volumes a backup names that are missing or not the size it
//!   recorded, so that nothing new refers to them and nothing restores from them unnoticed.

use std::collections::HashMap;

use crate::error::{CorruptKind, Error, Result};
use crate::manifest::{volume_owner, Header, SharedObject};
use crate::store::ObjectInfo;

use super::BackupId;

/// A store's top level, split by name.
#[derive(Debug, Default)]
pub struct Listing {
    /// Objects named like backups, oldest first.
    pub backups: Vec<(BackupId, ObjectInfo)>,
    /// Everything else (`notes.txt`, `backup-foo`): never a backup, never touched.
    pub strays: Vec<ObjectInfo>,
}

/// Splits a top-level listing into backups (by name) and strays.
pub fn split_listing(objects: Vec<ObjectInfo>) -> Listing {
    let mut listing = Listing::default();
    for object in objects {
        match BackupId::parse(&object.name) {
            Ok(id) if BackupId::is_backup_name(&object.name) => listing.backups.push((id, object)),
            _ => listing.strays.push(object),
        }
    }
    listing.backups.sort_by(|a, b| a.0.cmp(&b.0));
    listing.strays.sort_by(|a, b| a.name.cmp(&b.name));
    listing
}

/// Refuses a header stored under `object` that names another backup.
pub fn check_header_names(object: &str, header: &Header) -> Result<()> {
    if header.backup_id == object {
        return Ok(());
    }
    Err(Error::corrupt(
        object,
        CorruptKind::ManifestMismatch,
        format!(
            "the object {object} holds the header of backup {}: it was copied or renamed from another backup (a rollback), so it is not {object}; restore {} under its own name if you want it, and delete {object}",
            header.backup_id, header.backup_id
        ),
    ))
}

/// What is wrong with a volume a backup names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeFault {
    Missing,
    /// The stored object is not the size the backup recorded (truncated, or replaced).
    WrongSize {
        recorded: u64,
        found: u64,
    },
    /// Its name is not a volume's.
    ForeignName,
}

impl std::fmt::Display for VolumeFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeFault::Missing => f.write_str("missing from the store"),
            VolumeFault::WrongSize { recorded, found } => {
                write!(f, "{found} bytes in the store, {recorded} recorded")
            }
            VolumeFault::ForeignName => f.write_str("not named as a media volume or run"),
        }
    }
}

/// The shared objects of `wanted` (volumes or runs, named by one backup's header) that cannot
/// be used, given the sizes of the objects present in the store. Sorted by name.
pub fn unusable_volumes<'a, T: SharedObject + 'a>(
    wanted: impl IntoIterator<Item = &'a T>,
    present: &HashMap<String, u64>,
) -> Vec<(String, VolumeFault)> {
    let mut faults: Vec<(String, VolumeFault)> = wanted
        .into_iter()
        .filter_map(|object| {
            let fault = if !object.owner().is_some_and(BackupId::is_backup_name) {
                VolumeFault::ForeignName
            } else {
                match present.get(object.name()) {
                    None => VolumeFault::Missing,
                    Some(&found) if found != object.object_bytes() => VolumeFault::WrongSize {
                        recorded: object.object_bytes(),
                        found,
                    },
                    Some(_) => return None,
                }
            };
            Some((object.name().to_string(), fault))
        })
        .collect();
    faults.sort_by(|a, b| a.0.cmp(&b.0));
    faults
}

/// Whether `volume` is named as a volume (`volumes/<backup-id>-<nnnn>`). Not whether its owner
/// is older than the backup using it: a host whose clock went back makes such backups
/// legitimately, and the SHA-256 of every file read from a volume is checked anyway.
pub fn is_volume_name(volume: &str) -> bool {
    volume_owner(volume).is_some_and(BackupId::is_backup_name)
}

/// One line naming faulty volumes: `volumes/…-0000 (missing from the store), …`.
pub fn describe_faults(faults: &[(String, VolumeFault)]) -> String {
    faults
        .iter()
        .map(|(name, fault)| format!("{name} ({fault})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::VolumeRef;
    use chrono::Utc;

    fn object(name: &str) -> ObjectInfo {
        ObjectInfo {
            name: name.into(),
            size: 1,
            last_modified: Utc::now(),
        }
    }

    fn volume(name: &str, object_bytes: u64) -> VolumeRef {
        VolumeRef {
            name: name.into(),
            file_bytes: 10,
            used_bytes: 10,
            object_bytes,
        }
    }

    const OLD: &str = "backup-20260101000000000000";
    const NEW: &str = "backup-20260102000000000000";

    #[test]
    fn only_backup_names_are_backups() {
        let listing = split_listing(
            [NEW, "notes.txt", "backup-foo", OLD, "backup-2026"]
                .into_iter()
                .map(object)
                .collect(),
        );
        let backups: Vec<&str> = listing.backups.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(backups, [OLD, NEW]);
        let strays: Vec<&str> = listing.strays.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(strays, ["backup-2026", "backup-foo", "notes.txt"]);
    }

    #[test]
    fn a_header_stored_under_another_name_is_a_rollback() {
        let header: Header = serde_json::from_value(serde_json::json!({
            "format_version": 2,
            "tool": "synapse-backup",
            "tool_version": "0.1.0",
            "backup_id": OLD,
            "server_name": "example.org",
            "created": "2026-01-01T00:00:00Z",
            "database": {"kind": "sqlite", "included": true},
            "include_remote_media": false,
            "expected_bytes": 1,
            "files_member": "manifest-files.json",
        }))
        .unwrap();
        assert!(check_header_names(OLD, &header).is_ok());
        let err = check_header_names(NEW, &header).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Corrupt);
        let message = err.to_string();
        assert!(message.contains(OLD) && message.contains(NEW), "{message}");
    }

    #[test]
    fn missing_resized_and_foreign_volumes_are_named() {
        let present: HashMap<String, u64> = [
            (format!("volumes/{OLD}-0000"), 100),
            (format!("volumes/{OLD}-0001"), 99),
        ]
        .into();
        let wanted = [
            volume(&format!("volumes/{OLD}-0000"), 100),
            volume(&format!("volumes/{OLD}-0001"), 100),
            volume(&format!("volumes/{OLD}-0002"), 100),
            volume(&format!("volumes/{NEW}-0000"), 100),
            volume("volumes/notes", 100),
        ];
        let faults = unusable_volumes(&wanted, &present);
        assert_eq!(
            faults,
            [
                (
                    format!("volumes/{OLD}-0001"),
                    VolumeFault::WrongSize {
                        recorded: 100,
                        found: 99
                    }
                ),
                (format!("volumes/{OLD}-0002"), VolumeFault::Missing),
                (format!("volumes/{NEW}-0000"), VolumeFault::Missing),
                ("volumes/notes".to_string(), VolumeFault::ForeignName),
            ]
        );
        assert!(describe_faults(&faults).contains("99 bytes in the store, 100 recorded"));
        assert!(unusable_volumes(&wanted[..1], &present).is_empty());
    }
}
