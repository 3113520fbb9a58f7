//! How many users, rooms, events and local media rows a database holds: recorded in a backup's
//! header at the moment of its snapshot, and compared by `drill` with the restored database.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::postgres::Postgres;
use crate::error::{DatabaseTool, Error, Result};

/// Row counts of Synapse's main tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    pub users: u64,
    pub rooms: u64,
    pub events: u64,
    pub local_media: u64,
}

impl RowCounts {
    /// The tables counted, in the order of [`COUNT_SQL`]'s columns.
    pub const TABLES: [&'static str; 4] = ["users", "rooms", "events", "local_media_repository"];

    fn from_fields(fields: &[&str]) -> Option<RowCounts> {
        let numbers: Vec<u64> = fields
            .iter()
            .map(|f| f.trim().parse().ok())
            .collect::<Option<_>>()?;
        match numbers.as_slice() {
            [users, rooms, events, local_media] => Some(RowCounts {
                users: *users,
                rooms: *rooms,
                events: *events,
                local_media: *local_media,
            }),
            _ => None,
        }
    }

    /// `users 3, rooms 2, events 97, local media 12`.
    pub fn describe(&self) -> String {
        format!(
            "users {}, rooms {}, events {}, local media {}",
            self.users, self.rooms, self.events, self.local_media
        )
    }
}

const COUNT_SQL: &str = "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM rooms), \
     (SELECT count(*) FROM events), (SELECT count(*) FROM local_media_repository)";

/// The counts of the SQLite database at `path`; `None` when it lacks one of Synapse's tables
/// (not a Synapse database, or one never started).
pub fn sqlite_counts(path: &Path) -> Result<Option<RowCounts>> {
    let fail = |e: rusqlite::Error| {
        Error::database(
            DatabaseTool::Sqlite,
            format!("counting rows in {}: {e}", path.display()),
        )
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
    for table in RowCounts::TABLES {
        let found: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |row| row.get(0),
            )
            .map_err(fail)?;
        if found == 0 {
            return Ok(None);
        }
    }
    let counts = conn
        .query_row(COUNT_SQL, [], |row| {
            Ok(RowCounts {
                users: row.get::<_, i64>(0)?.max(0) as u64,
                rooms: row.get::<_, i64>(1)?.max(0) as u64,
                events: row.get::<_, i64>(2)?.max(0) as u64,
                local_media: row.get::<_, i64>(3)?.max(0) as u64,
            })
        })
        .map_err(fail)?;
    Ok(Some(counts))
}

/// The counts of a PostgreSQL database, in one statement (one snapshot).
pub fn postgres_counts(postgres: &Postgres, database: Option<&str>) -> Result<Option<RowCounts>> {
    let present = postgres.query_in_database(database, &tables_present_sql())?;
    if present.trim() != RowCounts::TABLES.len().to_string() {
        return Ok(None);
    }
    let row = postgres.query_in_database(database, COUNT_SQL)?;
    parse_row(&row, postgres).map(Some)
}

fn tables_present_sql() -> String {
    let names: Vec<String> = RowCounts::TABLES
        .iter()
        .map(|t| format!("to_regclass('{t}')"))
        .collect();
    format!(
        "SELECT count(*) FROM (VALUES ({})) AS t(r) WHERE r IS NOT NULL",
        names.join("), (")
    )
}

fn parse_row(row: &str, postgres: &Postgres) -> Result<RowCounts> {
    let fields: Vec<&str> = row.trim().split('|').collect();
    RowCounts::from_fields(&fields).ok_or_else(|| {
        Error::database(
            DatabaseTool::Psql,
            format!(
                "unexpected row counts from {}: {row:?}",
                postgres.describe()
            ),
        )
    })
}

/// A `psql` session holding a repeatable-read transaction whose snapshot it exported: the
/// counts taken in it and a `pg_dump --snapshot` see the same database.
pub struct ExportedSnapshot {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub name: String,
    describe: String,
}

impl ExportedSnapshot {
    pub fn open(postgres: &Postgres) -> Result<ExportedSnapshot> {
        let mut child = postgres
            .psql_command()
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| super::postgres::missing_program(DatabaseTool::Psql, e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::database(DatabaseTool::Psql, "psql has no pipes"));
        };
        let mut session = ExportedSnapshot {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            name: String::new(),
            describe: postgres.describe(),
        };
        session.name = session
            .ask("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_export_snapshot();")?;
        Ok(session)
    }

    /// The counts in the exported snapshot; `None` without Synapse's tables.
    pub fn counts(&mut self, postgres: &Postgres) -> Result<Option<RowCounts>> {
        let present = self.ask(&format!("{};", tables_present_sql()))?;
        if present.trim() != RowCounts::TABLES.len().to_string() {
            return Ok(None);
        }
        let row = self.ask(&format!("{COUNT_SQL};"))?;
        parse_row(&row, postgres).map(Some)
    }

    /// Sends one statement that returns one row and reads that row.
    fn ask(&mut self, sql: &str) -> Result<String> {
        let failed = |this: &mut ExportedSnapshot, what: String| {
            let _ = this.child.kill();
            let _ = this.child.wait();
            let mut stderr = String::new();
            if let Some(mut pipe) = this.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            Error::database(
                DatabaseTool::Psql,
                format!("psql on {}: {what}: {}", this.describe, stderr.trim()),
            )
        };
        if let Err(e) = writeln!(self.stdin, "{sql}").and_then(|()| self.stdin.flush()) {
            return Err(failed(self, format!("cannot send a query: {e}")));
        }
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(failed(self, "the session ended".into())),
            Ok(_) => Ok(line.trim().to_string()),
            Err(e) => Err(failed(self, format!("cannot read its answer: {e}"))),
        }
    }

    /// Ends the transaction (once pg_dump holds the snapshot it imported).
    pub fn close(mut self) {
        let _ = writeln!(self.stdin, "COMMIT;");
        drop(self.stdin);
        let _ = self.child.wait();
    }
}
