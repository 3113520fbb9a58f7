use anyhow::Result;
use serde_json::json;
use synapse_backup_core::commands::restore::{restore_backup, RestoreOptions};

use super::Context;
use crate::args::RestoreArgs;
use crate::output::{emit_json, human_bytes, outln};

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
    };
    let ctx = context.op(store.as_ref(), Some(passphrase));
    let id = super::backup_id(args.id.id(), "")?;
    let report = restore_backup(&context.config, &ctx, &id, &options).await?;
    if context.json {
        emit_json(json!({
                "ok": true,
                "backup-id": report.backup_id,
                "charm-format": report.charm_format,
                "files": report.files,
                "bytes": report.bytes,
                "placed": report.placed,
                "kept-previous": report.kept_previous,
                "provider-files": report.provider_files,
                "skipped-members": report.skipped_members,
                "notes": report.notes,
                "recovered": report.recovered.as_ref().map(|r| r.to_string()),
                "seconds": report.elapsed.as_secs_f64(),
        }));
        return Ok(());
    }
    if let Some(recovered) = &report.recovered {
        eprintln!("note: {recovered}");
    }
    let skipped = match report.skipped_members {
        0 => String::new(),
        n => format!(", {n} skipped"),
    };
    outln!(
        "restored {} ({} files, {}{skipped}) in {:.1}s",
        report.backup_id,
        report.files,
        human_bytes(report.bytes),
        report.elapsed.as_secs_f64()
    );
    for path in &report.placed {
        outln!("  restored  {}", path.display());
    }
    for path in &report.kept_previous {
        outln!(
            "  kept      {} (previous data; delete it once Synapse runs well)",
            path.display()
        );
    }
    if report.provider_files > 0 {
        outln!(
            "  wrote     {} media files back to their storage providers (--media-to-provider)",
            report.provider_files
        );
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}
