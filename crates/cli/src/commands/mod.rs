//! One module per command; each is a thin layer over `synapse_backup_core::ops`.

mod check;
mod config;
mod create;
mod delete;
mod generate;
mod list;
mod prune;
mod restore;
mod verify;

use std::sync::Arc;

use anyhow::Result;
use secrecy::SecretString;
use synapse_backup_core::config::Config;
use synapse_backup_core::monitoring::RunFacts;
use synapse_backup_core::ops::OpContext;
use synapse_backup_core::progress::{Cancel, Progress};
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

    /// What an operation on `store` needs, with the passphrase read beforehand.
    pub fn op<'a>(&'a self, store: &'a dyn Store, passphrase: SecretString) -> OpContext<'a> {
        OpContext {
            store,
            passphrase,
            progress: Arc::clone(&self.progress),
            cancel: self.cancel.clone(),
        }
    }
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
        // Handled before the configuration is read (main.rs); kept here so the match stays
        // exhaustive.
        Command::Generate(args) => generate(args, context.json).map(nothing),
    }
}
