//! The drill's database: the restored SQLite file, or a throwaway PostgreSQL database
//! (`synapse_drill_<digits of the id>_<pid>`) the restored dump is loaded into and that is dropped
//! afterwards. Never the live one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::database::counts::{postgres_counts, sqlite_counts, RowCounts};
use crate::database::media_rows::{self, MediaRow};
use crate::database::postgres::Postgres;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{DatabaseKind, Header, POSTGRES_DUMP_PREFIX};
use crate::synapse::PostgresArgs;

use super::isolation::DrillDatabase;
use super::recovered::RecoveredCluster;
use crate::host::drills::drill_database_name;

/// The drill's database, ready for Synapse.
pub struct ScratchDatabase {
    pub database: DrillDatabase,
    /// The throwaway PostgreSQL database to drop, and where.
    pub throwaway: Option<Postgres>,
    /// A physical backup's recovered server, to stop, and its database.
    pub recovered: Option<(RecoveredCluster, Postgres)>,
}

/// Makes the restored database usable: the SQLite file as restored, or a new PostgreSQL
/// database the dump parts are loaded into.
pub fn prepare(
    header: &Header,
    restored: &Path,
    server: Option<PostgresArgs>,
    id: &str,
) -> Result<ScratchDatabase> {
    match header.database.kind {
        DatabaseKind::Sqlite => {
            let path = restored.join("database/homeserver.db");
            if !path.is_file() {
                return Err(Error::config(format!(
                    "the restored backup has no SQLite database at {}",
                    path.display()
                )));
            }
            Ok(ScratchDatabase {
                database: DrillDatabase::Sqlite(path),
                throwaway: None,
                recovered: None,
            })
        }
        DatabaseKind::Postgresql => {
            let server =
                server.ok_or_else(|| Error::config("no PostgreSQL server for the drill"))?;
            let name = drill_database_name(id);
            let postgres = Postgres::new(&server).with_dbname(&name);
            // Named after this process: one of this name is a leftover of a killed drill that
            // ran under the same pid, never another drill's.
            postgres.drop_database(&name)?;
            postgres.create_database(&name)?;
            let scratch = ScratchDatabase {
                database: DrillDatabase::Postgres(postgres.args().clone()),
                throwaway: Some(postgres.clone()),
                recovered: None,
            };
            load_dump(&postgres, restored)?;
            Ok(scratch)
        }
    }
}

/// Streams the dump parts, in name order, into `pg_restore`.
fn load_dump(postgres: &Postgres, restored: &Path) -> Result<()> {
    let folder = restored.join("database");
    let prefix = POSTGRES_DUMP_PREFIX.trim_start_matches("database/");
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&folder)
        .at("read", &folder)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    parts.sort();
    if parts.is_empty() {
        return Err(Error::config(format!(
            "the restored backup has no PostgreSQL dump in {}",
            folder.display()
        )));
    }
    let mut restore = postgres.start_restore()?;
    for part in &parts {
        let mut file = std::fs::File::open(part).at("open", part)?;
        if let Err(e) = std::io::copy(&mut file, &mut restore).and_then(|_| restore.flush()) {
            // pg_restore's own message says more than the broken pipe.
            return match restore.finish() {
                Err(failed) => Err(failed),
                Ok(()) => Err(Error::io("feed pg_restore from", part, e)),
            };
        }
    }
    restore.finish()
}

/// A physical backup's database: the server the restore laid in `restored/postgres`,
/// recovered to the backup's restore point on a private socket.
pub async fn recover(
    restored: &Path,
    scratch: &Path,
    server: &PostgresArgs,
    timeout: std::time::Duration,
    cancel: &crate::progress::Cancel,
) -> Result<ScratchDatabase> {
    let data = restored.join("postgres");
    let (cluster, args) = RecoveredCluster::start(scratch, &data, server, timeout, cancel).await?;
    Ok(ScratchDatabase {
        database: DrillDatabase::Postgres(args.clone()),
        throwaway: None,
        recovered: Some((cluster, Postgres::new(&args))),
    })
}

impl ScratchDatabase {
    /// Where the restored PostgreSQL database is asked.
    fn postgres(&self) -> Option<&Postgres> {
        self.throwaway
            .as_ref()
            .or(self.recovered.as_ref().map(|(_, postgres)| postgres))
    }

    /// The restored database's row counts.
    pub fn counts(&self) -> Result<Option<RowCounts>> {
        match (&self.database, self.postgres()) {
            (DrillDatabase::Sqlite(path), _) => sqlite_counts(path),
            (DrillDatabase::Postgres(_), Some(postgres)) => postgres_counts(postgres, None),
            (DrillDatabase::Postgres(_), None) => Ok(None),
        }
    }

    /// A random `n` of the restored database's local media rows with their thumbnail rows,
    /// and how many local media it lists in all.
    pub fn media_sample(&self, n: usize) -> Result<(Vec<MediaRow>, u64)> {
        match (&self.database, self.postgres()) {
            (DrillDatabase::Sqlite(path), _) => media_rows::sqlite_media_sample(path, n),
            (_, Some(postgres)) => media_rows::postgres_media_sample(postgres, n),
            (_, None) => Ok((Vec::new(), 0)),
        }
    }

    /// Stops a recovered server.
    pub fn stop_recovered(&self) {
        if let Some((cluster, _)) = &self.recovered {
            cluster.stop();
        }
    }

    /// Drops the throwaway database; a failure is a warning with the name to drop by hand.
    pub fn drop_throwaway(&self) -> Option<String> {
        let postgres = self.throwaway.as_ref()?;
        let name = postgres.args().dbname.clone().unwrap_or_default();
        match postgres.drop_database(&name) {
            Ok(()) => None,
            Err(e) => Some(format!(
                "the drill's database {name} could not be dropped ({e}); drop it by hand"
            )),
        }
    }
}
