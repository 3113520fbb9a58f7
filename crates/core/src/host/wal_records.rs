//! What a wal-push uploaded ahead of PostgreSQL's asking: one small file per WAL file, naming
//! the SHA-256 and the object size it was stored with, in a folder of this user's alone
//! (`<temp-dir>/synapse-backup-wal-pushed-<uid>`, mode 0700).
//!
//! PostgreSQL hands `archive_command` one file at a time. A wal-push also uploads the next
//! files already waiting (their `.ready` marks), in parallel, so the calls that follow find
//! them stored. Such a call must still prove that the stored object holds *this* file (an
//! object of the same name from another cluster must never count): the record lets it compare
//! a hash of the local file instead of downloading the object. A record that is missing,
//! unreadable or different only costs that download; it is never taken as proof on its own,
//! since the object must also still be in the store at the recorded size.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::database::wal_names::WalFileName;
use crate::manifest::Sha256Digest;

/// Records older than this are removed: PostgreSQL asks for a file soon after it is ready.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A WAL file's upload, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushedRecord {
    pub sha256: Sha256Digest,
    pub object_bytes: u64,
}

/// The records folder of this user under `parent`.
pub struct WalRecords {
    dir: Option<PathBuf>,
}

impl WalRecords {
    /// Opens (creating) the folder. A folder that cannot be made, or is not this user's alone,
    /// is not used: every check then downloads, which is slower but as safe.
    pub fn open(parent: &Path) -> WalRecords {
        let uid = nix::unistd::geteuid().as_raw();
        let dir = parent.join(format!("synapse-backup-wal-pushed-{uid}"));
        let _ = fs::DirBuilder::new().mode(0o700).create(&dir);
        let private = fs::symlink_metadata(&dir)
            .map(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
            .unwrap_or(false);
        if !private {
            tracing::info!(
                "{} is not a folder of this user's alone; WAL files uploaded ahead are checked by downloading them",
                dir.display()
            );
        }
        WalRecords {
            dir: private.then_some(dir),
        }
    }

    /// A folder that records nothing (for tests and when none can be used).
    pub fn none() -> WalRecords {
        WalRecords { dir: None }
    }

    pub fn get(&self, name: &WalFileName) -> Option<PushedRecord> {
        let text = fs::read_to_string(self.dir.as_ref()?.join(name.as_str())).ok()?;
        let (sha, bytes) = text.trim().split_once(' ')?;
        Some(PushedRecord {
            sha256: Sha256Digest::from_hex(sha)?,
            object_bytes: bytes.parse().ok()?,
        })
    }

    /// Records an upload; failing to is not an error (the record is only a shortcut).
    pub fn put(&self, name: &WalFileName, record: PushedRecord) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(name.as_str());
        let temp = dir.join(format!(".{name}.{}", std::process::id()));
        let text = format!("{} {}\n", record.sha256, record.object_bytes);
        if fs::write(&temp, text)
            .and_then(|()| fs::rename(&temp, &path))
            .is_err()
        {
            let _ = fs::remove_file(&temp);
        }
    }

    /// Forgets `name` (PostgreSQL has been told it is archived) and any record a day old.
    pub fn remove(&self, name: &WalFileName) {
        let Some(dir) = &self.dir else { return };
        let _ = fs::remove_file(dir.join(name.as_str()));
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > STALE_AFTER);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_is_forgotten() {
        let parent = tempfile::tempdir().unwrap();
        let records = WalRecords::open(parent.path());
        let name = WalFileName::parse("000000010000000000000007").unwrap();
        assert_eq!(records.get(&name), None);
        let record = PushedRecord {
            sha256: Sha256Digest::from_bytes([7; 32]),
            object_bytes: 1234,
        };
        records.put(&name, record);
        assert_eq!(records.get(&name), Some(record));
        records.remove(&name);
        assert_eq!(records.get(&name), None);
    }

    #[test]
    fn a_folder_others_can_read_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let dir = parent
            .path()
            .join(format!("synapse-backup-wal-pushed-{uid}"));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let records = WalRecords::open(parent.path());
        let name = WalFileName::parse("000000010000000000000007").unwrap();
        records.put(
            &name,
            PushedRecord {
                sha256: Sha256Digest::from_bytes([7; 32]),
                object_bytes: 1,
            },
        );
        assert_eq!(records.get(&name), None);
        assert!(fs::read_dir(&dir).unwrap().next().is_none());
    }
}
