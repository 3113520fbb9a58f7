//! The tool's own TOML configuration, validated before any work starts.
//!
//! Raw TOML is parsed into `Raw*` structs with `deny_unknown_fields` (a typo is an error, not a
//! silently ignored key), then turned into [`Config`], which the rest of the library trusts.
//! (Over 400 lines with its tests: each setting's parsing, default and check stay next to its
//! key, so that one file says what every setting means.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::monitoring::MonitoringSettings;

mod env;
mod postgres;
pub use env::{variable_name, Origins};
pub use postgres::{parse_interval, DatabaseMode, PostgresSettings};
/// The settings as given, section by section (a TOML table, whichever source set them).
pub use toml::Table as Settings;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/synapse-backup/config.toml";
pub const CONFIG_ENV: &str = "SYNAPSE_BACKUP_CONFIG";
pub const PASSPHRASE_ENV: &str = "SYNAPSE_BACKUP_PASSPHRASE";
pub const S3_SECRET_ENV: &str = "AWS_SECRET_ACCESS_KEY";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    synapse: RawSynapse,
    s3: Option<RawS3>,
    local: Option<RawLocal>,
    #[serde(default)]
    backup: RawBackup,
    #[serde(default)]
    restore: RawRestore,
    #[serde(default)]
    monitoring: RawMonitoring,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    drill: RawDrill,
    #[serde(default)]
    postgres: postgres::RawPostgres,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDrill {
    work_dir: Option<PathBuf>,
    synapse_command: Option<String>,
    postgres: Option<String>,
    media_sample: Option<usize>,
    start_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRetention {
    #[serde(default)]
    keep_last: usize,
    #[serde(default)]
    keep_daily: usize,
    #[serde(default)]
    keep_weekly: usize,
    #[serde(default)]
    keep_monthly: usize,
    delete_grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMonitoring {
    textfile_dir: Option<PathBuf>,
    ping_url: Option<String>,
    ping_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSynapse {
    #[serde(default = "default_homeserver_yaml")]
    config: OneOrMany,
    working_dir: Option<PathBuf>,
}

/// `config = "/data/homeserver.yaml"` or `config = ["…/homeserver.yaml", "…/conf.d"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl Default for RawSynapse {
    fn default() -> Self {
        RawSynapse {
            config: default_homeserver_yaml(),
            working_dir: None,
        }
    }
}

fn default_homeserver_yaml() -> OneOrMany {
    OneOrMany::One(PathBuf::from("/data/homeserver.yaml"))
}

/// Where Synapse's own config is, and the directory it runs in.
#[derive(Debug, Clone)]
pub struct SynapseSettings {
    /// What Synapse is started with as `--config-path`, in order: files, and folders whose
    /// `*.yaml` files it reads sorted by name.
    pub config_paths: Vec<PathBuf>,
    /// The directory Synapse runs in, against which it resolves relative paths (see
    /// `synapse::WorkingDir` for the default).
    pub working_dir: Option<PathBuf>,
}

fn synapse_settings(raw: RawSynapse, base: &Path, source: &Path) -> Result<SynapseSettings> {
    let config_paths: Vec<PathBuf> = match raw.config {
        OneOrMany::One(path) => vec![path],
        OneOrMany::Many(paths) => paths,
    };
    if config_paths.is_empty() {
        return Err(Error::config(format!(
            "{}: [synapse] config is an empty list; name homeserver.yaml (and any conf.d folder Synapse reads)",
            source.display()
        )));
    }
    Ok(SynapseSettings {
        config_paths: config_paths.into_iter().map(|p| base.join(p)).collect(),
        working_dir: raw.working_dir.map(|p| base.join(p)),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawS3 {
    endpoint: Option<String>,
    bucket: String,
    #[serde(default)]
    path: String,
    region: Option<String>,
    s3_uri_style: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    secret_key_file: Option<PathBuf>,
    storage_class: Option<String>,
    tls_ca_chain: Option<PathBuf>,
    upload_concurrency: Option<usize>,
    max_upload_rate: Option<String>,
    max_download_rate: Option<String>,
    max_retries: Option<usize>,
    request_timeout_secs: Option<u64>,
}

// Hand-written so that a secret in the file can never reach a log through `{:?}`.
impl std::fmt::Debug for RawS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawS3")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBackup {
    passphrase_file: Option<PathBuf>,
    #[serde(default)]
    include_remote_media: bool,
    read_concurrency: Option<usize>,
    temp_dir: Option<PathBuf>,
    volume_size: Option<String>,
    provider_downloads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRestore {
    stop_command: Option<String>,
    start_command: Option<String>,
    health_timeout_secs: Option<u64>,
}

/// Where backups are kept.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    S3(Box<S3Config>),
    Local(LocalConfig),
}

impl StoreConfig {
    /// The S3 settings when the store is S3: their retries and timeouts apply to storage
    /// providers' buckets too.
    pub fn s3(&self) -> Option<&S3Config> {
        match self {
            StoreConfig::S3(s3) => Some(s3),
            StoreConfig::Local(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriStyle {
    Path,
    Host,
}

#[derive(Clone)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Prefix inside the bucket without leading or trailing slashes; may be empty.
    pub path: String,
    pub region: Option<String>,
    pub uri_style: UriStyle,
    pub access_key: String,
    pub secret_key: SecretString,
    pub storage_class: Option<String>,
    pub tls_ca_chain: Option<PathBuf>,
    pub upload_concurrency: usize,
    /// Upload bandwidth cap in bytes per second.
    pub max_upload_rate: Option<u64>,
    /// Download bandwidth cap in bytes per second (verify, restore).
    pub max_download_rate: Option<u64>,
    /// Retries of one request (a part, a GET) on transient errors, with exponential backoff.
    pub max_retries: usize,
    /// A request silent this long is abandoned and retried.
    pub request_timeout: std::time::Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("path", &self.path)
            .field("region", &self.region)
            .field("uri_style", &self.uri_style)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct BackupSettings {
    pub passphrase_file: Option<PathBuf>,
    pub include_remote_media: bool,
    pub read_concurrency: usize,
    pub temp_dir: Option<PathBuf>,
    /// The most media bytes one volume holds (format 2).
    pub volume_size: u64,
    /// How many media files are read from (or, on restore, written to) a storage provider at
    /// once.
    pub provider_downloads: usize,
}

#[derive(Debug, Clone)]
pub struct RestoreSettings {
    pub stop_command: Option<String>,
    pub start_command: Option<String>,
    pub health_timeout_secs: u64,
}

/// `[drill]`: where and with what `drill` boots a backup.
#[derive(Debug, Clone)]
pub struct DrillSettings {
    /// Where the scratch folders go (default: `[backup] temp-dir`).
    pub work_dir: Option<PathBuf>,
    /// The command that precedes Synapse's `--config-path` (default: found).
    pub synapse_command: Option<String>,
    /// The PostgreSQL server for the throwaway database, a libpq connection string (default:
    /// homeserver.yaml's); parsed where it is used (`host::drills`).
    pub postgres: Option<String>,
    /// How many local media the media check downloads.
    pub media_sample: usize,
    /// How long Synapse may take to answer /health.
    pub start_timeout_secs: u64,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, or where it was looked for when the environment alone configures the
    /// tool (`file_read` false).
    pub source: PathBuf,
    pub file_read: bool,
    /// The settings as given (file, then environment), `s3.secret-key` redacted: what
    /// `config show` prints.
    pub settings: Settings,
    /// Settings that came from the environment, and from which variable.
    pub origins: Origins,
    pub synapse: SynapseSettings,
    pub store: StoreConfig,
    pub backup: BackupSettings,
    pub restore: RestoreSettings,
    pub monitoring: MonitoringSettings,
    /// What `prune-backups` keeps when no `--keep-*` flag is given.
    pub retention: RetentionSettings,
    pub drill: DrillSettings,
    pub postgres: PostgresSettings,
}

/// `[retention]`: the `prune-backups` policy, and how long unused volumes wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionSettings {
    /// All zero when none is configured.
    pub policy: RetentionPolicy,
    /// How long a media volume no backup needs waits, condemned, before it is deleted: a
    /// create-backup that started before it was condemned has this long to finish.
    pub delete_grace: std::time::Duration,
}

/// Which backups a prune keeps, in the manner of restic's `forget`: the same fields whether
/// they come from `[retention]` or from `prune-backups`' flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The newest N backups.
    pub keep_last: usize,
    /// The newest backup of each of the last N days that have backups (UTC).
    pub keep_daily: usize,
    /// The same per ISO week.
    pub keep_weekly: usize,
    /// The same per calendar month.
    pub keep_monthly: usize,
}

impl RetentionPolicy {
    pub fn keeps_nothing(&self) -> bool {
        self.keep_last == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
    }
}

/// The default `[backup] volume-size`: a restore of even a few GiB reads several volumes at once
/// (one decryption thread each), rotation replaces media in small steps, and 300 GB of media are
/// still only about 1,200 objects.
pub const DEFAULT_VOLUME_SIZE: u64 = 256 << 20;

impl Config {
    /// Reads and validates the configuration file at `path`, with the environment laid over
    /// it. When `path` was not asked for (`explicit` false: the default path) and does not
    /// exist, the environment alone configures the tool.
    pub fn load(path: &Path, explicit: bool) -> Result<Config> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
            Err(e) => {
                return Err(Error::config(format!(
                    "cannot read config file {}: {e}; pass --config FILE or set {CONFIG_ENV}",
                    path.display()
                )))
            }
        };
        let config = Config::parse_with_env(text.as_deref(), path, &env)?;
        if text.as_deref().is_some_and(has_inline_secret) {
            warn_if_others_can_read(path, "config file holding a secret");
        }
        Ok(config)
    }

    /// Parses configuration text without the environment; `source` names the file in messages
    /// and anchors relative paths.
    pub fn parse(text: &str, source: &Path) -> Result<Config> {
        Config::parse_with_env(Some(text), source, &[])
    }

    /// Parses the file's text (`None`: no file) with `env` (name, value pairs) laid over it.
    pub fn parse_with_env(
        text: Option<&str>,
        source: &Path,
        env: &[(String, String)],
    ) -> Result<Config> {
        let mut table: toml::Table = match text {
            Some(text) => text.parse().map_err(|e: toml::de::Error| {
                Error::config(format!("{}: {}", source.display(), e.message()))
            })?,
            None => toml::Table::new(),
        };
        let origins = env::overlay(&mut table, env)?;
        let raw = RawConfig::deserialize(table.clone()).map_err(|e| {
            let with = if origins.is_empty() {
                ""
            } else {
                " with the environment"
            };
            Error::config(format!("{}{with}: {}", source.display(), e.message()))
        })?;
        redact_secrets(&mut table);
        // Paths are relative to the file's folder, or to the current directory without a file;
        // made absolute, so that paths in the file (and Synapse's working directory) are too.
        let parent = match text {
            Some(_) => source
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
            None => Path::new("."),
        };
        let base = &std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        let store = store_config(raw.s3, raw.local, base, source, text.is_some())?;
        Ok(Config {
            source: source.to_path_buf(),
            file_read: text.is_some(),
            settings: table,
            origins,
            synapse: synapse_settings(raw.synapse, base, source)?,
            postgres: postgres::postgres_settings(raw.postgres, base)
                .map_err(|e| Error::config(format!("{}: {e}", source.display())))?,
            store,
            backup: BackupSettings {
                passphrase_file: raw.backup.passphrase_file.map(|p| base.join(p)),
                include_remote_media: raw.backup.include_remote_media,
                read_concurrency: raw.backup.read_concurrency.unwrap_or(4).clamp(1, 64),
                temp_dir: raw.backup.temp_dir.map(|p| base.join(p)),
                provider_downloads: raw.backup.provider_downloads.unwrap_or(8).clamp(1, 64),
                volume_size: match raw.backup.volume_size.as_deref() {
                    None => DEFAULT_VOLUME_SIZE,
                    Some(text) => parse_rate(text).map_err(|e| {
                        Error::config(format!("{}: [backup] volume-size: {e}", source.display()))
                    })?,
                },
            },
            restore: RestoreSettings {
                stop_command: raw.restore.stop_command,
                start_command: raw.restore.start_command,
                health_timeout_secs: raw.restore.health_timeout_secs.unwrap_or(120),
            },
            retention: RetentionSettings {
                policy: RetentionPolicy {
                    keep_last: raw.retention.keep_last,
                    keep_daily: raw.retention.keep_daily,
                    keep_weekly: raw.retention.keep_weekly,
                    keep_monthly: raw.retention.keep_monthly,
                },
                delete_grace: std::time::Duration::from_secs(
                    raw.retention.delete_grace_secs.unwrap_or(24 * 3600),
                ),
            },
            drill: DrillSettings {
                work_dir: raw.drill.work_dir.map(|p| base.join(p)),
                synapse_command: raw.drill.synapse_command.filter(|c| !c.trim().is_empty()),
                postgres: raw.drill.postgres.filter(|c| !c.trim().is_empty()),
                media_sample: raw.drill.media_sample.unwrap_or(20).clamp(1, 10_000),
                start_timeout_secs: raw.drill.start_timeout_secs.unwrap_or(300).clamp(10, 3600),
            },
            monitoring: MonitoringSettings {
                textfile_dir: raw.monitoring.textfile_dir.map(|p| base.join(p)),
                ping_url: raw.monitoring.ping_url.filter(|u| !u.trim().is_empty()),
                ping_timeout: std::time::Duration::from_secs(
                    raw.monitoring.ping_timeout_secs.unwrap_or(10).clamp(1, 120),
                ),
            },
        })
    }

    /// The backup passphrase, from `passphrase-file` or `SYNAPSE_BACKUP_PASSPHRASE`.
    ///
    /// A missing or empty passphrase is an error: this tool never writes an unencrypted backup.
    pub fn passphrase(&self) -> Result<SecretString> {
        let secret = if let Some(file) = &self.backup.passphrase_file {
            warn_if_others_can_read(file, "passphrase file");
            let text = std::fs::read_to_string(file).map_err(|e| {
                Error::config(format!(
                    "cannot read passphrase-file {}: {e}",
                    file.display()
                ))
            })?;
            // A trailing newline from `echo pass > file` is not part of the passphrase, as with
            // gpg --passphrase-file, which reads the first line.
            let first_line = text.lines().next().unwrap_or("").to_string();
            SecretString::from(first_line)
        } else if let Ok(value) = std::env::var(PASSPHRASE_ENV) {
            SecretString::from(value)
        } else {
            return Err(Error::config(format!(
                "no backup passphrase: set [backup] passphrase-file in {} or the {PASSPHRASE_ENV} environment variable (backups are never written unencrypted)",
                self.source.display()
            )));
        };
        if secret.expose_secret().is_empty() {
            return Err(Error::config(
                "the backup passphrase is empty; choose a long random passphrase",
            ));
        }
        Ok(secret)
    }
}

/// What `config show` prints has no secret: the S3 secret key, and a `[postgres] connection`
/// that carries a password.
fn redact_secrets(table: &mut toml::Table) {
    if let Some(toml::Value::Table(s3)) = table.get_mut("s3") {
        if s3.contains_key("secret-key") {
            s3.insert(
                "secret-key".into(),
                toml::Value::String("<redacted>".into()),
            );
        }
    }
    if let Some(toml::Value::Table(postgres)) = table.get_mut("postgres") {
        let with_password = postgres
            .get("connection")
            .and_then(|v| v.as_str())
            .is_some_and(|c| c.contains("password"));
        if with_password {
            postgres.insert(
                "connection".into(),
                toml::Value::String("<redacted: holds a password>".into()),
            );
        }
    }
}

/// The one store the file (or the environment) configures.
fn store_config(
    s3: Option<RawS3>,
    local: Option<RawLocal>,
    base: &Path,
    source: &Path,
    file_read: bool,
) -> Result<StoreConfig> {
    match (s3, local) {
        (Some(s3), None) => Ok(StoreConfig::S3(Box::new(s3_config(s3, base)?))),
        (None, Some(local)) => Ok(StoreConfig::Local(LocalConfig {
            path: base.join(local.path),
        })),
        (Some(_), Some(_)) => Err(Error::config(format!(
            "{}: both [s3] and [local] are set; keep exactly one store",
            source.display()
        ))),
        (None, None) if file_read => Err(Error::config(format!(
            "{}: no store configured; add an [s3] section (bucket, endpoint or region, access-key, secret-key-file) or a [local] section with path",
            source.display()
        ))),
        (None, None) => Err(Error::config(format!(
            "no config file at {} and no store in the environment: pass --config FILE, or set {} (or {} and the other [s3] settings)",
            source.display(),
            variable_name("local", "path"),
            variable_name("s3", "bucket")
        ))),
    }
}

fn s3_config(raw: RawS3, base: &Path) -> Result<S3Config> {
    if raw.bucket.trim().is_empty() {
        return Err(Error::config("[s3] bucket is empty"));
    }
    if raw.endpoint.is_none() && raw.region.is_none() {
        return Err(Error::config(
            "[s3] needs an endpoint or a region (as the s3-integrator does)",
        ));
    }
    let uri_style = match raw.s3_uri_style.as_deref() {
        None | Some("host") => UriStyle::Host,
        Some("path") => UriStyle::Path,
        Some(other) => {
            return Err(Error::config(format!(
                "[s3] s3-uri-style is {other:?}; use \"path\" or \"host\""
            )))
        }
    };
    let access_key = raw.access_key.ok_or_else(|| {
        Error::config(
            "[s3] access-key is missing (or set SYNAPSE_BACKUP_S3_ACCESS_KEY or AWS_ACCESS_KEY_ID)",
        )
    })?;
    let secret_key = match (raw.secret_key, raw.secret_key_file) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                "[s3] has both secret-key and secret-key-file; keep one",
            ))
        }
        (Some(inline), None) => SecretString::from(inline),
        (None, Some(file)) => {
            let file = base.join(file);
            warn_if_others_can_read(&file, "S3 secret-key-file");
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Error::config(format!(
                    "cannot read [s3] secret-key-file {}: {e}",
                    file.display()
                ))
            })?;
            SecretString::from(text.trim().to_string())
        }
        (None, None) => match std::env::var(S3_SECRET_ENV) {
            Ok(value) => SecretString::from(value),
            Err(_) => {
                return Err(Error::config(format!(
                    "[s3] secret key is missing: set secret-key-file, secret-key or {S3_SECRET_ENV}"
                )))
            }
        },
    };
    let max_upload_rate = raw.max_upload_rate.as_deref().map(parse_rate).transpose()?;
    let max_download_rate = raw
        .max_download_rate
        .as_deref()
        .map(parse_rate)
        .transpose()?;
    Ok(S3Config {
        endpoint: raw.endpoint.map(|e| e.trim_end_matches('/').to_string()),
        bucket: raw.bucket,
        path: raw.path.trim_matches('/').to_string(),
        region: raw.region,
        uri_style,
        access_key,
        secret_key,
        storage_class: raw.storage_class,
        tls_ca_chain: raw.tls_ca_chain.map(|p| base.join(p)),
        upload_concurrency: raw.upload_concurrency.unwrap_or(4).clamp(1, 32),
        max_upload_rate,
        max_download_rate,
        max_retries: raw.max_retries.unwrap_or(10),
        request_timeout: std::time::Duration::from_secs(
            raw.request_timeout_secs.unwrap_or(120).max(1),
        ),
    })
}

/// Parses a rate such as `"20MiB"`, `"500KB"` or `"1000000"` (bytes per second).
pub fn parse_rate(text: &str) -> Result<u64> {
    let trimmed = text.trim().trim_end_matches("/s");
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "kib" => 1024.0,
        "mb" | "m" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "gb" | "g" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(Error::config(format!(
                "rate {text:?}: unknown unit; use e.g. \"20MiB\""
            )))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| Error::config(format!("rate {text:?} is not a number")))?;
    if value <= 0.0 {
        return Err(Error::config(format!("rate {text:?} must be positive")));
    }
    Ok((value * multiplier) as u64)
}

fn has_inline_secret(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with("secret-key ") || line.starts_with("secret-key=")
    })
}

fn warn_if_others_can_read(path: &Path, what: &str) {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                "{what} {} is readable by every user; run: chmod o-rwx {}",
                path.display(),
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_an_error() {
        let err = Config::parse("[local]\npath = \"/x\"\npaht = 1\n", Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("paht"), "{err}");
    }

    #[test]
    fn both_stores_is_an_error() {
        let text = "[local]\npath = \"/x\"\n[s3]\nbucket = \"b\"\nregion = \"r\"\naccess-key = \"a\"\nsecret-key = \"s\"\n";
        let err = Config::parse(text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn s3_needs_endpoint_or_region() {
        let text = "[s3]\nbucket = \"b\"\naccess-key = \"a\"\nsecret-key = \"s\"\n";
        let err = Config::parse(text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoint or a region"), "{err}");
    }

    #[test]
    fn s3_debug_hides_the_secret() {
        let text = "[s3]\nbucket = \"b\"\nregion = \"r\"\naccess-key = \"a\"\nsecret-key = \"hunter2-secret\"\npath = \"/prod/\"\n";
        let config = Config::parse(text, Path::new("/c.toml")).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        match config.store {
            StoreConfig::S3(s3) => assert_eq!(s3.path, "prod"),
            StoreConfig::Local(_) => panic!("expected s3"),
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("20MiB").unwrap(), 20 * 1024 * 1024);
        assert_eq!(parse_rate("500kb/s").unwrap(), 500_000);
        assert!(parse_rate("fast").is_err());
    }
}
