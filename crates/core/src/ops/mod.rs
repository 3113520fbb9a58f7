//! The operations behind the commands, and the plumbing that joins blocking stages (tar,
//! encryption, hashing) to the async object store.

pub mod backup;
pub mod catalog;
pub mod prune;
pub mod restore;
pub mod verify;

mod open;
mod pipe;

pub use open::{check_plaintext_start, open_backup, BackupReader};
