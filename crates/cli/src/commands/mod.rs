//! One module per command; each is a thin layer over `synapse_backup_core::commands`.

mod check;
mod config;
mod create;
mod delete;
mod drill;
mod generate;
mod list;
mod prune;
mod restore;
mod verify;
mod wal;

use std::sync::Arc;

use synapse_backup_core::repository::gc::Swept;

use anyhow::Result;
use secrecy::SecretString;
use synapse_backup_core::commands::OpContext;
use synapse_backup_core::config::Config;
use synapse_backup_core::monitoring::RunFacts;
use synapse_backup_core::progress::{Cancel, Progress};
use synapse_backup_core::repository::BackupId;
use synapse_backup_core::store::{self, Store};

use crate::args::{Command, ConfigCommand};

pub use generate::run as generate;

pub struct Context {
    pub config: Config,
    pub json: bool,
    pub progress: Arc<dyn Progress>,
    pub cancel: Cancel,
}

impl Context {
    pub fn store(&self) -> Result<Box<dyn Store>> {
        Ok(store::open(&self.config.store)?)
    }

    /// What an operation on `store` needs, with the passphrase read beforehand (`None`: the
    /// operation may do without, and the library says when it cannot).
    pub fn op<'a>(
        &'a self,
        store: &'a dyn Store,
        passphrase: Option<SecretString>,
    ) -> OpContext<'a> {
        OpContext {
            store,
            passphrase,
            progress: Arc::clone(&self.progress),
            cancel: self.cancel.clone(),
        }
    }
}

/// The backup id the user gave, typed at the edge: a name that is not one is a configuration
/// error (exit 2) before the store is asked anything.
pub fn backup_id(given: &str, note: &str) -> Result<BackupId> {
    BackupId::parse(given)
        .map_err(|e| synapse_backup_core::Error::config(format!("{e}{note}")).into())
}

/// Runs `command`; what it learnt goes to monitoring.
pub async fn run(context: &Context, command: &Command) -> Result<RunFacts> {
    let nothing = |()| RunFacts::default();
    match command {
        Command::Check => check::run(context).await.map(nothing),
        Command::Config(ConfigCommand::Show) => config::show(context).map(nothing),
        Command::CreateBackup(args) => create::run(context, args).await,
        Command::ListBackups => list::run(context).await.map(nothing),
        Command::VerifyBackup(args) => verify::run(context, args.id()).await.map(nothing),
        Command::RestoreBackup(args) => restore::run(context, args).await.map(nothing),
        Command::DeleteBackup(args) => delete::run(context, args.id()).await.map(nothing),
        Command::PruneBackups(args) => prune::run(context, args).await.map(nothing),
        Command::Drill(args) => drill::run(context, args).await,
        Command::WalPush(args) => wal::push(context, args).await.map(nothing),
        Command::WalFetch(args) => wal::fetch(context, args).await.map(nothing),
        // Handled before the configuration is read (main.rs); kept here so the match stays
        // exhaustive.
        Command::Generate(args) => generate(args, context.json).map(nothing),
    }
}

/// What a delete or a prune did (or, dry, would do) to the media volumes, or to the archived
/// WAL and base backups: in `--json`, each list of names with its total bytes (`condemned`,
/// `deleted`, `waiting`; dry: `would-condemn`, `would-free`).
pub struct SweptOutput<'a> {
    swept: &'a Swept,
    dry_run: bool,
    /// What the objects are, for people.
    noun: &'static str,
}

impl<'a> SweptOutput<'a> {
    pub fn volumes(swept: &'a Swept, dry_run: bool) -> Self {
        SweptOutput {
            swept,
            dry_run,
            noun: "media volume(s)",
        }
    }

    pub fn wal(swept: &'a Swept, dry_run: bool) -> Self {
        SweptOutput {
            swept,
            dry_run,
            noun: "archived WAL file(s) and base backup(s)",
        }
    }

    fn lists(&self) -> [(&'static str, &'a [(String, u64)]); 3] {
        let (condemned, deleted) = if self.dry_run {
            ("would-condemn", "would-free")
        } else {
            ("condemned", "deleted")
        };
        [
            (condemned, &self.swept.condemned),
            (deleted, &self.swept.deleted),
            ("waiting", &self.swept.waiting),
        ]
    }

    /// For people, on stderr, after `warning` (objects left in place) if there is one.
    pub fn print_human(&self, warning: Option<&str>) {
        use crate::output::human_bytes;
        let (swept, noun) = (self.swept, self.noun);
        if let Some(warning) = warning {
            eprintln!("warning: {warning}");
        }
        let (condemn, delete) = if self.dry_run {
            ("would condemn", "would free")
        } else {
            ("condemned", "freed")
        };
        if !swept.deleted.is_empty() {
            eprintln!(
                "{delete} {} {noun}, {}",
                swept.deleted.len(),
                human_bytes(Swept::bytes(&swept.deleted))
            );
        }
        if !swept.condemned.is_empty() {
            eprintln!(
                "{condemn} {} {noun} no backup needs any more, {} (deleted by a prune once the grace period, [retention] delete-grace-secs, has passed)",
                swept.condemned.len(),
                human_bytes(Swept::bytes(&swept.condemned))
            );
        }
        if !swept.waiting.is_empty() {
            eprintln!(
                "{} condemned {noun}, {}, wait for the grace period to pass",
                swept.waiting.len(),
                human_bytes(Swept::bytes(&swept.waiting))
            );
        }
    }
}

impl serde::Serialize for SweptOutput<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(6))?;
        for (key, list) in self.lists() {
            let names: Vec<&str> = list.iter().map(|(name, _)| name.as_str()).collect();
            map.serialize_entry(key, &names)?;
            map.serialize_entry(&format!("{key}-bytes"), &Swept::bytes(list))?;
        }
        map.end()
    }
}
