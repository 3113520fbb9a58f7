use anyhow::Result;
use serde_json::json;
use synapse_backup_core::commands::check::{run_checks, CheckStatus};

use super::Context;
use crate::output::{emit_json, outln};

/// Prints every item, then fails with the first failure's error (its kind is the exit code).
pub async fn run(context: &Context) -> Result<()> {
    let store = context.store()?;
    let report = run_checks(&context.config, store.as_ref(), &context.cancel).await;
    if context.json {
        let checks: Vec<_> = report
            .items
            .iter()
            .map(|item| {
                json!({
                    "check": item.name,
                    "status": item.status.as_str(),
                    "detail": item.detail,
                })
            })
            .collect();
        emit_json(json!({ "ok": report.passed(), "checks": checks }));
    } else {
        for item in &report.items {
            let mark = match item.status {
                CheckStatus::Ok => "ok  ",
                CheckStatus::Warn => "WARN",
                CheckStatus::Fail => "FAIL",
            };
            outln!("{mark}  {:<15} {}", item.name, item.detail);
        }
    }
    match report.into_first_failure() {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}
