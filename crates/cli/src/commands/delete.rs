use anyhow::Result;
use serde_json::json;
use synapse_backup_core::commands::delete::delete_backup;

use super::{volumes_json, Context};
use crate::output::emit_json;

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
    if context.json {
        emit_json(json!({
            "ok": true,
            "deleted": id,
            "store": store.describe(),
            "volumes": volumes_json(&outcome.volumes, false),
            "volume-warning": outcome.volume_warning,
        }));
    } else {
        eprintln!("deleted {id} from {}", store.describe());
        super::report_volumes(&outcome.volumes, false, outcome.volume_warning.as_deref());
    }
    Ok(())
}
