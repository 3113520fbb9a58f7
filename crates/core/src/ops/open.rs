//! Opening a stored backup for reading: download stream → decryption → plaintext reader.

use crate::crypto::{self, DecryptReader};
use crate::error::Result;
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
    let reader = ObjectReader::new(stream, handle, cancel);
    crypto::decrypt(reader, passphrase, id)
}
