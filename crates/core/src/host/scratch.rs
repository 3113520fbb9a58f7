//! The scratch folder a create-backup keeps in `[backup] temp-dir`: it holds plaintext (the
//! SQLite snapshot, media downloaded from a storage provider, the file list) while the backup
//! runs, so it is made readable by its owner alone (0700) and carries its owner in its name.
//!
//! A create killed with SIGKILL (or a power cut) cannot remove it. The next create, verify,
//! restore or check does, once the process that made it is gone (same boot: its pid and start
//! time; otherwise after [`FOREIGN_STALE_AFTER`]), and says so with its path and age: plaintext
//! of the homeserver never lingers unnoticed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::owner::{UploadOwner, FOREIGN_STALE_AFTER};

const PREFIX: &str = "synapse-backup-";
/// What `tempfile` adds to make a name unique.
const RANDOM_CHARS: usize = 6;

/// A scratch folder left by a create that is gone, now removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub path: PathBuf,
    pub age: Duration,
}

/// The folder scratch folders are made in.
pub fn scratch_parent(config: &Config) -> PathBuf {
    config
        .backup
        .temp_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
}

/// Makes this process's scratch folder (mode 0700) in `parent`.
pub fn create(parent: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}.", UploadOwner::current().token()))
        .rand_bytes(RANDOM_CHARS)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(|e| Error::io("create a scratch folder in", parent, e))
}

/// A drill's scratch folder holds this file: such a folder may have a Synapse running on it
/// and a database beside it, so only `drill` and `check` clean it (`commands::drill`).
pub const DRILL_MARKER: &str = "drill.json";

/// The scratch folders in `parent` whose process is gone.
pub fn abandoned_in(parent: &Path) -> Vec<Leftover> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(owner) = owner_of(&name) else {
            continue;
        };
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if is_abandoned(owner, age) {
            found.push(Leftover {
                path: entry.path(),
                age,
            });
        }
    }
    found
}

/// Removes the scratch folders in `[backup] temp-dir` whose create-backup is gone, warning
/// about each; returns them. Never fails: what cannot be removed is warned about.
pub fn remove_leftovers(config: &Config) -> Vec<Leftover> {
    let mut removed = Vec::new();
    for Leftover { path, age } in abandoned_in(&scratch_parent(config)) {
        if path.join(DRILL_MARKER).exists() {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::warn!(
                    "removed {}, the scratch folder of a create-backup that was killed {} ago (it held an unencrypted copy of the database)",
                    path.display(),
                    describe_age(age)
                );
                removed.push(Leftover { path, age });
            }
            Err(e) => tracing::warn!(
                "could not remove {}, the scratch folder of a create-backup that was killed {} ago, holding unencrypted data; remove it by hand: {e}",
                path.display(),
                describe_age(age)
            ),
        }
    }
    removed
}

/// The owner token in a scratch folder's name: `Some("")` for the names earlier versions
/// gave (`synapse-backup-XXXXXX`, no owner), `None` for anything that is not a scratch folder.
fn owner_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    let random = |s: &str| s.len() == RANDOM_CHARS && s.bytes().all(|b| b.is_ascii_alphanumeric());
    match rest.rsplit_once('.') {
        Some((owner, tail)) if random(tail) && UploadOwner::parse(owner).is_some() => Some(owner),
        None if random(rest) => Some(""),
        _ => None,
    }
}

fn is_abandoned(owner: &str, age: Duration) -> bool {
    if owner.is_empty() {
        // No owner to ask: only once no create could still be running.
        return age >= FOREIGN_STALE_AFTER;
    }
    UploadOwner::is_abandoned(owner, age)
}

/// `3 s`, `4 min`, `5 h`, `2 days`.
pub fn describe_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn scratch_folders_are_private_and_name_their_owner() {
        let parent = tempfile::tempdir().unwrap();
        let scratch = create(parent.path()).unwrap();
        let meta = fs::metadata(scratch.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        let name = scratch.path().file_name().unwrap().to_string_lossy();
        assert_eq!(
            owner_of(&name),
            Some(UploadOwner::current().token().as_str())
        );
        // Ours, running: never a leftover.
        assert!(!is_abandoned(
            owner_of(&name).unwrap(),
            Duration::from_secs(86_400 * 30)
        ));
    }

    #[test]
    fn only_scratch_folder_names_are_recognised() {
        assert_eq!(owner_of("synapse-backup-a1B2c3"), Some(""));
        assert_eq!(owner_of("synapse-backup-tools"), None);
        assert_eq!(owner_of("synapse-backup-abc.def123"), None);
        assert_eq!(owner_of("other-a1B2c3"), None);
        let dead = "0123456789ab-0-4194304-1";
        assert_eq!(
            owner_of(&format!("synapse-backup-{dead}.a1B2c3")),
            Some(dead)
        );
    }

    #[test]
    fn owners_without_a_process_are_gone_and_unknown_ones_wait() {
        assert!(!is_abandoned("", Duration::from_secs(3600)));
        assert!(is_abandoned("", FOREIGN_STALE_AFTER));
        // This boot, this user, a pid that is not running with that start time.
        let me = UploadOwner::current().token();
        let mut fields: Vec<&str> = me.split('-').collect();
        fields[3] = "1";
        let gone = fields.join("-");
        assert!(is_abandoned(&gone, Duration::ZERO));
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(describe_age(Duration::from_secs(5)), "5 s");
        assert_eq!(describe_age(Duration::from_secs(600)), "10 min");
        assert_eq!(describe_age(Duration::from_secs(3 * 86_400)), "3 days");
    }
}
