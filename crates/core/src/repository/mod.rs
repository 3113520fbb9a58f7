//! What a backup repository is, between the commands and the stores:
//!
//! - [`context`]: what every operation is given (store, passphrase, progress, cancel).
//! - [`id`]: which objects are backups; [`trust`]: how much a listing of the store may be trusted.
//! - `open`, `object_reader`: store stream → decryption → plaintext, with the wrong-passphrase
//!   and header-name checks; `object_writer`: plaintext → encryption → store.
//! - `pipe`: bounded buffers between blocking stages (tar, encryption) and the async store.
//! - `content_check`: the manifest check that verify and restore share.
//! - `volumes`: reading the media volumes a backup's files live in, and checking they exist.
//! - `runs`: reading the file-list runs a format-3 backup's media entries are in.
//! - `wants`: which entries restore and verify take from each volume, grouped from the runs
//!   into scratch lists on disk.
//! - [`wal`]: PostgreSQL's archived WAL files, one object each under `wal/`.
//! - [`catalog`]: every object named like a backup, whether it opens as itself, and `latest`.
//! - [`gc`]: which volumes may be deleted and when (pending and condemned markers, sweep).
//!
//! The store is untrusted: anyone who can write to the bucket can add, remove, truncate or
//! rename objects, and a lifecycle rule or a disk fault does the same without anyone meaning
//! to. So a name is only a claim. Only an object whose name parses as a [`BackupId`] is looked
//! at as a backup, and it counts (for retention, as a parent, as `latest`) only once its base
//! opens with the passphrase and its header names the same id.
//!
//! Nothing here imports a command.

pub mod catalog;
pub mod context;
pub mod gc;
pub mod id;
pub mod trust;

pub(crate) mod content_check;
pub(crate) mod object_reader;
pub(crate) mod object_writer;
pub(crate) mod open;
pub mod physical;
pub(crate) mod pipe;
pub(crate) mod runs;
pub(crate) mod volumes;
pub mod wal;
pub(crate) mod wants;

pub use content_check::ArchiveFormat;
pub use context::OpContext;
pub use id::{BackupId, NotABackupId};
pub use open::{check_plaintext_start, open_backup, BackupReader};
