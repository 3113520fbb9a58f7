//! What every command and every repository operation is given, as one value: the store, the
//! passphrase (when the configuration has one), progress and cancellation.

use std::sync::Arc;

use secrecy::SecretString;

use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crate::store::Store;

pub struct OpContext<'a> {
    pub store: &'a dyn Store,
    /// `None` when none is configured: listing and deleting from a store without media volumes
    /// work without it; everything that opens a backup asks for it through [`Self::passphrase`].
    pub passphrase: Option<SecretString>,
    pub progress: Arc<dyn Progress>,
    /// Set when the user asks to stop; every long step checks it.
    pub cancel: Cancel,
}

impl OpContext<'_> {
    /// The passphrase, or a configuration error saying where to set it.
    pub fn passphrase(&self) -> Result<&SecretString> {
        self.passphrase.as_ref().ok_or_else(|| {
            Error::config(
                "no backup passphrase is configured; set [backup] passphrase-file or SYNAPSE_BACKUP_PASSPHRASE",
            )
        })
    }
}
