//! What the commands print on stdout: tables, sizes, the one JSON document of `--json`, and
//! lines written so that a closed pipe (`list-backups | head -1`) ends the program quietly
//! instead of panicking as `println!` does.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde_json::Value;
use synapse_backup_core::host::scratch::Leftover;
use synapse_backup_core::manifest::{DatabaseInfo, DatabaseKind};
use synapse_backup_core::repository::wal::base_object;

/// `println!` for stdout that survives a reader that went away.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// Writes `text` to stdout. When the reader has gone (a closed pipe) there is nobody left to
/// tell anything: exit quietly with success, as Unix tools do.
pub fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(crate::exit::OK.into());
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(crate::exit::OTHER.into());
    }
}

static JSON_WRITTEN: AtomicBool = AtomicBool::new(false);

/// Prints the command's one JSON document (`--json`): a single object on one line. Programs
/// (a charm's action, a monitoring script) read stdout as exactly one document, so a second
/// one is a bug and is dropped with a message rather than printed.
pub fn emit_json(document: Value) {
    debug_assert!(document.is_object(), "--json prints an object: {document}");
    if JSON_WRITTEN.swap(true, Ordering::SeqCst) {
        eprintln!("error: internal: a second JSON document was dropped: {document}");
        return;
    }
    write_stdout(&format!("{document}\n"));
}

/// A command's result, written once: it serializes to the `--json` document (keys
/// lowercase with hyphens, in sorted order like every document here) and renders the text a
/// person reads. No field is written twice, once per output.
pub trait CommandOutput: serde::Serialize {
    /// The text for people: the result on stdout, notes and warnings on stderr.
    fn print_human(&self);
}

/// Prints `output` as `--json` asks, or for people. A document that cannot be built (a path
/// that is not UTF-8, which JSON cannot hold) is an error: a program reading stdout must never
/// see a success without its document.
pub fn emit(json: bool, output: &impl CommandOutput) -> anyhow::Result<()> {
    if !json {
        output.print_human();
        return Ok(());
    }
    let document = serde_json::to_value(output).map_err(|e| {
        synapse_backup_core::Error::Internal(format!(
            "the command succeeded, but its JSON document could not be built: {e}"
        ))
    })?;
    emit_json(document);
    Ok(())
}

/// Whether this run already printed its JSON document.
pub fn json_written() -> bool {
    JSON_WRITTEN.load(Ordering::SeqCst)
}

/// The document of a failed command under `--json`, unless the command printed its own (as
/// `check` does, with every item, before it fails).
pub fn emit_json_error(message: &str, kind: &str, exit_code: u8, hint: Option<&str>) {
    if json_written() {
        return;
    }
    let document = ErrorDocument {
        ok: false,
        error: message,
        error_kind: kind,
        exit_code,
        hint,
    };
    match serde_json::to_value(&document) {
        Ok(value) => emit_json(value),
        Err(e) => eprintln!("error: internal: the error document could not be built: {e}"),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ErrorDocument<'a> {
    ok: bool,
    error: &'a str,
    error_kind: &'a str,
    exit_code: u8,
    hint: Option<&'a str>,
}

/// The database facts of a manifest as `--json` shows them: the manifest's own field names are
/// a stored format and cannot change, the output's keys follow one style (lowercase with
/// hyphens).
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DatabaseOut<'a> {
    kind: &'static str,
    included: bool,
    pub note: Option<&'a str>,
    postgres: Option<PostgresOut<'a>>,
    /// PostgreSQL only: `logical` (a pg_dump in the backup) or `physical` (a base and WAL).
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    physical: Option<PhysicalOut<'a>>,
}

/// What a physical backup restores from and to.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct PhysicalOut<'a> {
    /// The base object it restores from.
    base: &'a str,
    /// Whether this backup took that base (otherwise it shares an earlier backup's).
    took_base: bool,
    base_taken: String,
    /// The moment it restores to: its restore point.
    restores_to: String,
    restore_point: &'a str,
    /// The WAL a restore replays, first and last segment.
    start_wal: &'a str,
    end_wal: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct PostgresOut<'a> {
    server_version: &'a str,
    encoding: &'a str,
    collate: &'a str,
    ctype: &'a str,
}

impl<'a> DatabaseOut<'a> {
    pub fn of(database: &'a DatabaseInfo) -> Self {
        DatabaseOut {
            kind: match database.kind {
                DatabaseKind::Sqlite => "sqlite",
                DatabaseKind::Postgresql => "postgresql",
            },
            included: database.included,
            note: database.note.as_deref(),
            postgres: database.postgres.as_ref().map(|pg| PostgresOut {
                server_version: &pg.server_version,
                encoding: &pg.encoding,
                collate: &pg.collate,
                ctype: &pg.ctype,
            }),
            mode: match (&database.kind, &database.physical) {
                (DatabaseKind::Postgresql, Some(_)) => Some("physical"),
                (DatabaseKind::Postgresql, None) if database.included => Some("logical"),
                _ => None,
            },
            physical: database.physical.as_ref().map(|p| PhysicalOut {
                base: &p.base,
                took_base: p.base == base_object(&p.restore_point),
                base_taken: p.base_taken.to_rfc3339(),
                restores_to: p.at.to_rfc3339(),
                restore_point: &p.restore_point,
                start_wal: &p.start_wal,
                end_wal: &p.end_wal,
            }),
        }
    }
}

/// A scratch folder of a killed create-backup that a command removed: path and age.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LeftoverOut {
    path: String,
    age_secs: u64,
}

impl LeftoverOut {
    pub fn all(leftovers: &[Leftover]) -> Vec<Self> {
        leftovers
            .iter()
            .map(|l| LeftoverOut {
                path: l.path.display().to_string(),
                age_secs: l.age.as_secs(),
            })
            .collect()
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A plain table with columns separated by ` | `, as the charm's list-backups prints.
pub struct Table<const N: usize> {
    header: [String; N],
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    pub fn new(header: [&str; N]) -> Self {
        Table {
            header: header.map(String::from),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: [String; N]) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut widths = self.header.clone().map(|h| h.chars().count());
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String; N]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", padded.join(" | ").trim_end())
        };
        let mut out = line(&self.header);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(["a", "bb"]);
        t.row(["long".into(), "x".into()]);
        assert_eq!(t.render(), "a    | bb\nlong | x\n");
    }
}
