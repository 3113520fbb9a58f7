use anyhow::Result;
use serde::Serialize;
use synapse_backup_core::commands::drill::{
    run_drill, CheckOutcome, CheckStatus, DrillOptions, DrillReport, KeptDrill,
};
use synapse_backup_core::monitoring::RunFacts;
use synapse_backup_core::repository::catalog::newest_backup;

use super::Context;
use crate::args::DrillArgs;
use crate::output::{emit, outln, CommandOutput};

pub async fn run(context: &Context, args: &DrillArgs) -> Result<RunFacts> {
    let passphrase = context.config.passphrase()?;
    let store = context.store()?;
    let id = if args.id() == "latest" {
        newest_backup(store.as_ref(), &passphrase, &context.cancel).await?
    } else {
        super::backup_id(
            args.id(),
            "; or latest, the newest backup that opens with the passphrase",
        )?
    };
    let options = DrillOptions { keep: args.keep };
    let report = run_drill(
        &context.config,
        &context.op(store.as_ref(), Some(passphrase)),
        &id,
        &options,
    )
    .await?;
    emit(context.json, &Drilled::of(&report))?;
    let facts = RunFacts {
        server_name: Some(report.server_name.clone()),
        ..RunFacts::default()
    };
    if report.passed() {
        Ok(facts)
    } else {
        Err(synapse_backup_core::Error::DrillFailed {
            id: report.backup_id.clone(),
            checks: report.failed().join(", "),
        }
        .into())
    }
}

/// What `drill` prints.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Drilled<'a> {
    ok: bool,
    backup_id: &'a str,
    server_name: &'a str,
    synapse_command: &'a str,
    checks: &'a [CheckOutcome],
    kept: Option<&'a KeptDrill>,
    notes: &'a [String],
    seconds: f64,
}

impl<'a> Drilled<'a> {
    fn of(report: &'a DrillReport) -> Self {
        Drilled {
            ok: report.passed(),
            backup_id: &report.backup_id,
            server_name: &report.server_name,
            synapse_command: &report.synapse_command,
            checks: &report.checks,
            kept: report.kept.as_ref(),
            notes: &report.notes,
            seconds: report.elapsed.as_secs_f64(),
        }
    }
}

impl CommandOutput for Drilled<'_> {
    fn print_human(&self) {
        for note in self.notes {
            eprintln!("note: {note}");
        }
        outln!(
            "drill of {} ({}) with {}",
            self.backup_id,
            self.server_name,
            self.synapse_command
        );
        for check in self.checks {
            let mark = match check.status {
                CheckStatus::Passed => "ok  ",
                CheckStatus::Failed => "FAIL",
                CheckStatus::Skipped => "skip",
            };
            outln!(
                "  {mark} {:<12} {:>6.1}s  {}",
                check.name,
                check.seconds,
                check.detail
            );
        }
        let verdict = if self.ok {
            "passed: the backup boots as a homeserver"
        } else {
            "FAILED"
        };
        outln!("drill {verdict} in {:.1}s", self.seconds);
        if let Some(kept) = self.kept {
            outln!(
                "kept {} (--keep); start its Synapse again with:",
                kept.folder.display()
            );
            outln!("  {}", kept.start_command);
            if let Some(database) = &kept.database {
                outln!("its PostgreSQL database {database} is kept too; drop it when done: DROP DATABASE {database};");
            }
            outln!("remove the folder when done");
        }
    }
}
