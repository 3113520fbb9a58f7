//! Consistent copies of Synapse's database.

pub mod sqlite;
