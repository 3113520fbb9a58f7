use anyhow::Result;
use serde_json::json;
use synapse_backup_core::commands::verify::{verify_backup, ArchiveFormat};

use super::Context;
use crate::output::{emit_json, human_bytes, outln};
use synapse_backup_core::host::scratch::remove_leftovers;
use synapse_backup_core::repository::catalog::newest_backup;

pub async fn run(context: &Context, id: &str) -> Result<()> {
    let passphrase = context.config.passphrase()?;
    let store = context.store()?;
    remove_leftovers(&context.config);
    let id = if id == "latest" {
        newest_backup(store.as_ref(), &passphrase, &context.cancel).await?
    } else {
        super::backup_id(
            id,
            "; or latest, the newest backup that opens with the passphrase",
        )?
    };
    let report = verify_backup(&context.op(store.as_ref(), Some(passphrase)), &id).await?;
    let (format, server) = match &report.format {
        ArchiveFormat::Manifest(header) => ("synapse-backup", Some(header.server_name.clone())),
        ArchiveFormat::Charm => ("charm", None),
    };
    // A backup made with --allow-missing-media verifies, but never quietly.
    let missing = match &report.format {
        ArchiveFormat::Manifest(header) => header.media.as_ref().and_then(|m| m.missing.as_ref()),
        ArchiveFormat::Charm => None,
    };
    if context.json {
        emit_json(json!({
                "backup-id": report.backup_id,
                "ok": true,
                "format": format,
                "server-name": server,
                "files": report.files,
                "bytes": report.bytes,
                "volumes": report.volumes,
                "missing-media": missing.map_or(0, |m| m.count),
        }));
    } else {
        match &report.format {
            ArchiveFormat::Manifest(header) => outln!(
                "{}: OK — {} files ({}) of {} match the manifest; integrity check passed",
                report.backup_id,
                report.files,
                human_bytes(report.bytes),
                header.server_name
            ),
            ArchiveFormat::Charm => outln!(
                "{}: OK — charm backup without manifest: it decrypts, passes the OpenPGP integrity check and holds {} files ({})",
                report.backup_id,
                report.files,
                human_bytes(report.bytes)
            ),
        }
        if let Some(missing) = missing {
            eprintln!(
                "warning: this backup lacks {} media files the database listed, found nowhere when it was made (--allow-missing-media); first: {}",
                missing.count,
                missing.first.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(())
}
