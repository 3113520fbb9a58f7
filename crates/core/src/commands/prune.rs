//! `prune-backups`: a retention policy in the manner of restic's `forget`, applied to backup ids,
//! which carry their creation time (ours and the charm's alike).
//!
//! Safety rules: only backups that open with the passphrase as themselves are ever considered,
//! kept or deleted (an object that merely looks like one, perhaps an attacker's, is reported and
//! left alone); a policy must keep something, and every rule keeps the newest backup, so pruning
//! never empties the store; a dry run shows the exact plan.

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use std::collections::HashSet;
use std::time::Duration;

pub use crate::config::RetentionPolicy;
use crate::error::{Error, Refusal, Result};
use crate::repository::BackupId;
use crate::repository::OpContext;

use crate::repository::catalog::list_backups;

use crate::repository::gc::{delete_base, require_passphrase_for_shared, sweep_after, SweepReport};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneDecision {
    pub backup_id: BackupId,
    pub created: DateTime<Utc>,
    pub keep: bool,
    /// The rules that keep it (`last`, `daily`, `weekly`, `monthly`); empty when it goes.
    pub reasons: Vec<&'static str>,
}

/// Decides, newest first, which of `ids` the policy keeps.
pub fn plan(ids: &[BackupId], policy: &RetentionPolicy) -> Vec<PruneDecision> {
    let mut backups: Vec<(DateTime<Utc>, &BackupId)> =
        ids.iter().map(|id| (id.created(), id)).collect();
    backups.sort_by(|a, b| b.cmp(a));

    type Period = fn(&DateTime<Utc>, usize) -> (i32, u32, u32);
    let rules: [(&'static str, usize, Period); 4] = [
        ("last", policy.keep_last, |_, index| (0, 0, index as u32)),
        ("daily", policy.keep_daily, |t, _| {
            (t.year(), t.ordinal(), 0)
        }),
        ("weekly", policy.keep_weekly, |t, _| {
            let week = t.iso_week();
            (week.year(), week.week(), 0)
        }),
        ("monthly", policy.keep_monthly, |t, _| {
            (t.year(), t.month(), 0)
        }),
    ];
    let mut kept_per_rule = [0usize; 4];
    let mut last_period: [Option<(i32, u32, u32)>; 4] = [None; 4];
    backups
        .iter()
        .enumerate()
        .map(|(index, (created, id))| {
            let mut reasons = Vec::new();
            for (rule, (name, limit, period_of)) in rules.iter().enumerate() {
                let period = period_of(created, index);
                // Newest first, so the first backup seen in a period is that period's newest.
                if last_period[rule] != Some(period) {
                    last_period[rule] = Some(period);
                    if kept_per_rule[rule] < *limit {
                        kept_per_rule[rule] += 1;
                        reasons.push(*name);
                    }
                }
            }
            PruneDecision {
                backup_id: (*id).clone(),
                created: *created,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

/// What a prune decided and what it did to the media volumes.
#[derive(Debug, Clone)]
pub struct PruneOutcome {
    pub decisions: Vec<PruneDecision>,
    /// Objects named like backups that do not open as themselves, with why: neither kept nor
    /// deleted.
    pub unverified: Vec<(String, String)>,
    /// Objects not named like backups: left alone.
    pub strays: Vec<String>,
    pub sweep: SweepReport,
    /// Why volumes were left alone this time (they stay until a later prune can read the
    /// store), when they were.
    pub volume_warning: Option<String>,
}

/// Applies `policy` to the store (deleting nothing when `dry_run`) and returns the plan, then
/// condemns or deletes the media volumes no remaining backup needs (`sweep`).
pub async fn prune_backups(
    ctx: &OpContext<'_>,
    policy: &RetentionPolicy,
    dry_run: bool,
    grace: Duration,
) -> Result<PruneOutcome> {
    let store = ctx.store;
    if policy.keeps_nothing() {
        return Err(Error::config(
            "a retention policy must keep something: give --keep-last, --keep-daily, --keep-weekly or --keep-monthly, or set them in [retention]",
        ));
    }
    let Some(passphrase) = ctx.passphrase.as_ref() else {
        return Err(Error::config(
            "prune-backups needs the passphrase: a backup counts as kept only once it opens with it, so that an object merely named like a backup never pushes real ones out; set [backup] passphrase-file or SYNAPSE_BACKUP_PASSPHRASE",
        ));
    };
    let catalog = list_backups(store, Some(passphrase), &ctx.cancel).await?;
    let unverified = catalog.unverified();
    for (id, why) in &unverified {
        tracing::warn!("{id} is neither kept nor deleted: {why}");
    }
    let ids: Vec<BackupId> = catalog.verified().map(|b| b.backup_id.clone()).collect();
    let decisions = plan(&ids, policy);
    // A backup from a host whose clock ran ahead would pass for the newest forever and push out
    // the real newest ones.
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    if let Some(future) = decisions.iter().find(|d| d.created > tomorrow) {
        return Err(Error::refused(Refusal::FutureBackup, format!(
            "backup {} is dated {}, in the future (the clock of the host that made it was wrong); check it, delete it with delete-backup or rename it, then prune again",
            future.backup_id,
            future.created.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    let leaving: HashSet<BackupId> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.backup_id.clone())
        .collect();
    require_passphrase_for_shared(ctx).await?;
    if !dry_run {
        for id in &leaving {
            delete_base(store, id).await?;
            tracing::info!("deleted {id}");
        }
    }
    let (sweep, volume_warning) = sweep_after(ctx, grace, dry_run, &leaving).await;
    Ok(PruneOutcome {
        decisions,
        unverified,
        strays: catalog.strays,
        sweep,
        volume_warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(stamp: &str) -> BackupId {
        BackupId::parse(&format!("backup-{stamp}000000")).unwrap()
    }

    fn kept(decisions: &[PruneDecision]) -> Vec<BackupId> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.backup_id.clone())
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let ids = [
            id("20260101000000"),
            id("20260103000000"),
            id("20260102000000"),
        ];
        let policy = RetentionPolicy {
            keep_last: 2,
            ..Default::default()
        };
        assert_eq!(
            kept(&plan(&ids, &policy)),
            [id("20260103000000"), id("20260102000000")]
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let ids = [
            id("20260101010000"),
            id("20260101230000"),
            id("20260102120000"),
            id("20260102130000"),
            id("20260105000000"),
        ];
        let policy = RetentionPolicy {
            keep_daily: 2,
            ..Default::default()
        };
        let decisions = plan(&ids, &policy);
        assert_eq!(
            kept(&decisions),
            [id("20260105000000"), id("20260102130000")]
        );
        assert_eq!(decisions.len(), 5);
    }

    #[test]
    fn rules_add_up_and_the_newest_is_always_kept() {
        // Every day of January and February 2026 at noon.
        let ids: Vec<BackupId> = (0..59)
            .map(|day| BackupId::at(id("20260101120000").created() + chrono::Duration::days(day)))
            .collect();
        let policy = RetentionPolicy {
            keep_last: 1,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 2,
        };
        let decisions = plan(&ids, &policy);
        let newest = &decisions[0];
        assert_eq!(newest.backup_id, id("20260228120000"));
        assert_eq!(newest.reasons, ["last", "daily", "weekly", "monthly"]);
        // February 22–28 (daily; the 22nd, a Sunday, also ends the second week), the Sundays
        // February 15 and 8 (weekly), January 31 (monthly).
        let kept = kept(&decisions);
        assert_eq!(kept.len(), 7 + 2 + 1, "{kept:?}");
        for day in ["20260215", "20260208", "20260131"] {
            assert!(kept.contains(&id(&format!("{day}120000"))), "{day}");
        }
        assert!(!kept.contains(&id("20260201120000")));
        assert!(!kept.contains(&id("20260101120000")));
    }
}
