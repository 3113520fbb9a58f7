//! `restore-backup`: nothing is lost, ever.
//!
//! 1. Refusals come first, before Synapse is stopped or a byte is downloaded: unknown id, another
//!    server_name, a newer format, a database kind the target does not use, Synapse running
//!    without stop/start commands, not enough free space, another restore holding the lock.
//! 2. The backup streams into staging paths next to each target (same filesystem), every file
//!    checked against the manifest and the OpenPGP integrity check at the end of the stream.
//! 3. Only then are staging paths renamed into place, the old data kept as
//!    `<name>.pre-restore-<id>`. A journal records the swap; a run after a crash finishes it (or
//!    removes leftover staging when the swap had not begun) before doing anything else.

mod journal;
mod plan;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::archive::{read_members, read_members_while, MemberKind};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::manifest::Header;
use crate::manifest::POSTGRES_DUMP_PREFIX;
use crate::progress::{Cancel, Progress};
use crate::store::Store;
use crate::synapse::{is_running, wait_for_health, HomeserverConfig, RunningState};

use super::catalog::read_header;
use super::open_backup;
use super::pipe::{read_ahead, QUEUE_DEPTH};
use super::verify::{hash_member, ArchiveFormat, ContentCheck, WriteFailed};

pub use journal::{recover, Recovery, StateDir};
use plan::{Destination, Placement, Plan};

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
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            target_dir: None,
            charm_source_root: "/data".into(),
            remove_previous: false,
            skip_space_check: false,
            replace_database: false,
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
    pub notes: Vec<String>,
    pub recovered: Option<Recovery>,
    pub elapsed: Duration,
}

pub async fn restore_backup(
    config: &Config,
    store: &dyn Store,
    id: &str,
    passphrase: SecretString,
    options: &RestoreOptions,
    progress: Arc<dyn Progress>,
    cancel: Cancel,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let object = store.head(id).await?;
    let destination = match &options.target_dir {
        Some(dir) => Destination::Directory(absolute(dir)?),
        None => Destination::Live(Box::new(HomeserverConfig::load(&config.homeserver_yaml)?)),
    };
    let state = StateDir::for_destination(&destination)?;
    let _lock = state.lock_exclusive()?;
    let recovered = recover(&state)?;
    if let Some(recovery) = &recovered {
        tracing::warn!("{recovery}");
        // Running the interrupted command again finishes it; nothing more to do.
        if let Recovery::CompletedSwap { backup_id } = recovery {
            if backup_id == id {
                return Ok(RestoreReport {
                    backup_id: id.to_string(),
                    charm_format: false,
                    files: 0,
                    bytes: 0,
                    placed: Vec::new(),
                    kept_previous: Vec::new(),
                    notes: vec!["the interrupted restore of this backup was completed; start Synapse when ready".into()],
                    recovered: recovered.clone(),
                    elapsed: started.elapsed(),
                });
            }
        }
    }

    let header = read_header(store, id, &passphrase, &cancel).await?;
    let mut notes = Vec::new();
    check_before_download(&destination, header.as_ref(), &mut notes)?;
    let plan = Plan::new(&destination, id, header.as_ref(), options)?;
    if !options.skip_space_check {
        let needed = header
            .as_ref()
            .map(|h| h.expected_bytes)
            .unwrap_or(object.size);
        plan.check_free_space(needed)?;
    }

    let stopped = stop_synapse_if_needed(config, &destination)?;
    let outcome = stage_and_swap(
        store, id, passphrase, plan, &state, options, progress, cancel,
    )
    .await;
    let health = match (&stopped, &destination) {
        (Some(()), Destination::Live(hs)) => Some(start_synapse(config, hs).await),
        _ => None,
    };
    let mut report = outcome?;
    if let Some(health) = health {
        notes.push(health?);
    }
    report.notes.splice(0..0, notes);
    report.recovered = recovered;
    report.elapsed = started.elapsed();
    Ok(report)
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

fn check_before_download(
    destination: &Destination,
    header: Option<&Header>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let Destination::Live(hs) = destination else {
        return Ok(());
    };
    match header {
        Some(header) => {
            if header.server_name != hs.server_name {
                return Err(Error::Refused(format!(
                    "backup {} is of server {:?} but {} says server_name {:?}; Synapse cannot change its server_name, so restore it onto a config with server_name {:?}",
                    header.backup_id,
                    header.server_name,
                    hs.path.display(),
                    hs.server_name,
                    header.server_name
                )));
            }
            if !header.database.included {
                notes.push(format!(
                    "this backup does not contain the {:?} database: restore the database with its own tools first (it must match the backup's time)",
                    header.database.kind
                ));
            }
        }
        None => notes.push(
            "this backup has no manifest (made by the charm's pipeline); its files were checked by the OpenPGP integrity check only".into(),
        ),
    }
    Ok(())
}

fn stop_synapse_if_needed(config: &Config, destination: &Destination) -> Result<Option<()>> {
    let Destination::Live(hs) = destination else {
        return Ok(None);
    };
    let state = is_running(hs);
    if state == RunningState::Stopped {
        return Ok(None);
    }
    let Some(stop) = &config.restore.stop_command else {
        let why = match state {
            RunningState::Pid { pid_file, pid } => {
                format!("process {pid} named by {} is alive", pid_file.display())
            }
            RunningState::Listening { address } => format!("something answers on {address}"),
            RunningState::Stopped => unreachable!("checked above"),
        };
        return Err(Error::Refused(format!(
            "Synapse is running ({why}); stop it first, or set [restore] stop-command and start-command"
        )));
    };
    run_hook("stop-command", stop)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while is_running(hs) != RunningState::Stopped {
        if Instant::now() > deadline {
            return Err(Error::Refused(
                "Synapse is still running 60s after stop-command; nothing was changed".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(Some(()))
}

async fn start_synapse(config: &Config, hs: &HomeserverConfig) -> Result<String> {
    let Some(start) = &config.restore.start_command else {
        return Ok(
            "Synapse was stopped for the restore; no start-command is set, start it yourself"
                .into(),
        );
    };
    run_hook("start-command", start)?;
    let timeout = Duration::from_secs(config.restore.health_timeout_secs);
    match wait_for_health(hs, timeout).await {
        Ok(url) => Ok(format!("Synapse started and {url} answers OK")),
        Err(why) => Err(Error::Other(format!(
            "the restore finished, but Synapse did not come back healthy: {why}"
        ))),
    }
}

fn run_hook(name: &str, command: &str) -> Result<()> {
    tracing::info!("running [restore] {name}: {command}");
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .map_err(|e| Error::Other(format!("cannot run [restore] {name} {command:?}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "[restore] {name} {command:?} failed with {status}; nothing was changed"
        )))
    }
}

#[allow(clippy::too_many_arguments)]
async fn stage_and_swap(
    store: &dyn Store,
    id: &str,
    passphrase: SecretString,
    mut plan: Plan,
    state: &StateDir,
    options: &RestoreOptions,
    progress: Arc<dyn Progress>,
    cancel: Cancel,
) -> Result<RestoreReport> {
    state.write_journal(&plan.journal(journal::Phase::Staging))?;
    let expected_server_name = plan.server_name.clone();
    let cancelled = cancel.clone();
    let passphrase_again = passphrase.clone();
    let stream = store.get(id).await?;
    let handle = tokio::runtime::Handle::current();
    let backup_id = id.to_string();
    progress.start("restoring", None);
    let staged = tokio::task::spawn_blocking(move || {
        let result = stage(
            &mut plan,
            stream,
            handle,
            &passphrase,
            &backup_id,
            progress.as_ref(),
            cancel,
            expected_server_name.as_deref(),
        );
        progress.finish();
        (plan, result)
    })
    .await
    .map_err(|e| Error::Other(format!("restore task failed: {e}")))?;
    let (plan, staged) = staged;
    let (format, files, bytes) = match staged {
        Ok(done) => done,
        Err(e) => {
            plan.remove_staging();
            state.remove_journal()?;
            return Err(if cancelled.is_cancelled() {
                Error::Interrupted
            } else {
                e
            });
        }
    };
    plan.sync()?;
    // The database first, then the files, as Synapse's documentation prescribes; pg_restore
    // runs in one transaction, so a failure leaves the (empty) database as it was.
    let mut database_notes = Vec::new();
    if let Some(postgres) = &plan.postgres {
        // --replace-database: only now, with everything verified, is the old one set aside.
        let kept = if options.replace_database && postgres.table_count()? > 0 {
            Some(postgres.set_aside(id)?)
        } else {
            None
        };
        let restored =
            restore_postgres(store, id, &passphrase_again, postgres, cancelled.clone()).await;
        if let Err(e) = restored {
            if let Some(kept) = &kept {
                if let Err(undo) = postgres.put_back(kept) {
                    tracing::error!("could not put database {kept} back in place: {undo}");
                }
            }
            plan.remove_staging();
            state.remove_journal()?;
            return Err(e);
        }
        if let Some(kept) = kept {
            database_notes.push(format!(
                "the previous database was kept as {kept}; drop it once Synapse runs well"
            ));
        }
    }
    state.write_journal(&plan.journal(journal::Phase::Swapping))?;
    let placed = plan.swap()?;
    state.remove_journal()?;
    let kept_previous = if options.remove_previous {
        plan.remove_previous()?;
        Vec::new()
    } else {
        plan.existing_previous()
    };
    Ok(RestoreReport {
        backup_id: id.to_string(),
        charm_format: format == ArchiveFormat::Charm,
        files,
        bytes,
        placed,
        kept_previous,
        notes: plan.notes.iter().cloned().chain(database_notes).collect(),
        recovered: None,
        elapsed: Duration::ZERO,
    })
}

#[allow(clippy::too_many_arguments)]
fn stage(
    plan: &mut Plan,
    stream: crate::store::ByteStream,
    handle: tokio::runtime::Handle,
    passphrase: &SecretString,
    id: &str,
    progress: &dyn Progress,
    cancel: Cancel,
    expected_server_name: Option<&str>,
) -> Result<(ArchiveFormat, usize, u64)> {
    plan.prepare()?;
    let decrypted = open_backup(stream, handle, passphrase, id, cancel)?;
    let reader = read_ahead(decrypted, QUEUE_DEPTH)
        .map_err(|e| Error::Other(format!("cannot start the read-ahead thread: {e}")))?;
    let mut check = ContentCheck::new(id);
    read_members(reader, id, |mut member| {
        if check.take_manifest_member(&mut member)? {
            // Checked again here, on the stream being restored, whatever the early look said.
            if let (Some(ArchiveFormat::Manifest(header)), Some(expected)) =
                (check.format(), expected_server_name)
            {
                if header.server_name != expected {
                    return Err(Error::Refused(format!(
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
                    .map_err(|e| Error::corrupt(id, format!("reading {path:?}: {e}")))?;
                return check.record(&path, size, hash);
            }
            Placement::Stage(path) => path,
        };
        match member.kind {
            MemberKind::Directory => plan.make_dir(&staged_path),
            MemberKind::File => {
                let path = member.path.clone();
                check.claim(&path)?;
                let mut file = plan.create_file(&staged_path, member.mode)?;
                let (hash, size) =
                    hash_member(&mut member, Some(&mut file), progress).map_err(|e| {
                        if e.get_ref().is_some_and(|inner| inner.is::<WriteFailed>()) {
                            Error::io("write", &staged_path, e)
                        } else {
                            Error::corrupt(id, format!("reading {path:?}: {e}"))
                        }
                    })?;
                plan.finish_file(file, &staged_path, member.mtime)?;
                check.record(&path, size, hash)
            }
        }
    })?;
    let (format, files, bytes) = check.finish()?;
    plan.check_complete(&format)?;
    Ok((format, files, bytes))
}

/// Second pass over a fully verified backup: streams the dump's parts into pg_restore, and stops
/// reading once they have passed.
async fn restore_postgres(
    store: &dyn Store,
    id: &str,
    passphrase: &SecretString,
    postgres: &crate::database::postgres::Postgres,
    cancel: Cancel,
) -> Result<()> {
    let stream = store.get(id).await?;
    let handle = tokio::runtime::Handle::current();
    let mut process = postgres.start_restore()?;
    let passphrase = passphrase.clone();
    let backup_id = id.to_string();
    let (process, fed) = tokio::task::spawn_blocking(move || {
        let fed = (|| -> Result<()> {
            let reader = open_backup(stream, handle, &passphrase, &backup_id, cancel)?;
            let mut seen_parts = false;
            read_members_while(reader, &backup_id, |member| {
                if !member.path.starts_with(POSTGRES_DUMP_PREFIX) {
                    return Ok(!seen_parts);
                }
                seen_parts = true;
                std::io::copy(member.data, &mut process)
                    .map(|_| true)
                    .map_err(|e| Error::Other(format!("feeding pg_restore: {e}")))
            })
        })();
        (process, fed)
    })
    .await
    .map_err(|e| Error::Other(format!("database restore task failed: {e}")))?;
    match fed {
        Ok(()) => process.finish(),
        Err(e) => {
            // pg_restore's own message says more than a broken pipe.
            match process.finish() {
                Err(pg) => Err(pg),
                Ok(()) => Err(e),
            }
        }
    }
}
