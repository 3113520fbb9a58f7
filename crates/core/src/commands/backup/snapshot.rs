//! The database's consistent copy, taken before the media are listed: a SQLite snapshot file
//! (SQLite's online backup API) or a running `pg_dump` that already holds its snapshot.

use std::io::BufRead;
use std::path::Path;

use crate::database::counts::{self, ExportedSnapshot, RowCounts};
use crate::database::postgres::Postgres;
use crate::database::sqlite;
use crate::error::{DatabaseTool, Error, Result};
use crate::manifest::{DatabaseInfo, DatabaseKind, Role};
use crate::progress::Progress;
use crate::repository::pipe::CHUNK;
use crate::synapse::{Database, HomeserverConfig};

use super::pipeline::Dump;
use super::sources::{file_size, Location, Source};
use super::BackupOptions;

pub(super) struct Snapshot {
    pub info: DatabaseInfo,
    /// The SQLite snapshot file to archive.
    pub file: Option<Source>,
    /// The PostgreSQL dump to stream.
    pub dump: Option<Dump>,
}

pub(super) async fn take(
    hs: &HomeserverConfig,
    options: &BackupOptions,
    temp: &Path,
    progress: &dyn Progress,
) -> Result<Snapshot> {
    match &hs.database {
        Database::Sqlite { path } => {
            progress.start("snapshotting SQLite database", None);
            let snapshot_path = temp.join("homeserver.db");
            let source = path.clone();
            let dest = snapshot_path.clone();
            let counts = tokio::task::spawn_blocking(move || -> Result<_> {
                sqlite::snapshot(&source, &dest)?;
                counts_or_warning(counts::sqlite_counts(&dest))
            })
            .await
            .map_err(|e| Error::task_failed("SQLite snapshot", e))??;
            progress.finish();
            let size = file_size(&snapshot_path)?;
            Ok(Snapshot {
                info: DatabaseInfo {
                    kind: DatabaseKind::Sqlite,
                    included: true,
                    note: None,
                    postgres: None,
                    counts,
                    physical: None,
                },
                file: Some(Source {
                    member: "database/homeserver.db".into(),
                    location: Location::At(snapshot_path),
                    role: Role::Database,
                    size,
                    provider: None,
                    stamp: None,
                }),
                dump: None,
            })
        }
        Database::Postgres(_) if options.skip_database => Ok(Snapshot {
            info: DatabaseInfo {
                kind: DatabaseKind::Postgresql,
                included: false,
                note: Some("--skip-database: the PostgreSQL database is not in this backup; restore it with its own tools (e.g. pgBackRest) before restoring this backup".into()),
                postgres: None,
                counts: None,
                physical: None,
            },
            file: None,
            dump: None,
        }),
        Database::Postgres(args) => {
            progress.start("starting pg_dump", None);
            let postgres = Postgres::new(args);
            let (info, counts, dump) = tokio::task::spawn_blocking(move || -> Result<_> {
                let info = postgres.info()?;
                // The counts and the dump see one snapshot, exported by a psql session.
                let mut exported = ExportedSnapshot::open(&postgres)?;
                let counts = counts_or_warning(exported.counts(&postgres))?;
                let process = postgres.start_dump(Some(&exported.name))?;
                let mut dump = std::io::BufReader::with_capacity(CHUNK, process);
                // The first bytes mean pg_dump holds its snapshot: only then are the media
                // listed, so every media row in the dump has its file.
                let first = dump.fill_buf().map(|_| ()).map_err(|e| {
                    Error::database(DatabaseTool::PgDump, format!("reading pg_dump: {e}"))
                });
                exported.close();
                first?;
                Ok((info, counts, dump))
            })
            .await
            .map_err(|e| Error::task_failed("pg_dump", e))??;
            progress.finish();
            Ok(Snapshot {
                info: DatabaseInfo {
                    kind: DatabaseKind::Postgresql,
                    included: true,
                    note: None,
                    postgres: Some(info),
                    counts,
                    physical: None,
                },
                file: None,
                dump: Some(dump),
            })
        }
    }
}

/// Counts are for drills: a database whose tables cannot be counted is still backed up, with a
/// warning that drills of this backup skip the comparison.
fn counts_or_warning(counted: Result<Option<RowCounts>>) -> Result<Option<RowCounts>> {
    match counted {
        Ok(Some(counts)) => Ok(Some(counts)),
        Ok(None) => {
            tracing::warn!("the database lacks one of Synapse's tables users, rooms, events, local_media_repository: no row counts recorded, a drill of this backup skips that check");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
