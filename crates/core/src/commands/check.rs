//! `check`: a preflight that changes nothing of the homeserver and nothing in the store (its
//! write probe is removed again). Each item says ok, warn or fail and why, so that an admin (or
//! a charm, when credentials change) learns before the night's backup what would stop it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use secrecy::SecretString;

use crate::config::{Config, DatabaseMode};
use crate::database::postgres::Postgres;
use crate::error::{Error, ErrorKind, Refusal, Result};
use crate::progress::Cancel;
use crate::provider::ProviderAccess;
use crate::store::{ByteStream, Store};
use crate::synapse::media::LOCAL_MEDIA_DIRS;
use crate::synapse::{check_working_dir, Database, HomeserverConfig};

use crate::database::archiver::{ArchiverState, ArchiverVerdict};
use crate::host::free_bytes;
use crate::host::scratch::{describe_age, remove_leftovers, scratch_parent};
use crate::repository::catalog::{list_backups, BackupListing, Catalog, Details};
use crate::repository::wal::wal_push_store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Ok,
    Warn,
    Fail,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
        }
    }
}

#[derive(Debug)]
pub struct CheckItem {
    /// What was checked, lowercase with hyphens (`store-write`).
    pub name: &'static str,
    pub status: CheckStatus,
    pub detail: String,
    /// The error behind a failure, whose kind gives the exit code.
    pub failure: Option<Error>,
}

#[derive(Debug, Default)]
pub struct CheckReport {
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    fn ok(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, CheckStatus::Ok, detail.into(), None);
    }

    fn warn(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, CheckStatus::Warn, detail.into(), None);
    }

    fn fail(&mut self, name: &'static str, error: Error) {
        self.push(name, CheckStatus::Fail, error.to_string(), Some(error));
    }

    fn push(
        &mut self,
        name: &'static str,
        status: CheckStatus,
        detail: String,
        failure: Option<Error>,
    ) {
        self.items.push(CheckItem {
            name,
            status,
            detail,
            failure,
        });
    }

    pub fn passed(&self) -> bool {
        self.items.iter().all(|i| i.status != CheckStatus::Fail)
    }

    /// The first failure, whose kind is the command's exit code.
    pub fn into_first_failure(self) -> Option<Error> {
        self.items.into_iter().find_map(|i| i.failure)
    }
}

/// Runs every check; a failing one does not stop the others that do not depend on it.
pub async fn run_checks(config: &Config, store: &dyn Store, cancel: &Cancel) -> CheckReport {
    let mut report = CheckReport::default();
    let hs = match HomeserverConfig::load(&config.synapse).and_then(|hs| {
        check_working_dir(&hs)?;
        Ok(hs)
    }) {
        Ok(hs) => {
            report.ok(
                "synapse-config",
                format!(
                    "server_name {:?} from {} (working directory {})",
                    hs.server_name,
                    hs.describe_files(),
                    hs.working_dir.path.display()
                ),
            );
            Some(hs)
        }
        Err(e) => {
            report.fail("synapse-config", e);
            None
        }
    };
    if let Some(hs) = &hs {
        check_sources(&mut report, hs);
        check_database(&mut report, hs, config).await;
        check_media_providers(&mut report, hs, config).await;
    }
    check_scratch_leftovers(&mut report, config);
    let store_ok = check_store(&mut report, store).await;
    match config.passphrase() {
        Ok(passphrase) if store_ok => {
            check_passphrase(&mut report, store, &passphrase, hs.as_ref(), cancel).await
        }
        Ok(_) => report.warn("passphrase", "set, not tried: the store cannot be read"),
        Err(e) => report.fail("passphrase", e),
    }
    if let Some(hs) = &hs {
        check_synapse_version(&mut report, hs).await;
    }
    check_drill(&mut report, config, hs.as_ref());
    report
}

/// Whether `drill` can run here: a Synapse to boot, a free loopback port, room in the work
/// dir; and the leftovers of killed drills, cleaned. Only warnings: drills are optional.
fn check_drill(report: &mut CheckReport, config: &Config, hs: Option<&HomeserverConfig>) {
    use crate::host::drills;
    use crate::synapse::launch;
    let cleaned = drills::clean_leftovers(config);
    if !cleaned.is_empty() {
        report.warn("drill-leftovers", cleaned.join("; "));
    }
    let command = match launch::find_synapse_command(config, hs) {
        Ok(command) => command,
        Err(e) => return report.warn("drill", format!("a drill cannot run here: {e}")),
    };
    let port = match launch::free_loopback_port() {
        Ok(port) => port,
        Err(e) => return report.warn("drill", format!("a drill cannot run here: {e}")),
    };
    let work_dir = drills::work_dir(config);
    // A drill makes the work dir when it does not exist yet: the space is its parent's.
    let existing = work_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(&work_dir)
        .to_path_buf();
    let free = match free_bytes(&existing) {
        Ok(free) => free,
        Err(e) => {
            return report.warn(
                "drill",
                format!("a drill cannot run here: [drill] work-dir: {e}"),
            )
        }
    };
    report.ok(
        "drill",
        format!(
            "a drill can run here: Synapse by `{}` ({}), 127.0.0.1:{port} free, {:.1} GiB free in {} (a drill needs about a backup's size)",
            command.display(),
            command.found_by,
            free as f64 / f64::from(1u32 << 30),
            work_dir.display()
        ),
    );
}

/// Every media storage provider can be read, since a backup reads the media only they hold.
async fn check_media_providers(report: &mut CheckReport, hs: &HomeserverConfig, config: &Config) {
    let store_s3 = config.store.s3();
    for provider in &hs.media_providers {
        match ProviderAccess::open(provider, store_s3) {
            Ok(Some(access)) => match access.probe().await {
                Ok(()) => report.ok("media-provider", format!("{} answers", provider.describe())),
                Err(e) => report.fail("media-provider", e),
            },
            Ok(None) => report.warn(
                "media-provider",
                format!(
                    "{} is not a provider this tool can read: media only it holds stop create-backup (or are left out with --allow-missing-media)",
                    provider.describe()
                ),
            ),
            Err(e) => report.fail("media-provider", e),
        }
    }
}

/// The key, the media folders and every config file can be read.
fn check_sources(report: &mut CheckReport, hs: &HomeserverConfig) {
    match std::fs::File::open(&hs.signing_key) {
        Ok(_) => report.ok("signing-key", hs.signing_key.display().to_string()),
        Err(e) => report.fail(
            "signing-key",
            Error::config(format!(
                "cannot read the signing key {} (from {}): {e}",
                hs.signing_key.display(),
                hs.origin("signing_key_path")
            )),
        ),
    }
    match media_store_readable(hs) {
        Ok(detail) => report.ok("media-store", detail),
        Err(e) => report.fail("media-store", e),
    }
    let mut files: Vec<&Path> = hs.files.iter().map(|p| p.as_path()).collect();
    files.extend(hs.log_config.as_deref());
    files.extend(hs.app_service_files.iter().map(|p| p.as_path()));
    files.extend(hs.referenced_files.iter().map(|(_, p)| p.as_path()));
    let unreadable: Vec<String> = files
        .iter()
        .filter_map(|f| {
            std::fs::File::open(f)
                .err()
                .map(|e| format!("{} ({e})", f.display()))
        })
        .collect();
    if unreadable.is_empty() {
        report.ok("config-files", format!("{} files readable", files.len()));
    } else {
        report.warn(
            "config-files",
            format!(
                "{} of {} not readable, so not backed up: {}",
                unreadable.len(),
                files.len(),
                unreadable.join(", ")
            ),
        );
    }
}

fn media_store_readable(hs: &HomeserverConfig) -> Result<String> {
    let media = &hs.media_store;
    let origin = || hs.origin("media_store_path");
    if !media.is_dir() {
        return Err(Error::config(format!(
            "the media store {} is not a folder that exists (from {})",
            media.display(),
            origin()
        )));
    }
    let mut present = Vec::new();
    for dir in LOCAL_MEDIA_DIRS {
        let folder = media.join(dir);
        if std::fs::symlink_metadata(&folder).is_err() {
            continue;
        }
        std::fs::read_dir(&folder).map_err(|e| {
            Error::config(format!(
                "cannot list {} (from {}): {e}; a link to a disk that is not mounted?",
                folder.display(),
                origin()
            ))
        })?;
        present.push(dir);
    }
    Ok(format!(
        "{} ({})",
        media.display(),
        if present.is_empty() {
            "no local media yet".to_string()
        } else {
            present.join(", ")
        }
    ))
}

/// SQLite: readable, and the temp dir has room for its snapshot. PostgreSQL: reachable, and
/// pg_dump/pg_restore are at least the server's major version (pg_dump refuses newer servers).
async fn check_database(report: &mut CheckReport, hs: &HomeserverConfig, config: &Config) {
    match &hs.database {
        Database::Sqlite { path } => {
            let size = match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() => meta.len(),
                _ => {
                    return report.fail(
                        "database",
                        Error::config(format!(
                            "the SQLite database {} does not exist (from {})",
                            path.display(),
                            hs.origin("database")
                        )),
                    )
                }
            };
            let wal = std::fs::metadata(format!("{}-wal", path.display()))
                .map(|m| m.len())
                .unwrap_or(0);
            report.ok(
                "database",
                format!("SQLite {} ({} bytes)", path.display(), size),
            );
            let temp = config
                .backup
                .temp_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir);
            match free_bytes(&temp) {
                Ok(free) => {
                    let needed = size + wal;
                    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
                    let detail = format!(
                        "{}: {:.1} MiB free, the snapshot needs about {:.1} MiB",
                        temp.display(),
                        mib(free),
                        mib(needed)
                    );
                    if free > needed {
                        report.ok("temp-space", detail);
                    } else {
                        report.fail(
                            "temp-space",
                            Error::refused(
                                Refusal::NotEnoughSpace,
                                format!("{detail}; set [backup] temp-dir to a roomier folder"),
                            ),
                        );
                    }
                }
                Err(e) => report.fail("temp-space", e),
            }
        }
        Database::Postgres(args) => {
            let postgres = Postgres::new(args);
            let described = postgres.describe();
            let archiver = {
                let postgres = Postgres::new(args);
                tokio::task::spawn_blocking(move || ArchiverState::read(&postgres))
            };
            let info = tokio::task::spawn_blocking(move || postgres.info())
                .await
                .map_err(|e| Error::task_failed("database check", e))
                .and_then(|r| r);
            let server_version = match info {
                Ok(info) => {
                    report.ok(
                        "database",
                        format!("PostgreSQL {} at {described}", info.server_version),
                    );
                    info.server_version
                }
                Err(e) => return report.fail("database", e),
            };
            report_archiver(
                report,
                archiver
                    .await
                    .map_err(|e| Error::task_failed("archiver check", e))
                    .and_then(|r| r),
                config,
            );
            if config.postgres.mode == DatabaseMode::Physical {
                report_physical_settings(report, config);
            }
            report_client_tools(report, config, &server_version);
        }
    }
}

/// pg_dump and pg_restore (and pg_basebackup in physical mode), no older than the server.
fn report_client_tools(report: &mut CheckReport, config: &Config, server_version: &str) {
    let server_major = major_version(server_version);
    let mut tools = vec!["pg_dump", "pg_restore"];
    if config.postgres.mode == DatabaseMode::Physical {
        tools.push("pg_basebackup");
    }
    for tool in tools {
        match client_version(tool) {
            Ok(version) => match (major_version(&version), server_major) {
                (Some(client), Some(server)) if client < server => report.fail(
                    "database-tools",
                    Error::config(format!(
                        "{tool} {version} is older than the server ({server_version}); install the PostgreSQL {server} client tools"
                    )),
                ),
                _ => report.ok("database-tools", format!("{tool} {version}")),
            },
            Err(e) => report.fail("database-tools", e),
        }
    }
}

/// PostgreSQL's WAL archiver: off or healthy is fine, archiving elsewhere a warning, failing a
/// failure (its disk fills); in physical mode anything but healthy into this store is a failure;
/// a state that cannot be read (a user without the rights) a warning.
fn report_archiver(report: &mut CheckReport, state: Result<ArchiverState>, config: &Config) {
    // In physical mode a backup is refused unless the WAL goes into this store: a failure here.
    let physical = config.postgres.mode == DatabaseMode::Physical;
    let needed = |report: &mut CheckReport, detail: String| {
        if physical {
            report.fail(
                "wal-archiving",
                Error::Other(format!(
                    "{detail}; [postgres] mode = \"physical\" needs the WAL archived through wal-push into this store (create-backup refuses)"
                )),
            )
        } else {
            report.warn("wal-archiving", detail)
        }
    };
    match state {
        Ok(state) => match state.verdict() {
            ArchiverVerdict::Off(detail) if physical => needed(report, detail),
            ArchiverVerdict::Off(detail) => report.ok("wal-archiving", detail),
            ArchiverVerdict::Healthy(detail) => match wal_push_store(&state, config) {
                Ok(()) => report.ok("wal-archiving", format!("{detail}, into this store")),
                Err(problem) => needed(report, format!("{detail}; but {problem}")),
            },
            ArchiverVerdict::Elsewhere(detail) => needed(report, detail),
            ArchiverVerdict::Failing(detail) => report.fail("wal-archiving", Error::Other(detail)),
        },
        Err(e) => report.warn(
            "wal-archiving",
            format!("the archiver's state cannot be read: {e}"),
        ),
    }
}

/// Physical mode: what a restore in place needs (`[postgres] data-dir`, stop and start commands);
/// without them a restore is refused and only `--target-dir` works.
fn report_physical_settings(report: &mut CheckReport, config: &Config) {
    let settings = &config.postgres;
    let missing: Vec<&str> = [
        ("data-dir", settings.data_dir.is_none()),
        ("stop-command", settings.stop_command.is_none()),
        ("start-command", settings.start_command.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, missing)| missing.then_some(name))
    .collect();
    match (&settings.data_dir, missing.is_empty()) {
        (Some(dir), true) if !dir.join("PG_VERSION").is_file() => report.fail(
            "physical-restore",
            Error::config(format!(
                "[postgres] data-dir {} is not a PostgreSQL data directory (no PG_VERSION)",
                dir.display()
            )),
        ),
        (Some(dir), true) => report.ok(
            "physical-restore",
            format!("a restore in place replaces {} (kept aside)", dir.display()),
        ),
        _ => report.warn(
            "physical-restore",
            format!(
                "[postgres] {} not set: restore-backup refuses to restore a physical backup in place (only --target-dir works)",
                missing.join(", ")
            ),
        ),
    }
}

fn client_version(tool: &str) -> Result<String> {
    let out = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .map_err(|e| {
            Error::config(format!(
                "cannot run {tool}: {e}; install the PostgreSQL client tools"
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"
    Ok(text
        .split_whitespace()
        .nth(2)
        .unwrap_or(text.trim())
        .to_string())
}

/// `15` of "15.19", `9` of "9.6.24" (the part before the first dot).
fn major_version(version: &str) -> Option<u32> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .find(|part| !part.is_empty())?
        .parse()
        .ok()
}

/// The store can be listed, written and deleted from: a tiny probe object, removed again.
async fn check_store(report: &mut CheckReport, store: &dyn Store) -> bool {
    if let Err(e) = store.check_access().await {
        report.fail("store-access", e);
        return false;
    }
    match store.list().await {
        Ok(objects) => report.ok(
            "store-access",
            format!("{} ({} objects)", store.describe(), objects.len()),
        ),
        Err(e) => {
            report.fail("store-access", e);
            return false;
        }
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    // Not named like a backup, so nothing ever lists it as one.
    let probe = format!("check-probe-{}-{nanos}", std::process::id());
    let body: ByteStream =
        futures::stream::once(async { Ok(Bytes::from_static(b"synapse-backup check\n")) }).boxed();
    let written = async {
        store.put(&probe, body, Some(21)).await?;
        store.head(&probe).await?;
        store.delete(&probe).await
    }
    .await;
    match written {
        Ok(()) => report.ok("store-write", format!("wrote, read and deleted {probe}")),
        Err(e) => {
            // Whatever the failure, try not to leave the probe behind.
            let _ = store.delete(&probe).await;
            report.fail("store-write", e);
        }
    }
    true
}

/// The passphrase opens the newest backup's header (when there is a backup); and what in the
/// store is not a backup, or is named like one but does not open as itself.
async fn check_passphrase(
    report: &mut CheckReport,
    store: &dyn Store,
    passphrase: &SecretString,
    hs: Option<&HomeserverConfig>,
    cancel: &Cancel,
) {
    let catalog = match list_backups(store, Some(passphrase), cancel).await {
        Ok(catalog) => catalog,
        Err(e) => return report.fail("passphrase", e),
    };
    report_store_objects(report, &catalog);
    let newest = catalog
        .verified()
        .max_by(|a, b| a.backup_id.cmp(&b.backup_id));
    match newest.map(|b| (&b.backup_id, &b.details)) {
        Some((id, Details::Manifest(header))) => match hs {
            Some(hs) if hs.server_name != header.server_name => report.warn(
                "passphrase",
                format!(
                    "opens {id}, but it is a backup of {:?}, not of {:?}: is this the right store or path?",
                    header.server_name, hs.server_name
                ),
            ),
            _ => report.ok("passphrase", format!("opens the newest backup, {id}")),
        },
        Some((id, _)) => report.ok(
            "passphrase",
            format!("opens the newest backup, {id} (made by the charm)"),
        ),
        None if catalog.backups.is_empty() => {
            report.ok("passphrase", "set; no backup yet to try it on")
        }
        // Nothing opens: a wrong passphrase when the newest says so, otherwise damage.
        None => match catalog.backups.iter().max_by(|a, b| a.backup_id.cmp(&b.backup_id)) {
            Some(BackupListing {
                backup_id,
                details: Details::Unreadable { kind, why },
                ..
            }) => {
                if *kind == ErrorKind::WrongPassphrase {
                    report.fail(
                        "passphrase",
                        Error::WrongPassphrase {
                            id: backup_id.to_string(),
                        },
                    )
                } else {
                    report.warn(
                        "passphrase",
                        format!("could not open the newest backup {backup_id}: {why}"),
                    )
                }
            }
            _ => report.ok("passphrase", "set"),
        },
    }
}

/// Objects that are not backups, and objects named like backups that do not open as themselves
/// (a wrong passphrase, damage, a forgery, a rollback), each counted and named.
fn report_store_objects(report: &mut CheckReport, catalog: &Catalog) {
    let unverified = catalog.unverified();
    let mut problems = Vec::new();
    if !catalog.strays.is_empty() {
        problems.push(format!(
            "{} object(s) not a backup, ignored: {}",
            catalog.strays.len(),
            catalog.strays.join(", ")
        ));
    }
    if !unverified.is_empty() {
        let named: Vec<String> = unverified
            .iter()
            .map(|(id, why)| format!("{id} ({why})"))
            .collect();
        problems.push(format!(
            "{} object(s) named like backups that do not open as themselves, never kept, pruned or used: {}",
            unverified.len(),
            named.join("; ")
        ));
    }
    if problems.is_empty() {
        let count = catalog.backups.len();
        report.ok("store-objects", format!("{count} backup(s), all open"));
    } else {
        report.warn("store-objects", problems.join("; "));
    }
}

/// Scratch folders of killed create-backups hold plaintext: removed, and reported.
fn check_scratch_leftovers(report: &mut CheckReport, config: &Config) {
    let removed = remove_leftovers(config);
    let parent = scratch_parent(config);
    if removed.is_empty() {
        return report.ok("scratch-leftovers", format!("none in {}", parent.display()));
    }
    let named: Vec<String> = removed
        .iter()
        .map(|l| format!("{} ({} old)", l.path.display(), describe_age(l.age)))
        .collect();
    report.warn(
        "scratch-leftovers",
        format!(
            "removed {} scratch folder(s) of killed create-backups, which held unencrypted data: {}",
            removed.len(),
            named.join(", ")
        ),
    );
}

/// Synapse's version, asked of its plain HTTP listener; a stopped Synapse is only a warning.
async fn check_synapse_version(report: &mut CheckReport, hs: &HomeserverConfig) {
    match crate::synapse::server_version(hs).await {
        Ok(version) => report.ok("synapse", format!("Synapse {version} is running")),
        Err(why) => report.warn("synapse", format!("version unknown: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::major_version;

    #[test]
    fn major_versions() {
        assert_eq!(major_version("15.19"), Some(15));
        assert_eq!(major_version("9.6.24"), Some(9));
        assert_eq!(major_version("17beta1"), Some(17));
        assert_eq!(major_version("PostgreSQL"), None);
    }
}
