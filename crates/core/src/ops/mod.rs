//! The operations behind the commands, and the plumbing they share.
//!
//! - `backup`, `restore`, `verify`, `catalog` (list, delete), `prune`: one module per command.
//! - `check`: the preflight (`synapse-backup check`).
//! - `content_check`: the manifest check that verify and restore share.
//! - `open`: store stream → decryption → plaintext, with the wrong-passphrase check.
//! - `pipe`: bounded buffers between blocking stages (tar, encryption) and the async store.
//! - `scratch`: a create's private scratch folder, and the removal of those a kill left.
//! - `state_dir`: the data dir's locks, where the restore journal lives too.

pub mod backup;
pub mod catalog;
pub mod check;
pub mod context;
pub mod prune;
pub mod restore;
pub mod verify;

mod content_check;
mod gather;
mod object_reader;
mod open;
mod pipe;
pub mod scratch;
mod state_dir;
pub mod sweep;

pub use context::OpContext;
pub use open::{check_plaintext_start, open_backup, BackupReader};
