use anyhow::Result;
use serde_json::json;
use synapse_backup_core::ops::catalog::delete_backup;

use super::Context;
use crate::output::outln;

pub async fn run(context: &Context, id: &str) -> Result<()> {
    let store = context.store()?;
    delete_backup(store.as_ref(), id).await?;
    if context.json {
        outln!("{}", json!({ "deleted": id }));
    } else {
        eprintln!("deleted {id} from {}", store.describe());
    }
    Ok(())
}
