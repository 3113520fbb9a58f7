use anyhow::Result;
use synapse_backup_core::commands::prune::{prune_backups, RetentionPolicy};

use super::{volumes_json, Context};
use crate::args::PruneArgs;
use crate::output::{emit_json, Table};
use serde_json::json;

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
    let decisions = &outcome.decisions;
    let removed = decisions.iter().filter(|d| !d.keep).count();
    if context.json {
        let rows: Vec<_> = decisions
            .iter()
            .map(|decision| {
                json!({
                    "backup-id": decision.backup_id,
                    "created": decision.created.to_rfc3339(),
                    "keep": decision.keep,
                    "kept-by": decision.reasons,
                })
            })
            .collect();
        emit_json(json!({
            "ok": true,
            "dry-run": args.dry_run,
            "deleted": if args.dry_run { 0 } else { removed },
            "would-delete": if args.dry_run { removed } else { 0 },
            "kept": decisions.len() - removed,
            "store": store.describe(),
            "backups": rows,
            "unverified": outcome.unverified.iter().map(|(id, why)| json!({
                "backup-id": id,
                "error": why,
            })).collect::<Vec<_>>(),
            "not-backups": outcome.strays,
            "volumes": volumes_json(&outcome.volumes, args.dry_run),
            "volume-warning": outcome.volume_warning,
        }));
        return Ok(());
    }
    let mut table = Table::new(["backup-id", "created", "action", "kept by"]);
    for decision in decisions {
        let action = match (decision.keep, args.dry_run) {
            (true, _) => "keep",
            (false, true) => "would delete",
            (false, false) => "deleted",
        };
        table.row([
            decision.backup_id.to_string(),
            decision.created.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            action.to_string(),
            decision.reasons.join(", "),
        ]);
    }
    crate::output::write_stdout(&table.render());
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    eprintln!(
        "{verb} {removed} of {} backups in {}",
        decisions.len(),
        store.describe()
    );
    if !outcome.unverified.is_empty() {
        eprintln!(
            "warning: {} object(s) named like backups do not open as themselves, so they were neither counted as kept nor deleted:",
            outcome.unverified.len()
        );
        for (id, why) in &outcome.unverified {
            eprintln!("  {id}: {why}");
        }
    }
    if !outcome.strays.is_empty() {
        eprintln!("not a backup (left alone): {}", outcome.strays.join(", "));
    }
    super::report_volumes(
        &outcome.volumes,
        args.dry_run,
        outcome.volume_warning.as_deref(),
    );
    Ok(())
}
