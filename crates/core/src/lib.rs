//! synapse-backup's library: everything but the command line.
//!
//! - [`config`]: the tool's TOML configuration, validated up front.
//! - [`synapse`]: what homeserver.yaml says, and whether Synapse runs.
//! - [`database`]: consistent database copies.
//! - [`manifest`] and [`archive`]: what a backup holds and its tar layer.
//! - [`crypto`]: OpenPGP passphrase encryption that `gpg` reads.
//! - [`store`]: S3 and local-folder storage behind one trait.
//! - [`provider`]: the media Synapse's storage providers hold.
//! - [`repository`]: what a backup repository is: backup ids, what in a store is trusted,
//!   reading objects and volumes, garbage collection.
//! - [`host`]: what the tool keeps on this host: locks, the restore journal's folder, scratch.
//! - [`commands`]: create, verify, restore, delete, prune and check (list is
//!   [`repository::catalog`] as it is).
//! - [`error`]: typed errors, their kinds and advice; [`progress`] and [`monitoring`]: what a
//!   long run reports, and how a night's result reaches a dashboard.

pub mod archive;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod database;
pub mod error;
pub mod host;
pub mod manifest;
pub mod monitoring;
pub mod progress;
pub mod provider;
pub mod repository;
pub mod store;
pub mod synapse;

pub use error::{Error, ErrorKind, Result};
