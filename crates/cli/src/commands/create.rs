use anyhow::Result;
use serde::Serialize;
use synapse_backup_core::commands::backup::{
    create_backup, BackupOptions, BackupSummary, StoredAgain,
};
use synapse_backup_core::manifest::MissingMedia;
use synapse_backup_core::monitoring::RunFacts;

use super::Context;
use crate::args::CreateArgs;
use crate::output::{emit, human_bytes, outln, CommandOutput, DatabaseOut, LeftoverOut};

pub async fn run(context: &Context, args: &CreateArgs) -> Result<RunFacts> {
    let passphrase = context.config.passphrase()?;
    let store = context.store()?;
    let options = BackupOptions {
        include_remote_media: args.include_remote_media
            || context.config.backup.include_remote_media,
        skip_database: args.skip_database,
        full: args.full,
        allow_missing_media: args.allow_missing_media,
    };
    let ctx = context.op(store.as_ref(), Some(passphrase));
    let summary = create_backup(&context.config, &ctx, &options).await?;
    emit(context.json, &Created::of(&summary))?;
    Ok(RunFacts {
        server_name: Some(summary.server_name),
        bytes: Some(summary.stored.file_bytes),
        files: Some(summary.stored.files as u64),
    })
}

/// What `create-backup` prints.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Created<'a> {
    ok: bool,
    backup_id: &'a str,
    server_name: &'a str,
    kind: &'static str,
    parent: Option<&'a str>,
    files: usize,
    reused_files: usize,
    reused_bytes: u64,
    bytes: u64,
    object_bytes: u64,
    provider_files: usize,
    provider_bytes: u64,
    missing_media: usize,
    /// The first 20 of them.
    missing_media_first: Option<&'a [String]>,
    database: DatabaseOut<'a>,
    seconds: f64,
    skipped_vanished: &'a [String],
    stored_again: &'a [StoredAgain],
    full_reason: Option<&'a str>,
    removed_leftovers: Vec<LeftoverOut>,
    #[serde(skip)]
    missing: Option<&'a MissingMedia>,
}

impl<'a> Created<'a> {
    fn of(summary: &'a BackupSummary) -> Self {
        let missing = summary.stored.missing.as_ref();
        Created {
            ok: true,
            backup_id: summary.backup_id.as_str(),
            server_name: &summary.server_name,
            kind: summary.stored.kind.as_str(),
            parent: summary.stored.parent.as_deref(),
            files: summary.stored.files,
            reused_files: summary.stored.reused_files,
            reused_bytes: summary.stored.reused_bytes,
            bytes: summary.stored.file_bytes,
            object_bytes: summary.stored.object_bytes,
            provider_files: summary.stored.provider_files,
            provider_bytes: summary.stored.provider_bytes,
            missing_media: missing.map_or(0, |m| m.count),
            missing_media_first: missing.map(|m| &m.first[..m.first.len().min(20)]),
            database: DatabaseOut::of(&summary.database),
            seconds: summary.elapsed.as_secs_f64(),
            skipped_vanished: &summary.stored.vanished,
            stored_again: &summary.stored.stored_again,
            full_reason: summary.full_reason.as_deref(),
            removed_leftovers: LeftoverOut::all(&summary.leftovers),
            missing,
        }
    }
}

impl CommandOutput for Created<'_> {
    fn print_human(&self) {
        outln!("{}", self.backup_id);
        let read_bytes = self.bytes - self.reused_bytes;
        eprintln!(
            "backed up {} files ({}) of {} in {:.1}s ({}/s); stored {}",
            self.files,
            human_bytes(self.bytes),
            self.server_name,
            self.seconds,
            human_bytes((read_bytes as f64 / self.seconds.max(0.001)) as u64),
            human_bytes(self.object_bytes),
        );
        match (self.parent, self.full_reason) {
            (Some(parent), _) => eprintln!(
                "incremental: {} media files ({}) unchanged since {parent} were not read again",
                self.reused_files,
                human_bytes(self.reused_bytes)
            ),
            (None, Some(why)) => eprintln!("full, although earlier backups exist: {why}"),
            (None, None) => eprintln!("full: every file was stored"),
        }
        if !self.stored_again.is_empty() {
            let files: usize = self.stored_again.iter().map(|v| v.files).sum();
            eprintln!(
                "warning: {} media volume(s) of the parent backup are missing or damaged in the store ({}); {files} media file(s) they held were read and stored anew, so this backup does not depend on them",
                self.stored_again.len(),
                self.stored_again
                    .iter()
                    .map(|v| format!("{}: {}", v.volume, v.why))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if self.provider_files > 0 {
            eprintln!(
                "{} media files ({}) live in storage providers and are in this backup",
                self.provider_files,
                human_bytes(self.provider_bytes)
            );
        }
        if let Some(missing) = self.missing {
            eprintln!(
                "warning: {} media files the database lists are NOT in this backup (--allow-missing-media); first: {}",
                missing.count,
                missing.first.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(note) = self.database.note {
            eprintln!("note: {note}");
        }
    }
}
