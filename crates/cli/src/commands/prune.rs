use anyhow::Result;
use serde::Serialize;
use synapse_backup_core::commands::prune::{
    prune_backups, PruneDecision, PruneOutcome, RetentionPolicy,
};

use super::{Context, SweptOutput};
use crate::args::PruneArgs;
use crate::output::{emit, CommandOutput, Table};

pub async fn run(context: &Context, args: &PruneArgs) -> Result<()> {
    let flags = RetentionPolicy {
        keep_last: args.keep_last,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
    };
    // Flags replace the configured policy as a whole (mixing the two would surprise).
    let policy = if flags.keeps_nothing() {
        context.config.retention.policy
    } else {
        flags
    };
    let store = context.store()?;
    // A backup counts as kept only once it opens with the passphrase.
    let passphrase = context.config.passphrase()?;
    let ctx = context.op(store.as_ref(), Some(passphrase));
    let grace = context.config.retention.delete_grace;
    let outcome = prune_backups(&ctx, &policy, args.dry_run, grace).await?;
    let store = store.describe();
    emit(context.json, &Pruned::of(&outcome, &store, args.dry_run))?;
    Ok(())
}

/// What `prune-backups` prints.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Pruned<'a> {
    ok: bool,
    dry_run: bool,
    deleted: usize,
    would_delete: usize,
    kept: usize,
    store: &'a str,
    backups: Vec<PruneRow<'a>>,
    unverified: Vec<Unverified<'a>>,
    not_backups: &'a [String],
    volumes: SweptOutput<'a>,
    wal: SweptOutput<'a>,
    volume_warning: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct PruneRow<'a> {
    backup_id: &'a str,
    created: String,
    keep: bool,
    kept_by: &'a [&'static str],
    /// The same time as `created`, as the table shows it.
    #[serde(skip)]
    created_utc: String,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Unverified<'a> {
    backup_id: &'a str,
    error: &'a str,
}

impl<'a> Pruned<'a> {
    fn of(outcome: &'a PruneOutcome, store: &'a str, dry_run: bool) -> Self {
        let removed = outcome.decisions.iter().filter(|d| !d.keep).count();
        let row = |d: &'a PruneDecision| PruneRow {
            backup_id: d.backup_id.as_str(),
            created: d.created.to_rfc3339(),
            keep: d.keep,
            kept_by: &d.reasons,
            created_utc: d.created.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        };
        Pruned {
            ok: true,
            dry_run,
            deleted: if dry_run { 0 } else { removed },
            would_delete: if dry_run { removed } else { 0 },
            kept: outcome.decisions.len() - removed,
            store,
            backups: outcome.decisions.iter().map(row).collect(),
            unverified: outcome
                .unverified
                .iter()
                .map(|(id, why)| Unverified {
                    backup_id: id,
                    error: why,
                })
                .collect(),
            not_backups: &outcome.strays,
            volumes: SweptOutput::volumes(&outcome.sweep.volumes, dry_run),
            wal: SweptOutput::wal(&outcome.sweep.wal, dry_run),
            volume_warning: outcome.volume_warning.as_deref(),
        }
    }
}

impl CommandOutput for Pruned<'_> {
    fn print_human(&self) {
        let mut table = Table::new(["backup-id", "created", "action", "kept by"]);
        for row in &self.backups {
            let action = match (row.keep, self.dry_run) {
                (true, _) => "keep",
                (false, true) => "would delete",
                (false, false) => "deleted",
            };
            table.row([
                row.backup_id.to_string(),
                row.created_utc.clone(),
                action.to_string(),
                row.kept_by.join(", "),
            ]);
        }
        crate::output::write_stdout(&table.render());
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        eprintln!(
            "{verb} {} of {} backups in {}",
            self.deleted + self.would_delete,
            self.backups.len(),
            self.store
        );
        if !self.unverified.is_empty() {
            eprintln!(
                "warning: {} object(s) named like backups do not open as themselves, so they were neither counted as kept nor deleted:",
                self.unverified.len()
            );
            for object in &self.unverified {
                eprintln!("  {}: {}", object.backup_id, object.error);
            }
        }
        if !self.not_backups.is_empty() {
            eprintln!("not a backup (left alone): {}", self.not_backups.join(", "));
        }
        self.volumes.print_human(self.volume_warning);
        self.wal.print_human(None);
    }
}
