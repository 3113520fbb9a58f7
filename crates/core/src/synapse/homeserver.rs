//! Parsing of the subset of `homeserver.yaml` this tool needs.

use std::path::{Path, PathBuf};

use serde::Deserialize;

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

/// The facts this tool takes from a homeserver.yaml, with every path made absolute.
#[derive(Debug, Clone)]
pub struct HomeserverConfig {
    pub path: PathBuf,
    pub server_name: String,
    pub media_store: PathBuf,
    pub signing_key: PathBuf,
    pub database: Database,
    pub log_config: Option<PathBuf>,
    pub app_service_files: Vec<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub listeners: Vec<Listener>,
}

#[derive(Deserialize)]
struct RawHomeserver {
    server_name: Option<String>,
    media_store_path: Option<PathBuf>,
    signing_key_path: Option<PathBuf>,
    database: Option<RawDatabase>,
    log_config: Option<PathBuf>,
    #[serde(default)]
    app_service_config_files: Vec<PathBuf>,
    pid_file: Option<PathBuf>,
    #[serde(default)]
    listeners: Vec<RawListener>,
}

#[derive(Deserialize)]
struct RawDatabase {
    name: Option<String>,
    #[serde(default)]
    args: serde_norway::Mapping,
}

#[derive(Deserialize)]
struct RawListener {
    port: Option<u16>,
    #[serde(default)]
    bind_addresses: Vec<String>,
    #[serde(default)]
    tls: bool,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl HomeserverConfig {
    /// Reads `homeserver.yaml` at `path`.
    pub fn load(path: &Path) -> Result<HomeserverConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read Synapse config {}: {e}; set [synapse] config to your homeserver.yaml",
                path.display()
            ))
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<HomeserverConfig> {
        let raw: RawHomeserver = serde_norway::from_str(text)
            .map_err(|e| Error::config(format!("{}: not valid YAML: {e}", path.display())))?;
        // Synapse resolves relative paths against its working directory, which for the usual
        // deployments (docker, debian package, charm) is the directory of homeserver.yaml.
        let base = path.parent().unwrap_or(Path::new("/"));
        let absolute = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let server_name = raw
            .server_name
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| Error::config(format!("{}: server_name is not set", path.display())))?;
        let media_store = absolute(raw.media_store_path.unwrap_or_else(|| "media_store".into()));
        let signing_key = absolute(
            raw.signing_key_path
                .unwrap_or_else(|| format!("{server_name}.signing.key").into()),
        );
        let database = match raw.database {
            None => Database::Sqlite {
                path: absolute("homeserver.db".into()),
            },
            Some(db) => database_from(db, path, &absolute)?,
        };
        let listeners = raw
            .listeners
            .into_iter()
            .filter(|l| l.kind.as_deref().unwrap_or("http") == "http")
            .filter_map(|l| {
                Some(Listener {
                    port: l.port?,
                    bind_addresses: l.bind_addresses,
                    tls: l.tls,
                })
            })
            .collect();
        Ok(HomeserverConfig {
            path: path.to_path_buf(),
            server_name,
            media_store,
            signing_key,
            database,
            log_config: raw.log_config.map(&absolute),
            app_service_files: raw
                .app_service_config_files
                .into_iter()
                .map(&absolute)
                .collect(),
            pid_file: raw.pid_file.map(&absolute),
            listeners,
        })
    }
}

fn database_from(
    db: RawDatabase,
    path: &Path,
    absolute: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Database> {
    let arg = |key: &str| -> Option<String> {
        db.args.get(key).and_then(|v| match v {
            serde_norway::Value::String(s) => Some(s.clone()),
            serde_norway::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    match db.name.as_deref().unwrap_or("sqlite3") {
        "sqlite3" => {
            let file = arg("database").unwrap_or_else(|| "homeserver.db".into());
            if file == ":memory:" {
                return Err(Error::config(format!(
                    "{}: the database is in memory; there is nothing to back up",
                    path.display()
                )));
            }
            Ok(Database::Sqlite {
                path: absolute(file.into()),
            })
        }
        "psycopg2" | "psycopg" => Ok(Database::Postgres(PostgresArgs {
            dbname: arg("dbname").or_else(|| arg("database")),
            user: arg("user"),
            host: arg("host"),
            port: arg("port").and_then(|p| p.parse().ok()),
            sslmode: arg("sslmode"),
            password: arg("password"),
        })),
        other => Err(Error::config(format!(
            "{}: database.name {other:?} is not supported (expected sqlite3 or psycopg2)",
            path.display()
        ))),
    }
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
}
