//! SQLite snapshots through SQLite's online backup API.
//!
//! A raw copy of a live `homeserver.db` (and its `-wal`) can catch a half-written transaction;
//! the backup API copies a consistent state while Synapse keeps writing.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::error::{DatabaseTool, Error, Result};

/// Copies the database at `source` into a new single-file database at `dest`.
pub fn snapshot(source: &Path, dest: &Path) -> Result<()> {
    if !source.is_file() {
        return Err(Error::config(format!(
            "the SQLite database {} named in homeserver.yaml does not exist",
            source.display()
        )));
    }
    let fail = |what: &str, e: rusqlite::Error| {
        Error::database(
            DatabaseTool::Sqlite,
            format!("SQLite snapshot of {}: {what}: {e}", source.display()),
        )
    };
    let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| fail("cannot open", e))?;
    src.busy_timeout(Duration::from_secs(60))
        .map_err(|e| fail("cannot set busy timeout", e))?;
    let mut dst = Connection::open(dest).map_err(|e| fail("cannot create the snapshot file", e))?;
    {
        let backup = Backup::new(&src, &mut dst).map_err(|e| fail("cannot start", e))?;
        // All pages in one step: the copy holds one read transaction, so a busy writer cannot
        // restart it again and again (which small steps would allow).
        loop {
            match backup.step(-1).map_err(|e| fail("copy failed", e))? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    // A single file with no -wal beside it is what a restore and `tar -x` by hand expect.
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|e| fail("cannot set journal mode", e))?;
    dst.close().map_err(|(_, e)| fail("cannot close", e))?;
    Ok(())
}

/// Runs `PRAGMA integrity_check` and returns its first complaint, if any.
pub fn integrity_check(path: &Path) -> Result<Option<String>> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
            Error::database(
                DatabaseTool::Sqlite,
                format!("cannot open {}: {e}", path.display()),
            )
        })?;
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|e| {
            Error::database(
                DatabaseTool::Sqlite,
                format!("integrity_check on {}: {e}", path.display()),
            )
        })?;
    Ok((result != "ok").then_some(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_of_a_wal_database_is_a_single_consistent_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("homeserver.db");
        let conn = Connection::open(&src).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE events(id INTEGER PRIMARY KEY, body TEXT);")
            .unwrap();
        for i in 0..500 {
            conn.execute(
                "INSERT INTO events(body) VALUES (?1)",
                [format!("event {i}")],
            )
            .unwrap();
        }
        let dest = dir.path().join("snap.db");
        snapshot(&src, &dest).unwrap();
        assert!(!dir.path().join("snap.db-wal").exists());
        assert_eq!(integrity_check(&dest).unwrap(), None);
        let copy = Connection::open(&dest).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
    }
}
