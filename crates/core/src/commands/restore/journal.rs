//! The restore journal and lock: what makes a crash or a concurrent run safe.
//!
//! The journal is written (and fsynced) before staging starts and again before the swap. A run
//! that finds one left by a crashed run either removes the staging (the swap had not begun, so
//! the live data is the old data) or finishes the swap (every staged file had been verified), so
//! that the live data ends entirely old or entirely new.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Leftover, Result};
use crate::host::state_dir::StateDir;

use super::files::{remove_path, sync_dir};

/// In the state dir (see `host::state_dir`), beside the lock.
const JOURNAL_NAME: &str = ".synapse-backup-restore.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Staging,
    Swapping,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    pub live: PathBuf,
    /// `None` for a file that is only moved aside (a live database's `-wal`).
    pub staging: Option<PathBuf>,
    pub previous: PathBuf,
    /// The live path is an empty directory to replace (restores into --target-dir).
    pub replace_empty_dir: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub backup_id: String,
    pub phase: Phase,
    pub entries: Vec<JournalEntry>,
}

/// What a run found and did about an earlier run that did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    RemovedStaging { backup_id: String },
    CompletedSwap { backup_id: String },
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovery::RemovedStaging { backup_id } => write!(
                f,
                "an interrupted restore of {backup_id} had left staging files; they were removed (the live data was never touched)"
            ),
            Recovery::CompletedSwap { backup_id } => write!(
                f,
                "an interrupted restore of {backup_id} had verified its data and begun the swap; the swap was completed"
            ),
        }
    }
}

/// Writes `journal` durably (temp file, fsync, rename, fsync of the folder).
pub fn write_journal(state: &StateDir, journal: &Journal) -> Result<()> {
    let path = state.dir().join(JOURNAL_NAME);
    let temp = state.dir().join(format!("{JOURNAL_NAME}.tmp"));
    let json = serde_json::to_vec_pretty(journal)
        .map_err(|e| Error::Internal(format!("cannot encode the journal: {e}")))?;
    let mut file = File::create(&temp).at("create", &temp)?;
    file.write_all(&json).at("write", &temp)?;
    file.sync_all().at("fsync", &temp)?;
    fs::rename(&temp, &path).at("rename", &path)?;
    sync_dir(state.dir())
}

fn read_journal(state: &StateDir) -> Result<Option<Journal>> {
    let path = state.dir().join(JOURNAL_NAME);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Leftover {
                what: Leftover::UnreadableJournal {
                    reason: e.to_string(),
                },
                path: path.clone(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// A restore's staging, open from the moment the journal says "staging" until the journal
/// says "swapping". Dropped while open (an error, a Ctrl-C, a panic), it removes every staging
/// path the journal names and the journal itself, as recovery does after a crash: the live data
/// was never touched, so nothing else is to undo. No cleanup is written out by hand.
pub struct StagingTransaction<'a> {
    state: &'a StateDir,
    staging: Vec<PathBuf>,
    open: bool,
}

impl<'a> StagingTransaction<'a> {
    /// Writes the staging journal; from here on, staging paths are cleaned up on any failure.
    pub fn begin(state: &'a StateDir, staging_journal: &Journal) -> Result<Self> {
        write_journal(state, staging_journal)?;
        Ok(StagingTransaction {
            state,
            staging: staging_paths(staging_journal),
            open: true,
        })
    }

    /// Everything is staged and verified: the swap journal replaces the staging one, and from
    /// here on a crash is finished forward by [`recover`], never rolled back.
    ///
    /// The transaction stops cleaning up before the journal is written, not after: a write that
    /// fails after its rename (at the folder's fsync) has left the swap journal in place, and
    /// staging removed under it would have a later run swap in nothing. Whichever journal a
    /// failure leaves, the next run's recovery does the right thing with the staging intact.
    pub fn commit(mut self, swap_journal: &Journal) -> Result<()> {
        self.open = false;
        write_journal(self.state, swap_journal)
    }
}

impl Drop for StagingTransaction<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let mut all_removed = true;
        for staging in &self.staging {
            if let Err(e) = remove_path(staging) {
                all_removed = false;
                tracing::warn!(
                    "could not remove the staging path {} ({e}); the next restore removes it",
                    staging.display()
                );
            }
        }
        // The journal is what tells the next restore which staging to remove: it goes only
        // when nothing is left for it to name.
        if all_removed {
            if let Err(e) = remove_journal(self.state) {
                tracing::warn!("{e}; the next restore removes the staging it names");
            }
        }
    }
}

fn staging_paths(journal: &Journal) -> Vec<PathBuf> {
    journal
        .entries
        .iter()
        .filter_map(|entry| entry.staging.clone())
        .collect()
}

pub fn remove_journal(state: &StateDir) -> Result<()> {
    let path = state.dir().join(JOURNAL_NAME);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(state.dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Finishes or undoes what a crashed restore left. Call with the exclusive lock held.
pub fn recover(state: &StateDir) -> Result<Option<Recovery>> {
    let Some(journal) = read_journal(state)? else {
        return Ok(None);
    };
    let recovery = match journal.phase {
        Phase::Staging => {
            for staging in staging_paths(&journal) {
                remove_path(&staging).at("remove leftover staging", &staging)?;
            }
            Recovery::RemovedStaging {
                backup_id: journal.backup_id.clone(),
            }
        }
        Phase::Swapping => {
            apply_swap(&journal)?;
            Recovery::CompletedSwap {
                backup_id: journal.backup_id.clone(),
            }
        }
    };
    remove_journal(state)?;
    Ok(Some(recovery))
}

/// Performs the swap the journal describes. Idempotent: every step checks whether it already
/// happened, so a run interrupted anywhere can be repeated.
pub fn apply_swap(journal: &Journal) -> Result<()> {
    for (done, entry) in journal.entries.iter().enumerate() {
        crash_point(done);
        let staged = entry.staging.as_ref().filter(|s| s.exists());
        let live_exists = fs::symlink_metadata(&entry.live).is_ok();
        match staged {
            None if entry.staging.is_some() => continue, // already placed
            None => {
                // Move-aside only: the old -wal must not be replayed into the new database.
                if live_exists && !entry.previous.exists() {
                    fs::rename(&entry.live, &entry.previous).at("move aside", &entry.live)?;
                }
            }
            Some(staging) => {
                if live_exists {
                    if entry.replace_empty_dir {
                        fs::remove_dir(&entry.live).at("replace empty directory", &entry.live)?;
                    } else if !entry.previous.exists() {
                        fs::rename(&entry.live, &entry.previous).at("move aside", &entry.live)?;
                    } else {
                        return Err(Error::Leftover {
                            path: entry.live.clone(),
                            what: Leftover::BothLiveAndPrevious {
                                previous: entry.previous.clone(),
                            },
                        });
                    }
                }
                fs::rename(staging, &entry.live).at("move into place", &entry.live)?;
            }
        }
        if let Some(parent) = entry.live.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Fault injection for the crash tests: with `SYNAPSE_BACKUP_CRASH_AFTER_SWAPS=N` in the
/// environment the process kills itself with SIGKILL, like a power cut, after N renames of the
/// swap.
fn crash_point(done: usize) {
    if let Ok(limit) = std::env::var("SYNAPSE_BACKUP_CRASH_AFTER_SWAPS") {
        if limit.parse() == Ok(done) {
            eprintln!(
                "SYNAPSE_BACKUP_CRASH_AFTER_SWAPS={limit}: aborting in the middle of the swap"
            );
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir with one live folder and one live file, each with its staged replacement.
    struct Scene {
        _root: tempfile::TempDir,
        state: StateDir,
        entries: Vec<JournalEntry>,
    }

    impl Scene {
        fn new() -> Scene {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path();
            fs::create_dir(dir.join("media_store")).unwrap();
            fs::write(dir.join("media_store/old"), b"old media").unwrap();
            fs::write(dir.join("signing.key"), b"old key").unwrap();
            fs::create_dir(dir.join(".media_store.staging-b")).unwrap();
            fs::write(dir.join(".media_store.staging-b/new"), b"new media").unwrap();
            fs::write(dir.join(".signing.key.staging-b"), b"new key").unwrap();
            let entry = |live: &str| JournalEntry {
                live: dir.join(live),
                staging: Some(dir.join(format!(".{live}.staging-b"))),
                previous: dir.join(format!("{live}.pre-restore-b")),
                replace_empty_dir: false,
            };
            Scene {
                state: StateDir::at(dir),
                entries: vec![entry("media_store"), entry("signing.key")],
                _root: root,
            }
        }

        fn journal(&self, phase: Phase) -> Journal {
            Journal {
                backup_id: "b".into(),
                phase,
                entries: self.entries.clone(),
            }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.state.dir().join(rel)
        }

        fn journal_exists(&self) -> bool {
            self.path(JOURNAL_NAME).exists()
        }

        fn assert_old_data_untouched(&self) {
            assert_eq!(
                fs::read(self.path("media_store/old")).unwrap(),
                b"old media"
            );
            assert_eq!(fs::read(self.path("signing.key")).unwrap(), b"old key");
        }
    }

    #[test]
    fn a_staging_transaction_dropped_before_commit_removes_the_staging_and_the_journal() {
        let scene = Scene::new();
        {
            let _staging =
                StagingTransaction::begin(&scene.state, &scene.journal(Phase::Staging)).unwrap();
            assert!(scene.journal_exists());
            // An error (or a panic) here: the transaction goes out of scope uncommitted.
        }
        assert!(!scene.path(".media_store.staging-b").exists());
        assert!(!scene.path(".signing.key.staging-b").exists());
        assert!(!scene.journal_exists());
        scene.assert_old_data_untouched();
    }

    #[test]
    fn a_committed_transaction_leaves_the_swap_journal_that_recovery_finishes() {
        let scene = Scene::new();
        let staging =
            StagingTransaction::begin(&scene.state, &scene.journal(Phase::Staging)).unwrap();
        staging.commit(&scene.journal(Phase::Swapping)).unwrap();
        // A crash right after the commit: the staging is still there, and so is the journal.
        assert!(scene.path(".media_store.staging-b").exists());
        let recovered = recover(&scene.state).unwrap();
        assert_eq!(
            recovered,
            Some(Recovery::CompletedSwap {
                backup_id: "b".into()
            })
        );
        assert_eq!(
            fs::read(scene.path("media_store/new")).unwrap(),
            b"new media"
        );
        assert_eq!(fs::read(scene.path("signing.key")).unwrap(), b"new key");
        assert_eq!(
            fs::read(scene.path("signing.key.pre-restore-b")).unwrap(),
            b"old key"
        );
        assert!(!scene.journal_exists());
    }

    #[test]
    fn recovery_from_a_crash_while_staging_removes_the_staging_only() {
        let scene = Scene::new();
        write_journal(&scene.state, &scene.journal(Phase::Staging)).unwrap();
        let recovered = recover(&scene.state).unwrap();
        assert_eq!(
            recovered,
            Some(Recovery::RemovedStaging {
                backup_id: "b".into()
            })
        );
        assert!(!scene.path(".media_store.staging-b").exists());
        scene.assert_old_data_untouched();
        assert_eq!(recover(&scene.state).unwrap(), None, "nothing left to do");
    }

    #[test]
    fn a_swap_interrupted_anywhere_completes_when_applied_again() {
        let scene = Scene::new();
        let journal = scene.journal(Phase::Swapping);
        // The first entry swapped, then a crash: the second still waits.
        fs::rename(
            scene.path("media_store"),
            scene.path("media_store.pre-restore-b"),
        )
        .unwrap();
        fs::rename(
            scene.path(".media_store.staging-b"),
            scene.path("media_store"),
        )
        .unwrap();
        apply_swap(&journal).unwrap();
        apply_swap(&journal).unwrap();
        assert_eq!(
            fs::read(scene.path("media_store/new")).unwrap(),
            b"new media"
        );
        assert_eq!(fs::read(scene.path("signing.key")).unwrap(), b"new key");
        assert_eq!(
            fs::read(scene.path("media_store.pre-restore-b/old")).unwrap(),
            b"old media"
        );
    }

    #[test]
    fn a_swap_that_would_overwrite_kept_previous_data_stops_and_names_both_paths() {
        let scene = Scene::new();
        fs::write(
            scene.path("signing.key.pre-restore-b"),
            b"an earlier restore's",
        )
        .unwrap();
        let err = apply_swap(&scene.journal(Phase::Swapping)).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("signing.key.pre-restore-b"), "{message}");
        assert_eq!(
            fs::read(scene.path("signing.key.pre-restore-b")).unwrap(),
            b"an earlier restore's"
        );
    }

    #[test]
    fn an_unreadable_journal_is_left_for_the_admin_and_named() {
        let scene = Scene::new();
        fs::write(scene.path(JOURNAL_NAME), b"{ not json").unwrap();
        let err = recover(&scene.state).unwrap_err();
        assert!(err.to_string().contains(JOURNAL_NAME), "{err}");
        assert!(scene.journal_exists());
        scene.assert_old_data_untouched();
    }
}
