use anyhow::Result;
use serde::Serialize;
use synapse_backup_core::commands::verify::{verify_backup, ArchiveFormat, VerifyReport};
use synapse_backup_core::manifest::MissingMedia;

use super::Context;
use crate::output::{emit, human_bytes, outln, CommandOutput};
use synapse_backup_core::host::scratch::{remove_leftovers, scratch_parent};
use synapse_backup_core::repository::catalog::newest_backup;

pub async fn run(context: &Context, id: &str) -> Result<()> {
    let passphrase = context.config.passphrase()?;
    let store = context.store()?;
    remove_leftovers(&context.config);
    synapse_backup_core::host::drills::clean_leftovers(&context.config);
    let id = if id == "latest" {
        newest_backup(store.as_ref(), &passphrase, &context.cancel).await?
    } else {
        super::backup_id(
            id,
            "; or latest, the newest backup that opens with the passphrase",
        )?
    };
    let report = verify_backup(
        &context.op(store.as_ref(), Some(passphrase)),
        &id,
        &scratch_parent(&context.config),
    )
    .await?;
    emit(context.json, &Verified::of(&report))?;
    Ok(())
}

/// What `verify-backup` prints.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Verified<'a> {
    ok: bool,
    backup_id: &'a str,
    /// `synapse-backup` or `charm`.
    format: &'static str,
    server_name: Option<&'a str>,
    files: usize,
    bytes: u64,
    volumes: usize,
    /// Physical backups: the WAL segments read, from the base's start to the restore point.
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_segments: Option<usize>,
    /// Physical backups: the size of the base backup's tar.
    #[serde(skip_serializing_if = "Option::is_none")]
    base_bytes: Option<u64>,
    /// Media files the backup lacks (made with --allow-missing-media).
    missing_media: usize,
    #[serde(skip)]
    missing: Option<&'a MissingMedia>,
}

impl<'a> Verified<'a> {
    fn of(report: &'a VerifyReport) -> Self {
        let (format, server_name, missing) = match &report.format {
            ArchiveFormat::Manifest(header) => (
                "synapse-backup",
                Some(header.server_name.as_str()),
                header.media.as_ref().and_then(|m| m.missing.as_ref()),
            ),
            ArchiveFormat::Charm => ("charm", None, None),
        };
        Verified {
            ok: true,
            backup_id: &report.backup_id,
            format,
            server_name,
            files: report.files,
            bytes: report.bytes,
            volumes: report.volumes,
            wal_segments: report.physical.as_ref().map(|p| p.segments),
            base_bytes: report.physical.as_ref().map(|p| p.base_bytes),
            missing_media: missing.map_or(0, |m| m.count),
            missing,
        }
    }
}

impl CommandOutput for Verified<'_> {
    fn print_human(&self) {
        match self.server_name {
            Some(server) => outln!(
                "{}: OK — {} files ({}) of {server} match the manifest; integrity check passed",
                self.backup_id,
                self.files,
                human_bytes(self.bytes),
            ),
            None => outln!(
                "{}: OK — charm backup without manifest: it decrypts, passes the OpenPGP integrity check and holds {} files ({})",
                self.backup_id,
                self.files,
                human_bytes(self.bytes)
            ),
        }
        if let (Some(segments), Some(base)) = (self.wal_segments, self.base_bytes) {
            outln!(
                "{}: its base backup ({}) and the {segments} WAL segments to its restore point open and pass the integrity check",
                self.backup_id,
                human_bytes(base)
            );
        }
        // A backup made with --allow-missing-media verifies, but never quietly.
        if let Some(missing) = self.missing {
            eprintln!(
                "warning: this backup lacks {} media files the database listed, found nowhere when it was made (--allow-missing-media); first: {}",
                missing.count,
                missing.first.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
}
