//! Which archived WAL files and base backups under `wal/` may be deleted, and when: the same
//! condemn-then-delete rule as the media volumes ([`super`]), with one marker object.
//!
//! A base `wal/base-<id>` is needed while a backup (kept, or being made) names it, or while
//! the create-backup `<id>` that takes it runs. A WAL file is needed when it lies at or above
//! the **floor**: the lowest `start_wal` of any kept physical backup or running create (by
//! position, whatever the timeline: every backup replays from its own start, and restore to a
//! time between backups needs everything after the oldest start). History files are never
//! deleted; with no physical backup at all nothing below a floor is known, so no WAL file is;
//! nor is any on the newest timeline while no backup starts on it (after a restore to an
//! earlier moment, its first base may start below the older timeline's floor). A create that
//! takes its own base names the segment WAL was at before it began, a bound below the base's
//! start, so its WAL is above every floor from then on.
//!
//! The race this answers: a create chose to share base X (start S) of the newest backup while a
//! delete of that backup lets a sweep free X and the WAL below a higher floor. The objects are
//! weeks old, so their age proves nothing. Instead, as for volumes:
//!
//! - the sweep records what it condemns in [`WAL_CONDEMNED`] (floors and bases, each with the
//!   time it was condemned) and deletes only what was condemned at least the grace period ago
//!   **and** is still below the floor / unnamed now; the record of what was deleted stays
//!   (`deleted_below`, and a deleted base's entry until its object is gone from the listing);
//! - a create writes its choice into its pending marker (`wal: {base, start_wal}`), then reads
//!   the record ([`shared_base_condemned`]): a condemned choice means it takes a new base, and
//!   else it checks once more that the base is there.
//!
//! A file deleted at D was condemned at C ≤ D − grace, recorded without a break since. A create
//! whose marker the deleting sweep did not see wrote it after that sweep's reading, so after C:
//! its read of the record saw the condemnation (or `deleted_below`) and it did not share.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::database::wal_names::WalFileName;
use crate::error::{ErrorKind, Result};
use crate::repository::BackupId;
use crate::store::{ObjectInfo, Store};

use super::decide::{age, InUse};
use super::Swept;

/// The sweep's record of what in `wal/` it condemned and deleted.
pub const WAL_CONDEMNED: &str = "wal/condemned";
const BASE_PREFIX: &str = "wal/base-";
/// Bounds the record when prunes run far more often than the grace period lasts; a floor not
/// recorded is only condemned later, which is safe.
const MAX_FLOORS: usize = 64;

/// The body of [`WAL_CONDEMNED`] (plain JSON: segment and object names, times).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WalCondemned {
    /// Every WAL file below `below` was condemned at `since`.
    #[serde(default)]
    pub floors: Vec<FloorMark>,
    /// Every WAL file below this segment may already be gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_below: Option<String>,
    /// Bases no backup named, with when they were condemned; a deleted one stays until the
    /// listing no longer shows it.
    #[serde(default)]
    pub bases: BTreeMap<String, DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FloorMark {
    pub below: String,
    pub since: DateTime<Utc>,
}

fn position(segment: &str) -> Option<u64> {
    WalFileName::parse(segment).ok()?.position()
}

impl WalCondemned {
    /// The highest position below which a WAL file is condemned or gone.
    fn condemned_below(&self) -> Option<u64> {
        self.floors
            .iter()
            .map(|f| f.below.as_str())
            .chain(self.deleted_below.as_deref())
            .filter_map(position)
            .max()
    }
}

/// What the sweep does in `wal/`: the objects to delete, the record to write first, the report.
#[derive(Debug, Default)]
pub(super) struct WalDecision {
    pub delete: Vec<ObjectInfo>,
    pub record: WalCondemned,
    pub report: Swept,
}

/// Decides from the listing of `wal/` (without the record), the record as read, and what is in
/// use. Pure: no store, no clock.
pub(super) fn decide_wal(
    objects: &[ObjectInfo],
    record: &WalCondemned,
    in_use: &InUse,
    now: DateTime<Utc>,
    grace: Duration,
) -> WalDecision {
    let mut decision = WalDecision {
        record: record.clone(),
        ..WalDecision::default()
    };
    decide_bases(objects, in_use, now, grace, &mut decision);
    if let Some(floor) = &in_use.wal_floor {
        decide_files(objects, in_use, floor, now, grace, &mut decision);
    }
    decision
}

fn decide_bases(
    objects: &[ObjectInfo],
    in_use: &InUse,
    now: DateTime<Utc>,
    grace: Duration,
    decision: &mut WalDecision,
) {
    let bases: Vec<&ObjectInfo> = objects
        .iter()
        .filter(|o| {
            o.name
                .strip_prefix(BASE_PREFIX)
                .is_some_and(BackupId::is_backup_name)
        })
        .collect();
    let record = &mut decision.record;
    record
        .bases
        .retain(|name, _| bases.iter().any(|b| &b.name == name));
    for base in bases {
        let owner = base.name.strip_prefix(BASE_PREFIX).unwrap_or_default();
        let needed = in_use.wal_bases.contains(&base.name) || in_use.owners.contains(owner);
        let entry = (base.name.clone(), base.size);
        match (needed, record.bases.get(&base.name)) {
            (true, _) => {
                record.bases.remove(&base.name);
            }
            (false, None) => {
                record.bases.insert(base.name.clone(), now);
                decision.report.condemned.push(entry);
            }
            (false, Some(since)) if age(now, *since) < grace => decision.report.waiting.push(entry),
            (false, Some(_)) => {
                decision.report.deleted.push(entry);
                decision.delete.push(base.clone());
            }
        }
    }
}

fn decide_files(
    objects: &[ObjectInfo],
    in_use: &InUse,
    floor: &WalFileName,
    now: DateTime<Utc>,
    grace: Duration,
    decision: &mut WalDecision,
) {
    let Some(floor_at) = floor.position() else {
        return;
    };
    let record = &mut decision.record;
    // A floor above today's is lowered, keeping its time: what lies below today's floor was
    // condemned then too, and a create sharing a base above it must not be turned away.
    for mark in &mut record.floors {
        if position(&mark.below).is_none_or(|at| at > floor_at) {
            mark.below = floor.to_string();
        }
    }
    let ripe = record
        .floors
        .iter()
        .filter(|mark| age(now, mark.since) >= grace)
        .filter_map(|mark| position(&mark.below))
        .max();
    let condemned_before = record
        .floors
        .iter()
        .filter_map(|m| position(&m.below))
        .max();
    let named: Vec<(&ObjectInfo, WalFileName)> = objects
        .iter()
        .filter_map(|o| Some((o, WalFileName::parse(o.name.strip_prefix("wal/")?).ok()?)))
        .collect();
    // The newest timeline no backup starts on yet is the one a restore just promoted: the
    // first create on it takes a base there that may lie below the floor of the older
    // timeline's backups (a restore to an earlier moment), and needs that WAL.
    let newest = named.iter().map(|(_, name)| name.timeline()).max();
    let unprotected = |name: &WalFileName| {
        Some(name.timeline()) != newest || in_use.wal_timelines.contains(&name.timeline())
    };
    let mut files: Vec<(&ObjectInfo, u64)> = named
        .iter()
        .filter(|(_, name)| unprotected(name))
        .filter_map(|(o, name)| Some((*o, name.position()?)))
        .collect();
    files.sort_by(|a, b| (a.1, &a.0.name).cmp(&(b.1, &b.0.name)));
    for (object, at) in files {
        let entry = (object.name.clone(), object.size);
        if ripe.is_some_and(|ripe| at < ripe) {
            decision.report.deleted.push(entry);
            decision.delete.push(object.clone());
        } else if condemned_before.is_some_and(|c| at < c) {
            decision.report.waiting.push(entry);
        } else if at < floor_at {
            decision.report.condemned.push(entry);
        }
    }
    if let Some(ripe) = ripe {
        let deleted = record.deleted_below.as_deref().and_then(position);
        if deleted.is_none_or(|d| d < ripe) {
            record.deleted_below = record
                .floors
                .iter()
                .find(|m| position(&m.below) == Some(ripe))
                .map(|m| m.below.clone());
        }
        record
            .floors
            .retain(|m| position(&m.below).is_some_and(|at| at > ripe));
    }
    let highest = record.condemned_below();
    if highest.is_none_or(|h| h < floor_at) && record.floors.len() < MAX_FLOORS {
        record.floors.push(FloorMark {
            below: floor.to_string(),
            since: now,
        });
    }
}

/// Reads the record; `None` when there is none. An unreadable one is an error of kind
/// `Corrupt` for the caller to handle.
pub(super) async fn read_record(store: &dyn Store) -> Result<Option<WalCondemned>> {
    let (body, complete) = match super::read_small_object(store, WAL_CONDEMNED).await {
        Ok(read) => read,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match complete
        .then(|| serde_json::from_slice::<WalCondemned>(&body).ok())
        .flatten()
    {
        Some(record) => Ok(Some(record)),
        None => Err(crate::error::Error::Other(format!(
            "{WAL_CONDEMNED} in {} is not a record this tool wrote",
            store.describe()
        ))),
    }
}

pub(super) async fn write_record(store: &dyn Store, record: &WalCondemned) -> Result<()> {
    let body = serde_json::to_vec(record).map_err(|e| {
        crate::error::Error::Internal(format!("cannot encode {WAL_CONDEMNED}: {e}"))
    })?;
    let stream = futures::stream::once(async move { Ok(bytes::Bytes::from(body)) }).boxed();
    store.put(WAL_CONDEMNED, stream, None).await?;
    Ok(())
}

/// Condemns and deletes in `wal/` (see the module). With `dry_run`, only reports.
pub(super) async fn sweep_wal(
    store: &dyn Store,
    in_use: &InUse,
    grace: Duration,
    dry_run: bool,
) -> Result<Swept> {
    let objects: Vec<ObjectInfo> = store
        .list_folder(crate::repository::wal::WAL_FOLDER)
        .await?
        .into_iter()
        .filter(|o| o.name != WAL_CONDEMNED)
        .collect();
    if objects.is_empty() {
        return Ok(Swept::default());
    }
    let now = Utc::now();
    let (record, unreadable) = match read_record(store).await {
        Ok(record) => (record.unwrap_or_default(), false),
        Err(e) if matches!(e.kind(), ErrorKind::Storage | ErrorKind::Interrupted) => return Err(e),
        Err(e) => {
            // What it recorded is lost: condemn again from now (so nothing is deleted before
            // a full grace period), which also tells creates that everything below today's
            // floor may be gone.
            tracing::warn!(
                "{e}; it is written anew, and no WAL is deleted before the grace period has passed again"
            );
            let floors = in_use.wal_floor.iter().map(|floor| FloorMark {
                below: floor.to_string(),
                since: now,
            });
            let record = WalCondemned {
                floors: floors.collect(),
                ..WalCondemned::default()
            };
            (record, true)
        }
    };
    let decision = decide_wal(&objects, &record, in_use, now, grace);
    if dry_run {
        return Ok(decision.report);
    }
    if unreadable || decision.record != record || !decision.delete.is_empty() {
        write_record(store, &decision.record).await?;
    }
    for object in &decision.delete {
        match store.delete(&object.name).await {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(decision.report)
}

/// Why a create must not share `base` (starting at `start`): a sweep condemned it or the WAL
/// it needs, or the record cannot be read. `None`: it may, once it has checked the base is
/// still there. The caller's pending marker names the choice before this is asked.
pub async fn shared_base_condemned(
    store: &dyn Store,
    base: &str,
    start: &WalFileName,
) -> Result<Option<String>> {
    let record = match read_record(store).await {
        Ok(Some(record)) => record,
        Ok(None) => return Ok(None),
        Err(e) if matches!(e.kind(), ErrorKind::Storage | ErrorKind::Interrupted) => return Err(e),
        Err(e) => return Ok(Some(e.to_string())),
    };
    Ok(choice_condemned(&record, base, start))
}

fn choice_condemned(record: &WalCondemned, base: &str, start: &WalFileName) -> Option<String> {
    if record.bases.contains_key(base) {
        return Some(format!(
            "a prune condemned {base} (no kept backup named it)"
        ));
    }
    let below = record
        .floors
        .iter()
        .map(|f| f.below.as_str())
        .chain(record.deleted_below.as_deref())
        .filter_map(|s| Some((position(s)?, s)))
        .max()?;
    (start.position()? < below.0).then(|| {
        format!(
            "a prune condemned the WAL below {}, and the base needs it from {start}",
            below.1
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const BASE_OLD: &str = "wal/base-backup-20261201000000000000";
    const BASE_NEW: &str = "wal/base-backup-20261205000000000000";

    fn now() -> DateTime<Utc> {
        "2026-12-07T12:00:00Z".parse().expect("a valid time")
    }

    fn hours_ago(hours: i64) -> DateTime<Utc> {
        now() - chrono::Duration::hours(hours)
    }

    fn object(name: &str) -> ObjectInfo {
        ObjectInfo {
            name: name.into(),
            size: 10,
            last_modified: hours_ago(100),
        }
    }

    fn segment(n: u32) -> String {
        format!("wal/00000001000000000000{n:04X}")
    }

    fn store_listing() -> Vec<ObjectInfo> {
        let mut names: Vec<String> = (1..=8).map(segment).collect();
        names.extend([
            "wal/000000010000000000000002.00000028.backup".to_string(),
            "wal/000000010000000000000003.partial".to_string(),
            "wal/00000002.history".to_string(),
            BASE_OLD.to_string(),
            BASE_NEW.to_string(),
            "wal/notes.txt".to_string(),
        ]);
        names.iter().map(|n| object(n)).collect()
    }

    /// One kept backup: BASE_NEW, replaying from segment 5.
    fn kept_from_5() -> InUse {
        let mut in_use = InUse::default();
        in_use
            .note_physical(BASE_NEW, "000000010000000000000005")
            .expect("a segment name");
        in_use
    }

    fn names(list: &[(String, u64)]) -> Vec<&str> {
        list.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn the_first_sweep_condemns_what_lies_below_the_floor_and_deletes_nothing() {
        let decision = decide_wal(
            &store_listing(),
            &WalCondemned::default(),
            &kept_from_5(),
            now(),
            DAY,
        );
        assert!(decision.delete.is_empty());
        assert_eq!(
            names(&decision.report.condemned),
            [
                "wal/base-backup-20261201000000000000",
                &segment(1),
                &segment(2),
                "wal/000000010000000000000002.00000028.backup",
                &segment(3),
                "wal/000000010000000000000003.partial",
                &segment(4),
            ]
        );
        assert_eq!(
            decision.record.floors,
            [FloorMark {
                below: "000000010000000000000005".into(),
                since: now(),
            }]
        );
        assert_eq!(decision.record.bases.get(BASE_OLD), Some(&now()));
    }

    #[test]
    fn what_was_condemned_goes_after_the_grace_period_and_the_record_keeps_what_went() {
        let first = decide_wal(
            &store_listing(),
            &WalCondemned::default(),
            &kept_from_5(),
            hours_ago(30),
            DAY,
        );
        let early = decide_wal(
            &store_listing(),
            &first.record,
            &kept_from_5(),
            hours_ago(10),
            DAY,
        );
        assert!(early.delete.is_empty());
        assert_eq!(early.report.waiting.len(), 7);
        let ripe = decide_wal(&store_listing(), &first.record, &kept_from_5(), now(), DAY);
        let deleted: Vec<&str> = ripe.delete.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(deleted, names(&first.report.condemned));
        // History files, the floor's segment and later ones, and strays stay.
        assert!(!deleted
            .iter()
            .any(|n| n.contains("history") || n.contains("notes")));
        assert_eq!(
            ripe.record.deleted_below.as_deref(),
            Some("000000010000000000000005")
        );
        assert!(ripe.record.floors.is_empty());
        // The deleted base stays in the record until the listing no longer shows it.
        assert!(ripe.record.bases.contains_key(BASE_OLD));
        let listing: Vec<ObjectInfo> = store_listing()
            .into_iter()
            .filter(|o| !deleted.contains(&o.name.as_str()))
            .collect();
        let after = decide_wal(&listing, &ripe.record, &kept_from_5(), now(), DAY);
        assert!(after.delete.is_empty() && after.report.condemned.is_empty());
        assert!(after.record.bases.is_empty());
    }

    #[test]
    fn a_floor_that_rises_deletes_below_the_ripe_one_and_condemns_the_rest() {
        let record = WalCondemned {
            floors: vec![FloorMark {
                below: "000000010000000000000003".into(),
                since: hours_ago(48),
            }],
            ..WalCondemned::default()
        };
        let decision = decide_wal(&store_listing(), &record, &kept_from_5(), now(), DAY);
        let deleted: Vec<&str> = decision.delete.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            deleted,
            [
                segment(1).as_str(),
                &segment(2),
                "wal/000000010000000000000002.00000028.backup"
            ]
        );
        assert!(names(&decision.report.condemned).contains(&segment(4).as_str()));
        assert_eq!(decision.record.floors.len(), 1);
        assert_eq!(decision.record.floors[0].below, "000000010000000000000005");
    }

    #[test]
    fn a_floor_above_todays_is_lowered_and_deletes_only_below_todays() {
        // A create shared an older base after a prune condemned its WAL: the floor is lower now.
        let record = WalCondemned {
            floors: vec![FloorMark {
                below: "000000010000000000000007".into(),
                since: hours_ago(48),
            }],
            ..WalCondemned::default()
        };
        let decision = decide_wal(&store_listing(), &record, &kept_from_5(), now(), DAY);
        assert!(decision
            .delete
            .iter()
            .all(
                |o| WalFileName::parse(&o.name[4..]).is_ok_and(|n| n.position() < Some(5))
                    || o.name == BASE_OLD
            ));
        assert!(!decision.delete.iter().any(|o| o.name == segment(5)));
    }

    #[test]
    fn with_no_physical_backup_no_wal_file_is_condemned_but_bases_are() {
        let decision = decide_wal(
            &store_listing(),
            &WalCondemned::default(),
            &InUse::default(),
            now(),
            DAY,
        );
        assert_eq!(
            names(&decision.report.condemned),
            [BASE_OLD, BASE_NEW],
            "only the bases"
        );
        assert!(decision.record.floors.is_empty());
    }

    #[test]
    fn a_running_creates_own_base_is_kept_though_no_backup_names_it_yet() {
        let mut in_use = kept_from_5();
        in_use
            .owners
            .insert("backup-20261201000000000000".to_string());
        let record = WalCondemned {
            bases: [(BASE_OLD.to_string(), hours_ago(48))].into(),
            ..WalCondemned::default()
        };
        let decision = decide_wal(&store_listing(), &record, &in_use, now(), DAY);
        assert!(!decision.delete.iter().any(|o| o.name == BASE_OLD));
        assert!(decision.record.bases.is_empty(), "reprieved");
    }

    #[test]
    fn a_create_does_not_share_a_condemned_base_or_one_whose_wal_is_condemned() {
        let start = |n: &str| WalFileName::parse(n).expect("a segment name");
        let record = WalCondemned {
            floors: vec![FloorMark {
                below: "000000010000000000000005".into(),
                since: now(),
            }],
            deleted_below: Some("000000010000000000000003".into()),
            bases: [(BASE_OLD.to_string(), now())].into(),
        };
        assert!(choice_condemned(&record, BASE_OLD, &start("000000010000000000000009")).is_some());
        let why = choice_condemned(&record, BASE_NEW, &start("000000010000000000000004"));
        assert!(why.is_some_and(|w| w.contains("000000010000000000000005")));
        assert_eq!(
            choice_condemned(&record, BASE_NEW, &start("000000010000000000000005")),
            None
        );
        // Gone already counts too, on any timeline.
        let gone = WalCondemned {
            deleted_below: Some("000000010000000000000003".into()),
            ..WalCondemned::default()
        };
        assert!(choice_condemned(&gone, BASE_NEW, &start("000000020000000000000002")).is_some());
    }

    #[test]
    fn after_a_restore_to_an_earlier_moment_the_new_timelines_wal_is_kept() {
        // Timeline 1's kept backups start at 0x64; a restore branched timeline 2 at 0x3C, and
        // its first create is taking a base from 0x50 (not named by any marker yet).
        let mut listing: Vec<ObjectInfo> = [0x30, 0x3C, 0x50, 0x64]
            .iter()
            .map(|n| object(&format!("wal/000000010000000000{n:06X}")))
            .collect();
        listing.extend(
            [
                "wal/000000020000000000000050",
                "wal/000000020000000000000051",
                "wal/00000002.history",
            ]
            .map(object),
        );
        let mut in_use = InUse::default();
        in_use
            .note_physical(BASE_NEW, "000000010000000000000064")
            .expect("a segment name");
        let record = WalCondemned {
            floors: vec![FloorMark {
                below: "000000010000000000000064".into(),
                since: hours_ago(25),
            }],
            ..WalCondemned::default()
        };
        let decision = decide_wal(&listing, &record, &in_use, now(), DAY);
        let deleted: Vec<&str> = decision.delete.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            deleted,
            [
                "wal/000000010000000000000030",
                "wal/00000001000000000000003C",
                "wal/000000010000000000000050"
            ]
        );
        // Once the create names its start, the floor is below it on every timeline.
        in_use
            .note_physical(
                "wal/base-backup-20261207000000000000",
                "00000002000000000000004F",
            )
            .expect("a segment name");
        let decision = decide_wal(&listing, &record, &in_use, now(), DAY);
        let deleted: Vec<&str> = decision.delete.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            deleted,
            [
                "wal/000000010000000000000030",
                "wal/00000001000000000000003C"
            ]
        );
    }

    fn put(store: &dyn Store, name: &str, body: &'static [u8]) {
        let stream = futures::stream::once(async move { Ok(bytes::Bytes::from_static(body)) });
        futures::executor::block_on(store.put(name, stream.boxed(), None)).expect("put");
    }

    async fn why_not_shared(store: &dyn Store, start: &WalFileName) -> Option<String> {
        shared_base_condemned(store, BASE_NEW, start)
            .await
            .expect("answers")
    }

    #[tokio::test]
    async fn an_unreadable_record_deletes_nothing_and_turns_creates_to_a_new_base() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = crate::store::local::LocalStore::new(dir.path());
        for name in [segment(1), segment(2), segment(5)] {
            put(&store, &name, b"segment");
        }
        put(&store, WAL_CONDEMNED, b"{\"floors\": [trunc");
        let start = WalFileName::parse("000000010000000000000005").expect("a segment name");
        let why = shared_base_condemned(&store, BASE_NEW, &start).await;
        assert!(
            why.expect("answers").is_some(),
            "an unreadable record forbids sharing"
        );
        let report = sweep_wal(&store, &kept_from_5(), DAY, false)
            .await
            .expect("sweeps");
        assert!(report.deleted.is_empty(), "{report:?}");
        for name in [segment(1), segment(2), segment(5)] {
            assert!(store.head(&name).await.is_ok(), "{name} deleted");
        }
        let record = read_record(&store)
            .await
            .expect("readable again")
            .expect("written");
        assert_eq!(record.floors.len(), 1);
        assert_eq!(record.floors[0].below, "000000010000000000000005");
        assert!(why_not_shared(&store, &start).await.is_none());
        // Written anew, it condemns again; a sweep once the grace has passed (none here)
        // deletes below today's floor only.
        let report = sweep_wal(&store, &kept_from_5(), Duration::ZERO, false)
            .await
            .expect("sweeps");
        assert_eq!(names(&report.deleted), [segment(1), segment(2)]);
        assert!(store.head(&segment(5)).await.is_ok());
    }
}
