//! What every operation on a backup needs, passed as one value instead of five arguments.

use std::sync::Arc;

use secrecy::SecretString;

use crate::progress::{Cancel, Progress};
use crate::store::Store;

pub struct OpContext<'a> {
    pub store: &'a dyn Store,
    pub passphrase: SecretString,
    pub progress: Arc<dyn Progress>,
    /// Set when the user asks to stop; every long step checks it.
    pub cancel: Cancel,
}
