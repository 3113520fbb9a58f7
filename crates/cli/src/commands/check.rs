use anyhow::Result;
use serde::Serialize;
use synapse_backup_core::commands::check::{run_checks, CheckReport, CheckStatus};

use super::Context;
use crate::output::{emit, outln, CommandOutput};

/// Prints every item, then fails with the first failure's error (its kind is the exit code).
pub async fn run(context: &Context) -> Result<()> {
    let store = context.store()?;
    let report = run_checks(&context.config, store.as_ref(), &context.cancel).await;
    emit(context.json, &Checked::of(&report))?;
    match report.into_first_failure() {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

/// What `check` prints: every item, failed or not.
#[derive(Serialize)]
struct Checked<'a> {
    ok: bool,
    checks: Vec<CheckRow<'a>>,
}

#[derive(Serialize)]
struct CheckRow<'a> {
    check: &'static str,
    #[serde(serialize_with = "status_name")]
    status: CheckStatus,
    detail: &'a str,
}

fn status_name<S: serde::Serializer>(status: &CheckStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}

impl<'a> Checked<'a> {
    fn of(report: &'a CheckReport) -> Self {
        Checked {
            ok: report.passed(),
            checks: report
                .items
                .iter()
                .map(|item| CheckRow {
                    check: item.name,
                    status: item.status,
                    detail: &item.detail,
                })
                .collect(),
        }
    }
}

impl CommandOutput for Checked<'_> {
    fn print_human(&self) {
        for item in &self.checks {
            let mark = match item.status {
                CheckStatus::Ok => "ok  ",
                CheckStatus::Warn => "WARN",
                CheckStatus::Fail => "FAIL",
            };
            outln!("{mark}  {:<15} {}", item.check, item.detail);
        }
    }
}
