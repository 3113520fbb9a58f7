//! Consistent copies of Synapse's database.

pub mod archiver;
pub mod counts;
pub mod media_rows;
pub mod physical;
pub mod postgres;
pub mod sqlite;
pub mod wal_names;
