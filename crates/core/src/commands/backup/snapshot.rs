//! The database's consistent copy, taken before the media are listed: a SQLite snapshot file
//! (SQLite's online backup API) or a running `pg_dump` that already holds its snapshot.

use std::io::BufRead;
use std::path::Path;

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
            tokio::task::spawn_blocking(move || sqlite::snapshot(&source, &dest))
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
            },
            file: None,
            dump: None,
        }),
        Database::Postgres(args) => {
            progress.start("starting pg_dump", None);
            let postgres = Postgres::new(args);
            let (info, dump) = tokio::task::spawn_blocking(move || -> Result<_> {
                let info = postgres.info()?;
                let mut dump = std::io::BufReader::with_capacity(CHUNK, postgres.start_dump()?);
                // The first bytes mean pg_dump holds its snapshot: only then are the media
                // listed, so every media row in the dump has its file.
                dump.fill_buf()
                    .map_err(|e| Error::database(DatabaseTool::PgDump, format!("reading pg_dump: {e}")))?;
                Ok((info, dump))
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
                },
                file: None,
                dump: Some(dump),
            })
        }
    }
}
