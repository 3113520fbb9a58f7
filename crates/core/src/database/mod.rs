//! Consistent copies of Synapse's database.

pub mod postgres;
pub mod sqlite;
