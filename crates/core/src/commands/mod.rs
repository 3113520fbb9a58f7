//! The commands: one module per command, each a thin orchestration of the repository layer
//! ([`crate::repository`]) and the host ([`crate::host`]).
//!
//! - `backup` (create-backup), `restore`, `verify`, `delete`, `prune`; list-backups is the
//!   repository's catalog ([`crate::repository::catalog`]) shown as it is.
//! - `check`: the preflight (`synapse-backup check`).
//! - `wal`: `wal-push` and `wal-fetch`, PostgreSQL's archive and restore commands.
//!
//! The commands never import each other.

pub mod backup;
pub mod check;
pub mod delete;
pub mod drill;
pub mod prune;
pub mod restore;
pub mod verify;
pub mod wal;

pub use crate::repository::OpContext;
