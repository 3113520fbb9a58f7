//! A physical backup's database restored in place: PostgreSQL is stopped (`[postgres]
//! stop-command`), its data directory moved aside to `<data-dir>.pre-restore-<id>` (never
//! deleted by a failure), the base laid into a new one with the old one's owner and mode, set
//! to recover from the store to the backup's restore point and promote, and PostgreSQL started
//! (`start-command`). Once it has promoted, `e2e_one_time_keys_json` is emptied (Synapse's
//! backup documentation: restored one-time keys break encryption for the clients that used
//! them) and the recovery settings are taken out again.
//!
//! Runs after the media, key and config are staged and verified, before they are swapped in.
//! Any failure here stops PostgreSQL, puts the old data directory back and starts it again.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::database::media_rows;
use crate::database::physical::{PhysicalInfo, RecoveryTarget};
use crate::database::postgres::Postgres;
use crate::error::{Error, Hook, IoContext, Refusal, Result};
use crate::progress::Cancel;

use super::super::hooks::run_hook;
use super::data_dir::{
    chown_tree, remove_recovery_settings, unpack_base, write_recovery_settings, Laid,
};
use crate::repository::OpContext;

const POLL: Duration = Duration::from_millis(250);
/// How long PostgreSQL may take to exit after stop-command.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// What a restore in place needs, checked before anything is stopped.
pub(in crate::commands::restore) struct InPlace {
    data_dir: PathBuf,
    kept: PathBuf,
    stop: String,
    start: String,
}

impl InPlace {
    /// Refuses, naming the setting, unless `[postgres]` says where the data directory is and
    /// how to stop and start the server, and no earlier restore's copy is in the way.
    pub(in crate::commands::restore) fn check(config: &Config, id: &str) -> Result<InPlace> {
        let settings = &config.postgres;
        let missing = |what: &str| {
            Error::refused(
                Refusal::PhysicalInPlace,
                format!(
                    "backup {id} is physical: restoring it in place needs [postgres] {what} in {} (data-dir, stop-command and start-command; README: \"Physical mode\"), or restore it with --target-dir DIR",
                    config.source.display()
                ),
            )
        };
        let data_dir = settings
            .data_dir
            .clone()
            .ok_or_else(|| missing("data-dir"))?;
        let stop = settings
            .stop_command
            .clone()
            .ok_or_else(|| missing("stop-command"))?;
        let start = settings
            .start_command
            .clone()
            .ok_or_else(|| missing("start-command"))?;
        if !data_dir.join("PG_VERSION").is_file() {
            return Err(Error::config(format!(
                "[postgres] data-dir {} is not a PostgreSQL data directory (no PG_VERSION)",
                data_dir.display()
            )));
        }
        let kept = PathBuf::from(format!("{}.pre-restore-{id}", data_dir.display()));
        if kept.exists() {
            return Err(Error::refused(
                Refusal::TargetInTheWay,
                format!(
                    "{kept} already exists: an earlier restore of this backup moved the data directory there. If that restore did not finish, {kept} is the previous database: stop PostgreSQL and move it back to {data}; otherwise move it away, then run the restore again",
                    kept = kept.display(),
                    data = data_dir.display()
                ),
            ));
        }
        Ok(InPlace {
            data_dir,
            kept,
            stop,
            start,
        })
    }

    /// The data directory the base replaces (kept beside it).
    pub(in crate::commands::restore) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Restores the database; on success the note for the report and the kept old data
    /// directory.
    pub(in crate::commands::restore) async fn restore(
        self,
        config: &Config,
        ctx: &OpContext<'_>,
        physical: &PhysicalInfo,
        target: &RecoveryTarget,
        postgres: &Postgres,
    ) -> Result<(String, PathBuf)> {
        run_hook(Hook::PostgresStop, &self.stop).await?;
        wait_until_stopped(&self.data_dir, &ctx.cancel).await?;
        // Nothing is changed yet: a data directory that cannot be moved aside (a mount point,
        // say) leaves the server as it was, started again.
        let moved = fs::metadata(&self.data_dir)
            .at("stat", &self.data_dir)
            .and_then(|old| {
                fs::rename(&self.data_dir, &self.kept).at("move aside", &self.data_dir)?;
                Ok(old)
            });
        let old = match moved {
            Ok(old) => old,
            Err(e) => {
                if let Err(start) = run_hook(Hook::PostgresStart, &self.start).await {
                    tracing::error!("PostgreSQL did not start again: {start}");
                }
                return Err(e);
            }
        };
        let attempt = async {
            let started = Instant::now();
            fs::create_dir(&self.data_dir).at("create", &self.data_dir)?;
            fs::set_permissions(
                &self.data_dir,
                fs::Permissions::from_mode(old.mode() & 0o7777),
            )
            .at("chmod", &self.data_dir)?;
            unpack_base(ctx, &physical.base, &self.data_dir).await?;
            tracing::info!("laid the base in {:.1} s", started.elapsed().as_secs_f64());
            write_recovery_settings(config, physical, target, &self.data_dir, Laid::InPlace)?;
            chown_tree(&self.data_dir, old.uid(), old.gid())?;
            run_hook(Hook::PostgresStart, &self.start).await?;
            tracing::info!(
                "PostgreSQL started at {:.1} s",
                started.elapsed().as_secs_f64()
            );
            wait_until_promoted(
                postgres,
                &self.data_dir,
                config.postgres.recovery_timeout,
                &ctx.cancel,
            )
            .await?;
            tracing::info!(
                "PostgreSQL promoted at {:.1} s",
                started.elapsed().as_secs_f64()
            );
            empty_one_time_keys(postgres).await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = attempt {
            self.put_back().await;
            return Err(e);
        }
        // Recovery is over: its settings and the read-ahead folder are not needed again.
        if let Err(e) = remove_recovery_settings(&self.data_dir) {
            tracing::warn!("could not take the recovery settings out of postgresql.auto.conf: {e}");
        }
        let _ = fs::remove_dir_all(self.data_dir.join("pg_wal/.synapse-backup-prefetch"));
        Ok((
            format!(
                "PostgreSQL recovered to {} and promoted; e2e_one_time_keys_json was emptied; the previous data directory is kept as {}",
                target.describe(),
                self.kept.display()
            ),
            self.kept,
        ))
    }

    /// After a failure: the laid directory goes, the old one comes back, PostgreSQL starts.
    async fn put_back(&self) {
        if let Err(e) = run_hook(Hook::PostgresStop, &self.stop).await {
            tracing::warn!("stopping the restored PostgreSQL: {e}");
        }
        // Never pull a data directory from under a running server.
        if let Err(e) = wait_until_stopped(&self.data_dir, &Cancel::new()).await {
            tracing::error!(
                "the restore failed and PostgreSQL still runs on the laid data directory ({e}): stop it, then move {} back to {}",
                self.kept.display(),
                self.data_dir.display()
            );
            return;
        }
        if self.data_dir.exists() {
            if let Err(e) = fs::remove_dir_all(&self.data_dir) {
                tracing::error!(
                    "could not remove the laid data directory {}: {e}",
                    self.data_dir.display()
                );
                return;
            }
        }
        match fs::rename(&self.kept, &self.data_dir) {
            Ok(()) => tracing::warn!(
                "the restore failed: the previous data directory is back in {}",
                self.data_dir.display()
            ),
            Err(e) => {
                tracing::error!(
                    "could not put the previous data directory back: move {} to {} yourself ({e})",
                    self.kept.display(),
                    self.data_dir.display()
                );
                return;
            }
        }
        if let Err(e) = run_hook(Hook::PostgresStart, &self.start).await {
            tracing::error!("PostgreSQL did not start again on its previous data directory: {e}");
        }
    }
}

/// Waits until no server runs on `data_dir` (its postmaster.pid is gone).
async fn wait_until_stopped(data_dir: &Path, cancel: &Cancel) -> Result<()> {
    let pid_file = data_dir.join("postmaster.pid");
    let started = Instant::now();
    while pid_file.exists() {
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        if started.elapsed() > STOP_TIMEOUT {
            return Err(Error::refused(
                Refusal::TargetInTheWay,
                format!(
                    "PostgreSQL still runs on {} {} s after [postgres] stop-command ({} exists); nothing was changed",
                    data_dir.display(),
                    STOP_TIMEOUT.as_secs(),
                    pid_file.display()
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Waits until the server answers that it is out of recovery. A server that exits meanwhile
/// (a recovery that cannot reach its target is fatal) fails at once.
pub(crate) async fn wait_until_promoted(
    postgres: &Postgres,
    data_dir: &Path,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let postgres = postgres.clone();
        let answer =
            tokio::task::spawn_blocking(move || postgres.rows("SELECT pg_is_in_recovery()"))
                .await
                .map_err(|e| Error::task_failed("the recovery check", e))?;
        let last = match answer {
            Ok(text) if text == "f" => return Ok(()),
            Ok(text) => format!("in recovery ({text})"),
            Err(e) => e.to_string(),
        };
        if !data_dir.join("postmaster.pid").exists() && started.elapsed() > Duration::from_secs(2) {
            return Err(Error::Other(format!(
                "the restored PostgreSQL stopped during recovery (no postmaster.pid in {}); its log says why, often a WAL segment the store lacks. Last answer: {last}",
                data_dir.display()
            )));
        }
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        if started.elapsed() > timeout {
            return Err(Error::Other(format!(
                "the restored PostgreSQL did not finish recovery within {} s ([postgres] recovery-timeout-secs); last answer: {last}",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `TRUNCATE e2e_one_time_keys_json`, when the database has that table.
async fn empty_one_time_keys(postgres: &Postgres) -> Result<()> {
    let postgres = postgres.clone();
    tokio::task::spawn_blocking(move || {
        postgres.rows(
            "DO $$ BEGIN IF to_regclass('e2e_one_time_keys_json') IS NOT NULL THEN TRUNCATE e2e_one_time_keys_json; END IF; END $$",
        )
    })
    .await
    .map_err(|e| Error::task_failed("emptying e2e_one_time_keys_json", e))?
    .map(|_| ())
}

/// After `--to-time`: the media rows of the restored database whose file the restored media
/// store lacks (uploaded between the backup and that moment). Never silent: a count and the
/// first ids, or why the rows could not be read.
pub(super) async fn media_rows_without_files(postgres: &Postgres, media_store: &Path) -> String {
    let postgres = postgres.clone();
    let listed =
        tokio::task::spawn_blocking(move || media_rows::postgres_media_rows(&postgres)).await;
    let rows = match listed {
        Ok(Ok((rows, _))) => rows,
        Ok(Err(e)) => {
            let note = format!("the restored database's media rows could not be compared with the restored media: {e}");
            tracing::warn!("{note}");
            return note;
        }
        Err(e) => return format!("the media rows could not be compared: {e}"),
    };
    let missing: Vec<&str> = rows
        .iter()
        .filter(|row| !media_store.join(&row.path).exists())
        .map(|row| row.media_id.as_str())
        .collect();
    if missing.is_empty() {
        return format!(
            "every one of the {} media files the restored database names is in {}",
            rows.len(),
            media_store.display()
        );
    }
    let mut first: Vec<&str> = missing.clone();
    first.dedup();
    first.truncate(5);
    let note = format!(
        "{} media files the restored database names are not in {} (uploaded after the backup the media came from, before --to-time); their rows stay, clients get 404 for them. First: {}",
        missing.len(),
        media_store.display(),
        first.join(", ")
    );
    tracing::warn!("{note}");
    note
}
