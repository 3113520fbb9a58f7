//! The sweep's decisions, from listings alone: no store, no clock. Each is the place a safety
//! rule of [`super`] is written down, and each has the tests that pin it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::database::wal_names::WalFileName;
use crate::manifest::{index_name, shared_object_owner};
use crate::repository::BackupId;
use crate::store::owner::FOREIGN_STALE_AFTER;
use crate::store::ObjectInfo;

/// A `.pending/<backup-id>` marker's body: a create-backup under way.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PendingMarker {
    pub backup_id: String,
    pub owner: String,
    /// Volumes of earlier backups the create may use (its parent's); its own are named after it.
    pub volumes: Vec<String>,
    /// The base (and its WAL from `start_wal` on) the create shares, once chosen; a base it
    /// takes itself is named after it. Absent in markers of tools before physical mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<PendingWal>,
}

/// A physical-mode create's choice of an earlier backup's base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWal {
    pub base: String,
    pub start_wal: String,
}

/// What a pending marker means for the sweep.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PendingVerdict {
    /// A create is (or may be) running: these volumes, and the create's own, are in use.
    Protects {
        backup_id: String,
        volumes: Vec<String>,
        wal: Option<PendingWal>,
    },
    /// Its create is gone: the marker can be removed.
    Abandoned,
    /// It cannot be read (damaged, cut off, not ours) and is younger than a foreign owner is
    /// trusted for: a create may be running that uses any volume, so nothing may be condemned.
    UnreadableYoung,
}

/// Judges a marker from its bytes (`complete` false when the read stopped at its cap) and age.
/// `is_abandoned` says whether an owner token, that old, belongs to nobody any more.
pub(super) fn judge_pending(
    body: &[u8],
    complete: bool,
    age: Duration,
    is_abandoned: impl Fn(&str, Duration) -> bool,
) -> PendingVerdict {
    let parsed = complete
        .then(|| serde_json::from_slice::<PendingMarker>(body).ok())
        .flatten();
    match parsed {
        Some(marker) if !is_abandoned(&marker.owner, age) => PendingVerdict::Protects {
            backup_id: marker.backup_id,
            volumes: marker.volumes,
            wal: marker.wal,
        },
        Some(_) => PendingVerdict::Abandoned,
        None if age > FOREIGN_STALE_AFTER => PendingVerdict::Abandoned,
        None => PendingVerdict::UnreadableYoung,
    }
}

/// The volumes some remaining base or some running create names, and the backups whose own
/// volumes are all in use (running creates, whose volumes are not named anywhere yet); in
/// `wal/`, the bases named and the lowest start of any physical backup or create.
#[derive(Debug, Default)]
pub struct InUse {
    pub volumes: HashSet<String>,
    pub owners: HashSet<String>,
    pub wal_bases: HashSet<String>,
    pub wal_floor: Option<WalFileName>,
    /// The timelines some physical backup or create starts on.
    pub wal_timelines: HashSet<u32>,
}

impl InUse {
    /// Counts a physical backup (or a create's choice) of `base` replaying from `start_wal`.
    /// A start that is not a segment name is an error: the floor cannot be placed without it.
    pub fn note_physical(&mut self, base: &str, start_wal: &str) -> Result<(), String> {
        let start = WalFileName::parse(start_wal)?;
        let Some(at) = start.position() else {
            return Err(format!("{start_wal} is not a WAL segment"));
        };
        self.wal_bases.insert(base.to_string());
        self.wal_timelines.insert(start.timeline());
        if self
            .wal_floor
            .as_ref()
            .and_then(|floor| floor.position())
            .is_none_or(|floor| at < floor)
        {
            self.wal_floor = Some(start);
        }
        Ok(())
    }

    /// Whether something still needs `volume` (or run): a base or a pending marker names it,
    /// or it is one of a backup's (or a running create's) own volumes or its run.
    pub fn needs(&self, volume: &str) -> bool {
        self.volumes.contains(volume)
            || shared_object_owner(volume).is_some_and(|owner| self.owners.contains(owner))
    }
}

/// What a sweep does to one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeAction {
    /// In use and not condemned.
    Keep,
    /// In use again (by a create that started before the condemnation): its mark is removed.
    Reprieve,
    /// Unused and not condemned yet: condemned now.
    Condemn,
    /// Unused, condemned less than the grace period ago.
    Wait,
    /// Unused, condemned for the grace period or longer: deleted with its mark.
    Delete,
}

/// Decides each volume's fate. `condemned` maps a volume to when it was condemned.
pub fn decide_volumes(
    volumes: &[ObjectInfo],
    condemned: &HashMap<String, DateTime<Utc>>,
    in_use: &InUse,
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<VolumeAction> {
    volumes
        .iter()
        .map(|volume| {
            let since = condemned.get(&volume.name);
            match (in_use.needs(&volume.name), since) {
                (true, None) => VolumeAction::Keep,
                (true, Some(_)) => VolumeAction::Reprieve,
                (false, None) => VolumeAction::Condemn,
                (false, Some(since)) if age(now, *since) < grace => VolumeAction::Wait,
                (false, Some(_)) => VolumeAction::Delete,
            }
        })
        .collect()
}

/// Condemned marks whose volume is gone (deleted by hand, or the sweep stopped between the
/// two deletes): they protect nothing.
pub fn marks_without_volume<'a>(
    condemned: impl IntoIterator<Item = &'a String>,
    volumes: &[ObjectInfo],
) -> Vec<String> {
    let existing: HashSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    let mut gone: Vec<String> = condemned
        .into_iter()
        .filter(|volume| !existing.contains(volume.as_str()))
        .cloned()
        .collect();
    gone.sort();
    gone
}

/// Indexes whose backup is gone (deleted, or its create failed) and is not being made. Only
/// those older than the grace period: a create that started after the markers were read may
/// have written its index since, and its base is about to follow.
pub fn orphan_indexes(
    indexes: &[ObjectInfo],
    in_use: &InUse,
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<String> {
    indexes
        .iter()
        .filter(|index| {
            let Some(id) = index.name.strip_prefix("index/") else {
                return false;
            };
            // Only an index named after a backup id is ours to remove; anything else in
            // `index/` is left alone, like every stray.
            BackupId::is_backup_name(id)
                && index.name == index_name(id)
                && !in_use.owners.contains(id)
                && age(now, index.last_modified) >= grace
        })
        .map(|index| index.name.clone())
        .collect()
}

/// How long ago `then` was; a time in the future (clock skew) is no time at all.
pub fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn now() -> DateTime<Utc> {
        "2026-12-06T12:00:00Z".parse().expect("a valid time")
    }

    fn object(name: &str, hours_ago: i64) -> ObjectInfo {
        ObjectInfo {
            name: name.into(),
            size: 10,
            last_modified: now() - chrono::Duration::hours(hours_ago),
        }
    }

    fn in_use(volumes: &[&str], owners: &[&str]) -> InUse {
        InUse {
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
            owners: owners.iter().map(|o| o.to_string()).collect(),
            ..InUse::default()
        }
    }

    const OLD: &str = "volumes/backup-20261201000000000000-0001";
    const MINE: &str = "volumes/backup-20261205000000000000-0001";

    #[test]
    fn a_volume_named_by_a_base_is_kept_and_one_nothing_names_is_condemned_first() {
        let volumes = [object(OLD, 48), object(MINE, 24)];
        let actions = decide_volumes(&volumes, &HashMap::new(), &in_use(&[MINE], &[]), now(), DAY);
        assert_eq!(actions, [VolumeAction::Condemn, VolumeAction::Keep]);
    }

    #[test]
    fn a_condemned_volume_is_deleted_only_after_the_grace_period() {
        let volumes = [object(OLD, 48)];
        let nobody = in_use(&[], &[]);
        let condemned_at =
            |hours: i64| HashMap::from([(OLD.to_string(), now() - chrono::Duration::hours(hours))]);
        let decide = |hours| decide_volumes(&volumes, &condemned_at(hours), &nobody, now(), DAY);
        assert_eq!(decide(23), [VolumeAction::Wait]);
        assert_eq!(decide(24), [VolumeAction::Delete]);
        // A mark from the future (another host's clock ahead) is not old enough.
        assert_eq!(decide(-5), [VolumeAction::Wait]);
    }

    #[test]
    fn a_condemned_volume_used_again_is_reprieved_whatever_its_age() {
        let volumes = [object(OLD, 480)];
        let condemned = HashMap::from([(OLD.to_string(), now() - chrono::Duration::days(20))]);
        let actions = decide_volumes(&volumes, &condemned, &in_use(&[OLD], &[]), now(), DAY);
        assert_eq!(actions, [VolumeAction::Reprieve]);
    }

    #[test]
    fn a_running_creates_pending_marker_protects_its_own_volumes_before_any_base_names_them() {
        let volumes = [object(MINE, 0), object(OLD, 48)];
        let condemned = HashMap::from([(OLD.to_string(), now() - chrono::Duration::days(3))]);
        // The marker names the parent's volume and the backup id whose own volumes these are.
        let pending = in_use(&[OLD], &["backup-20261205000000000000"]);
        let actions = decide_volumes(&volumes, &condemned, &pending, now(), Duration::ZERO);
        assert_eq!(actions, [VolumeAction::Keep, VolumeAction::Reprieve]);
    }

    #[test]
    fn an_object_in_volumes_that_is_not_named_like_a_volume_belongs_to_no_owner() {
        let odd = "volumes/backup-20261205000000000000-12";
        let owners = in_use(&[], &["backup-20261205000000000000"]);
        assert!(!owners.needs(odd));
        assert!(owners.needs(MINE));
        // A running create's own run (format 3) is protected like its volumes.
        assert!(owners.needs("volumes/backup-20261205000000000000-files"));
        assert!(!owners.needs("volumes/backup-20261205000000000001-files"));
    }

    #[test]
    fn marks_of_volumes_that_are_gone_protect_nothing() {
        let condemned = [OLD.to_string(), MINE.to_string()];
        assert_eq!(
            marks_without_volume(&condemned, &[object(MINE, 1)]),
            [OLD.to_string()]
        );
    }

    #[test]
    fn an_index_goes_only_when_its_backup_is_gone_and_it_is_older_than_the_grace_period() {
        let indexes = [
            object("index/backup-20261201000000000000", 48), // backup deleted: goes
            object("index/backup-20261205000000000000", 48), // backup kept
            object("index/backup-20261206110000000000", 1),  // a create just wrote it
            object("index/backup-20261201000000000000/x", 48), // not an index name
            object("index/notes.txt", 48),                   // a stray
        ];
        let owners = in_use(&[], &["backup-20261205000000000000"]);
        assert_eq!(
            orphan_indexes(&indexes, &owners, now(), DAY),
            ["index/backup-20261201000000000000".to_string()]
        );
    }

    fn marker(owner: &str) -> Vec<u8> {
        serde_json::to_vec(&PendingMarker {
            backup_id: "backup-20261206110000000000".into(),
            owner: owner.into(),
            volumes: vec![OLD.into()],
            wal: None,
        })
        .expect("encodes")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_live_create_protects_its_volumes_and_its_own() {
        let verdict = judge_pending(&marker("alive"), true, HOUR, |owner, _| owner != "alive");
        assert_eq!(
            verdict,
            PendingVerdict::Protects {
                backup_id: "backup-20261206110000000000".into(),
                volumes: vec![OLD.into()],
                wal: None,
            }
        );
    }

    #[test]
    fn a_gone_create_frees_its_marker() {
        let verdict = judge_pending(&marker("gone"), true, HOUR, |_, _| true);
        assert_eq!(verdict, PendingVerdict::Abandoned);
    }

    #[test]
    fn an_unreadable_marker_blocks_the_sweep_until_it_is_a_day_old() {
        for body in [&b"{\"backup_id\": 3"[..], b"", b"not json"] {
            assert_eq!(
                judge_pending(body, true, HOUR, |_, _| false),
                PendingVerdict::UnreadableYoung,
                "{body:?}"
            );
            assert_eq!(
                judge_pending(body, true, FOREIGN_STALE_AFTER + HOUR, |_, _| false),
                PendingVerdict::Abandoned
            );
        }
    }

    #[test]
    fn a_marker_cut_off_at_the_read_cap_is_never_taken_as_complete() {
        // Valid JSON, but the read stopped early: what it names may be only the beginning.
        let verdict = judge_pending(&marker("alive"), false, HOUR, |_, _| false);
        assert_eq!(verdict, PendingVerdict::UnreadableYoung);
    }
}
