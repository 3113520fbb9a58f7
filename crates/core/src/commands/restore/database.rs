//! The PostgreSQL half of a restore: a second pass over a backup that has been verified in
//! full, streaming only the dump's parts into `pg_restore --single-transaction`.

use secrecy::SecretString;

use crate::archive::read_members_while;
use crate::database::postgres::Postgres;
use crate::error::{DatabaseTool, Error, Result};
use crate::manifest::POSTGRES_DUMP_PREFIX;
use crate::progress::Cancel;
use crate::store::Store;

use crate::repository::open_backup;

/// Restores the dump into the (empty, or set aside with `replace`) database. On failure the
/// database is as it was: pg_restore's transaction rolls back and a set-aside one is put back.
/// Returns the name the previous database was kept under, if it was set aside.
pub(crate) async fn restore_database(
    store: &dyn Store,
    id: &str,
    passphrase: &SecretString,
    postgres: &Postgres,
    replace: bool,
    cancel: &Cancel,
) -> Result<Option<String>> {
    // Only now, with everything verified, is the old database set aside.
    let kept = if replace {
        let postgres = postgres.clone();
        let id = id.to_string();
        blocking("database set-aside", move || {
            if postgres.table_count()? > 0 {
                postgres.set_aside(&id).map(Some)
            } else {
                Ok(None)
            }
        })
        .await?
    } else {
        None
    };
    let restored = feed_pg_restore(store, id, passphrase, postgres, cancel.clone()).await;
    if let Err(e) = restored {
        if let Some(kept) = kept.clone() {
            let postgres = postgres.clone();
            let undo = blocking("database put-back", move || postgres.put_back(&kept)).await;
            if let Err(undo) = undo {
                tracing::error!("could not put the previous database back in place: {undo}");
            }
        }
        return Err(e);
    }
    Ok(kept)
}

async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::task_failed(what, e))?
}

/// Streams the dump's parts into pg_restore, and stops reading once they have passed.
async fn feed_pg_restore(
    store: &dyn Store,
    id: &str,
    passphrase: &SecretString,
    postgres: &Postgres,
    cancel: Cancel,
) -> Result<()> {
    let stream = store.get(id).await?;
    let handle = tokio::runtime::Handle::current();
    let postgres = postgres.clone();
    let passphrase = passphrase.clone();
    let backup_id = id.to_string();
    blocking("database restore", move || {
        let mut process = postgres.start_restore()?;
        let fed = (|| -> Result<()> {
            let reader = open_backup(stream, handle, &passphrase, &backup_id, cancel)?;
            let mut seen_parts = false;
            read_members_while(reader, &backup_id, |member| {
                if !member.path.starts_with(POSTGRES_DUMP_PREFIX) {
                    return Ok(!seen_parts);
                }
                seen_parts = true;
                std::io::copy(member.data, &mut process)
                    .map(|_| true)
                    .map_err(|e| {
                        Error::database(DatabaseTool::PgRestore, format!("feeding pg_restore: {e}"))
                    })
            })
        })();
        match fed {
            Ok(()) => process.finish(),
            // pg_restore's own message says more than a broken pipe.
            Err(e) => match process.finish() {
                Err(pg) => Err(pg),
                Ok(()) => Err(e),
            },
        }
    })
    .await
}
