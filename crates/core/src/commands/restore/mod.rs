//! `restore-backup`: nothing is lost, ever.
//!
//! 1. Refusals come first, before Synapse is stopped or a byte is downloaded (`preflight`):
//!    unknown id, another server_name, a newer format, a database kind the target does not use,
//!    a non-empty PostgreSQL target, Synapse running without stop/start commands, not enough
//!    free space, another restore holding the lock.
//! 2. The backup streams into staging paths next to each target (`plan`, `files`), every
//!    member routed by `route` and checked against the manifest, and the OpenPGP integrity
//!    check at the end of the stream.
//! 3. Only then is the database restored (`database`) and are staging paths renamed into
//!    place, the old data kept as `<name>.pre-restore-<id>`. A journal records the swap; a run
//!    after a crash finishes it (or removes leftover staging when the swap had not begun)
//!    before doing anything else (`journal`).

mod database;
pub(crate) mod files;
mod hooks;
mod journal;
mod physical;
pub(crate) use physical::wait_until_promoted;
mod plan;
mod preflight;
mod route;
mod to_provider;
mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::archive::{read_members, MemberKind};
use crate::config::Config;
use crate::database::physical::{PhysicalInfo, RecoveryTarget};
use crate::error::IoContext;
use crate::error::{find_cause, Error, Refusal, Result};
use crate::manifest::{FileEntry, Header};
use crate::progress::{Cancel, Progress};
use crate::store::ByteStream;
use crate::synapse::{check_working_dir, HomeserverConfig};

use super::OpContext;
use crate::host::scratch;
use crate::host::state_dir::StateDir;
use crate::repository::content_check::{
    hash_member, unreadable_member, ArchiveFormat, ContentCheck, WriteFailed,
};
use crate::repository::open::read_header;
use crate::repository::open_backup;
use crate::repository::pipe::{read_ahead, QUEUE_DEPTH};
use crate::repository::runs;
use crate::repository::volumes::check_volumes_exist;
use crate::repository::wants::{self, VolumeWant};
use crate::repository::BackupId;

pub use journal::{recover, Recovery};
use journal::{Phase, StagingTransaction};
use physical::InPlace;
use plan::{Destination, Placement, Plan};
use to_provider::ProviderSink;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Restore into this empty directory (archive layout) instead of the live paths.
    pub target_dir: Option<PathBuf>,
    /// Where the charm's pipeline took its files from (`/data`), for backups without manifest.
    pub charm_source_root: String,
    /// Delete the `.pre-restore-<id>` copies once the restore succeeded.
    pub remove_previous: bool,
    pub skip_space_check: bool,
    /// Restore into a PostgreSQL database that has tables: it is renamed aside (kept) and an
    /// empty one created in its place, once the whole backup has been verified.
    pub replace_database: bool,
    /// Write the media the backup read from a storage provider back to that provider instead
    /// of under media_store_path.
    pub media_to_provider: bool,
    /// A physical backup's database recovers to this moment instead of its restore point
    /// (`--to-time`; the backup is chosen by [`backup_for_time`]).
    pub to_time: Option<DateTime<Utc>>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            target_dir: None,
            charm_source_root: "/data".into(),
            remove_previous: false,
            skip_space_check: false,
            replace_database: false,
            media_to_provider: false,
            to_time: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub backup_id: String,
    pub charm_format: bool,
    pub files: usize,
    pub bytes: u64,
    /// Live paths that now hold the restored data.
    pub placed: Vec<PathBuf>,
    /// Previous data kept aside (empty when removed).
    pub kept_previous: Vec<PathBuf>,
    /// Members of a charm backup that have no place in Synapse's layout, left out (a note
    /// names them).
    pub skipped_members: usize,
    /// Media written back to storage providers (`--media-to-provider`).
    pub provider_files: usize,
    pub notes: Vec<String>,
    pub recovered: Option<Recovery>,
    pub elapsed: Duration,
}

impl RestoreReport {
    fn empty(id: &str) -> RestoreReport {
        RestoreReport {
            backup_id: id.to_string(),
            charm_format: false,
            files: 0,
            bytes: 0,
            placed: Vec::new(),
            kept_previous: Vec::new(),
            skipped_members: 0,
            provider_files: 0,
            notes: Vec::new(),
            recovered: None,
            elapsed: Duration::ZERO,
        }
    }
}

pub async fn restore_backup(
    config: &Config,
    ctx: &OpContext<'_>,
    id: &BackupId,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let id = id.as_str();
    let started = Instant::now();
    crate::host::scratch::remove_leftovers(config);
    crate::host::drills::clean_leftovers(config);
    let object = ctx.store.head(id).await?;
    let destination = destination(config, options)?;
    let state = StateDir::beside(destination.state_anchor())?;
    let _lock = state.lock_exclusive()?;
    let recovered = recover(&state)?;
    if let Some(report) = completed_by_recovery(&recovered, id, started) {
        return Ok(report);
    }

    let header = read_header(ctx.store, id, ctx.passphrase()?, &ctx.cancel).await?;
    let (physical, in_place) = physical::prepare(
        config,
        ctx,
        id,
        header.as_ref(),
        &destination,
        options.to_time,
    )
    .await?;
    let mut notes = Vec::new();
    preflight::check_backup_fits(&destination, header.as_ref(), &mut notes)?;
    let plan = Plan::new(
        &destination,
        id,
        header.as_ref(),
        &options.charm_source_root,
    )?;
    if let (Some(postgres), None) = (&plan.postgres, &physical) {
        preflight::check_database_target(postgres, options.replace_database).await?;
    }
    if !options.skip_space_check {
        let needed = header
            .as_ref()
            .map(|h| h.expected_bytes)
            .unwrap_or(object.size);
        preflight::check_free_space(plan.live_paths(), needed)?;
        if let Some(physical) = &physical {
            physical::check_room(&physical.0, in_place.as_ref(), &destination, &plan, needed)?;
        }
    }

    // Every volume and run the backup needs is there, and its runs read, before Synapse is
    // stopped.
    if let Some(media) = header.as_ref().and_then(|h| h.media.as_ref()) {
        check_volumes_exist(ctx.store, id, media).await?;
    }
    // The runs' entries go to lists per volume in a scratch folder, kept to the end.
    let scratch = scratch::create(&scratch::scratch_parent(config))?;
    let from_runs = runs::wants_from_runs(ctx, header.as_ref(), scratch.path()).await?;
    let live = match &destination {
        Destination::Live(hs) => Some(hs.as_ref()),
        Destination::Directory(_) => None,
    };
    let sink = provider_sink(config, options, live, header.as_ref(), id)?;
    let stopped = match live {
        Some(hs) => hooks::stop_synapse_if_running(config, hs, &ctx.cancel).await?,
        None => false,
    };
    let database = match (in_place, physical.clone()) {
        (Some(in_place), Some(physical)) => DatabaseStep::Physical(config, in_place, physical),
        _ => DatabaseStep::Logical,
    };
    let inputs = Inputs {
        sink,
        from_runs,
        database,
    };
    let outcome = stage_and_swap(ctx, id, plan, &state, options, inputs).await;
    let health = match live {
        Some(hs) if stopped => Some(hooks::start_synapse(config, hs, &ctx.cancel).await),
        _ => None,
    };
    let mut report = outcome?;
    if let Some(physical) = &physical {
        let after = physical::after(config, ctx, physical, &destination, options.to_time).await?;
        report.notes.extend(after);
    }
    if let Some(health) = health {
        notes.push(health?);
    }
    report.notes.splice(0..0, notes);
    report.recovered = recovered;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The live homeserver's paths, or `--target-dir`.
fn destination(config: &Config, options: &RestoreOptions) -> Result<Destination> {
    Ok(match &options.target_dir {
        Some(dir) => Destination::Directory(absolute(dir)?),
        None => {
            let hs = HomeserverConfig::load(&config.synapse)?;
            check_working_dir(&hs)?;
            Destination::Live(Box::new(hs))
        }
    })
}

/// When the lock's recovery completed an interrupted restore of this very backup: the report
/// (running the interrupted command again finishes it; nothing more to do).
fn completed_by_recovery(
    recovered: &Option<Recovery>,
    id: &str,
    started: Instant,
) -> Option<RestoreReport> {
    let recovery = recovered.as_ref()?;
    tracing::warn!("{recovery}");
    match recovery {
        Recovery::CompletedSwap { backup_id } if backup_id == id => {
            let mut report = RestoreReport::empty(id);
            report.notes.push(
                "the interrupted restore of this backup was completed; start Synapse when ready"
                    .into(),
            );
            report.recovered = recovered.clone();
            report.elapsed = started.elapsed();
            Some(report)
        }
        _ => None,
    }
}

/// `--media-to-provider`'s writer to the storage providers homeserver.yaml configures now.
fn provider_sink(
    config: &Config,
    options: &RestoreOptions,
    live: Option<&HomeserverConfig>,
    header: Option<&Header>,
    id: &str,
) -> Result<Option<Arc<ProviderSink>>> {
    Ok(match (options.media_to_provider, live, header) {
        (false, _, _) => None,
        (true, Some(hs), Some(header)) => Some(Arc::new(ProviderSink::new(config, hs, header)?)),
        (true, None, _) => {
            return Err(Error::config(
                "--media-to-provider writes to the storage providers homeserver.yaml configures; it does not go with --target-dir",
            ))
        }
        (true, Some(_), None) => {
            return Err(Error::config(format!(
                "--media-to-provider: backup {id} was made by the Synapse charm, which never reads storage providers; restore it without the option"
            )))
        }
    })
}

fn absolute(dir: &Path) -> Result<PathBuf> {
    if dir.is_absolute() {
        Ok(dir.to_path_buf())
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(dir))
            .map_err(|e| Error::io("find the current directory for", dir, e))
    }
}

/// How the database is restored between the staging and the swap.
enum DatabaseStep<'c> {
    /// A dump into `plan.postgres`, when the backup holds one.
    Logical,
    /// A physical backup's base and WAL, in place of the server's data directory.
    Physical(&'c Config, InPlace, Box<(PhysicalInfo, RecoveryTarget)>),
}

/// What a restore reads besides the backup itself, gathered before Synapse is stopped.
struct Inputs<'c> {
    /// Where media of storage providers go (`--media-to-provider`).
    sink: Option<Arc<ProviderSink>>,
    /// What the backup's runs take from each volume.
    from_runs: Vec<VolumeWant>,
    database: DatabaseStep<'c>,
}

/// Stages the whole backup, restores the database, then swaps. Any failure before the swap
/// removes the staging and leaves the live data as it was (the [`StagingTransaction`]).
async fn stage_and_swap(
    ctx: &OpContext<'_>,
    id: &str,
    plan: Plan,
    state: &StateDir,
    options: &RestoreOptions,
    inputs: Inputs<'_>,
) -> Result<RestoreReport> {
    let Inputs {
        sink,
        from_runs,
        database,
    } = inputs;
    let stream = ctx.store.get(id).await?;
    let staging = StagingTransaction::begin(state, &plan.journal(Phase::Staging))?;
    let (plan, (format, files, bytes)) =
        stage_everything(ctx, id, stream, plan, sink.as_ref(), from_runs)
            .await
            .map_err(|e| {
                if ctx.cancel.is_cancelled() {
                    Error::Interrupted
                } else {
                    e
                }
            })?;
    // The provider's media before anything live changes; a failure leaves the live data as
    // it was (`to_provider`).
    let provider_files = match &sink {
        Some(sink) => sink.write_to_providers().await?,
        None => 0,
    };
    plan.sync()?;
    // The database first, then the files, as Synapse's documentation prescribes.
    let mut physical_kept = None;
    let database_notes = match (&plan.postgres, database) {
        (Some(postgres), DatabaseStep::Physical(config, in_place, physical)) => {
            let (physical, target) = *physical;
            let (note, kept) = in_place
                .restore(config, ctx, &physical, &target, postgres)
                .await?;
            physical_kept = Some(kept);
            Some(note)
        }
        (Some(postgres), DatabaseStep::Logical) => database::restore_database(
            ctx.store,
            id,
            ctx.passphrase()?,
            postgres,
            options.replace_database,
            &ctx.cancel,
        )
        .await?
        .map(|kept| {
            format!("the previous database was kept as {kept}; drop it once Synapse runs well")
        }),
        (None, _) => None,
    };
    staging.commit(&plan.journal(Phase::Swapping))?;
    let placed = plan.swap()?;
    journal::remove_journal(state)?;
    let kept_previous = if options.remove_previous {
        plan.remove_previous()?;
        if let Some(kept) = &physical_kept {
            std::fs::remove_dir_all(kept).at("remove the previous data directory", kept)?;
        }
        Vec::new()
    } else {
        plan.existing_previous()
            .into_iter()
            .chain(physical_kept)
            .collect()
    };
    Ok(RestoreReport {
        charm_format: format == ArchiveFormat::Charm,
        files,
        bytes,
        placed,
        kept_previous,
        skipped_members: plan.skipped_members(),
        provider_files,
        notes: plan.notes.iter().cloned().chain(database_notes).collect(),
        ..RestoreReport::empty(id)
    })
}

type Staged = (ArchiveFormat, usize, u64);

/// Stages the base's members, then the media its volumes hold (listed in the base, or in the
/// runs, `from_runs`); the plan, with every target staged, and what was staged.
async fn stage_everything(
    ctx: &OpContext<'_>,
    id: &str,
    stream: ByteStream,
    plan: Plan,
    sink: Option<&Arc<ProviderSink>>,
    from_runs: Vec<VolumeWant>,
) -> Result<(Plan, Staged)> {
    let (plan, ((format, files, bytes), listed)) =
        stage_in_background(ctx, id, stream, plan).await?;
    let wants = wants::of_base_or_runs(id, listed, from_runs)?;
    let (plan, (more_files, more_bytes)) =
        volumes::stage_volumes(ctx, id, plan, wants, sink.cloned()).await?;
    plan.apply_folder_modes()?;
    Ok((plan, (format, files + more_files, bytes + more_bytes)))
}

/// Runs [`stage`] on a blocking thread.
async fn stage_in_background(
    ctx: &OpContext<'_>,
    id: &str,
    stream: ByteStream,
    mut plan: Plan,
) -> Result<(Plan, (Staged, Vec<FileEntry>))> {
    let handle = tokio::runtime::Handle::current();
    let passphrase = ctx.passphrase()?.clone();
    let progress = Arc::clone(&ctx.progress);
    let cancel = ctx.cancel.clone();
    let backup_id = id.to_string();
    progress.start("restoring", None);
    tokio::task::spawn_blocking(move || {
        let source = StagingSource {
            stream,
            handle,
            passphrase: &passphrase,
            cancel,
        };
        let result = stage(&mut plan, source, &backup_id, progress.as_ref());
        progress.finish();
        result.map(|staged| (plan, staged))
    })
    .await
    .map_err(|e| Error::task_failed("restore", e))?
}

/// The backup object to stage from, not yet opened.
struct StagingSource<'a> {
    stream: ByteStream,
    handle: tokio::runtime::Handle,
    passphrase: &'a SecretString,
    cancel: Cancel,
}

/// Streams every member into its staging path, checking it against the manifest.
fn stage(
    plan: &mut Plan,
    source: StagingSource<'_>,
    id: &str,
    progress: &dyn Progress,
) -> Result<(Staged, Vec<FileEntry>)> {
    plan.prepare()?;
    let decrypted = open_backup(
        source.stream,
        source.handle,
        source.passphrase,
        id,
        source.cancel,
    )?;
    let reader = read_ahead(decrypted, QUEUE_DEPTH)
        .map_err(|e| Error::Other(format!("cannot start the read-ahead thread: {e}")))?;
    let expected_server_name = plan.server_name.clone();
    let mut check = ContentCheck::new(id);
    read_members(reader, id, |mut member| {
        if check.take_manifest_member(&mut member)? {
            // Checked again here, on the stream being restored, whatever the early look said.
            if let (Some(ArchiveFormat::Manifest(header)), Some(expected)) =
                (check.format(), expected_server_name.as_deref())
            {
                if header.server_name != expected {
                    return Err(Error::refused(Refusal::ServerNameMismatch, format!(
                        "backup {id} is of server {:?} but the target's server_name is {expected:?}; Synapse cannot change its server_name",
                        header.server_name
                    )));
                }
            }
            return Ok(());
        }
        let charm = check.format() == Some(&ArchiveFormat::Charm);
        let staged_path = match plan.place(&member.path, member.kind, charm)? {
            Placement::Skip => return Ok(()),
            Placement::HashOnly => {
                let path = member.path.clone();
                check.claim(&path)?;
                let (hash, size) = hash_member(&mut member, None, progress)
                    .map_err(|e| unreadable_member(id, &path, &e))?;
                return check.record(&path, size, hash);
            }
            Placement::Stage(path) => path,
        };
        match member.kind {
            MemberKind::Directory => plan.make_dir(&staged_path, member.mode, member.mtime),
            MemberKind::File => {
                let path = member.path.clone();
                check.claim(&path)?;
                let mut file = plan.create_file(&staged_path, member.mode)?;
                let (hash, size) =
                    hash_member(&mut member, Some(&mut file), progress).map_err(|e| {
                        if find_cause::<WriteFailed>(&e).is_some() {
                            Error::io("write", &staged_path, e)
                        } else {
                            unreadable_member(id, &path, &e)
                        }
                    })?;
                plan.finish_file(file, &staged_path, member.mtime)?;
                check.record(&path, size, hash)
            }
        }
    })?;
    let in_volumes = check.take_volume_entries();
    let (format, files, bytes) = check.finish()?;
    plan.check_complete(&format)?;
    let in_base = files - in_volumes.len();
    Ok(((format, in_base, bytes), in_volumes))
}
