//! synapse-backup's library: everything but the command line.
//!
//! - [`config`]: the tool's TOML configuration, validated up front.
//! - [`synapse`]: what homeserver.yaml says, and whether Synapse runs.
//! - [`database`]: consistent database copies.
//! - [`manifest`] and [`archive`]: what a backup holds and its tar layer.
//! - [`crypto`]: OpenPGP passphrase encryption that `gpg` reads.
//! - [`store`]: S3 and local-folder storage behind one trait.
//! - [`provider`]: the media Synapse's storage providers hold.
//! - [`repository`]: what a backup repository is: backup ids, and what in a store is trusted.
//! - [`ops`]: create, list, verify, restore and delete.

pub mod archive;
pub mod config;
pub mod crypto;
pub mod database;
pub mod error;
pub mod manifest;
pub mod monitoring;
pub mod ops;
pub mod progress;
pub mod provider;
pub mod repository;
pub mod store;
pub mod synapse;

pub use error::{Error, ErrorKind, Result};
