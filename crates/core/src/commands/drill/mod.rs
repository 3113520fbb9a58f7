//! `drill`: proves that a backup boots as a homeserver.
//!
//! The backup is restored into a scratch folder (every file checked against the manifest, as
//! `restore-backup --target-dir` does), its database made usable (the SQLite file, a
//! throwaway PostgreSQL database, or a physical backup's base recovered on a private server:
//! `recovered`), its config rewritten so that Synapse reaches nothing live
//! (`isolation`, proven before anything starts), and the installed Synapse booted on it on a
//! free loopback port (`synapse::launch`). Then named checks ask that Synapse what a homeserver must
//! answer (`probes`). The Synapse is stopped, the database dropped and the folder removed,
//! unless `--keep`. A drill killed at any moment leaves a marked folder that the next drill or
//! `check` cleans (`host::drills`): its Synapse gets SIGTERM when the drill dies anyway.

mod database;
mod isolation;
mod media;
mod probes;
mod recovered;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::manifest::Header;
use crate::repository::open::read_header;
use crate::repository::BackupId;
use crate::synapse::{Database, HomeserverConfig};

use super::restore::{restore_backup, RestoreOptions};
use super::OpContext;
use crate::host::drills::{
    clean_leftovers, drill_database_name, drill_server, work_dir, Marker, DRILL_CONFIG,
};
use crate::synapse::launch::{
    find_synapse_command, free_loopback_port, SynapseCommand, SynapseProcess,
};
use database::ScratchDatabase;
use isolation::{DrillLayout, LivePaths};
use probes::Probe;

#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    /// Keep the scratch folder and database, and say how to start Synapse on them.
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    Passed,
    Failed,
    Skipped,
}

/// One named check and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub name: &'static str,
    pub status: CheckStatus,
    pub seconds: f64,
    pub detail: String,
}

/// What `--keep` left, and how to use it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KeptDrill {
    pub folder: PathBuf,
    pub start_command: String,
    pub database: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DrillReport {
    pub backup_id: String,
    pub server_name: String,
    pub synapse_command: String,
    pub checks: Vec<CheckOutcome>,
    pub kept: Option<KeptDrill>,
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Failed)
    }

    /// The failed checks' names.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| c.status == CheckStatus::Failed)
            .map(|c| c.name)
            .collect()
    }
}

/// The checks, in the order they run; after a failed one that the rest need, the rest are
/// skipped.
pub const CHECKS: [&str; 9] = [
    "restore",
    "identity",
    "database",
    "isolation",
    "health",
    "signing-key",
    "admin-user",
    "media",
    "client-api",
];

struct Checks {
    done: Vec<CheckOutcome>,
}

impl Checks {
    fn record(
        &mut self,
        name: &'static str,
        started: Instant,
        result: std::result::Result<String, String>,
    ) -> bool {
        let (status, detail, ok) = match result {
            Ok(detail) => (CheckStatus::Passed, detail, true),
            Err(detail) => (CheckStatus::Failed, detail, false),
        };
        self.done.push(CheckOutcome {
            name,
            status,
            seconds: started.elapsed().as_secs_f64(),
            detail,
        });
        ok
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.done.push(CheckOutcome {
            name,
            status: CheckStatus::Skipped,
            seconds: 0.0,
            detail: why.to_string(),
        });
    }

    /// Skips every check not yet run.
    fn skip_rest(&mut self, why: &str) {
        for name in CHECKS {
            if !self.done.iter().any(|c| c.name == name) {
                self.skip(name, why);
            }
        }
    }
}

pub async fn run_drill(
    config: &Config,
    ctx: &OpContext<'_>,
    id: &BackupId,
    options: &DrillOptions,
) -> Result<DrillReport> {
    let started = Instant::now();
    let id = id.as_str();
    let mut notes = clean_leftovers(config);
    let live = HomeserverConfig::load(&config.synapse).ok();
    let command = find_synapse_command(config, live.as_ref())?;
    let header = read_header(ctx.store, id, ctx.passphrase()?, &ctx.cancel)
        .await?
        .ok_or_else(|| Error::config(format!("backup {id} was made by the Synapse charm and has no manifest; a drill needs a backup made by synapse-backup")))?;
    if !header.database.included {
        return Err(Error::config(format!(
            "backup {id} holds no database (made with --skip-database); a drill cannot boot it"
        )));
    }
    let parent = work_dir(config);
    std::fs::create_dir_all(&parent).at("create the drill work dir", &parent)?;
    let scratch = crate::host::scratch::create(&parent)?;
    let mut marker = Marker::new(id, &header);
    marker.write(scratch.path())?;

    let mut checks = Checks { done: Vec::new() };
    let mut drill = Drill {
        config,
        ctx,
        id,
        header: &header,
        live: live.as_ref(),
        command: &command,
        scratch: scratch.path(),
        marker: &mut marker,
        database: None,
    };
    let outcome = drill.run(&mut checks).await;
    let database = drill.database.take();
    let kept = finish(scratch, database, options, &command, &mut notes)?;
    outcome?;
    if ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    Ok(DrillReport {
        backup_id: id.to_string(),
        server_name: header.server_name.clone(),
        synapse_command: format!("{} ({})", command.display(), command.found_by),
        checks: checks.done,
        kept,
        notes,
        elapsed: started.elapsed(),
    })
}

/// Drops the database and removes the folder, or (`--keep`) moves the folder out of the
/// scratch namespace and says how to start it.
fn finish(
    scratch: tempfile::TempDir,
    database: Option<ScratchDatabase>,
    options: &DrillOptions,
    command: &SynapseCommand,
    notes: &mut Vec<String>,
) -> Result<Option<KeptDrill>> {
    if let Some(database) = &database {
        // A kept folder's server is stopped too: --keep says how to start it.
        database.stop_recovered();
        if let (true, Some((cluster, _))) = (options.keep, &database.recovered) {
            notes.push(format!(
                "the drill's PostgreSQL is stopped; start it again with: {}",
                cluster.start_command()
            ));
        }
    }
    if !options.keep {
        if let Some(warning) = database.as_ref().and_then(ScratchDatabase::drop_throwaway) {
            notes.push(warning);
        }
        let path = scratch.path().to_path_buf();
        if let Err(e) = scratch.close() {
            notes.push(format!(
                "could not remove the drill folder {}: {e}; remove it by hand",
                path.display()
            ));
        }
        return Ok(None);
    }
    let from = scratch.keep();
    let folder = kept_folder_name(&from);
    std::fs::rename(&from, &folder).at("keep the drill folder as", &folder)?;
    let _ = std::fs::remove_file(folder.join(crate::host::scratch::DRILL_MARKER));
    let config_file = folder.join(DRILL_CONFIG);
    // The paths inside the config name the folder as it was made.
    let text = std::fs::read_to_string(&config_file).at("read", &config_file)?;
    let text = text.replace(
        &from.to_string_lossy().into_owned(),
        &folder.to_string_lossy(),
    );
    std::fs::write(&config_file, text).at("write", &config_file)?;
    Ok(Some(KeptDrill {
        start_command: format!(
            "cd {} && {} --config-path {}",
            shell_quote(&folder.to_string_lossy()),
            command
                .words
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" "),
            shell_quote(&config_file.to_string_lossy())
        ),
        database: database.and_then(|d| d.throwaway.and_then(|p| p.args().dbname.clone())),
        folder,
    }))
}

/// `synapse-drill-kept-<time>` beside the scratch folder (out of the scratch names, so no
/// cleaning ever takes it), `-2`, `-3`… when that is taken.
fn kept_folder_name(scratch: &Path) -> PathBuf {
    let base = format!(
        "synapse-drill-kept-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S")
    );
    let mut folder = scratch.with_file_name(&base);
    let mut n = 1;
    while folder.exists() {
        n += 1;
        folder = scratch.with_file_name(format!("{base}-{n}"));
    }
    folder
}

/// `word` as one shell word: as it is when it is plain, else in single quotes.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// One drill run's state.
struct Drill<'a, 'c> {
    config: &'a Config,
    ctx: &'a OpContext<'c>,
    id: &'a str,
    header: &'a Header,
    live: Option<&'a HomeserverConfig>,
    command: &'a SynapseCommand,
    scratch: &'a Path,
    marker: &'a mut Marker,
    database: Option<ScratchDatabase>,
}

impl Drill<'_, '_> {
    /// Runs the checks in order; an error is a failure of the drill itself (store unreachable,
    /// wrong passphrase, isolation not provable), not of a check.
    async fn run(&mut self, checks: &mut Checks) -> Result<()> {
        let restored = self.scratch.join("restored");
        if !self.restore(checks, &restored).await? {
            checks.skip_rest("the backup did not restore");
            return Ok(());
        }
        self.check_identity(checks, &restored).await;
        if !self.prepare_database(checks, &restored).await? {
            checks.skip_rest("the database is not usable");
            return Ok(());
        }
        let port = free_loopback_port()?;
        let secret = random_secret();
        let t = Instant::now();
        let config_file = self.write_config(&restored, port, &secret)?;
        checks.record("isolation", t, Ok(format!("{} listens on 127.0.0.1:{port} only; no federation, pushers, app services, email, Redis, workers or metrics; every path inside {}", config_file.display(), self.scratch.display())));
        let t = Instant::now();
        let mut synapse = SynapseProcess::start(self.command, &config_file, self.scratch)?;
        self.marker.synapse_pid = Some(synapse.pid());
        self.marker.write(self.scratch)?;
        let mut probe = Probe::new(port).map_err(Error::Other)?;
        let timeout = Duration::from_secs(self.config.drill.start_timeout_secs);
        let healthy = synapse
            .wait_healthy(&probe.base, timeout, &self.ctx.cancel)
            .await;
        let healthy = checks.record(
            "health",
            t,
            healthy.map(|()| {
                format!(
                    "Synapse (pid {}) answered /health on {}",
                    synapse.pid(),
                    probe.base
                )
            }),
        );
        if healthy {
            self.probe_synapse(checks, &mut probe, &restored, &secret)
                .await;
        } else {
            checks.skip_rest("Synapse did not start");
        }
        synapse.stop();
        self.marker.synapse_pid = None;
        self.marker.write(self.scratch)?;
        Ok(())
    }

    async fn restore(&mut self, checks: &mut Checks, restored: &Path) -> Result<bool> {
        let t = Instant::now();
        let options = RestoreOptions {
            target_dir: Some(restored.to_path_buf()),
            ..RestoreOptions::default()
        };
        let id = BackupId::parse(self.id).map_err(|e| Error::config(e.to_string()))?;
        match restore_backup(self.config, self.ctx, &id, &options).await {
            Ok(report) => Ok(checks.record("restore", t, Ok(format!("{} files, {} bytes, each matching the manifest's size and SHA-256; the OpenPGP integrity checks passed", report.files, report.bytes)))),
            Err(e) if e.kind() == ErrorKind::Corrupt => Ok(checks.record("restore", t, Err(e.to_string()))),
            Err(e) => Err(e),
        }
    }

    /// The backup is of this homeserver: its server_name, and a signing key the running
    /// homeserver publishes (now or formerly) when it answers.
    async fn check_identity(&self, checks: &mut Checks, restored: &Path) {
        let t = Instant::now();
        let Some(live) = self.live else {
            return checks.skip("identity", "the live homeserver.yaml could not be read here; nothing to compare the backup with");
        };
        if live.server_name != self.header.server_name {
            let why = format!(
                "the backup is of server {:?}, but this homeserver ({}) is {:?}",
                self.header.server_name,
                live.describe_files(),
                live.server_name
            );
            checks.record("identity", t, Err(why));
            return;
        }
        let backup_keys = match signing_key_file(restored)
            .and_then(|p| std::fs::read_to_string(&p).at("read", &p))
        {
            Ok(text) => probes::verify_keys_of(&text),
            Err(e) => Err(e.to_string()),
        };
        let result = match (backup_keys, crate::synapse::published_keys(live).await) {
            (Err(e), _) => Err(format!("the backup's signing key: {e}")),
            (Ok(_), Err(why)) => Ok(format!("the backup is of {}, this homeserver (its published keys could not be compared: {why})", live.server_name)),
            (Ok(ours), Ok(published)) => match ours.iter().find(|k| !published.contains(k)) {
                None => Ok(format!("the backup is of {}, and its signing key is one the running homeserver publishes", live.server_name)),
                Some((id, _)) => Err(format!("the backup's signing key {id} is not one the running homeserver {} publishes (now or formerly): this backup is of another server's data", live.server_name)),
            },
        };
        checks.record("identity", t, result);
    }

    async fn prepare_database(&mut self, checks: &mut Checks, restored: &Path) -> Result<bool> {
        let t = Instant::now();
        let prepared = if self.header.database.physical.is_some() {
            self.recover_database(restored).await?
        } else {
            self.load_database(restored)?
        };
        let db = match prepared {
            Ok(db) => db,
            Err(e) if e.kind() == ErrorKind::ToolMissing || e.kind() == ErrorKind::Config => {
                return Err(e)
            }
            Err(e) => {
                return Ok(checks.record(
                    "database",
                    t,
                    Err(format!("the restored database is not usable: {e}")),
                ))
            }
        };
        let counted = db.counts();
        self.database = Some(db);
        let result = match (counted, &self.header.database.counts) {
            (Err(e), _) => Err(format!("the restored database does not answer: {e}")),
            (Ok(None), _) => Err("the restored database lacks Synapse's tables (users, rooms, events, local_media_repository)".to_string()),
            (Ok(Some(now)), None) if self.header.database.physical.is_some() => Ok(format!(
                "recovered from the base and the WAL to the restore point {} and promoted; it answers with {}",
                self.id,
                now.describe()
            )),
            (Ok(Some(now)), None) => {
                checks.skip("database", &format!("the backup was made before row counts were recorded; the restored database answers with {}", now.describe()));
                return Ok(true);
            }
            (Ok(Some(now)), Some(then)) if now == *then => Ok(format!("{} as recorded when the backup was made", now.describe())),
            (Ok(Some(now)), Some(then)) => Err(format!("the restored database holds {}, the backup recorded {}", now.describe(), then.describe())),
        };
        Ok(checks.record("database", t, result))
    }

    /// A SQLite file, or a dump loaded into a throwaway database (the outer error: the drill
    /// cannot go on; the inner one: the database check fails).
    fn load_database(&mut self, restored: &Path) -> Result<Result<ScratchDatabase>> {
        let server = match self.header.database.kind {
            crate::manifest::DatabaseKind::Postgresql => {
                let restored_args = restored_postgres_args(restored);
                Some(drill_server(
                    self.config.drill.postgres.as_deref(),
                    self.live,
                    restored_args.as_ref(),
                )?)
            }
            crate::manifest::DatabaseKind::Sqlite => None,
        };
        if server.is_some() {
            // Named before it exists: a drill killed while loading it leaves a name to drop.
            self.marker.database = Some(drill_database_name(self.id));
            self.marker.write(self.scratch)?;
        }
        Ok(database::prepare(self.header, restored, server, self.id))
    }

    /// A physical backup's server, laid by the restore, recovered on a private socket.
    async fn recover_database(&mut self, restored: &Path) -> Result<Result<ScratchDatabase>> {
        let args = restored_postgres_args(restored).ok_or_else(|| {
            Error::config("the restored homeserver.yaml names no PostgreSQL database")
        })?;
        // Named before it starts: a drill killed meanwhile leaves a server to stop.
        self.marker.postgres_data = Some(restored.join("postgres"));
        self.marker.write(self.scratch)?;
        let timeout = self.config.postgres.recovery_timeout;
        Ok(database::recover(restored, self.scratch, &args, timeout, &self.ctx.cancel).await)
    }

    /// Writes the isolated config and proves it isolated.
    fn write_config(&self, restored: &Path, port: u16, secret: &str) -> Result<PathBuf> {
        let files = restored_config_files(restored)?;
        let merged = isolation::merge(&files)?;
        let database = self
            .database
            .as_ref()
            .map(|d| d.database.clone())
            .ok_or_else(|| Error::Other("the drill's database is not ready".into()))?;
        let layout = DrillLayout {
            scratch: self.scratch.to_path_buf(),
            port,
            database,
            media_store: restored.join("media"),
            signing_key: signing_key_file(restored)?,
            secret_copies: secret_copies(restored),
        };
        let drill_config = isolation::rewrite(merged, &layout, secret);
        isolation::prove_isolated(&drill_config, &layout, &live_paths(self.live))?;
        std::fs::create_dir_all(&layout.media_store).at("create", &layout.media_store)?;
        let text = serde_norway::to_string(&drill_config)
            .map_err(|e| Error::Other(format!("cannot write the drill's config: {e}")))?;
        let path = self.scratch.join(DRILL_CONFIG);
        write_private(&path, &text)?;
        Ok(path)
    }

    async fn probe_synapse(
        &self,
        checks: &mut Checks,
        probe: &mut Probe,
        restored: &Path,
        secret: &str,
    ) {
        let t = Instant::now();
        let key_text =
            signing_key_file(restored).and_then(|p| std::fs::read_to_string(&p).at("read", &p));
        let result = match key_text {
            Err(e) => Err(e.to_string()),
            Ok(text) => compare_keys(&probe.server_keys().await, &text, &self.header.server_name),
        };
        checks.record("signing-key", t, result);
        let t = Instant::now();
        let admin = match probe.register_admin(secret).await {
            Ok(user) => probe.admin_user().await.map(|()| {
                format!(
                    "registered {user} in the scratch database only; the admin API answers for it"
                )
            }),
            Err(e) => Err(e),
        };
        if !checks.record("admin-user", t, admin) {
            checks.skip_rest("no user to ask with");
            return;
        }
        let t = Instant::now();
        let media = match &self.database {
            Some(db) => {
                media::check_sample(
                    probe,
                    db,
                    &restored.join("media"),
                    &self.header.server_name,
                    self.config.drill.media_sample,
                )
                .await
            }
            None => Err("no database".into()),
        };
        match media {
            Ok(Some(detail)) => {
                checks.record("media", t, Ok(detail));
            }
            Ok(None) => checks.skip("media", "the backup's database lists no local media"),
            Err(e) => {
                checks.record("media", t, Err(e));
            }
        }
        let t = Instant::now();
        checks.record("client-api", t, probe.client_round_trip().await);
    }
}

fn compare_keys(
    served: &probes::ProbeResult<(String, Vec<(String, String)>)>,
    key_file: &str,
    server_name: &str,
) -> std::result::Result<String, String> {
    let (server, keys) = served.as_ref().map_err(Clone::clone)?;
    if server != server_name {
        return Err(format!(
            "/_matrix/key/v2/server names server {server:?}, the backup is of {server_name:?}"
        ));
    }
    let expected = probes::verify_keys_of(key_file)?;
    for (key_id, public) in &expected {
        match keys.iter().find(|(id, _)| id == key_id) {
            Some((_, served)) if served == public => {}
            Some(_) => {
                return Err(format!(
                "{key_id} is served with another public key than the backup's signing key gives"
            ))
            }
            None => {
                return Err(format!(
                    "{key_id}, the backup's signing key, is not among the served keys {:?}",
                    keys.iter().map(|(id, _)| id).collect::<Vec<_>>()
                ))
            }
        }
    }
    Ok(format!(
        "serves {} for {server}, the backup's signing key",
        expected
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The restored config files in Synapse's reading order: homeserver.yaml, then the files
/// that were beside it (conf.d, in path order), then `other/<n>-…` by `n`.
fn restored_config_files(restored: &Path) -> Result<Vec<(PathBuf, String)>> {
    let root = restored.join("config");
    let main = root.join("homeserver.yaml");
    let mut beside = Vec::new();
    let mut other = Vec::new();
    for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            Error::Other(format!(
                "cannot read the restored config in {}: {e}",
                root.display()
            ))
        })?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(&root) else {
            continue;
        };
        let rel_text = rel.to_string_lossy();
        let is_yaml = rel_text.ends_with(".yaml") || rel_text.ends_with(".yml");
        if !entry.file_type().is_file() || !is_yaml || path == main {
            continue;
        }
        if ["log/", "appservices/", "referenced/"]
            .iter()
            .any(|p| rel_text.starts_with(p))
        {
            continue;
        }
        match rel_text.strip_prefix("other/") {
            Some(name) => {
                let n: u64 = name
                    .split('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX);
                other.push((n, path.to_path_buf()));
            }
            None => beside.push(path.to_path_buf()),
        }
    }
    other.sort();
    let mut files = Vec::new();
    for path in std::iter::once(main)
        .chain(beside)
        .chain(other.into_iter().map(|(_, p)| p))
    {
        let text = std::fs::read_to_string(&path).at("read", &path)?;
        files.push((path, text));
    }
    Ok(files)
}

/// The connection settings of the backup's own homeserver.yaml, when its database is
/// PostgreSQL.
fn restored_postgres_args(restored: &Path) -> Option<crate::synapse::PostgresArgs> {
    let path = restored.join("config/homeserver.yaml");
    let text = std::fs::read_to_string(&path).ok()?;
    match HomeserverConfig::parse(&text, &path).ok()?.database {
        Database::Postgres(args) => Some(args),
        Database::Sqlite { .. } => None,
    }
}

fn signing_key_file(restored: &Path) -> Result<PathBuf> {
    let folder = restored.join("keys");
    let mut keys: Vec<PathBuf> = std::fs::read_dir(&folder)
        .at("read", &folder)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    keys.sort();
    keys.into_iter().next().ok_or_else(|| {
        Error::config(format!(
            "the restored backup has no signing key in {}",
            folder.display()
        ))
    })
}

/// The backup's copies of secret files the config names, by setting.
fn secret_copies(restored: &Path) -> Vec<(String, PathBuf)> {
    ["macaroon_secret_key_path", "form_secret_path"]
        .iter()
        .filter_map(|setting| {
            let folder = restored.join("config/referenced").join(setting);
            let file = std::fs::read_dir(&folder)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.is_file())?;
            Some((setting.to_string(), file))
        })
        .collect()
}

fn live_paths(live: Option<&HomeserverConfig>) -> LivePaths {
    let Some(hs) = live else {
        return LivePaths::default();
    };
    let mut paths = vec![hs.media_store.clone(), hs.signing_key.clone()];
    paths.extend(hs.files.iter().cloned());
    let postgres = match &hs.database {
        Database::Sqlite { path } => {
            paths.push(path.clone());
            None
        }
        Database::Postgres(args) => args
            .dbname
            .clone()
            .map(|name| (args.host.clone(), args.port, name)),
    };
    LivePaths { paths, postgres }
}

fn random_secret() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), 40)
}

/// Writes a file only its owner can read (it holds the drill's registration secret).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .at("create", path)?;
    file.write_all(text.as_bytes()).at("write", path)
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn start_commands_quote_what_a_shell_would_split() {
        assert_eq!(shell_quote("/opt/venv/bin/python"), "/opt/venv/bin/python");
        assert_eq!(shell_quote("/srv/my drills/x"), "'/srv/my drills/x'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
