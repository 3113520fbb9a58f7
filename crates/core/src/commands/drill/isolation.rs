//! The drill's homeserver.yaml: the restored config, rewritten so that the Synapse a drill
//! boots can reach nothing but its scratch copy, then proven so before Synapse starts.
//!
//! Rewriting is by allow-nothing-risky: every setting that binds a port, reaches another
//! machine, runs third-party code or names a file outside the scratch folder is removed or
//! replaced. The proof reads the written config back and refuses the drill when a listener is
//! not on loopback, the database, media store, key or pid file is outside the scratch copy, or
//! any value names a live path (media store, SQLite database, config files).

use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use crate::error::{Error, Refusal, Result};
use crate::synapse::PostgresArgs;

/// Settings dropped from the restored config: listeners and workers, outbound services
/// (federation senders, pushers, email, Redis, identity servers, SSO), third-party code,
/// files the backup does not hold.
const REMOVED: &[&str] = &[
    "log_config",
    "worker_app",
    "worker_name",
    "worker_listeners",
    "worker_log_config",
    "worker_replication_secret",
    "worker_replication_secret_path",
    "instance_map",
    "stream_writers",
    "run_background_tasks_on",
    "notify_appservices_from_worker",
    "update_user_directory_from_worker",
    "media_instance_running_background_jobs",
    "outbound_federation_restricted_to",
    "redis",
    "email",
    "metrics_port",
    "metrics_bind_host",
    "manhole",
    "manhole_settings",
    "tls_certificate_path",
    "tls_private_key_path",
    "acme",
    "sentry",
    "opentracing",
    "modules",
    "password_providers",
    "spam_checker",
    "third_party_event_rules",
    "oidc_providers",
    "oidc_config",
    "saml2_config",
    "cas_config",
    "jwt_config",
    "sso",
    "templates",
    "consent",
    "user_consent",
    "web_client_location",
    "registration_shared_secret_path",
    "account_threepid_delegates",
    "turn_shared_secret_path",
    "recaptcha_private_key_path",
    "recaptcha_public_key_path",
    "matrix_authentication_service",
    "serve_server_wellknown",
    "daemonize",
];

/// Settings naming a secret file; pointed at the backup's copy when it has one.
const SECRET_FILES: &[(&str, &str)] = &[
    ("macaroon_secret_key_path", "macaroon_secret_key"),
    ("form_secret_path", "form_secret"),
];

/// The database the drill's Synapse uses.
#[derive(Debug, Clone)]
pub enum DrillDatabase {
    Sqlite(PathBuf),
    Postgres(PostgresArgs),
}

/// Where the drill's Synapse finds everything, all inside the scratch folder.
#[derive(Debug, Clone)]
pub struct DrillLayout {
    pub scratch: PathBuf,
    pub port: u16,
    pub database: DrillDatabase,
    pub media_store: PathBuf,
    pub signing_key: PathBuf,
    /// The backup's copies of `macaroon_secret_key_path` and the like, by setting.
    pub secret_copies: Vec<(String, PathBuf)>,
}

/// Paths of the live homeserver the drill must never name.
#[derive(Debug, Clone, Default)]
pub struct LivePaths {
    pub paths: Vec<PathBuf>,
    /// The live PostgreSQL database, as (host, port, dbname).
    pub postgres: Option<(Option<String>, Option<u16>, String)>,
}

/// Merges Synapse config files the way Synapse does (a later file's top-level key wins).
pub fn merge(files: &[(PathBuf, String)]) -> Result<Mapping> {
    let mut merged = Mapping::new();
    for (path, text) in files {
        let value: Value = serde_norway::from_str(text).map_err(|e| {
            Error::refused(
                Refusal::DrillIsolation,
                format!(
                    "the backup's config file {} is not YAML Synapse could read ({e}); a drill cannot rewrite it",
                    path.display()
                ),
            )
        })?;
        match value {
            Value::Mapping(map) => {
                for (key, value) in map {
                    merged.insert(key, value);
                }
            }
            Value::Null => {}
            _ => {
                return Err(Error::refused(
                    Refusal::DrillIsolation,
                    format!(
                        "the backup's config file {} is not a mapping of settings",
                        path.display()
                    ),
                ))
            }
        }
    }
    Ok(merged)
}

/// The restored config rewritten for the drill. `registration_secret` lets the drill register
/// its short-lived admin user in the scratch database.
pub fn rewrite(mut config: Mapping, layout: &DrillLayout, registration_secret: &str) -> Mapping {
    for key in REMOVED {
        config.remove(*key);
    }
    for (path_setting, value_setting) in SECRET_FILES {
        config.remove(*path_setting);
        if let Some((_, copy)) = layout
            .secret_copies
            .iter()
            .find(|(setting, _)| setting == path_setting)
        {
            config.remove(*value_setting);
            config.insert(text(path_setting), path_value(copy));
        }
    }
    if let Some(Value::Mapping(experimental)) = config.get_mut("experimental_features") {
        // Delegated authentication sends every request to another server.
        experimental.remove("msc3861");
    }
    let scratch = &layout.scratch;
    let set = |config: &mut Mapping, key: &str, value: Value| {
        config.insert(text(key), value);
    };
    set(&mut config, "listeners", listeners(layout.port));
    set(
        &mut config,
        "public_baseurl",
        text(&format!("http://127.0.0.1:{}/", layout.port)),
    );
    set(
        &mut config,
        "pid_file",
        path_value(&scratch.join("homeserver.pid")),
    );
    set(
        &mut config,
        "media_store_path",
        path_value(&layout.media_store),
    );
    set(
        &mut config,
        "uploads_path",
        path_value(&scratch.join("uploads")),
    );
    set(
        &mut config,
        "signing_key_path",
        path_value(&layout.signing_key),
    );
    set(&mut config, "database", database(&layout.database));
    for key in [
        "federation_domain_whitelist",
        "federation_sender_instances",
        "pusher_instances",
        "trusted_key_servers",
        "app_service_config_files",
        "media_storage_providers",
        "auto_join_rooms",
    ] {
        set(&mut config, key, Value::Sequence(Vec::new()));
    }
    let mut push = Mapping::new();
    push.insert(text("enabled"), Value::Bool(false));
    set(&mut config, "push", Value::Mapping(push));
    for (key, value) in [
        ("report_stats", false),
        ("enable_metrics", false),
        ("url_preview_enabled", false),
        ("enable_media_repo", true),
        ("suppress_key_server_warning", true),
        ("send_federation", false),
        ("start_pushers", false),
    ] {
        set(&mut config, key, Value::Bool(value));
    }
    set(
        &mut config,
        "registration_shared_secret",
        text(registration_secret),
    );
    config
}

fn listeners(port: u16) -> Value {
    let mut resource = Mapping::new();
    resource.insert(
        text("names"),
        Value::Sequence(vec![text("client"), text("keys"), text("media")]),
    );
    resource.insert(text("compress"), Value::Bool(false));
    let mut listener = Mapping::new();
    listener.insert(text("port"), Value::Number(port.into()));
    listener.insert(
        text("bind_addresses"),
        Value::Sequence(vec![text("127.0.0.1")]),
    );
    listener.insert(text("type"), text("http"));
    listener.insert(text("tls"), Value::Bool(false));
    listener.insert(text("x_forwarded"), Value::Bool(false));
    listener.insert(
        text("resources"),
        Value::Sequence(vec![Value::Mapping(resource)]),
    );
    Value::Sequence(vec![Value::Mapping(listener)])
}

fn database(database: &DrillDatabase) -> Value {
    let mut args = Mapping::new();
    let name = match database {
        DrillDatabase::Sqlite(path) => {
            args.insert(text("database"), path_value(path));
            "sqlite3"
        }
        DrillDatabase::Postgres(pg) => {
            let mut put = |key: &str, value: &Option<String>| {
                if let Some(value) = value {
                    args.insert(text(key), text(value));
                }
            };
            put("database", &pg.dbname);
            put("user", &pg.user);
            put("host", &pg.host);
            put("sslmode", &pg.sslmode);
            if let Some(password) = pg.password() {
                args.insert(text("password"), text(password));
            }
            if let Some(port) = pg.port {
                args.insert(text("port"), Value::Number(port.into()));
            }
            args.insert(text("cp_min"), Value::Number(1.into()));
            args.insert(text("cp_max"), Value::Number(5.into()));
            "psycopg2"
        }
    };
    let mut db = Mapping::new();
    db.insert(text("name"), text(name));
    db.insert(text("args"), Value::Mapping(args));
    Value::Mapping(db)
}

fn text(s: &str) -> Value {
    Value::String(s.to_string())
}

fn path_value(path: &Path) -> Value {
    Value::String(path.to_string_lossy().into_owned())
}

/// Why the database the drill's config names is not provably the drill's own, if it is not:
/// a SQLite file inside the scratch folder, a `synapse_drill_` database, or any database of a
/// private server whose socket folder is inside the scratch folder (a physical backup's).
fn database_is_the_drills(
    database: &DrillDatabase,
    args: Option<&Value>,
    layout: &DrillLayout,
    live: &LivePaths,
) -> std::result::Result<(), String> {
    match (database, args) {
        (DrillDatabase::Sqlite(_), Some(args)) => {
            let path = args.get("database").and_then(Value::as_str).unwrap_or("");
            if !Path::new(path).starts_with(&layout.scratch) {
                return Err(format!(
                    "the SQLite database {path:?} is outside the scratch folder"
                ));
            }
        }
        (DrillDatabase::Postgres(pg), Some(args)) => {
            let name = args.get("database").and_then(Value::as_str).unwrap_or("");
            let host = args.get("host").and_then(Value::as_str).unwrap_or("");
            // A physical backup's server listens only on a socket folder in the scratch
            // folder (reached through a short link when its path is too long for a socket):
            // every database on it is the drill's.
            let place = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let socket_folder = place(Path::new(host));
            let private_server = socket_folder.starts_with(place(&layout.scratch))
                && !socket_folder
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                && pg.host.as_deref() == Some(host);
            if Some(name) != pg.dbname.as_deref()
                || !(private_server || name.starts_with(crate::host::drills::DRILL_DATABASE_PREFIX))
            {
                return Err(format!(
                    "the PostgreSQL database {name:?} is not the drill's own"
                ));
            }
            if let Some((host, port, live_name)) = &live.postgres {
                let same_server = host.as_deref() == pg.host.as_deref()
                    && port.unwrap_or(5432) == pg.port.unwrap_or(5432);
                if same_server && live_name == name {
                    return Err(format!("the database {name} is the live one"));
                }
            }
        }
        (_, None) => return Err("it has no database args".into()),
    }
    Ok(())
}

/// Reads the rewritten config back and refuses the drill unless it is isolated: one plain
/// listener on loopback, every path Synapse writes inside the scratch folder, no federation,
/// pushers, app services or storage providers, and no value naming a live path.
pub fn prove_isolated(config: &Mapping, layout: &DrillLayout, live: &LivePaths) -> Result<()> {
    let refuse = |what: String| {
        Err(Error::refused(
            Refusal::DrillIsolation,
            format!("the drill cannot prove its Synapse is isolated: {what}; nothing was started"),
        ))
    };
    let listeners = match config.get("listeners") {
        Some(Value::Sequence(listeners)) => listeners,
        _ => return refuse("it has no listeners setting".into()),
    };
    for listener in listeners {
        let binds: Vec<&str> = listener
            .get("bind_addresses")
            .and_then(Value::as_sequence)
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if binds.is_empty() || binds.iter().any(|b| !is_loopback(b)) {
            return refuse(format!("a listener binds {binds:?}, not loopback only"));
        }
    }
    for key in [
        "media_store_path",
        "signing_key_path",
        "pid_file",
        "uploads_path",
    ] {
        match config.get(key).and_then(Value::as_str) {
            Some(path) if Path::new(path).starts_with(&layout.scratch) => {}
            other => {
                return refuse(format!(
                    "{key} is {other:?}, outside {}",
                    layout.scratch.display()
                ))
            }
        }
    }
    let args = config.get("database").and_then(|d| d.get("args"));
    if let Err(what) = database_is_the_drills(&layout.database, args, layout, live) {
        return refuse(what);
    }
    for (key, empty) in [
        ("federation_domain_whitelist", true),
        ("federation_sender_instances", true),
        ("pusher_instances", true),
        ("app_service_config_files", true),
        ("media_storage_providers", true),
    ] {
        let is_empty = matches!(config.get(key), Some(Value::Sequence(s)) if s.is_empty());
        if is_empty != empty {
            return refuse(format!("{key} is not an empty list"));
        }
    }
    for key in ["worker_app", "redis", "email", "modules", "log_config"] {
        if config.contains_key(key) {
            return refuse(format!("{key} is still set"));
        }
    }
    let mut found = None;
    walk_strings(
        &Value::Mapping(config.clone()),
        "",
        &mut |setting, value| {
            if found.is_none() {
                if let Some(live_path) = live.paths.iter().find(|p| names_path(value, p)) {
                    found = Some(format!("{setting} names the live {}", live_path.display()));
                }
            }
        },
    );
    match found {
        Some(what) => refuse(what),
        None => Ok(()),
    }
}

fn is_loopback(address: &str) -> bool {
    address
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(address == "localhost")
}

/// Whether `value` is `live` or a path under it.
fn names_path(value: &str, live: &Path) -> bool {
    let value = Path::new(value);
    value.is_absolute() && !live.as_os_str().is_empty() && value.starts_with(live)
}

fn walk_strings(value: &Value, at: &str, visit: &mut dyn FnMut(&str, &str)) {
    match value {
        Value::String(s) => visit(at, s),
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_strings(item, &format!("{at}[{i}]"), visit);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map {
                let key = key
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{key:?}"));
                let at = if at.is_empty() {
                    key
                } else {
                    format!("{at}.{key}")
                };
                walk_strings(item, &at, visit);
            }
        }
        Value::Tagged(tagged) => walk_strings(&tagged.value, at, visit),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(scratch: &Path) -> DrillLayout {
        DrillLayout {
            scratch: scratch.to_path_buf(),
            port: 18008,
            database: DrillDatabase::Sqlite(scratch.join("restored/database/homeserver.db")),
            media_store: scratch.join("restored/media"),
            signing_key: scratch.join("restored/keys/example.org.signing.key"),
            secret_copies: vec![(
                "macaroon_secret_key_path".into(),
                scratch.join("restored/config/referenced/macaroon_secret_key_path/macaroon"),
            )],
        }
    }

    const LIVE: &str = "
server_name: example.org
listeners:
  - port: 8008
    bind_addresses: ['::', '0.0.0.0']
    type: http
    resources: [{names: [client, federation]}]
  - port: 9000
    type: metrics
database: {name: sqlite3, args: {database: /var/lib/synapse/homeserver.db}}
media_store_path: /var/lib/synapse/media
signing_key_path: /etc/synapse/example.org.signing.key
log_config: /etc/synapse/log.yaml
macaroon_secret_key_path: /etc/synapse/macaroon
redis: {enabled: true, host: redis.internal}
email: {smtp_host: mail.example.org}
app_service_config_files: [/etc/synapse/bridge.yaml]
media_storage_providers: [{module: s3_storage_provider.S3StorageProviderBackend}]
modules: [{module: my_module.Thing}]
retention: {enabled: true}
";

    fn live_paths() -> LivePaths {
        LivePaths {
            paths: vec![
                "/var/lib/synapse/media".into(),
                "/var/lib/synapse/homeserver.db".into(),
                "/etc/synapse/homeserver.yaml".into(),
            ],
            postgres: None,
        }
    }

    #[test]
    fn a_live_config_is_rewritten_into_an_isolated_one() {
        let scratch = Path::new("/tmp/drill-x");
        let merged = merge(&[("h.yaml".into(), LIVE.into())]).unwrap();
        let drill = rewrite(merged, &layout(scratch), "s3cret");
        prove_isolated(&drill, &layout(scratch), &live_paths()).unwrap();
        let yaml = serde_norway::to_string(&drill).unwrap();
        assert!(yaml.contains("127.0.0.1"), "{yaml}");
        assert!(!yaml.contains("0.0.0.0"), "{yaml}");
        assert!(!yaml.contains("/var/lib/synapse"), "{yaml}");
        assert!(!yaml.contains("redis.internal"), "{yaml}");
        assert!(!yaml.contains("my_module"), "{yaml}");
        assert!(
            yaml.contains("retention"),
            "settings that stay inside are kept: {yaml}"
        );
        assert_eq!(
            drill
                .get("macaroon_secret_key_path")
                .and_then(Value::as_str),
            Some("/tmp/drill-x/restored/config/referenced/macaroon_secret_key_path/macaroon")
        );
        assert_eq!(
            drill.get("server_name").and_then(Value::as_str),
            Some("example.org")
        );
    }

    #[test]
    fn a_setting_naming_a_live_path_is_refused() {
        let scratch = Path::new("/tmp/drill-x");
        let text = format!("{LIVE}\nsomething_new: {{folder: /var/lib/synapse/media/extra}}\n");
        let merged = merge(&[("h.yaml".into(), text)]).unwrap();
        let drill = rewrite(merged, &layout(scratch), "s3cret");
        let err = prove_isolated(&drill, &layout(scratch), &live_paths()).unwrap_err();
        assert!(err.to_string().contains("something_new.folder"), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::Refused);
    }

    #[test]
    fn a_non_loopback_listener_is_refused() {
        let scratch = Path::new("/tmp/drill-x");
        let merged = merge(&[("h.yaml".into(), LIVE.into())]).unwrap();
        let mut drill = rewrite(merged, &layout(scratch), "s3cret");
        drill.insert(
            text("listeners"),
            serde_norway::from_str("[{port: 1, bind_addresses: ['0.0.0.0']}]").unwrap(),
        );
        let err = prove_isolated(&drill, &layout(scratch), &live_paths()).unwrap_err();
        assert!(err.to_string().contains("not loopback"), "{err}");
    }

    #[test]
    fn a_live_named_database_is_the_drills_only_on_a_socket_inside_the_scratch_folder() {
        let scratch = Path::new("/tmp/drill-x");
        let merged = merge(&[("h.yaml".into(), LIVE.into())]).unwrap();
        let on = |host: &str| {
            let args = PostgresArgs::from_conninfo(&format!(
                "host={host} port=5433 user=synapse dbname=synapse"
            ))
            .unwrap();
            let mut layout = layout(scratch);
            layout.database = DrillDatabase::Postgres(args);
            let drill = rewrite(merged.clone(), &layout, "s3cret");
            prove_isolated(&drill, &layout, &live_paths())
        };
        on("/tmp/drill-x/pg-socket").unwrap();
        for host in ["/var/run/postgresql", "/tmp/drill-x/../run", "db.internal"] {
            let err = on(host).unwrap_err();
            assert!(
                err.to_string().contains("not the drill's own"),
                "{host}: {err}"
            );
        }
    }

    #[test]
    fn later_files_override_earlier_ones_by_top_level_key() {
        let merged = merge(&[
            (
                "a.yaml".into(),
                "server_name: a\nreport_stats: true\n".into(),
            ),
            ("b.yaml".into(), "server_name: b\n".into()),
        ])
        .unwrap();
        assert_eq!(merged.get("server_name").and_then(Value::as_str), Some("b"));
        assert_eq!(
            merged.get("report_stats").and_then(Value::as_bool),
            Some(true)
        );
        let err = merge(&[("c.yaml".into(), "- a list\n".into())]).unwrap_err();
        assert!(err.to_string().contains("c.yaml"), "{err}");
    }
}
