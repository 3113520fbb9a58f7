use anyhow::Result;
use serde_json::json;
use synapse_backup_core::commands::backup::{create_backup, BackupOptions};
use synapse_backup_core::monitoring::RunFacts;

use super::Context;
use crate::args::CreateArgs;
use crate::output::{database_json, emit_json, human_bytes, leftovers_json, outln};

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
    let seconds = summary.elapsed.as_secs_f64();
    if context.json {
        emit_json(json!({
            "ok": true,
            "backup-id": summary.backup_id,
            "server-name": summary.server_name,
            "kind": summary.kind.as_str(),
            "parent": summary.parent,
            "files": summary.files,
            "reused-files": summary.reused_files,
            "reused-bytes": summary.reused_bytes,
            "bytes": summary.file_bytes,
            "object-bytes": summary.object_bytes,
            "provider-files": summary.provider_files,
            "provider-bytes": summary.provider_bytes,
            "missing-media": summary.missing.as_ref().map_or(0, |m| m.count),
            "missing-media-first": summary.missing.as_ref().map(|m| &m.first[..m.first.len().min(20)]),
            "database": database_json(&summary.database),
            "seconds": seconds,
            "skipped-vanished": summary.vanished,
            "stored-again": summary.stored_again.iter().map(|v| json!({
                "volume": v.volume,
                "why": v.why,
                "files": v.files,
            })).collect::<Vec<_>>(),
            "full-reason": summary.full_reason,
            "removed-leftovers": leftovers_json(&summary.leftovers),
        }));
    } else {
        outln!("{}", summary.backup_id);
        let read_bytes = summary.file_bytes - summary.reused_bytes;
        eprintln!(
            "backed up {} files ({}) of {} in {:.1}s ({}/s); stored {}",
            summary.files,
            human_bytes(summary.file_bytes),
            summary.server_name,
            seconds,
            human_bytes((read_bytes as f64 / seconds.max(0.001)) as u64),
            human_bytes(summary.object_bytes),
        );
        match &summary.parent {
            Some(parent) => eprintln!(
                "incremental: {} media files ({}) unchanged since {parent} were not read again",
                summary.reused_files,
                human_bytes(summary.reused_bytes)
            ),
            None => match &summary.full_reason {
                Some(why) => eprintln!("full, although earlier backups exist: {why}"),
                None => eprintln!("full: every file was stored"),
            },
        }
        if !summary.stored_again.is_empty() {
            let files: usize = summary.stored_again.iter().map(|v| v.files).sum();
            eprintln!(
                "warning: {} media volume(s) of the parent backup are missing or damaged in the store ({}); {files} media file(s) they held were read and stored anew, so this backup does not depend on them",
                summary.stored_again.len(),
                summary
                    .stored_again
                    .iter()
                    .map(|v| format!("{}: {}", v.volume, v.why))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if summary.provider_files > 0 {
            eprintln!(
                "{} media files ({}) live in storage providers and are in this backup",
                summary.provider_files,
                human_bytes(summary.provider_bytes)
            );
        }
        if let Some(missing) = &summary.missing {
            eprintln!(
                "warning: {} media files the database lists are NOT in this backup (--allow-missing-media); first: {}",
                missing.count,
                missing.first.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(note) = &summary.database.note {
            eprintln!("note: {note}");
        }
    }
    Ok(RunFacts {
        server_name: Some(summary.server_name),
        bytes: Some(summary.file_bytes),
        files: Some(summary.files as u64),
    })
}
