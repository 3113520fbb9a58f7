use anyhow::Result;
use serde_json::json;
use synapse_backup_core::ops::catalog::delete_backup;

use super::Context;
use crate::output::emit_json;

pub async fn run(context: &Context, id: &str) -> Result<()> {
    let store = context.store()?;
    delete_backup(store.as_ref(), id).await?;
    if context.json {
        emit_json(json!({ "ok": true, "deleted": id, "store": store.describe() }));
    } else {
        eprintln!("deleted {id} from {}", store.describe());
    }
    Ok(())
}
