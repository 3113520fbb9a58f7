//! PostgreSQL through the real client programs: `pg_dump --format=custom` streams into the
//! backup, `pg_restore --single-transaction` reads it back. Connection settings come from
//! homeserver.yaml and are passed as `PG*` environment variables (never as arguments), so a
//! libpq passfile or the caller's own `PG*` variables work too.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{DatabaseTool, Error, Refusal, Result};
use crate::synapse::PostgresArgs;

/// Synapse's guidance: restoring used one-time keys breaks end-to-end encryption for clients.
pub const EXCLUDED_TABLE_DATA: &[&str] = &["e2e_one_time_keys_json"];

/// Facts recorded in the manifest and checked on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresInfo {
    pub server_version: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
}

#[derive(Clone)]
pub struct Postgres {
    args: PostgresArgs,
}

impl Postgres {
    pub fn new(args: &PostgresArgs) -> Postgres {
        Postgres { args: args.clone() }
    }

    /// Names the database for messages: `dbname on host:port`.
    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL database {} on {}:{}",
            self.args.dbname.as_deref().unwrap_or("(default)"),
            self.args.host.as_deref().unwrap_or("(local socket)"),
            self.args
                .port
                .map(|p| p.to_string())
                .unwrap_or_else(|| "5432".into())
        )
    }

    pub(crate) fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let set = |command: &mut Command, key: &str, value: &Option<String>| {
            if let Some(value) = value {
                command.env(key, value);
            }
        };
        set(&mut command, "PGHOST", &self.args.host);
        set(
            &mut command,
            "PGPORT",
            &self.args.port.map(|p| p.to_string()),
        );
        set(&mut command, "PGUSER", &self.args.user);
        set(&mut command, "PGDATABASE", &self.args.dbname);
        set(&mut command, "PGSSLMODE", &self.args.sslmode);
        if let Some(password) = self.args.password() {
            command.env("PGPASSWORD", password);
        }
        command
    }

    fn query(&self, sql: &str) -> Result<String> {
        self.query_in(None, sql)
    }

    /// `psql` with this database's connection settings, no arguments yet.
    pub(crate) fn psql_command(&self) -> Command {
        self.command("psql")
    }

    /// Runs `sql` in `database` (default: the configured one); the unaligned output.
    pub fn query_in_database(&self, database: Option<&str>, sql: &str) -> Result<String> {
        self.query_in(database, sql)
    }

    /// The same server and user with another database name.
    pub fn with_dbname(&self, dbname: &str) -> Postgres {
        let mut args = self.args.clone();
        args.dbname = Some(dbname.to_string());
        Postgres { args }
    }

    pub fn args(&self) -> &PostgresArgs {
        &self.args
    }

    /// Creates the empty database `name` (UTF8, C collation, as Synapse wants), owned by the
    /// connecting user. Needs CREATEDB.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.query_in(
            Some("postgres"),
            &format!(
                "CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
                quote(name)
            ),
        )
        .map(|_| ())
    }

    /// Drops the database `name` if it exists, ending its sessions first.
    pub fn drop_database(&self, name: &str) -> Result<()> {
        self.query_in(
            Some("postgres"),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote(name)),
        )
        .map(|_| ())
    }

    /// The names of the databases on the server that start with `prefix`.
    pub fn databases_starting_with(&self, prefix: &str) -> Result<Vec<String>> {
        let escaped = prefix
            .replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%");
        let rows = self.query_in(
            Some("postgres"),
            &format!(
                "SELECT datname FROM pg_database WHERE datname LIKE '{}%'",
                escaped.replace('\'', "''")
            ),
        )?;
        Ok(rows
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Runs `sql` in `database` (default: the configured one) and returns the unaligned output.
    fn query_in(&self, database: Option<&str>, sql: &str) -> Result<String> {
        self.psql(database, &[], sql)
    }

    fn psql(&self, database: Option<&str>, extra: &[&str], sql: &str) -> Result<String> {
        let mut command = self.command("psql");
        if let Some(database) = database {
            command.env("PGDATABASE", database);
        }
        let out = command
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(extra)
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| missing_program(DatabaseTool::Psql, e))?;
        if !out.status.success() {
            return Err(Error::database(
                DatabaseTool::Psql,
                format!(
                    "psql on {} failed: {}",
                    self.describe(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The rows `sql` returns, one per line, fields separated by tabs.
    pub fn rows(&self, sql: &str) -> Result<String> {
        self.psql(None, &["-F", "\t"], sql)
    }

    pub fn info(&self) -> Result<PostgresInfo> {
        let row = self.query(
            "SELECT current_setting('server_version'), pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = current_database()",
        )?;
        let fields: Vec<&str> = row.split('|').collect();
        match fields.as_slice() {
            [version, encoding, collate, ctype] => Ok(PostgresInfo {
                server_version: version.to_string(),
                encoding: encoding.to_string(),
                collate: collate.to_string(),
                ctype: ctype.to_string(),
            }),
            _ => Err(Error::database(
                DatabaseTool::Psql,
                format!("unexpected answer from {}: {row:?}", self.describe()),
            )),
        }
    }

    /// Number of tables outside the system schemas.
    pub fn table_count(&self) -> Result<u64> {
        let count = self.query(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        )?;
        count.parse().map_err(|_| {
            Error::database(
                DatabaseTool::Psql,
                format!("unexpected table count {count:?}"),
            )
        })
    }

    fn dbname(&self) -> Result<&str> {
        self.args.dbname.as_deref().ok_or_else(|| {
            Error::config("homeserver.yaml's database args name no dbname (or database)")
        })
    }

    /// For `--replace-database`: renames the current database to `<name>_pre_<digits of id>`
    /// (kept, like the files' `.pre-restore-<id>`) and creates an empty UTF8/C one in its place.
    /// Returns the kept name. Needs the CREATEDB privilege.
    pub fn set_aside(&self, backup_id: &str) -> Result<String> {
        let name = self.dbname()?.to_string();
        let digits: String = backup_id.chars().filter(char::is_ascii_digit).collect();
        let mut kept = format!("{name}_pre_{digits}");
        kept.truncate(63);
        let owner = self.query("SELECT current_user")?;
        // Other sessions on the database (a stopped Synapse has none) would block the rename.
        self.query_in(
            Some("postgres"),
            &format!("ALTER DATABASE {} RENAME TO {}", quote(&name), quote(&kept)),
        )
        .map_err(|e| {
            Error::refused(
                Refusal::TargetDatabase,
                format!("cannot set the current database aside for --replace-database: {e}"),
            )
        })?;
        let created = self.query_in(
            Some("postgres"),
            &format!(
                "CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0 OWNER {}",
                quote(&name),
                quote(&owner)
            ),
        );
        if let Err(e) = created {
            self.query_in(
                Some("postgres"),
                &format!("ALTER DATABASE {} RENAME TO {}", quote(&kept), quote(&name)),
            )?;
            return Err(e);
        }
        Ok(kept)
    }

    /// Undoes [`Self::set_aside`] after a failed restore.
    pub fn put_back(&self, kept: &str) -> Result<()> {
        let name = self.dbname()?;
        self.query_in(Some("postgres"), &format!("DROP DATABASE {}", quote(name)))?;
        self.query_in(
            Some("postgres"),
            &format!("ALTER DATABASE {} RENAME TO {}", quote(kept), quote(name)),
        )?;
        Ok(())
    }

    /// Refuses a target that Synapse would refuse or that a restore would mix into. With
    /// `replace`, a database with tables is accepted: it will be set aside, not mixed into.
    pub fn check_restore_target(&self, replace: bool) -> Result<()> {
        let info = self.info()?;
        let create_hint = format!(
            "create an empty one: CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0 OWNER {};",
            self.args.dbname.as_deref().unwrap_or("synapse"),
            self.args.user.as_deref().unwrap_or("synapse_user")
        );
        if info.encoding != "UTF8" || info.collate != "C" || info.ctype != "C" {
            return Err(Error::refused(Refusal::TargetDatabase, format!(
                "{} has encoding {} and collation {}/{}; Synapse needs UTF8 with C collation and ctype: {create_hint}",
                self.describe(),
                info.encoding,
                info.collate,
                info.ctype
            )));
        }
        let tables = self.table_count()?;
        if tables > 0 && !replace {
            return Err(Error::refused(Refusal::TargetDatabase, format!(
                "{} is not empty ({tables} tables); restore-backup only restores into an empty database. Drop it and {create_hint} (or pass --replace-database, which keeps the current one under another name)",
                self.describe()
            )));
        }
        Ok(())
    }

    /// Starts `pg_dump --format=custom` writing to a pipe.
    pub fn start_dump(&self, snapshot: Option<&str>) -> Result<DumpProcess> {
        let mut command = self.command("pg_dump");
        command.args(["--format=custom", "--no-owner"]);
        if let Some(snapshot) = snapshot {
            command.arg(format!("--snapshot={snapshot}"));
        }
        for table in EXCLUDED_TABLE_DATA {
            command.arg(format!("--exclude-table-data={table}"));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| missing_program(DatabaseTool::PgDump, e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::database(DatabaseTool::PgDump, "pg_dump has no stdout"))?;
        Ok(DumpProcess {
            child,
            stdout,
            describe: self.describe(),
        })
    }

    /// Starts `pg_restore` reading a custom-format dump from a pipe, in one transaction, so a
    /// failure leaves the (empty) database as it was.
    pub fn start_restore(&self) -> Result<RestoreProcess> {
        let mut command = self.command("pg_restore");
        command.args([
            "--no-owner",
            "--exit-on-error",
            "--single-transaction",
            "--dbname",
        ]);
        command.arg(self.args.dbname.as_deref().unwrap_or("synapse"));
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| missing_program(DatabaseTool::PgRestore, e))?;
        let stdin = child.stdin.take();
        Ok(RestoreProcess {
            child,
            stdin,
            describe: self.describe(),
        })
    }
}

/// Quotes an SQL identifier.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// A program that would not start: not installed (or not on PATH) is its own kind of failure,
/// with its own exit code and advice ([`Error::hint`]).
pub(crate) fn missing_program(tool: DatabaseTool, e: std::io::Error) -> Error {
    let program = match tool {
        DatabaseTool::Psql => "psql",
        DatabaseTool::PgRestore => "pg_restore",
        DatabaseTool::PgBasebackup => "pg_basebackup",
        _ => "pg_dump",
    };
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::ToolMissing {
            program,
            needed_for: "a PostgreSQL database's backup and restore",
            cause: e,
        }
    } else {
        Error::database(tool, format!("cannot run {program}: {e}"))
    }
}

pub(crate) fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    text.trim().to_string()
}

pub struct DumpProcess {
    child: Child,
    stdout: ChildStdout,
    describe: String,
}

impl Read for DumpProcess {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl DumpProcess {
    /// Waits for pg_dump and turns a failure into an error that quotes it.
    pub fn finish(mut self) -> Result<()> {
        let status = self.child.wait().map_err(|e| {
            Error::database(DatabaseTool::PgDump, format!("waiting for pg_dump: {e}"))
        })?;
        if status.success() {
            return Ok(());
        }
        let stderr = stderr_of(&mut self.child);
        // pg_dump's own words for "the server is newer than I am"; the advice differs.
        let tool = if stderr.contains("version mismatch") {
            DatabaseTool::PgDumpOlderThanServer
        } else {
            DatabaseTool::PgDump
        };
        Err(Error::database(
            tool,
            format!("pg_dump of {} failed ({status}): {stderr}", self.describe),
        ))
    }
}

pub struct RestoreProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    describe: String,
}

impl Write for RestoreProcess {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.write(buf),
            None => Err(std::io::Error::other("pg_restore's input is closed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.flush(),
            None => Ok(()),
        }
    }
}

impl RestoreProcess {
    /// Closes the input and waits; pg_restore's own message on failure.
    pub fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(|e| {
            Error::database(
                DatabaseTool::PgRestore,
                format!("waiting for pg_restore: {e}"),
            )
        })?;
        if status.success() {
            return Ok(());
        }
        Err(Error::database(DatabaseTool::PgRestore, format!(
            "pg_restore into {} failed ({status}); its transaction was rolled back, the database is as it was: {}",
            self.describe,
            stderr_of(&mut self.child)
        )))
    }

    /// Stops pg_restore without committing anything.
    pub fn abort(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
