//! The facts this tool needs from Synapse's config (paths, database, listeners), resolved the
//! way Synapse resolves them: relative paths against its working directory, defaults where it
//! has them, and for each path where it came from, so that an error can say.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use super::config_files::{scalar_text, yaml11_bool, MergedConfig};
use super::providers::{media_providers, MediaProvider};
use crate::config::SynapseSettings;
use crate::error::{Error, Result};

/// The database Synapse is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite { path: PathBuf },
    Postgres(PostgresArgs),
}

/// Connection settings of a `psycopg2` database section. Holds no password: libpq reads it
/// from the environment, a passfile, or the `password` field at connect time.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PostgresArgs {
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub sslmode: Option<String>,
    password: Option<String>,
}

impl PostgresArgs {
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Parses a libpq key/value connection string (`host=db port=5432 user=synapse`, values
    /// optionally in single quotes); the keys host, port, user, password, dbname and sslmode.
    pub fn from_conninfo(text: &str) -> std::result::Result<PostgresArgs, String> {
        let mut args = PostgresArgs {
            dbname: None,
            user: None,
            host: None,
            port: None,
            sslmode: None,
            password: None,
        };
        let mut rest = text.trim();
        while !rest.is_empty() {
            let (key, after) = rest
                .split_once('=')
                .ok_or_else(|| format!("expected key=value at {rest:?}"))?;
            let key = key.trim();
            let after = after.trim_start();
            let (value, next) = match after.strip_prefix('\'') {
                Some(quoted) => {
                    let end = quoted
                        .find('\'')
                        .ok_or_else(|| format!("the value of {key} has no closing quote"))?;
                    (&quoted[..end], &quoted[end + 1..])
                }
                None => after.split_at(after.find(char::is_whitespace).unwrap_or(after.len())),
            };
            let value = Some(value.to_string());
            match key {
                "host" | "hostaddr" => args.host = value,
                "port" => {
                    args.port = Some(
                        value
                            .as_deref()
                            .unwrap_or_default()
                            .parse()
                            .map_err(|_| format!("port {value:?} is not a number"))?,
                    )
                }
                "user" => args.user = value,
                "password" => args.password = value,
                "dbname" => args.dbname = value,
                "sslmode" => args.sslmode = value,
                other => {
                    return Err(format!(
                        "unknown key {other:?} (host, port, user, password, dbname, sslmode)"
                    ))
                }
            }
            rest = next.trim_start();
        }
        Ok(args)
    }
}

impl PostgresArgs {
    /// These settings with `over`'s laid on top: each key `over` sets wins. Another user
    /// brings its own password (or none: libpq's passfile), never this user's.
    pub fn overlaid(&self, over: &PostgresArgs) -> PostgresArgs {
        let pick = |mine: &Option<String>, theirs: &Option<String>| theirs.clone().or(mine.clone());
        let password = if over.user.is_some() && over.user != self.user {
            over.password.clone()
        } else {
            pick(&self.password, &over.password)
        };
        PostgresArgs {
            dbname: pick(&self.dbname, &over.dbname),
            user: pick(&self.user, &over.user),
            host: pick(&self.host, &over.host),
            port: over.port.or(self.port),
            sslmode: pick(&self.sslmode, &over.sslmode),
            password,
        }
    }
}

impl std::fmt::Debug for PostgresArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresArgs")
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub bind_addresses: Vec<String>,
    pub tls: bool,
}

/// The facts this tool takes from Synapse's config files, with every path made absolute the
/// way Synapse makes it.
#[derive(Debug, Clone)]
pub struct HomeserverConfig {
    /// Every file Synapse reads, in its order; the first is the main homeserver.yaml.
    pub files: Vec<PathBuf>,
    pub working_dir: WorkingDir,
    pub server_name: String,
    pub media_store: PathBuf,
    pub signing_key: PathBuf,
    pub database: Database,
    pub log_config: Option<PathBuf>,
    /// Files other settings name (secrets kept out of the config, TLS files), by setting.
    pub referenced_files: Vec<(&'static str, PathBuf)>,
    pub app_service_files: Vec<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub listeners: Vec<Listener>,
    /// `media_storage_providers`, in Synapse's order.
    pub media_providers: Vec<MediaProvider>,
    /// For each path setting, where its value came from, for messages.
    origins: BTreeMap<&'static str, String>,
    /// Whether any path was resolved against the working directory (which then matters).
    pub uses_working_dir: bool,
}

/// The directory Synapse runs in, against which it resolves relative paths, and why it is
/// taken to be that one.
#[derive(Debug, Clone)]
pub struct WorkingDir {
    pub path: PathBuf,
    pub reason: String,
    /// Set by `[synapse] working-dir` rather than guessed.
    pub configured: bool,
}

/// Settings that name a file Synapse reads at start-up, besides the key, log config and app
/// services: secrets kept out of homeserver.yaml and TLS files. Backed up with the config.
const REFERENCED_FILE_SETTINGS: [&str; 6] = [
    "macaroon_secret_key_path",
    "form_secret_path",
    "registration_shared_secret_path",
    "worker_replication_secret_path",
    "tls_certificate_path",
    "tls_private_key_path",
];

/// Where the Debian and matrix.org packages keep the config; their systemd unit runs Synapse
/// in [`DEBIAN_WORKING_DIR`].
const DEBIAN_CONFIG_DIR: &str = "/etc/matrix-synapse";
const DEBIAN_WORKING_DIR: &str = "/var/lib/matrix-synapse";

impl WorkingDir {
    /// `[synapse] working-dir` when set; else the Debian package's when the config is the
    /// package's; else the folder of the main config file, where Synapse's docker image, the
    /// charm and `--generate-config` keep it next to the data.
    pub fn choose(configured: Option<&Path>, main_file: &Path) -> WorkingDir {
        if let Some(path) = configured {
            return WorkingDir {
                path: path.to_path_buf(),
                reason: "[synapse] working-dir".into(),
                configured: true,
            };
        }
        if main_file.starts_with(DEBIAN_CONFIG_DIR) {
            return WorkingDir {
                path: DEBIAN_WORKING_DIR.into(),
                reason: format!(
                    "where the Debian package's service runs Synapse, as the config is under {DEBIAN_CONFIG_DIR}; set [synapse] working-dir if yours runs elsewhere"
                ),
                configured: false,
            };
        }
        let folder = main_file.parent().unwrap_or(Path::new("/"));
        WorkingDir {
            path: folder.to_path_buf(),
            reason: format!(
                "the folder of {}; set [synapse] working-dir to the directory Synapse is started in if it differs",
                main_file.display()
            ),
            configured: false,
        }
    }
}

impl HomeserverConfig {
    /// Reads the config files `settings` names, as Synapse does.
    pub fn load(settings: &SynapseSettings) -> Result<HomeserverConfig> {
        let merged = MergedConfig::load(&settings.config_paths)?;
        Self::from_merged(&merged, settings.working_dir.as_deref())
    }

    /// Reads one homeserver.yaml given as text (tests, and the fuzzer).
    pub fn parse(text: &str, path: &Path) -> Result<HomeserverConfig> {
        let mut merged = MergedConfig::empty();
        merged.add(path, text)?;
        Self::from_merged(&merged, None)
    }

    /// The main config file (the first Synapse reads); restored config goes beside it.
    pub fn main_file(&self) -> &Path {
        &self.files[0]
    }

    /// Where the value of a path setting (`media_store_path`, `signing_key_path`, `database`,
    /// …) came from, for messages.
    pub fn origin(&self, setting: &str) -> String {
        self.origins
            .get(setting)
            .cloned()
            .unwrap_or_else(|| format!("the Synapse config ({})", self.describe_files()))
    }

    pub fn describe_files(&self) -> String {
        describe(&self.files)
    }

    pub fn from_merged(
        merged: &MergedConfig,
        working_dir: Option<&Path>,
    ) -> Result<HomeserverConfig> {
        let main_file = merged.files[0].clone();
        let working_dir = WorkingDir::choose(working_dir, &main_file);
        let mut resolver = Resolver {
            merged,
            working_dir: &working_dir,
            origins: BTreeMap::new(),
            uses_working_dir: false,
        };
        let server_name = merged
            .get("server_name")
            .and_then(scalar_text)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| missing_server_name(merged))?;
        let media_store = resolver
            .path("media_store_path", Some("media_store"))?
            .unwrap_or_default();
        let signing_key = match resolver.path("signing_key_path", None)? {
            Some(path) => path,
            None => resolver.default_signing_key(&server_name),
        };
        let database = resolver.database()?;
        let log_config = resolver.path("log_config", None)?;
        let mut referenced_files = Vec::new();
        for key in REFERENCED_FILE_SETTINGS {
            if let Some(path) = resolver.path(key, None)? {
                referenced_files.push((key, path));
            }
        }
        let pid_file = resolver.path("pid_file", None)?;
        let app_service_files = match merged.get("app_service_config_files") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(scalar_text)
                .map(|p| {
                    resolver.uses_working_dir |= Path::new(&p).is_relative();
                    working_dir.path.join(p)
                })
                .collect(),
            Some(_) => return Err(resolver.not_a("app_service_config_files", "list of paths")),
        };
        let listeners = listeners_from(merged.get("listeners"));
        let media_providers = media_providers(merged, &working_dir.path)?;
        let (origins, uses_working_dir) = (resolver.origins, resolver.uses_working_dir);
        Ok(HomeserverConfig {
            files: merged.files.clone(),
            working_dir,
            server_name,
            media_store,
            signing_key,
            database,
            log_config,
            referenced_files,
            app_service_files,
            pid_file,
            listeners,
            media_providers,
            origins,
            uses_working_dir,
        })
    }
}

fn describe(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn missing_server_name(merged: &MergedConfig) -> Error {
    Error::config(format!(
        "server_name is not set in any Synapse config file read ({}); Debian's package keeps it in {DEBIAN_CONFIG_DIR}/conf.d/server_name.yaml, so list that folder too: [synapse] config = [\"{DEBIAN_CONFIG_DIR}/homeserver.yaml\", \"{DEBIAN_CONFIG_DIR}/conf.d\"]",
        describe(&merged.files)
    ))
}

/// Resolves path settings against the working directory, noting where each came from.
struct Resolver<'a> {
    merged: &'a MergedConfig,
    working_dir: &'a WorkingDir,
    origins: BTreeMap<&'static str, String>,
    uses_working_dir: bool,
}

impl Resolver<'_> {
    /// The setting `key` as an absolute path (`default` when unset), its origin noted.
    fn path(&mut self, key: &'static str, default: Option<&str>) -> Result<Option<PathBuf>> {
        let (text, origin) = match self.merged.get(key) {
            None | Some(Value::Null) => match default {
                Some(default) => (
                    default.to_string(),
                    format!(
                        "Synapse's default {key} {default:?} (not set in {})",
                        describe(&self.merged.files)
                    ),
                ),
                None => return Ok(None),
            },
            Some(value) => match scalar_text(value) {
                Some(text) => (text, self.set_in(key)),
                None => return Err(self.not_a(key, "path")),
            },
        };
        Ok(Some(self.resolve(key, &text, origin)))
    }

    /// Synapse's default key: `<server_name>.signing.key` in the folder of the last config
    /// file it read (an absolute folder, so the working directory plays no part).
    fn default_signing_key(&mut self, server_name: &str) -> PathBuf {
        let last = self.merged.files.last().map(PathBuf::as_path);
        let folder = last.and_then(Path::parent).unwrap_or(Path::new("/"));
        let folder = self.working_dir.path.join(folder);
        self.origins.insert(
            "signing_key_path",
            format!(
                "Synapse's default signing_key_path (not set in {}): <server_name>.signing.key in {}, the folder of the last config file",
                describe(&self.merged.files),
                folder.display()
            ),
        );
        folder.join(format!("{server_name}.signing.key"))
    }

    fn set_in(&self, key: &str) -> String {
        match self.merged.origin(key) {
            Some(file) => format!("{key} in {}", file.display()),
            None => key.to_string(),
        }
    }

    fn resolve(&mut self, key: &'static str, text: &str, origin: String) -> PathBuf {
        let path = PathBuf::from(text);
        let (path, origin) = if path.is_absolute() {
            (path, origin)
        } else {
            self.uses_working_dir = true;
            (
                self.working_dir.path.join(&path),
                format!(
                    "{origin}, relative to Synapse's working directory {} ({})",
                    self.working_dir.path.display(),
                    self.working_dir.reason
                ),
            )
        };
        self.origins.insert(key, origin);
        path
    }

    fn not_a(&self, key: &str, what: &str) -> Error {
        Error::config(format!("{} is not a {what}", self.set_in(key)))
    }

    fn database(&mut self) -> Result<Database> {
        if self.merged.get("databases").is_some() {
            return Err(Error::config(format!(
                "{} configures several databases (experimental in Synapse); this tool backs up a single database",
                self.set_in("databases")
            )));
        }
        let section = match self.merged.get("database") {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(section)) if section.is_empty() => None,
            Some(Value::Mapping(section)) => Some(section.clone()),
            Some(_) => return Err(self.not_a("database", "section")),
        };
        // The old top-level `database_path` makes a SQLite database when no `database` section
        // is set; beside one, Synapse ignores it (with a warning), and so do we.
        if let Some(file) = self.merged.get("database_path").and_then(scalar_text) {
            if section.is_none() {
                let origin = self.set_in("database_path");
                return Ok(Database::Sqlite {
                    path: self.resolve("database", &file, origin),
                });
            }
            tracing::warn!(
                "{} is ignored, as Synapse ignores it beside {}",
                self.set_in("database_path"),
                self.set_in("database")
            );
        }
        let Some(section) = section else {
            return Err(Error::config(format!(
                "no database is configured in {} (Synapse refuses to start without one: \"No database config provided\")",
                describe(&self.merged.files)
            )));
        };
        let args = match section.get("args") {
            Some(Value::Mapping(args)) => args.clone(),
            _ => Mapping::new(),
        };
        let arg = |key: &str| args.get(key).and_then(scalar_text);
        let name = section
            .get("name")
            .and_then(scalar_text)
            .unwrap_or_else(|| "sqlite3".into());
        match name.as_str() {
            "sqlite3" => {
                let Some(file) = arg("database") else {
                    return Err(Error::config(format!(
                        "{} uses SQLite but names no file (database.args.database); Synapse cannot open it either",
                        self.set_in("database")
                    )));
                };
                let origin = self.set_in("database");
                if file == ":memory:" {
                    return Err(Error::config(format!(
                        "{}: the database is in memory; there is nothing to back up",
                        self.set_in("database")
                    )));
                }
                Ok(Database::Sqlite {
                    path: self.resolve("database", &file, origin),
                })
            }
            "psycopg2" | "psycopg" => {
                self.origins.insert("database", self.set_in("database"));
                Ok(Database::Postgres(PostgresArgs {
                    dbname: arg("dbname").or_else(|| arg("database")),
                    user: arg("user"),
                    host: arg("host"),
                    port: arg("port").and_then(|p| p.parse().ok()),
                    sslmode: arg("sslmode"),
                    password: arg("password"),
                }))
            }
            other => Err(Error::config(format!(
                "{}: database.name {other:?} is not supported (expected sqlite3 or psycopg2)",
                self.set_in("database")
            ))),
        }
    }
}

/// The plain HTTP listeners (the ones whose `/health` a restore can ask).
fn listeners_from(value: Option<&Value>) -> Vec<Listener> {
    let Some(Value::Sequence(items)) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter(|l| {
            l.get("type")
                .and_then(scalar_text)
                .as_deref()
                .unwrap_or("http")
                == "http"
        })
        .filter_map(|l| {
            let port = l.get("port").and_then(scalar_text)?.parse().ok()?;
            let bind_addresses = match l.get("bind_addresses") {
                Some(Value::Sequence(addresses)) => {
                    addresses.iter().filter_map(scalar_text).collect()
                }
                _ => Vec::new(),
            };
            let tls = l.get("tls").and_then(yaml11_bool).unwrap_or(false);
            Some(Listener {
                port,
                bind_addresses,
                tls,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_generated_config() {
        let yaml = r#"
server_name: "example.org"
pid_file: /data/homeserver.pid
listeners:
  - port: 8008
    tls: false
    type: http
    bind_addresses: ['::1', '127.0.0.1']
database:
  name: sqlite3
  args:
    database: /data/homeserver.db
log_config: "/data/example.org.log.config"
media_store_path: /data/media_store
signing_key_path: "/data/example.org.signing.key"
"#;
        let hs = HomeserverConfig::parse(yaml, Path::new("/data/homeserver.yaml")).unwrap();
        assert_eq!(hs.server_name, "example.org");
        assert_eq!(hs.media_store, PathBuf::from("/data/media_store"));
        assert_eq!(
            hs.signing_key,
            PathBuf::from("/data/example.org.signing.key")
        );
        assert_eq!(
            hs.database,
            Database::Sqlite {
                path: "/data/homeserver.db".into()
            }
        );
        assert_eq!(hs.listeners[0].port, 8008);
    }

    #[test]
    fn relative_paths_and_postgres() {
        let yaml = "server_name: a.b\nmedia_store_path: media\ndatabase:\n  name: psycopg2\n  args:\n    user: synapse\n    password: sekrit\n    dbname: synapse\n    host: localhost\n    port: 5432\n";
        let hs = HomeserverConfig::parse(yaml, Path::new("/srv/hs.yaml")).unwrap();
        assert_eq!(hs.media_store, PathBuf::from("/srv/media"));
        assert_eq!(hs.signing_key, PathBuf::from("/srv/a.b.signing.key"));
        match &hs.database {
            Database::Postgres(args) => {
                assert_eq!(args.port, Some(5432));
                assert!(!format!("{args:?}").contains("sekrit"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_server_name_is_named() {
        let err = HomeserverConfig::parse("media_store_path: /m\n", Path::new("/hs.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server_name"), "{err}");
    }

    #[test]
    fn debian_layout_resolves_against_var_lib_and_names_origins() {
        let mut merged = MergedConfig::empty();
        merged
            .add(
                Path::new("/etc/matrix-synapse/homeserver.yaml"),
                "media_store_path: media\nsigning_key_path: /etc/matrix-synapse/homeserver.signing.key\n\
                 database:\n  name: sqlite3\n  args:\n    database: homeserver.db\n",
            )
            .unwrap();
        merged
            .add(
                Path::new("/etc/matrix-synapse/conf.d/server_name.yaml"),
                "server_name: deb.example\n",
            )
            .unwrap();
        let hs = HomeserverConfig::from_merged(&merged, None).unwrap();
        assert_eq!(hs.server_name, "deb.example");
        assert_eq!(
            hs.media_store,
            PathBuf::from("/var/lib/matrix-synapse/media")
        );
        assert_eq!(
            hs.database,
            Database::Sqlite {
                path: "/var/lib/matrix-synapse/homeserver.db".into()
            }
        );
        let origin = hs.origin("media_store_path");
        assert!(
            origin.contains("/etc/matrix-synapse/homeserver.yaml")
                && origin.contains("/var/lib/matrix-synapse"),
            "{origin}"
        );
        let explicit =
            HomeserverConfig::from_merged(&merged, Some(Path::new("/srv/synapse"))).unwrap();
        assert_eq!(explicit.media_store, PathBuf::from("/srv/synapse/media"));
        assert!(explicit
            .origin("media_store_path")
            .contains("[synapse] working-dir"));
    }

    #[test]
    fn a_missing_server_name_names_every_file_and_conf_d() {
        let mut merged = MergedConfig::empty();
        merged
            .add(
                Path::new("/etc/matrix-synapse/homeserver.yaml"),
                "pid_file: /x\n",
            )
            .unwrap();
        merged
            .add(
                Path::new("/etc/matrix-synapse/conf.d/a.yaml"),
                "report_stats: false\n",
            )
            .unwrap();
        let err = HomeserverConfig::from_merged(&merged, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("homeserver.yaml")
                && err.contains("conf.d/a.yaml")
                && err.contains("conf.d\"]"),
            "{err}"
        );
    }

    #[test]
    fn merge_keys_inside_database_are_applied() {
        let yaml = "server_name: a.b\nsqlite: &sqlite\n  name: sqlite3\n  args:\n    database: /var/db/real.db\ndatabase:\n  <<: *sqlite\n  cp_min: 1\nlisteners:\n  - port: 8008\n    tls: no\n";
        let hs = HomeserverConfig::parse(yaml, Path::new("/srv/hs.yaml")).unwrap();
        assert_eq!(
            hs.database,
            Database::Sqlite {
                path: "/var/db/real.db".into()
            }
        );
        assert!(!hs.listeners[0].tls);
    }

    #[test]
    fn database_path_and_no_database_as_synapse_reads_them() {
        let hs = HomeserverConfig::parse(
            "server_name: a.b\ndatabase_path: old.db\n",
            Path::new("/srv/hs.yaml"),
        )
        .unwrap();
        assert_eq!(
            hs.database,
            Database::Sqlite {
                path: "/srv/old.db".into()
            }
        );
        let err = HomeserverConfig::parse("server_name: a.b\n", Path::new("/srv/hs.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no database is configured in /srv/hs.yaml"),
            "{err}"
        );
        // Beside a database section, database_path is ignored, as Synapse ignores it.
        let hs = HomeserverConfig::parse(
            "server_name: a.b\ndatabase_path: /stale.db\ndatabase:\n  name: sqlite3\n  args:\n    database: /real.db\n",
            Path::new("/srv/hs.yaml"),
        )
        .unwrap();
        assert_eq!(
            hs.database,
            Database::Sqlite {
                path: "/real.db".into()
            }
        );
        let err = HomeserverConfig::parse(
            "server_name: a.b\ndatabase:\n  name: sqlite3\n",
            Path::new("/srv/hs.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("names no file"), "{err}");
    }
}
