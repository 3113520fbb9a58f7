//! Command-line arguments. Secrets are never arguments: the passphrase and the S3 secret come
//! from files or the environment (see the configuration).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "synapse-backup",
    version,
    about = "Back up and restore a Matrix Synapse homeserver, encrypted, to S3 or a local folder",
    after_help = "Exit codes: 0 success, 1 other error, 2 bad configuration or arguments, 3 backup not found, \
4 wrong passphrase, 5 backup damaged or verification failed, 6 refused by a safety rule, \
7 object store unreachable or refused, 8 a program this needs is not installed (pg_dump, pg_restore, psql), \
70 internal error (a bug), 130 interrupted."
)]
pub struct Cli {
    /// Configuration file [default: $SYNAPSE_BACKUP_CONFIG, then /etc/synapse-backup/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Machine-readable output on stdout
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v info, -vv debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up the signing key, database, local media and configuration; prints the backup id
    CreateBackup(CreateArgs),
    /// List backups, oldest first
    ListBackups,
    /// Download, decrypt and check every file of a backup against its manifest; changes nothing
    VerifyBackup(VerifyArgs),
    /// Restore a backup (stages and verifies everything before replacing the live data)
    RestoreBackup(RestoreArgs),
    /// Delete a backup
    DeleteBackup(IdArg),
    /// Delete the backups a retention policy does not keep (the newest is always kept)
    PruneBackups(PruneArgs),
    /// Prove that a backup boots as a homeserver: restore it into a scratch folder, boot the
    /// installed Synapse on it (loopback only, no federation) and check it answers with the
    /// backup's key, database and media; touches nothing live
    Drill(DrillArgs),
    /// PostgreSQL's archive_command: store one WAL file, encrypted, under wal/ in the store
    /// (archive_command = 'synapse-backup --config FILE wal-push %p'); exits 0 only once it
    /// is stored
    WalPush(WalPushArgs),
    /// PostgreSQL's restore_command: write one archived WAL file, or exit 3 when the store does
    /// not hold it (restore_command = 'synapse-backup --config FILE wal-fetch %f %p')
    WalFetch(WalFetchArgs),
    /// Check, changing nothing, that a backup would work: config, sources, database, store
    /// access (a probe object written and removed), passphrase, Synapse
    Check,
    /// The configuration in effect
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write the man pages and the bash, zsh and fish completions (for packaging; needs no
    /// configuration)
    Generate(GenerateArgs),
}

impl Command {
    /// The name monitoring reports a command under, for the commands a timer runs.
    pub fn monitored_as(&self) -> Option<&'static str> {
        match self {
            Command::CreateBackup(_) => Some("create-backup"),
            Command::VerifyBackup(_) => Some("verify-backup"),
            Command::PruneBackups(_) => Some("prune-backups"),
            Command::Drill(_) => Some("drill"),
            Command::WalPush(_) => Some("wal-push"),
            _ => None,
        }
    }

    /// Whether its runs ping `[monitoring] ping-url`: not wal-push, which PostgreSQL runs for
    /// every WAL file (several a second on a busy server); its textfile says how archiving goes.
    pub fn pings(&self) -> bool {
        !matches!(self, Command::WalPush(_))
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the settings in effect (file, then environment), each variable's name beside what
    /// it set; secrets redacted
    Show,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("what").required(true).multiple(true).args(["man_dir", "completions_dir"])
))]
pub struct GenerateArgs {
    /// Write synapse-backup.1 and a page per command (synapse-backup-create-backup.1, …) into DIR
    #[arg(long, value_name = "DIR")]
    pub man_dir: Option<PathBuf>,

    /// Write synapse-backup.bash, _synapse-backup (zsh) and synapse-backup.fish into DIR
    #[arg(long, value_name = "DIR")]
    pub completions_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Keep the newest N backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,

    /// Keep the newest backup of each of the last N days that have one (UTC)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: usize,

    /// Keep the newest backup of each of the last N weeks that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: usize,

    /// Keep the newest backup of each of the last N months that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: usize,

    /// Show what would be deleted; delete nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Also back up remote media and URL preview caches (re-fetchable, skipped by default)
    #[arg(long)]
    pub include_remote_media: bool,

    /// Leave the PostgreSQL database out (backed up by other tools, e.g. pgBackRest)
    #[arg(long)]
    pub skip_database: bool,

    /// Store every media file anew instead of taking unchanged ones from the newest backup
    #[arg(long)]
    pub full: bool,

    /// Make the backup even when media the database lists are neither under media_store_path
    /// nor in a storage provider (they are reported and recorded; without this it refuses)
    #[arg(long)]
    pub allow_missing_media: bool,
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The file, as PostgreSQL's %p gives it (relative to the data directory, the working
    /// directory of archive_command)
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The WAL file name, as PostgreSQL's %f gives it
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Where to write it, as PostgreSQL's %p gives it
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// The backup id, as list-backups shows it (`backup-id=ID` is accepted too)
    #[arg(value_name = "BACKUP_ID")]
    pub backup_id: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The backup id, as list-backups shows it (`backup-id=ID` is accepted too), or `latest`
    /// for the newest backup
    #[arg(value_name = "BACKUP_ID")]
    pub backup_id: String,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The backup id, as list-backups shows it, or `latest` for the newest backup
    #[arg(value_name = "BACKUP_ID", default_value = "latest")]
    pub backup_id: String,

    /// Keep the scratch folder (and PostgreSQL database) and print how to start Synapse on it
    #[arg(long)]
    pub keep: bool,
}

impl DrillArgs {
    pub fn id(&self) -> &str {
        without_charm_prefix(&self.backup_id)
    }
}

impl VerifyArgs {
    pub fn id(&self) -> &str {
        without_charm_prefix(&self.backup_id)
    }
}

/// An id as given, without the `backup-id=` the charm's actions put before it.
fn without_charm_prefix(id: &str) -> &str {
    id.strip_prefix("backup-id=").unwrap_or(id)
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup id, as list-backups shows it (`backup-id=ID` is accepted too)
    #[arg(
        value_name = "BACKUP_ID",
        required_unless_present = "to_time",
        conflicts_with = "to_time"
    )]
    pub backup_id: Option<String>,

    /// Physical mode: restore the database to this moment (RFC 3339, e.g.
    /// 2026-12-07T09:30:00Z), from the newest backup before it, whose media are restored
    #[arg(long, value_name = "TIME")]
    pub to_time: Option<String>,

    /// Restore into this empty directory (backup layout) instead of the live paths: for drills
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,

    /// For backups made by the Synapse charm: the data dir its pipeline archived
    #[arg(long, value_name = "DIR", default_value = "/data")]
    pub charm_source_root: String,

    /// Delete the previous data (kept as NAME.pre-restore-ID) once the restore succeeded
    #[arg(long)]
    pub remove_previous: bool,

    /// Skip the free-space check (for data split across filesystems)
    #[arg(long)]
    pub skip_space_check: bool,

    /// PostgreSQL only, destructive for the target's current contents: restore even though the
    /// database has tables. After the whole backup verified, the current database is renamed to
    /// NAME_pre_ID (kept) and an empty one created in its place (needs CREATEDB)
    #[arg(long)]
    pub replace_database: bool,

    /// Write the media the backup read from a storage provider back to that provider (as
    /// configured now in homeserver.yaml) instead of under media_store_path
    #[arg(long)]
    pub media_to_provider: bool,
}

impl RestoreArgs {
    pub fn id(&self) -> Option<&str> {
        self.backup_id.as_deref().map(without_charm_prefix)
    }
}

impl IdArg {
    pub fn id(&self) -> &str {
        without_charm_prefix(&self.backup_id)
    }
}
