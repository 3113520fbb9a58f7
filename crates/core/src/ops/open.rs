//! Opening a stored backup for reading: download stream → decryption → plaintext reader.

use crate::crypto::{self, DecryptReader};
use crate::error::{Error, Result};
use crate::progress::Cancel;
use crate::store::ByteStream;

use super::pipe::ObjectReader;

/// Decrypts `stream` (the object of backup `id`). Call from a blocking thread.
pub fn open_backup(
    stream: ByteStream,
    handle: tokio::runtime::Handle,
    passphrase: &secrecy::SecretString,
    id: &str,
    cancel: Cancel,
) -> Result<DecryptReader<'static>> {
    let reader = ObjectReader::new(stream, handle, cancel.clone());
    // A read cut by Ctrl-C must not pass for a wrong passphrase or a damaged object.
    crypto::decrypt(reader, passphrase, id).map_err(|e| {
        if cancel.is_cancelled() {
            Error::Interrupted
        } else {
            e
        }
    })
}
