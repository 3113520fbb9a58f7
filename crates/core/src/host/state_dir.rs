//! The folder where synapse-backup keeps its per-homeserver state: the lock that keeps a backup
//! and a restore of the same data dir apart, the lock that serializes backup ids, and the
//! restore journal (written by `restore::journal`).
//!
//! It is the data dir (the parent of the media store) for live restores and backups, and the
//! parent of `--target-dir` for restores there. Locks are `flock`s: the kernel drops them when
//! the process dies, so a crashed run never leaves one stuck.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Refusal, Result};

const LOCK_NAME: &str = ".synapse-backup.lock";
const ID_LOCK_NAME: &str = ".synapse-backup-id.lock";

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The state dir of the data rooted at `anchor` (a media store or a --target-dir): its
    /// parent, created if missing.
    pub fn beside(anchor: &Path) -> Result<StateDir> {
        let dir = anchor.parent().unwrap_or(Path::new("/")).to_path_buf();
        fs::create_dir_all(&dir).at("create", &dir)?;
        Ok(StateDir { dir })
    }

    /// The state dir `dir` itself, which may not be writable (a backup of a read-only data dir).
    pub fn at(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_lock_file(&self, name: &str) -> std::io::Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(name))
    }

    /// Takes the restore lock: no backup or other restore of this data dir runs meanwhile.
    pub fn lock_exclusive(&self) -> Result<Flock<File>> {
        let path = self.dir.join(LOCK_NAME);
        let file = self.open_lock_file(LOCK_NAME).at("open lock file", &path)?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            Error::refused(Refusal::Locked, format!(
                "another synapse-backup restore or backup is running (lock {} is held); wait for it to finish",
                path.display()
            ))
        })
    }

    /// Takes the lock shared, as a backup does: backups may run together, not with a restore.
    /// Returns `None` when the lock file cannot be created (a read-only data dir).
    pub fn lock_shared(&self) -> Result<Option<Flock<File>>> {
        let path = self.dir.join(LOCK_NAME);
        let Ok(file) = self.open_lock_file(LOCK_NAME) else {
            return Ok(None);
        };
        Flock::lock(file, FlockArg::LockSharedNonblock)
            .map(Some)
            .map_err(|_| {
                Error::refused(
                    Refusal::Locked,
                    format!(
                        "a restore is running (lock {} is held); back up after it finished",
                        path.display()
                    ),
                )
            })
    }

    /// Serializes the choice of backup ids on this host (see `backup::id`). Blocks; the lock is
    /// held for microseconds. `None` when the lock file cannot be created (a read-only data dir).
    pub fn lock_id_choice(&self) -> Option<Flock<File>> {
        let file = self.open_lock_file(ID_LOCK_NAME).ok()?;
        Flock::lock(file, FlockArg::LockExclusive).ok()
    }
}
