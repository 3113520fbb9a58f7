//! Reading one stored object (a base, a volume, an index) on a blocking thread: download,
//! decrypt, and hand the plaintext to a reader that runs to the end of the stream, so the
//! OpenPGP integrity check always runs.

use crate::error::{CorruptKind, Error, Result};

use super::{open_backup, BackupReader, OpContext};

/// Opens object `name` and runs `read` on its plaintext on a blocking thread. The one place a
/// stored object is read this way: verify, the parent's index, and a restore's volumes.
pub(crate) async fn read_object<T: Send + 'static>(
    ctx: &OpContext<'_>,
    name: &str,
    read: impl FnOnce(BackupReader<'static>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let stream = ctx.store.get(name).await?;
    let handle = tokio::runtime::Handle::current();
    let passphrase = ctx.passphrase()?.clone();
    let cancel = ctx.cancel.clone();
    let object = name.to_string();
    let outcome = tokio::task::spawn_blocking(move || -> Result<T> {
        let reader = open_backup(stream, handle, &passphrase, &object, cancel)?;
        read(reader)
    })
    .await
    .map_err(|e| Error::task_failed(&format!("reading {name}"), e))?;
    outcome
}

/// [`read_object`] for a shared object (a volume, a run, an index) read after the backup's base
/// opened with the passphrase: an object that then does not open is damaged in its first bytes
/// (a compressed one fails there, where a plain one would fail only at its end) or was written
/// with another passphrase, never a wrong passphrase to fix in the config.
pub(crate) async fn read_shared_object<T: Send + 'static>(
    ctx: &OpContext<'_>,
    name: &str,
    read: impl FnOnce(BackupReader<'static>) -> Result<T> + Send + 'static,
) -> Result<T> {
    read_object(ctx, name, read).await.map_err(|e| match e {
        Error::WrongPassphrase { id } => Error::corrupt(
            &id,
            CorruptKind::Integrity,
            "it does not open with the passphrase that opened the backup: it is damaged in its first bytes, or was written with another passphrase",
        ),
        other => other,
    })
}
