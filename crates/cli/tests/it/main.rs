//! The integration tests of `synapse-backup`, in one test binary (one build of the shared
//! helpers, one link): run one module with e.g.
//! `cargo test -p synapse-backup --test it hostile_archives::`.
//!
//! Everything runs in one process, several tests at a time: a test never changes the process's
//! environment or working directory (it passes environment to the child it starts), and the
//! tests that share the loopback S3 server coordinate through [`common::s3_shared`] and
//! [`common::s3_exclusive`].

mod common;
/// The CLI's exit codes, the very file the binary is built from: tests name codes, never numbers.
#[allow(dead_code)]
#[path = "../../src/exit.rs"]
mod exit;

mod backup_restore;
mod check;
mod cli_output;
mod drill;
mod environment;
mod exit_codes;
mod golden;
mod hostile_archives;
mod incremental;
mod layouts;
mod monitoring;
mod physical;
mod physical_drill;
mod physical_gc;
mod postgres;
mod providers;
mod reliability;
mod s3_faults;
mod s3_store;
mod store_integrity;
mod units;
mod wal;
