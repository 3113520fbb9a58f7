//! The database part of a physical-mode backup (`[postgres] mode = "physical"`): a base backup
//! when the newest is older than `base-backup-every` (or `--full`), then a restore point named
//! after the backup, whose segment must be in the store before the media are listed. The
//! database and the media are then of one moment: the restore point.
//!
//! Refused, before anything is written, unless PostgreSQL archives its WAL through wal-push
//! into this store and the archiver is not failing: a restore point whose WAL is elsewhere, or
//! nowhere, restores nothing.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::config::Config;
use crate::database::archiver::{ArchiverState, ArchiverVerdict};
use crate::database::physical::PhysicalInfo;
use crate::database::postgres::Postgres;
use crate::database::wal_names::WalFileName;
use crate::error::{Error, ErrorKind, Refusal, Result};
use crate::manifest::{DatabaseInfo, DatabaseKind};
use crate::repository::gc::{shared_base_condemned, Pending};
use crate::repository::open::read_header;
use crate::repository::trust::split_listing;
use crate::repository::wal::{base_object, put_base_backup, wal_object, wal_push_store};
use crate::synapse::PostgresArgs;

use super::snapshot::Snapshot;
use super::{Announced, OpContext};

/// The base a backup restores from, taken now or shared with the newest earlier backup.
struct Base {
    name: String,
    object_bytes: u64,
    taken: chrono::DateTime<Utc>,
    start_wal: WalFileName,
}

pub(super) async fn take(
    create: &Announced<'_>,
    args: &PostgresArgs,
    pending: &mut Pending<'_>,
) -> Result<Snapshot> {
    let (config, ctx) = (create.config, create.ctx);
    let backup_id = create.backup_id.as_str();
    let progress = ctx.progress.as_ref();
    let postgres = Postgres::new(&match &config.postgres.connection {
        Some(text) => args.overlaid(&PostgresArgs::from_conninfo(text).map_err(|e| {
            Error::config(format!(
                "[postgres] connection in {} is not a libpq connection string: {e}",
                config.source.display()
            ))
        })?),
        None => args.clone(),
    });
    progress.start("checking PostgreSQL's WAL archiving", None);
    let (info, segment_bytes, current) = {
        let postgres = postgres.clone();
        let config = config.clone();
        blocking("the archiver check", move || {
            refuse_unless_archiving_here(&ArchiverState::read(&postgres)?, &config)?;
            let current = postgres.rows("SELECT pg_walfile_name(pg_current_wal_lsn())")?;
            let current = WalFileName::parse(&current)
                .map_err(|e| Error::Other(format!("pg_walfile_name gave {current:?}: {e}")))?;
            Ok((postgres.info()?, postgres.segment_bytes()?, current))
        })
        .await?
    };
    let timeline = current.timeline();
    let shareable = shareable_base(
        config,
        ctx,
        &create.hs.server_name,
        timeline,
        create.options.full,
    )
    .await?;
    let base = match keep_shared_base(ctx, shareable, pending).await? {
        Some(base) => base,
        None => {
            // The base will start at or after the segment WAL is in now: named as its start,
            // that keeps every sweep from here on off the WAL it needs.
            pending
                .name_base(Some((&base_object(backup_id), &current)))
                .await?;
            progress.start("taking a base backup (pg_basebackup)", None);
            take_base(ctx, &postgres, backup_id).await?
        }
    };
    progress.start("creating the restore point", None);
    let point = {
        let postgres = postgres.clone();
        let name = backup_id.to_string();
        blocking("the restore point", move || {
            postgres.create_restore_point(&name)
        })
        .await?
    };
    if point.wal.timeline() != base.start_wal.timeline() {
        return Err(Error::Other(format!(
            "PostgreSQL changed timeline during the backup (the base starts on {}, the restore point is in {}); run create-backup again",
            base.start_wal, point.wal
        )));
    }
    progress.start("waiting for the restore point's WAL to be archived", None);
    wait_until_archived(config, ctx, &postgres, &point.wal).await?;
    progress.finish();
    Ok(Snapshot {
        info: DatabaseInfo {
            kind: DatabaseKind::Postgresql,
            included: true,
            note: None,
            postgres: Some(info),
            // Drills compare counts with a restored dump; the physical path has no dump.
            counts: None,
            physical: Some(PhysicalInfo {
                base: base.name,
                base_object_bytes: base.object_bytes,
                base_taken: base.taken,
                timeline: point.wal.timeline(),
                start_wal: base.start_wal.to_string(),
                restore_point: backup_id.to_string(),
                restore_point_lsn: point.lsn,
                end_wal: point.wal.to_string(),
                segment_bytes,
                at: point.at,
            }),
        },
        file: None,
        dump: None,
    })
}

/// Physical mode's precondition: WAL goes through wal-push into this store, and the last
/// attempt did not fail.
fn refuse_unless_archiving_here(state: &ArchiverState, config: &Config) -> Result<()> {
    let problem = match state.verdict() {
        ArchiverVerdict::Healthy(_) => match wal_push_store(state, config) {
            Ok(()) => return Ok(()),
            Err(problem) => problem,
        },
        ArchiverVerdict::Off(_) => "archive_mode is off".to_string(),
        ArchiverVerdict::Elsewhere(detail) | ArchiverVerdict::Failing(detail) => detail,
    };
    Err(Error::refused(
        Refusal::WalArchiving,
        format!(
            "[postgres] mode = \"physical\" needs PostgreSQL to archive its WAL into this store, and {problem}; set archive_mode = on and archive_command = 'synapse-backup --config {} wal-push %p' (README: \"Continuous WAL archiving\"), or use mode = \"logical\"",
            config.source.display()
        ),
    ))
}

/// The base of the newest physical backup of this server, when it is on this timeline, newer
/// than `base-backup-every`, and still in the store.
async fn shareable_base(
    config: &Config,
    ctx: &OpContext<'_>,
    server_name: &str,
    timeline: u32,
    full: bool,
) -> Result<Option<Base>> {
    if full {
        return Ok(None);
    }
    let listing = split_listing(ctx.store.list().await?);
    for (id, _) in listing.backups.iter().rev() {
        let header = match read_header(ctx.store, id.as_str(), ctx.passphrase()?, &ctx.cancel).await
        {
            Ok(Some(header)) => header,
            Ok(None) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::Storage) => {
                return Err(e)
            }
            Err(e) => {
                tracing::warn!("{id}'s base is not shared with this backup: {e}");
                continue;
            }
        };
        if header.server_name != server_name {
            continue;
        }
        // A logical backup in between (the mode changed back and forth) does not end the
        // search: an earlier physical backup's base is as good.
        let Some(physical) = header.database.physical else {
            continue;
        };
        let age = Utc::now().signed_duration_since(physical.base_taken);
        let fresh = age.to_std().unwrap_or(Duration::ZERO) < config.postgres.base_backup_every;
        let start_wal = match WalFileName::parse(&physical.start_wal) {
            Ok(name) if fresh && name.timeline() == timeline => name,
            _ => return Ok(None),
        };
        return match ctx.store.head(&physical.base).await {
            Ok(found) if found.size == physical.base_object_bytes => Ok(Some(Base {
                name: physical.base,
                object_bytes: physical.base_object_bytes,
                taken: physical.base_taken,
                start_wal,
            })),
            Ok(_) | Err(_) => {
                tracing::warn!(
                    "{} (the base of {id}) is missing or not its recorded size: this backup takes a new base",
                    physical.base
                );
                Ok(None)
            }
        };
    }
    Ok(None)
}

/// Names `base` in the create's pending marker, then makes sure no prune condemned it or its WAL
/// meanwhile and that it is still there (`repository::gc::wal`): else no base is shared and the
/// marker says so.
async fn keep_shared_base(
    ctx: &OpContext<'_>,
    base: Option<Base>,
    pending: &mut Pending<'_>,
) -> Result<Option<Base>> {
    let Some(base) = base else {
        return Ok(None);
    };
    pending
        .name_base(Some((&base.name, &base.start_wal)))
        .await?;
    let why_not = match shared_base_condemned(ctx.store, &base.name, &base.start_wal).await? {
        Some(why) => Some(why),
        None => match ctx.store.head(&base.name).await {
            Ok(found) if found.size == base.object_bytes => None,
            Ok(_) => Some(format!("{} is not its recorded size", base.name)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Some(format!("{} is gone from the store", base.name))
            }
            Err(e) => return Err(e),
        },
    };
    match why_not {
        None => Ok(Some(base)),
        Some(why) => {
            tracing::warn!("this backup takes a new base: {why}");
            pending.name_base(None).await?;
            Ok(None)
        }
    }
}

async fn take_base(ctx: &OpContext<'_>, postgres: &Postgres, backup_id: &str) -> Result<Base> {
    let name = base_object(backup_id);
    let taken = Utc::now();
    let expected = {
        let postgres = postgres.clone();
        blocking("the database size", move || {
            Ok(postgres
                .rows("SELECT sum(pg_database_size(datname))::bigint FROM pg_database")?
                .parse::<u64>()
                .unwrap_or(0))
        })
        .await?
    };
    let process = {
        let postgres = postgres.clone();
        blocking("pg_basebackup", move || postgres.start_base_backup()).await?
    };
    let (start, object_bytes) = put_base_backup(ctx, &name, process, expected).await?;
    Ok(Base {
        name,
        object_bytes,
        taken,
        start_wal: start.start_wal,
    })
}

/// Waits until the store holds `wal/<segment>`; on timeout, says what the archiver reports.
async fn wait_until_archived(
    config: &Config,
    ctx: &OpContext<'_>,
    postgres: &Postgres,
    segment: &WalFileName,
) -> Result<()> {
    let object = wal_object(segment);
    let started = Instant::now();
    loop {
        match ctx.store.head(&object).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        ctx.cancel.check().map_err(|_| Error::Interrupted)?;
        if started.elapsed() > config.postgres.archive_timeout {
            let postgres = postgres.clone();
            let state = blocking("the archiver check", move || ArchiverState::read(&postgres))
                .await
                .map(|s| format!("{:?}", s.verdict()))
                .unwrap_or_else(|e| e.to_string());
            return Err(Error::refused(
                Refusal::WalArchiving,
                format!(
                    "{segment}, which holds this backup's restore point, was not archived into {} within {} s ([postgres] archive-timeout-secs); the backup is not written. The archiver: {state}",
                    ctx.store.describe(),
                    config.postgres.archive_timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::task_failed(what, e))?
}
