//! `wal-push` and `wal-fetch`, run by PostgreSQL as its archive and restore commands. What they
//! print on stderr lands in the server's log, so success is quiet unless `-v` asks.

use anyhow::Result;
use serde::Serialize;
use synapse_backup_core::commands::wal::{
    push_parallelism, wal_fetch, wal_push, PushOutcome, FETCH_AHEAD, PUSH_AHEAD,
};
use synapse_backup_core::database::wal_names::WalFileName;
use synapse_backup_core::host::scratch::scratch_parent;
use synapse_backup_core::host::wal_records::WalRecords;

use super::Context;
use crate::args::{WalFetchArgs, WalPushArgs};
use crate::output::{emit, CommandOutput};

pub async fn push(context: &Context, args: &WalPushArgs) -> Result<()> {
    let passphrase = context.config.passphrase()?;
    let store = context.store()?;
    let ctx = context.op(store.as_ref(), Some(passphrase));
    let records = WalRecords::open(&scratch_parent(&context.config));
    let report = wal_push(&ctx, &args.path, &records, (PUSH_AHEAD, push_parallelism())).await?;
    let describe = |outcome: &PushOutcome| match outcome {
        PushOutcome::Stored(stored) => Pushed {
            name: String::new(),
            stored: true,
            bytes: stored.size,
            object_bytes: Some(stored.object_bytes),
        },
        PushOutcome::AlreadyStored => Pushed {
            name: String::new(),
            stored: false,
            bytes: 0,
            object_bytes: None,
        },
    };
    let ahead = report
        .ahead
        .iter()
        .filter_map(|(name, result)| {
            result.as_ref().ok().map(|outcome| Pushed {
                name: name.to_string(),
                ..describe(outcome)
            })
        })
        .collect();
    let output = PushOutput {
        ok: true,
        file: Pushed {
            name: report.name.to_string(),
            ..describe(&report.outcome)
        },
        ahead,
        store: store.describe(),
    };
    emit(context.json, &output)?;
    Ok(())
}

pub async fn fetch(context: &Context, args: &WalFetchArgs) -> Result<()> {
    let name = WalFileName::parse(&args.name).map_err(|e| {
        synapse_backup_core::Error::config(format!(
            "wal-fetch: {e}; set restore_command = 'synapse-backup --config FILE wal-fetch %f %p'"
        ))
    })?;
    let passphrase = context.config.passphrase()?;
    let store = context.store()?;
    let ctx = context.op(store.as_ref(), Some(passphrase));
    let report = wal_fetch(&ctx, &name, &args.dest, (FETCH_AHEAD, push_parallelism())).await?;
    tracing::info!(
        "wrote {name} ({} bytes{}) to {}; {} segment(s) read ahead",
        report.bytes,
        if report.from_read_ahead {
            ", read ahead earlier"
        } else {
            ""
        },
        args.dest.display(),
        report.read_ahead
    );
    if context.json {
        emit(
            true,
            &Fetched {
                ok: true,
                name: name.as_str(),
                bytes: report.bytes,
                from_read_ahead: report.from_read_ahead,
                read_ahead: report.read_ahead,
            },
        )?;
    }
    Ok(())
}

/// What `wal-push` prints under `--json` (and, with -v, in the log).
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct PushOutput {
    ok: bool,
    file: Pushed,
    /// Segments uploaded ahead of PostgreSQL's asking.
    ahead: Vec<Pushed>,
    store: String,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Pushed {
    name: String,
    /// False when the store already held this very content.
    stored: bool,
    bytes: u64,
    object_bytes: Option<u64>,
}

impl CommandOutput for PushOutput {
    fn print_human(&self) {
        let say = |p: &Pushed| {
            if p.stored {
                tracing::info!("stored {} ({} bytes) in {}", p.name, p.bytes, self.store);
            } else {
                tracing::info!("{} was already stored in {}", p.name, self.store);
            }
        };
        say(&self.file);
        self.ahead.iter().for_each(say);
    }
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Fetched<'a> {
    ok: bool,
    name: &'a str,
    bytes: u64,
    /// Served from what an earlier call read ahead.
    from_read_ahead: bool,
    /// Segments this call downloaded ahead.
    read_ahead: usize,
}

impl CommandOutput for Fetched<'_> {
    fn print_human(&self) {}
}
