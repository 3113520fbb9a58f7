//! What a backup repository is, between the commands and the stores: which objects are backups
//! ([`id`]), and how much a listing of the store may be trusted ([`trust`]).
//!
//! The store is untrusted: anyone who can write to the bucket can add, remove, truncate or
//! rename objects, and a lifecycle rule or a disk fault does the same without anyone meaning
//! to. So a name is only a claim. Only an object whose name parses as a [`BackupId`] is looked
//! at as a backup, and it counts (for retention, as a parent, as `latest`) only once its base
//! opens with the passphrase and its header names the same id.

pub mod id;
pub mod trust;

pub use id::{BackupId, NotABackupId};
