//! `delete-backup`: one backup's base and index, then the volumes nothing else needs.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::Result;
use crate::repository::gc::{delete_base, require_passphrase_for_shared, sweep_after, SweepReport};
use crate::repository::BackupId;
use crate::repository::OpContext;

/// What deleting one backup did to the media volumes.
#[derive(Debug, Clone)]
pub struct DeleteOutcome {
    pub sweep: SweepReport,
    pub volume_warning: Option<String>,
}

/// Deletes backup `id` (an unknown id is an error), then condemns or deletes the media volumes
/// no remaining backup needs.
pub async fn delete_backup(
    ctx: &OpContext<'_>,
    id: &BackupId,
    grace: Duration,
) -> Result<DeleteOutcome> {
    let store = ctx.store;
    // Only backups are ever deleted (the type says so): nothing else in the prefix is ours.
    store.head(id.as_str()).await?;
    require_passphrase_for_shared(ctx).await?;
    delete_base(store, id).await?;
    let (sweep, volume_warning) = sweep_after(ctx, grace, false, &HashSet::new()).await;
    Ok(DeleteOutcome {
        sweep,
        volume_warning,
    })
}
