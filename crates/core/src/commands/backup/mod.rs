//! `create-backup`: snapshot the database, list the files, and stream them into one encrypted
//! object (`pipeline`), in named steps:
//!
//! 1. lock the data dir (shared: backups may run together, not with a restore), check the
//!    store, clean up after interrupted uploads, choose an unused id (`id`);
//! 2. snapshot the database (`snapshot`) before the media are listed, so every media row in
//!    the snapshot has its file in the backup (Synapse writes the file before the row);
//! 3. find the newest earlier backup to build on (`reuse`), name its volumes in the backup's
//!    pending marker (`gc::Pending`, written before step 2 so that a shared base is protected
//!    too) and leave out volumes a prune has condemned;
//! 4. list the key, config and media (`sources`), each media file joined with the parent's
//!    entries as the walk finds it to decide whether the parent already stores it (`reuse`),
//!    and the media the database lists that only Synapse's storage providers hold
//!    (`offloaded`); the files to store and the entries taken go to scratch lists
//!    (`to_store`, `entry_list`), so nothing per file is held;
//! 5. stream the other media into new volumes, then the night's run of the file list (`runs`),
//!    then the base (key, config, database, and the list of runs), each → OpenPGP → store; the
//!    base is written last, so its existence means the backup is complete (`volumes`,
//!    `pipeline`; docs/format.md).

mod entry_list;
mod id;
mod offloaded;
mod physical;
mod pipeline;
mod reuse;
mod runs;
mod snapshot;
mod sources;
mod to_store;
mod volumes;
mod write;

pub use write::Stored;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, DatabaseMode};
use crate::error::{Error, Result};
use crate::manifest::DatabaseInfo;
use crate::store::Store;
use crate::synapse::media::backed_up_media_dirs;
use crate::synapse::{check_working_dir, Database, HomeserverConfig};

use super::OpContext;
use crate::host::scratch;
use crate::host::state_dir::StateDir;
use crate::repository::gc::{condemned_volumes, Pending};
use crate::repository::object_writer::write_object as stream_to_store;
use crate::repository::BackupId;

use reuse::{Parent, ParentChoice};
use sources::MediaListing;

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub include_remote_media: bool,
    /// Leave a PostgreSQL database out (backed up with other tools, such as pgBackRest).
    pub skip_database: bool,
    /// Store every media file anew, taking nothing from earlier backups.
    pub full: bool,
    /// Make the backup even when media the database lists are found nowhere (they are
    /// reported and recorded).
    pub allow_missing_media: bool,
}

#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub backup_id: BackupId,
    pub server_name: String,
    /// What the backup stored: its kind, files, bytes, and what it took from earlier backups.
    pub stored: Stored,
    pub database: DatabaseInfo,
    pub elapsed: Duration,
    /// Why the backup is full although an earlier one exists (its index could not be read).
    pub full_reason: Option<String>,
    /// Scratch folders of killed create-backups removed before this one started.
    pub leftovers: Vec<scratch::Leftover>,
}

/// A parent volume that could not be used, and the files stored anew because of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredAgain {
    pub volume: String,
    pub why: String,
    pub files: usize,
}

pub async fn create_backup(
    config: &Config,
    ctx: &OpContext<'_>,
    options: &BackupOptions,
) -> Result<BackupSummary> {
    let started = Instant::now();
    let hs = HomeserverConfig::load(&config.synapse)?;
    check_working_dir(&hs)?;
    sources::check_paths(&hs)?;
    let state = StateDir::at(hs.media_store.parent().unwrap_or(Path::new("/")));
    let lock = state.lock_shared()?;
    ctx.store.check_access().await?;
    remove_interrupted_uploads(ctx.store).await;
    let backup_id = id::unused_backup_id(ctx.store, &state).await?;
    let leftovers = scratch::remove_leftovers(config);
    // A killed drill's folder holds plaintext too: the night's backup cleans it as well.
    crate::host::drills::clean_leftovers(config);
    let temp = scratch::create(&scratch::scratch_parent(config))?;
    // Announced before anything shared is chosen (`repository::gc`): a base to share, the
    // parent's volumes. What it chooses is added to the marker before it reads what a prune
    // condemned.
    let mut pending = Pending::announce(ctx.store, backup_id.as_str()).await?;
    let made = Announced {
        config,
        ctx,
        options,
        hs: &hs,
        backup_id: &backup_id,
        temp: temp.path(),
    }
    .make(&mut pending)
    .await;
    pending.withdraw().await;
    drop(lock);
    drop(temp);
    let (database, stored, full_reason) = made?;
    Ok(BackupSummary {
        backup_id,
        server_name: hs.server_name,
        stored,
        database,
        elapsed: started.elapsed(),
        full_reason,
        leftovers,
    })
}

/// A create-backup once its pending marker is written.
struct Announced<'a> {
    config: &'a Config,
    ctx: &'a OpContext<'a>,
    options: &'a BackupOptions,
    hs: &'a HomeserverConfig,
    backup_id: &'a BackupId,
    temp: &'a Path,
}

impl Announced<'_> {
    async fn make(
        &self,
        pending: &mut Pending<'_>,
    ) -> Result<(DatabaseInfo, Stored, Option<String>)> {
        let Announced {
            config,
            ctx,
            options,
            hs,
            backup_id,
            temp,
        } = *self;
        let mut sources = sources::key_and_config_sources(hs)?;
        let snapshot = self.take_snapshot(pending).await?;
        let sqlite_snapshot = snapshot.file.as_ref().map(|s| s.path().into_owned());
        sources.extend(snapshot.file);
        let (parent, mut full_reason) = self.choose_parent().await?;
        // Named before the condemned volumes are looked at: every volume and run the parent
        // uses, a superset of those this backup will name.
        let parent_volumes: Vec<String> = parent
            .as_ref()
            .map(|p| p.shared_objects())
            .unwrap_or_default();
        pending.name_volumes(&parent_volumes).await?;
        let condemned = condemned_volumes(ctx.store).await?;
        let mut parent_id = parent.as_ref().map(|p| p.backup_id.clone());
        let mut parent_runs = parent.as_ref().map(|p| p.runs.clone()).unwrap_or_default();
        let mut media = self
            .plan_media(parent, condemned, sqlite_snapshot.as_deref())
            .await?;
        if let Some(why) = media.plan.parent_dropped.take() {
            (parent_id, parent_runs, full_reason) = (None, Vec::new(), Some(why));
        }
        let contents = write::BackupContents {
            backup_id: backup_id.as_str(),
            hs,
            options,
            parent: parent_id,
            sources,
            folders: media.folders,
            dump: snapshot.dump,
            snapshot_info: snapshot.info.clone(),
            plan: media.plan,
            parent_runs,
            condemned: &media.condemned,
            providers: media.offloaded,
            temp,
        };
        let stored = write::write_backup(config, ctx, contents).await?;
        Ok((snapshot.info, stored, full_reason))
    }
}

impl Announced<'_> {
    /// The database's part, before the media are listed: a physical restore point (with a
    /// base when one is due) in physical mode, else a SQLite snapshot or a running pg_dump.
    async fn take_snapshot(&self, pending: &mut Pending<'_>) -> Result<snapshot::Snapshot> {
        match &self.hs.database {
            Database::Postgres(args)
                if self.config.postgres.mode == DatabaseMode::Physical
                    && !self.options.skip_database =>
            {
                physical::take(self, args, pending).await
            }
            _ => snapshot::take(self.hs, self.options, self.temp, self.ctx.progress.as_ref()).await,
        }
    }
}

impl Announced<'_> {
    /// The backup this one is made against, if any, and why it is full if there is one that
    /// cannot be built on.
    async fn choose_parent(&self) -> Result<(Option<Parent>, Option<String>)> {
        if self.options.full {
            return Ok((None, None));
        }
        Ok(
            match reuse::find_parent(self.ctx, &self.hs.server_name, self.temp).await? {
                ParentChoice::Parent(parent) => (Some(parent), None),
                ParentChoice::None => (None, None),
                ParentChoice::Unusable(why) => {
                    tracing::warn!("this backup is full, storing every media file anew: {why}");
                    (None, Some(why))
                }
            },
        )
    }

    /// Lists the media and decides what to store and what to take from `parent`. Without
    /// storage providers the walk hands its files straight to the join, so the listing is
    /// never held; with them, which files are missing locally is only known once the whole
    /// listing is, so it is held, the providers' files are added, and then it is joined.
    async fn plan_media(
        &self,
        parent: Option<Parent>,
        condemned: HashSet<String>,
        sqlite_snapshot: Option<&Path>,
    ) -> Result<PlannedMedia> {
        let (hs, options) = (self.hs, self.options);
        let folders = to_store::MediaFolders {
            media_store: Arc::from(hs.media_store.as_path()),
            provider_copies: Arc::from(offloaded::provider_copies(self.temp)),
        };
        let scratch = self.temp.to_path_buf();
        if hs.media_providers.is_empty() {
            let dirs = backed_up_media_dirs(options.include_remote_media);
            let media_store = hs.media_store.clone();
            return tokio::task::spawn_blocking(move || {
                let context = reuse::PlanContext {
                    excluded: &condemned,
                    folders: &folders,
                    scratch: &scratch,
                };
                let mut planner = reuse::Planner::new(parent, &context)?;
                let media_folders =
                    sources::list_media_into(&media_store, &dirs, &mut |file| planner.add(file))?;
                let plan = planner.finish()?;
                Ok(PlannedMedia {
                    plan,
                    folders: media_folders,
                    offloaded: offloaded::Offloaded::default(),
                    condemned,
                })
            })
            .await
            .map_err(|e| Error::task_failed("media listing", e))?;
        }
        let mut media = list_media(hs, options).await?;
        let mut offloaded = offloaded::find_offloaded(
            self.config,
            hs,
            sqlite_snapshot,
            &media.files,
            self.temp,
            options.allow_missing_media,
        )
        .await?;
        media.files.append(&mut offloaded.files);
        // Each path once (a provider's files are those not found locally): the in-place sort
        // is exact and needs no buffer of half the listing, which the stable one would.
        media.files.sort_unstable_by(|a, b| a.member.cmp(&b.member));
        media.files.shrink_to_fit();
        let context = reuse::PlanContext {
            excluded: &condemned,
            folders: &folders,
            scratch: &scratch,
        };
        let plan = reuse::plan_media(media.files, parent, &context)?;
        Ok(PlannedMedia {
            plan,
            folders: media.folders,
            offloaded,
            condemned,
        })
    }
}

/// What [`Announced::plan_media`] decided, and what it was given back.
struct PlannedMedia {
    plan: reuse::MediaPlan,
    folders: Vec<sources::Folder>,
    offloaded: offloaded::Offloaded,
    condemned: HashSet<String>,
}

async fn list_media(hs: &HomeserverConfig, options: &BackupOptions) -> Result<MediaListing> {
    let dirs = backed_up_media_dirs(options.include_remote_media);
    let media_store = hs.media_store.clone();
    tokio::task::spawn_blocking(move || sources::list_media(&media_store, &dirs))
        .await
        .map_err(|e| Error::task_failed("media listing", e))?
}

/// Cleans up after create-backups that were killed or lost the store half-way. Never fatal:
/// leftovers are invisible to list and restore, and the next run tries again.
async fn remove_interrupted_uploads(store: &dyn Store) {
    match store.remove_interrupted_uploads().await {
        Ok(names) => {
            for name in names {
                tracing::warn!(
                    "removed the unfinished upload of {name} that an interrupted create-backup left in {}",
                    store.describe()
                );
            }
        }
        Err(e) => tracing::warn!("could not look for unfinished uploads: {e}"),
    }
}
