//! Reading one stored object (a base, a volume, an index) on a blocking thread: download,
//! decrypt, and hand the plaintext to a reader that runs to the end of the stream, so the
//! OpenPGP integrity check always runs.

use secrecy::SecretString;

use crate::error::{Error, Result};
use crate::progress::Cancel;
use crate::store::Store;

use super::{open_backup, BackupReader};

/// Opens object `name` and runs `read` on its plaintext on a blocking thread.
pub(crate) async fn read_object<T: Send + 'static>(
    store: &dyn Store,
    passphrase: &SecretString,
    cancel: &Cancel,
    name: &str,
    read: impl FnOnce(BackupReader<'static>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let stream = store.get(name).await?;
    let handle = tokio::runtime::Handle::current();
    let passphrase = passphrase.clone();
    let cancel = cancel.clone();
    let object = name.to_string();
    let outcome = tokio::task::spawn_blocking(move || -> Result<T> {
        let reader = open_backup(stream, handle, &passphrase, &object, cancel)?;
        read(reader)
    })
    .await
    .map_err(|e| Error::task_failed(&format!("reading {name}"), e))?;
    outcome
}
