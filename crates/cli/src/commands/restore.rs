use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use synapse_backup_core::commands::restore::{restore_backup, RestoreOptions, RestoreReport};
use synapse_backup_core::repository::physical::backup_for_time;
use synapse_backup_core::synapse::HomeserverConfig;

use super::Context;
use crate::args::RestoreArgs;
use crate::output::{emit, human_bytes, outln, CommandOutput};

pub async fn run(context: &Context, args: &RestoreArgs) -> Result<()> {
    let passphrase = context.config.passphrase()?;
    let store = context.store()?;
    let options = RestoreOptions {
        target_dir: args.target_dir.clone(),
        charm_source_root: args.charm_source_root.clone(),
        remove_previous: args.remove_previous,
        skip_space_check: args.skip_space_check,
        replace_database: args.replace_database,
        media_to_provider: args.media_to_provider,
        to_time: args.to_time.as_deref().map(parse_time).transpose()?,
    };
    let ctx = context.op(store.as_ref(), Some(passphrase));
    let id = match (args.id(), options.to_time) {
        (Some(id), _) => super::backup_id(id, "")?,
        (None, Some(at)) => {
            // The live server's backups only, unless restoring into a folder.
            let server = match &options.target_dir {
                None => Some(HomeserverConfig::load(&context.config.synapse)?.server_name),
                Some(_) => None,
            };
            let id = backup_for_time(&ctx, server.as_deref(), at).await?;
            eprintln!(
                "--to-time {}: from backup {id}, the newest before it",
                at.to_rfc3339()
            );
            id
        }
        (None, None) => anyhow::bail!("give a BACKUP_ID or --to-time TIME"),
    };
    let report = restore_backup(&context.config, &ctx, &id, &options).await?;
    emit(context.json, &Restored::of(&report))?;
    Ok(())
}

/// `--to-time`: RFC 3339, with its offset (a time without one would be read in some zone).
fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            synapse_backup_core::Error::config(format!(
                "--to-time {text:?} is not an RFC 3339 time such as 2026-12-07T09:30:00Z ({e})"
            ))
            .into()
        })
}

/// What `restore-backup` prints.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Restored<'a> {
    ok: bool,
    backup_id: &'a str,
    charm_format: bool,
    files: usize,
    bytes: u64,
    placed: &'a [PathBuf],
    kept_previous: &'a [PathBuf],
    provider_files: usize,
    skipped_members: usize,
    notes: &'a [String],
    recovered: Option<String>,
    seconds: f64,
}

impl<'a> Restored<'a> {
    fn of(report: &'a RestoreReport) -> Self {
        Restored {
            ok: true,
            backup_id: &report.backup_id,
            charm_format: report.charm_format,
            files: report.files,
            bytes: report.bytes,
            placed: &report.placed,
            kept_previous: &report.kept_previous,
            provider_files: report.provider_files,
            skipped_members: report.skipped_members,
            notes: &report.notes,
            recovered: report.recovered.as_ref().map(|r| r.to_string()),
            seconds: report.elapsed.as_secs_f64(),
        }
    }
}

impl CommandOutput for Restored<'_> {
    fn print_human(&self) {
        if let Some(recovered) = &self.recovered {
            eprintln!("note: {recovered}");
        }
        let skipped = match self.skipped_members {
            0 => String::new(),
            n => format!(", {n} skipped"),
        };
        outln!(
            "restored {} ({} files, {}{skipped}) in {:.1}s",
            self.backup_id,
            self.files,
            human_bytes(self.bytes),
            self.seconds
        );
        for path in self.placed {
            outln!("  restored  {}", path.display());
        }
        for path in self.kept_previous {
            outln!(
                "  kept      {} (previous data; delete it once Synapse runs well)",
                path.display()
            );
        }
        if self.provider_files > 0 {
            outln!(
                "  wrote     {} media files back to their storage providers (--media-to-provider)",
                self.provider_files
            );
        }
        for note in self.notes {
            eprintln!("note: {note}");
        }
    }
}
