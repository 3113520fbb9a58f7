//! Choosing the id of a new backup (`repository::BackupId`: the UTC time to the microsecond).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::host::state_dir::StateDir;
use crate::repository::BackupId;
use crate::store::Store;

/// Chooses a backup id no backup in the store has.
///
/// Two create-backups on one host that read the clock in the same microsecond would pick the
/// same id, and the later upload would replace the earlier backup (seen once in the concurrency
/// test), which asking the store cannot prevent, since neither has uploaded yet. So the id is
/// chosen under a host-wide lock held until the clock has moved past it.
pub(super) async fn unused_backup_id(store: &dyn Store, state: &StateDir) -> Result<BackupId> {
    let _choosing = state.lock_id_choice();
    for _ in 0..20 {
        let id = BackupId::now();
        match store.head(id.as_str()).await {
            Err(Error::NotFound { .. }) => {
                while BackupId::now() <= id {
                    std::hint::spin_loop();
                }
                return Ok(id);
            }
            Err(other) => return Err(other),
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    Err(Error::Other("could not find an unused backup id".into()))
}
