//! PostgreSQL's continuous archiving through this tool: `wal-push` for `archive_command` and
//! `wal-fetch` for `restore_command`. Each WAL file is an object of its own under `wal/`
//! (`repository::wal`), encrypted like every object, so `gpg -d` opens it by hand.

mod fetch;
mod push;

pub use fetch::{wal_fetch, FetchReport, FETCH_AHEAD, PREFETCH_FOLDER};
pub use push::{push_parallelism, wal_push, PushOutcome, PushReport, PUSH_AHEAD};
