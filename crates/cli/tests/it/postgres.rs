//! PostgreSQL in the backup, against the machine's real server (`PG*` variables, or
//! 127.0.0.1:5432 as user postgres) and the real pg_dump / pg_restore.

use std::fs;
use std::process::Command;

use crate::common::*;
use crate::exit;

struct Pg {
    host: String,
    port: String,
    user: String,
}

impl Pg {
    /// The server, or `None` (a skip) when there is none, unless
    /// `SYNAPSE_BACKUP_REQUIRE_POSTGRES=1`, where a missing server fails the test.
    fn find() -> Option<Pg> {
        let pg = Pg {
            host: std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into()),
            port: std::env::var("PGPORT").unwrap_or_else(|_| "5432".into()),
            user: std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
        };
        if pg.sql("postgres", "SELECT 1").is_ok() {
            return Some(pg);
        }
        if std::env::var("SYNAPSE_BACKUP_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!(
                "SYNAPSE_BACKUP_REQUIRE_POSTGRES=1 but no PostgreSQL answers at {}:{}",
                pg.host, pg.port
            );
        }
        eprintln!("no PostgreSQL server: skipping");
        None
    }

    fn sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.host,
                "-p",
                &self.port,
                "-U",
                &self.user,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    fn fresh_db(&self, name: &str, collate: &str) {
        self.sql("postgres", &format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        self.sql(
            "postgres",
            &format!("CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE '{collate}' LC_CTYPE '{collate}' TEMPLATE template0"),
        )
        .unwrap();
    }

    /// Points the world's homeserver.yaml at database `name`.
    fn use_in(&self, world: &World, name: &str) {
        let yaml_path = world.data.join("homeserver.yaml");
        let yaml = fs::read_to_string(&yaml_path).unwrap();
        let start = yaml.find("database:").unwrap();
        let end = yaml[start..].find("log_config").unwrap() + start;
        let database = format!(
            "database:\n  name: psycopg2\n  args:\n    user: {}\n    dbname: {name}\n    host: {}\n    port: {}\n    cp_min: 5\n",
            self.user, self.host, self.port
        );
        fs::write(
            &yaml_path,
            format!("{}{database}{}", &yaml[..start], &yaml[end..]),
        )
        .unwrap();
    }
}

fn unique(name: &str) -> String {
    format!("sbt_{name}_{}", std::process::id())
}

#[test]
fn postgres_database_round_trips_without_one_time_keys() {
    let Some(pg) = Pg::find() else { return };
    let source_db = unique("src");
    let target_db = unique("dst");
    pg.fresh_db(&source_db, "C");
    pg.sql(
        &source_db,
        "CREATE TABLE events (id bigserial PRIMARY KEY, body text);
         INSERT INTO events (body) SELECT 'message ' || g FROM generate_series(1, 5000) g;
         CREATE TABLE e2e_one_time_keys_json (user_id text, key_json text);
         INSERT INTO e2e_one_time_keys_json VALUES ('@a:example.test', '{\"k\":1}');",
    )
    .unwrap();
    let source = World::new();
    pg.use_in(&source, &source_db);
    let id = source.create_backup();
    let listed = source.run(&["--json", "list-backups"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rows = &listed["backups"];
    assert_eq!(rows[0]["database"]["kind"], "postgresql");
    assert_eq!(rows[0]["database"]["included"], true);
    assert_eq!(rows[0]["database"]["postgres"]["encoding"], "UTF8");
    assert_success(&source.run(&["verify-backup", &id]), "verify-backup");

    // A new host: another data dir, an empty database of its own.
    let target = World::with(WorldOptions {
        seed: 5,
        ..Default::default()
    });
    pg.fresh_db(&target_db, "C");
    pg.use_in(&target, &target_db);
    fs::create_dir_all(&target.store).unwrap();
    copy_backup(&source, &target, &id);
    let out = target.run(&["restore-backup", &id]);
    assert_success(&out, "restore-backup into PostgreSQL");
    assert_eq!(
        pg.sql(&target_db, "SELECT count(*), max(body) FROM events")
            .unwrap(),
        "5000|message 999"
    );
    assert_eq!(
        pg.sql(&target_db, "SELECT count(*) FROM e2e_one_time_keys_json")
            .unwrap(),
        "0"
    );
    let key = format!("{SERVER_NAME}.signing.key");
    assert_eq!(
        file_hash(&target.data.join(&key)),
        file_hash(&source.data.join(&key))
    );

    // A second restore into the now filled database is refused, and says how to fix it.
    let id2 = target.create_backup();
    let stderr = assert_fails(
        &target.run(&["restore-backup", &id2]),
        exit::REFUSED,
        &["not empty"],
    );
    assert!(stderr.contains("CREATE DATABASE"), "{stderr}");

    for db in [&source_db, &target_db] {
        pg.sql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))
            .unwrap();
    }
}

#[test]
fn a_database_synapse_would_refuse_is_refused_before_anything_changes() {
    let Some(pg) = Pg::find() else { return };
    let source_db = unique("src2");
    let target_db = unique("dst2");
    pg.fresh_db(&source_db, "C");
    pg.sql(
        &source_db,
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1);",
    )
    .unwrap();
    let world = World::new();
    pg.use_in(&world, &source_db);
    let id = world.create_backup();
    pg.fresh_db(&target_db, "C.UTF-8");
    pg.use_in(&world, &target_db);
    let before = tree_hashes(&world.data.join("media_store"));
    assert_fails(
        &world.run(&["restore-backup", &id]),
        exit::REFUSED,
        &["collation"],
    );
    assert_eq!(tree_hashes(&world.data.join("media_store")), before);

    // --skip-database leaves the database out and says so.
    pg.use_in(&world, &source_db);
    let out = world.run(&["--json", "create-backup", "--skip-database"]);
    assert_success(&out, "create-backup --skip-database");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["database"]["included"], false);
    for db in [&source_db, &target_db] {
        pg.sql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))
            .unwrap();
    }
}

/// No child (pg_dump, psql, pg_restore, the stop command) and not the tool itself ever has the
/// passphrase, the S3 secret key or the database password among its arguments.
#[test]
fn no_process_gets_a_secret_on_its_command_line() {
    let Some(pg) = Pg::find() else { return };
    const PG_PASSWORD: &str = "pg-password-sentinel-7f3a";
    let source_db = unique("cmdline_src");
    let target_db = unique("cmdline_dst");
    pg.fresh_db(&source_db, "C");
    pg.sql(
        &source_db,
        "CREATE TABLE events (id bigserial PRIMARY KEY, body text);
         INSERT INTO events (body) SELECT 'message ' || g FROM generate_series(1, 2000) g;",
    )
    .unwrap();
    let s3 = S3Env::from_env();
    let _server = s3_shared();
    let world = World::with(WorldOptions {
        s3: s3.clone(),
        ..Default::default()
    });
    let with_password = |world: &World, db: &str| {
        pg.use_in(world, db);
        let yaml_path = world.data.join("homeserver.yaml");
        let yaml = fs::read_to_string(&yaml_path).unwrap().replace(
            "    cp_min: 5\n",
            &format!("    password: {PG_PASSWORD}\n    cp_min: 5\n"),
        );
        fs::write(&yaml_path, yaml).unwrap();
    };
    with_password(&world, &source_db);
    let pid_file = world.data.join("homeserver.pid");
    let config = fs::read_to_string(&world.config).unwrap();
    fs::write(
        &world.config,
        format!(
            "{config}[restore]\nstop-command = \"sleep 0.2; rm -f {}\"\n",
            pid_file.display()
        ),
    )
    .unwrap();

    let watch = CommandLineWatch::start();
    let id = world.create_backup();
    assert_success(&world.run(&["verify-backup", &id]), "verify-backup");
    assert_success(&world.run(&["-vv", "list-backups"]), "list-backups");
    pg.fresh_db(&target_db, "C");
    with_password(&world, &target_db);
    fs::write(&pid_file, std::process::id().to_string()).unwrap();
    assert_success(&world.run(&["restore-backup", &id]), "restore-backup");
    let seen = watch.finish();

    let mut secrets = vec![PASSPHRASE.to_string(), PG_PASSWORD.to_string()];
    if let Some(s3) = &s3 {
        secrets.push(s3.secret_key.clone());
    }
    for line in &seen {
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a secret on a command line: {line}"
            );
        }
    }
    // The watch did see the children it is meant to check.
    for program in [
        "synapse-backup",
        "pg_dump",
        "pg_restore",
        "psql",
        "sleep 0.2",
    ] {
        assert!(
            seen.iter().any(|line| line.contains(program)),
            "the watch never saw {program}; it saw {} command lines",
            seen.len()
        );
    }
    assert_eq!(
        pg.sql(&target_db, "SELECT count(*) FROM events").unwrap(),
        "2000"
    );
    for db in [&source_db, &target_db] {
        pg.sql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))
            .unwrap();
    }
}

/// `check` asks the real server its version and the real pg_dump / pg_restore theirs.
#[test]
fn check_reports_the_server_and_its_client_tools() {
    let Some(pg) = Pg::find() else { return };
    let db = unique("check");
    pg.fresh_db(&db, "C");
    let world = World::new();
    pg.use_in(&world, &db);
    let out = world.run(&["--json", "check"]);
    assert_success(&out, "check with PostgreSQL");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = doc["checks"].as_array().unwrap();
    let database = items.iter().find(|c| c["check"] == "database").unwrap();
    assert_eq!(database["status"], "ok");
    let server = pg.sql("postgres", "SHOW server_version").unwrap();
    assert!(
        database["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("PostgreSQL {server}")),
        "{database}"
    );
    let tools: Vec<&str> = items
        .iter()
        .filter(|c| c["check"] == "database-tools" && c["status"] == "ok")
        .filter_map(|c| c["detail"].as_str())
        .collect();
    assert!(
        tools.iter().any(|t| t.starts_with("pg_dump "))
            && tools.iter().any(|t| t.starts_with("pg_restore ")),
        "{tools:?}"
    );
    pg.sql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))
        .unwrap();
}

/// The media rows of the world's media store, as Synapse's tables hold them.
fn media_rows_sql(world: &World) -> String {
    let mut sql = String::from(
        "CREATE TABLE local_media_repository (media_id text PRIMARY KEY, media_length bigint, url_cache text);
         CREATE TABLE local_media_repository_thumbnails (media_id text, thumbnail_width int, thumbnail_height int, thumbnail_type text, thumbnail_method text, thumbnail_length int);",
    );
    for rel in crate::providers::media(world).keys() {
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            ["local_content", a, b, rest] => sql.push_str(&format!(
                "INSERT INTO local_media_repository VALUES ('{a}{b}{rest}', 1, NULL);"
            )),
            ["local_thumbnails", a, b, rest, name] => {
                let f: Vec<&str> = name.split('-').collect();
                sql.push_str(&format!(
                    "INSERT INTO local_media_repository_thumbnails VALUES ('{a}{b}{rest}', {}, {}, '{}/{}', '{}', 1);",
                    f[0], f[1], f[2], f[3], f[4]
                ));
            }
            _ => panic!("unexpected media path {rel}"),
        }
    }
    sql
}

#[test]
fn media_in_a_storage_provider_are_found_through_the_postgres_rows() {
    let Some(pg) = Pg::find() else { return };
    let db = unique("provider");
    pg.fresh_db(&db, "C");
    let world = World::new();
    pg.sql(&db, &media_rows_sql(&world)).unwrap();
    pg.use_in(&world, &db);
    let provider = crate::providers::file_provider(&world);
    let moved = crate::providers::offload_every(&world, 3, crate::providers::move_into(&provider));
    let out = world.run(&["--json", "create-backup"]);
    assert_success(&out, "create-backup");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["provider-files"], moved.len(), "{created}");
    assert_eq!(created["missing-media"], 0, "{created}");

    fs::remove_file(provider.join(&moved[0])).unwrap();
    let media_id: String = moved[0].split('/').skip(1).take(3).collect();
    let stderr = assert_fails(
        &world.run(&["create-backup"]),
        exit::REFUSED,
        &["1 media files"],
    );
    assert!(stderr.contains(&media_id), "{stderr}");
    pg.sql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))
        .unwrap();
}

/// The PostgreSQL client programs not installed is its own failure (exit 8, `tool-missing`), with advice on what to
/// install: not "other", and not a hint about the store.
#[test]
fn a_missing_pg_dump_is_named_with_what_to_install() {
    let Some(pg) = Pg::find() else { return };
    let db = unique("notool");
    pg.fresh_db(&db, "C");
    let world = World::new();
    pg.use_in(&world, &db);
    // A PATH with nothing on it: the tool itself is started by its full path.
    let empty = world.path("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let out = Command::new(binary())
        .arg("--config")
        .arg(&world.config)
        .args(["--json", "create-backup"])
        .env("PATH", &empty)
        .env_remove("SYNAPSE_BACKUP_PASSPHRASE")
        .output()
        .unwrap();
    // psql (the server's version, asked first) or pg_dump: whichever is looked for first.
    assert_fails(&out, exit::TOOL_MISSING, &["cannot run", "not installed"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error-kind"], "tool-missing", "{doc}");
    assert!(
        doc["hint"]
            .as_str()
            .is_some_and(|h| h.contains("postgresql-client")),
        "{doc}"
    );
    let listed = world.run(&["--json", "list-backups"]);
    assert_success(&listed, "list-backups");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["backups"], serde_json::json!([]), "{listed}");
    pg.sql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))
        .unwrap();
}
