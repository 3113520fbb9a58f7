//! Typed errors of the library.
//!
//! Each variant says what failed and on which object or path; the CLI adds a hint and maps the
//! [`ErrorKind`] to a documented exit code. No variant ever carries a secret. Decisions (exit
//! codes, retries, "damaged" vs "store unreachable") are made on variants and on the typed
//! causes inside `std::io::Error`s ([`find_cause`]), never on message text.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The broad class of a failure, used for exit codes and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad configuration or arguments.
    Config,
    /// The named backup does not exist in the store.
    NotFound,
    /// The passphrase does not open the backup.
    WrongPassphrase,
    /// The backup is damaged, truncated or disagrees with its manifest.
    Corrupt,
    /// A safety rule refused the operation (server_name mismatch, Synapse running, lock held…).
    Refused,
    /// The object store could not be reached or refused the request.
    Storage,
    /// The user interrupted the operation.
    Interrupted,
    /// A program this needs is not installed (`pg_dump`, `pg_restore`, `psql`).
    ToolMissing,
    /// A bug: a worker thread that panicked, a value of ours that cannot be encoded.
    Internal,
    /// Local I/O, the database programs, a hook, or anything else.
    Other,
}

/// How a backup is damaged. All are [`ErrorKind::Corrupt`] (one exit code); the kind lets tests
/// and callers tell them apart without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The encrypted stream ends before the message does.
    Truncated,
    /// The OpenPGP integrity check (MDC or AEAD tag) failed: the bytes were changed.
    Integrity,
    /// Not the structure a backup has: not OpenPGP, not tar, an empty object, a broken header.
    Malformed,
    /// The archive disagrees with its manifest: a file missing, extra, resized or changed, the
    /// list of another backup, members out of order.
    ManifestMismatch,
    /// A member that must never be restored: a link or device, an absolute path or `..`, a
    /// path written twice, something outside the layout.
    HostileMember,
}

/// Why a store failed, as far as the advice differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageCause {
    /// The backup store could not be reached or refused the request: its settings, its
    /// credentials, or the endpoint being down.
    Access,
    /// The store stopped answering in the middle of a transfer that had begun: the settings
    /// worked, so the advice is to try again, not to check them.
    PartWay,
    /// An upload in progress was aborted from outside (another process, a lifecycle rule).
    UploadAborted,
    /// One of Synapse's media storage providers, configured in homeserver.yaml, not here.
    Provider,
}

/// Which safety rule refused. All are [`ErrorKind::Refused`] (one exit code); the rule lets
/// tests and callers tell them apart without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Synapse answers (or its process runs) and no stop-command is set, or it did not stop.
    SynapseRunning,
    /// Another synapse-backup holds the state directory's lock.
    Locked,
    /// The backup is of another server_name than the target's config.
    ServerNameMismatch,
    /// The backup's database kind (SQLite, PostgreSQL) is not the target's.
    DatabaseKindMismatch,
    /// The target database is not one Synapse can use, or not empty.
    TargetDatabase,
    /// The target folder is not empty, or an earlier restore's copy is in the way.
    TargetInTheWay,
    /// Not enough free space for the staging or the scratch folder.
    NotEnoughSpace,
    /// The backup's format is newer than this program.
    NewerFormat,
    /// Objects named like backups do not open as themselves, so nothing may be deleted.
    UnreadableBackups,
    /// A backup is dated in the future; retention cannot be reasoned about.
    FutureBackup,
    /// Media files that the database names cannot be found.
    MissingMedia,
    /// A file belongs to a storage provider that is not configured now.
    ProviderNotConfigured,
    /// A drill cannot prove that the Synapse it would boot reaches nothing live.
    DrillIsolation,
    /// A WAL file is already archived with other content: nothing is overwritten.
    WalConflict,
    /// Physical mode needs PostgreSQL to archive its WAL into this store, and it does not.
    WalArchiving,
    /// A physical backup's database is restored through `--target-dir` (in place: not built).
    PhysicalInPlace,
}

/// Which database program (or library) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseTool {
    Sqlite,
    Psql,
    PgDump,
    /// pg_dump refused because the server's major version is newer than its own.
    PgDumpOlderThanServer,
    PgRestore,
    PgBasebackup,
}

/// The restore's configured commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Stop,
    Start,
    /// `[postgres] stop-command` (a physical restore in place).
    PostgresStop,
    PostgresStart,
}

impl std::fmt::Display for Hook {
    /// The setting, with its section.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hook::Stop => "[restore] stop-command",
            Hook::Start => "[restore] start-command",
            Hook::PostgresStop => "[postgres] stop-command",
            Hook::PostgresStart => "[postgres] start-command",
        })
    }
}

/// How a restore hook failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookFailure {
    #[error("cannot run {command:?}: {reason}")]
    CannotRun { command: String, reason: String },
    #[error("{command:?} failed with {status}; nothing was changed")]
    Failed { command: String, status: String },
    #[error("the restore finished, but Synapse did not come back healthy: {reason}")]
    Unhealthy { reason: String },
}

/// What an interrupted restore left in the way. The message is "PATH <this>".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Leftover {
    #[error("is a restore journal that cannot be read ({reason})")]
    UnreadableJournal { reason: String },
    #[error("cannot be swapped: both it and {} exist", previous.display())]
    BothLiveAndPrevious { previous: PathBuf },
    #[error("exists, left from another restore")]
    Staging,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),

    #[error("backup {id} was not found in {store}")]
    NotFound { id: String, store: String },

    /// `wal-fetch` was asked for a WAL file the store does not hold: expected at the end of a
    /// recovery (PostgreSQL asks for the next segment and for history files that may not exist).
    #[error("WAL file {name} is not in {store}")]
    WalMissing { name: String, store: String },

    #[error("the passphrase does not open backup {id} (wrong passphrase, not an OpenPGP backup made with a passphrase, or damaged in its first bytes)")]
    WrongPassphrase { id: String },

    #[error("backup {id} is damaged: {detail}")]
    Corrupt {
        id: String,
        kind: CorruptKind,
        detail: String,
    },

    /// A safety rule said no; `detail` names what it saw and, where there is one, the way out.
    #[error("refused: {detail}")]
    Refused { rule: Refusal, detail: String },

    #[error("object store {store}: {detail}")]
    Storage {
        store: String,
        detail: String,
        /// What kind of trouble, which decides the advice ([`Error::hint`]).
        cause: StorageCause,
    },

    #[error("interrupted; nothing was changed")]
    Interrupted,

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The database programs (pg_dump, pg_restore, psql) or SQLite failed.
    #[error("{detail}")]
    Database { tool: DatabaseTool, detail: String },

    /// A configured command (`[restore] stop-command`, `start-command`) failed, or Synapse did
    /// not come back healthy after it.
    #[error("{hook}: {failure}")]
    Hook { hook: Hook, failure: HookFailure },

    /// What an interrupted restore left and only the admin can sort out.
    #[error("{} {what}", path.display())]
    Leftover { path: PathBuf, what: Leftover },

    /// Encrypting the backup stream failed.
    #[error("encryption failed: {0}")]
    Encryption(String),

    /// A program this needs could not be started.
    #[error("cannot run {program}, which {needed_for} needs: it is not installed, or not on PATH")]
    ToolMissing {
        program: &'static str,
        needed_for: &'static str,
        #[source]
        cause: std::io::Error,
    },

    /// A drill ran and a check failed: the backup did not prove to boot as a homeserver.
    #[error("drill of backup {id} failed: {checks}")]
    DrillFailed { id: String, checks: String },

    /// What should not happen: a worker thread that panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),

    /// Anything else: a thread the system cannot start, a local failure with no variant.
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Config,
            Error::NotFound { .. } | Error::WalMissing { .. } => ErrorKind::NotFound,
            Error::WrongPassphrase { .. } => ErrorKind::WrongPassphrase,
            Error::Corrupt { .. } | Error::DrillFailed { .. } => ErrorKind::Corrupt,
            Error::Refused { .. } => ErrorKind::Refused,
            Error::Storage { .. } => ErrorKind::Storage,
            Error::Interrupted => ErrorKind::Interrupted,
            Error::ToolMissing { .. } => ErrorKind::ToolMissing,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Io { .. }
            | Error::Database { .. }
            | Error::Hook { .. }
            | Error::Leftover { .. }
            | Error::Encryption(_)
            | Error::Other(_) => ErrorKind::Other,
        }
    }

    /// What to try, for the failures where there is something to try: the one place advice is
    /// written (messages say what failed; this says what to do).
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Error::WrongPassphrase { .. } => "check [backup] passphrase-file or SYNAPSE_BACKUP_PASSPHRASE: it must be the passphrase the backup was made with",
            Error::Corrupt { .. } => "nothing was changed; try an older backup (list-backups) and run verify-backup on it",
            Error::NotFound { .. } => "run list-backups to see the backup ids in this store",
            Error::WalMissing { .. } => "normal at the end of a recovery, where PostgreSQL asks for files past the last one archived; otherwise check archive_command and the store settings of the config wal-fetch was given",
            Error::Storage { cause, .. } => match cause {
                StorageCause::Access => "check [s3] endpoint, bucket, region, access-key and the secret key, and that the endpoint is reachable",
                StorageCause::PartWay => "the store stopped answering part-way through; run the command again once it answers (a backup or restore that failed this way left nothing half-done)",
                StorageCause::UploadAborted => "something removed the unfinished upload: look for another process cleaning the bucket, or a lifecycle rule that aborts incomplete multipart uploads sooner than a backup takes, then run the command again",
                StorageCause::Provider => "check the storage provider's settings in homeserver.yaml (media_storage_providers) and that it is reachable from this host",
            },
            Error::ToolMissing { program, .. } if program.starts_with("pg_") || *program == "psql" => "install the PostgreSQL client programs of the server's major version or newer (e.g. apt-get install postgresql-client) and make sure they are on PATH",
            Error::ToolMissing { .. } => "install it and make sure it is on PATH",
            Error::Database { tool: DatabaseTool::PgDumpOlderThanServer, .. } => "install the pg_dump of the server's major version (or newer) and make sure it comes first on PATH",
            Error::Hook { hook, .. } => return Some(format!("check {hook} in the configuration; see the restore's output above for what was done")),
            Error::Leftover { what, .. } => match what {
                Leftover::UnreadableJournal { .. } => "inspect it and the .staging-/.pre-restore- paths it names, then delete it",
                Leftover::BothLiveAndPrevious { .. } => "inspect both and remove the wrong one, then run the restore again",
                Leftover::Staging => "remove it and run the restore again",
            },
            Error::DrillFailed { .. } => "nothing live was touched; read each failed check's detail above, run drill --keep to look at the restored homeserver, and drill an older backup (list-backups)",
            Error::Internal(_) => "this is a bug in synapse-backup; please report it with the output of the same command run with -vv",
            _ => return None,
        };
        Some(hint.to_string())
    }

    /// How the backup is damaged, for [`Error::Corrupt`].
    pub fn corrupt_kind(&self) -> Option<CorruptKind> {
        match self {
            Error::Corrupt { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Wraps an I/O error with the action and the path it concerned.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn refused(rule: Refusal, detail: impl Into<String>) -> Self {
        Error::Refused {
            rule,
            detail: detail.into(),
        }
    }

    pub fn database(tool: DatabaseTool, detail: impl Into<String>) -> Self {
        Error::Database {
            tool,
            detail: detail.into(),
        }
    }

    /// Which rule refused, for [`Error::Refused`].
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Error::Refused { rule, .. } => Some(*rule),
            _ => None,
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    pub fn corrupt(id: &str, kind: CorruptKind, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            id: id.to_string(),
            kind,
            detail: detail.into(),
        }
    }

    /// A worker task or thread that failed to finish (it panicked or was cancelled by the
    /// runtime): a bug, not a condition of the data.
    pub fn task_failed(what: &str, cause: impl std::fmt::Display) -> Self {
        Error::Internal(format!("the {what} task failed: {cause}"))
    }
}

/// Adds a path and an action to a bare `io::Result`.
pub trait IoContext<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}

/// The first `T` in `err` or anything it wraps.
///
/// Typed causes travel inside `std::io::Error`s through layers (decryption, tar) that only speak
/// `io::Error`. An `io::Error`'s `source()` skips the error it wraps, so `get_ref()` is followed
/// for those, `source()` for everything else.
pub fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("marker")]
    struct Marker;

    #[derive(Debug, thiserror::Error)]
    #[error("layer")]
    struct Layer(#[source] std::io::Error);

    #[test]
    fn causes_are_found_through_io_errors_and_sources() {
        let direct = std::io::Error::other(Marker);
        assert!(find_cause::<Marker>(&direct).is_some());
        let layered = std::io::Error::other(Layer(std::io::Error::other(Marker)));
        assert!(find_cause::<Marker>(&layered).is_some());
        // The same words are not the same error.
        let text = std::io::Error::other("marker");
        assert!(find_cause::<Marker>(&text).is_none());
    }

    #[test]
    fn every_variant_has_its_kind() {
        let io = || std::io::Error::other("x");
        let cases = [
            (Error::config("x"), ErrorKind::Config),
            (
                Error::NotFound {
                    id: "b".into(),
                    store: "s".into(),
                },
                ErrorKind::NotFound,
            ),
            (
                Error::WrongPassphrase { id: "b".into() },
                ErrorKind::WrongPassphrase,
            ),
            (
                Error::corrupt("b", CorruptKind::Truncated, "x"),
                ErrorKind::Corrupt,
            ),
            (Error::refused(Refusal::Locked, "x"), ErrorKind::Refused),
            (
                Error::Storage {
                    store: "s".into(),
                    detail: "x".into(),
                    cause: StorageCause::Access,
                },
                ErrorKind::Storage,
            ),
            (
                Error::ToolMissing {
                    program: "pg_dump",
                    needed_for: "a PostgreSQL backup",
                    cause: io(),
                },
                ErrorKind::ToolMissing,
            ),
            (Error::task_failed("x", "panicked"), ErrorKind::Internal),
            (Error::Interrupted, ErrorKind::Interrupted),
            (Error::io("read", "/x", io()), ErrorKind::Other),
            (Error::database(DatabaseTool::Psql, "x"), ErrorKind::Other),
            (
                Error::Hook {
                    hook: Hook::Start,
                    failure: HookFailure::Unhealthy { reason: "x".into() },
                },
                ErrorKind::Other,
            ),
            (
                Error::Leftover {
                    path: "/x".into(),
                    what: Leftover::Staging,
                },
                ErrorKind::Other,
            ),
            (Error::Encryption("x".into()), ErrorKind::Other),
            (Error::Other("x".into()), ErrorKind::Other),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }

    #[test]
    fn storage_advice_follows_the_cause() {
        let storage = |cause| Error::Storage {
            store: "s3://b".into(),
            detail: "x".into(),
            cause,
        };
        let hint = |cause| storage(cause).hint().unwrap_or_default();
        assert!(hint(StorageCause::Access).contains("[s3] endpoint"));
        // A connection that dropped mid-transfer had working settings: retry, not reconfigure.
        assert!(hint(StorageCause::PartWay).contains("run the command again"));
        assert!(!hint(StorageCause::PartWay).contains("[s3]"));
        assert!(hint(StorageCause::UploadAborted).contains("lifecycle rule"));
        assert!(hint(StorageCause::Provider).contains("homeserver.yaml"));
        assert!(!hint(StorageCause::Provider).contains("[s3]"));
    }

    #[test]
    fn restore_leftovers_name_the_path_and_advise_by_what_is_in_the_way() {
        let staging = Error::Leftover {
            path: "/srv/media.staging-x".into(),
            what: Leftover::Staging,
        };
        assert!(staging
            .to_string()
            .starts_with("/srv/media.staging-x exists"));
        assert!(staging.hint().unwrap_or_default().contains("remove it"));
        let both = Error::Leftover {
            path: "/srv/media".into(),
            what: Leftover::BothLiveAndPrevious {
                previous: "/srv/media.pre-restore-x".into(),
            },
        };
        assert!(both.to_string().contains("/srv/media.pre-restore-x"));
        assert!(both.hint().unwrap_or_default().contains("inspect both"));
    }

    #[test]
    fn database_and_hook_advice_is_specific_or_absent() {
        let older = Error::database(DatabaseTool::PgDumpOlderThanServer, "x");
        assert!(older
            .hint()
            .unwrap_or_default()
            .contains("pg_dump of the server's major version"));
        // A failed psql says what failed; no generic advice that might be wrong.
        assert_eq!(Error::database(DatabaseTool::Psql, "x").hint(), None);
        let hook = Error::Hook {
            hook: Hook::Stop,
            failure: HookFailure::Failed {
                command: "systemctl stop matrix-synapse".into(),
                status: "exit status: 1".into(),
            },
        };
        assert!(hook
            .to_string()
            .starts_with("[restore] stop-command: \"systemctl stop"));
        assert!(hook
            .hint()
            .unwrap_or_default()
            .contains("[restore] stop-command"));
        assert_eq!(
            Error::refused(Refusal::Locked, "x").refusal(),
            Some(Refusal::Locked)
        );
    }
}
