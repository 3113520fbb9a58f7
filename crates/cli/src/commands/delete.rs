use anyhow::Result;
use serde::Serialize;
use synapse_backup_core::commands::delete::{delete_backup, DeleteOutcome};

use super::{Context, SweptOutput};
use crate::output::{emit, CommandOutput};

pub async fn run(context: &Context, id: &str) -> Result<()> {
    let store = context.store()?;
    // Needed only when the store holds media volumes; the library says so then.
    let passphrase = context.config.passphrase().ok();
    let ctx = context.op(store.as_ref(), passphrase);
    let id = super::backup_id(
        id,
        "; delete-backup deletes backups only, and leaves every other object in the store alone",
    )?;
    let outcome = delete_backup(&ctx, &id, context.config.retention.delete_grace).await?;
    let store = store.describe();
    emit(context.json, &Deleted::of(id.as_str(), &store, &outcome))?;
    Ok(())
}

/// What `delete-backup` prints.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Deleted<'a> {
    ok: bool,
    deleted: &'a str,
    store: &'a str,
    volumes: SweptOutput<'a>,
    wal: SweptOutput<'a>,
    volume_warning: Option<&'a str>,
}

impl<'a> Deleted<'a> {
    fn of(id: &'a str, store: &'a str, outcome: &'a DeleteOutcome) -> Self {
        Deleted {
            ok: true,
            deleted: id,
            store,
            volumes: SweptOutput::volumes(&outcome.sweep.volumes, false),
            wal: SweptOutput::wal(&outcome.sweep.wal, false),
            volume_warning: outcome.volume_warning.as_deref(),
        }
    }
}

impl CommandOutput for Deleted<'_> {
    fn print_human(&self) {
        eprintln!("deleted {} from {}", self.deleted, self.store);
        self.volumes.print_human(self.volume_warning);
        self.wal.print_human(None);
    }
}
