//! `verify-backup`: download, decrypt and check a whole backup, writing nothing.
//!
//! A backup is sound when: it decrypts with the passphrase, its OpenPGP integrity check passes
//! at the end of the stream, and its members agree with its manifest (see `content_check`).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;

use crate::archive::{read_members, MemberKind};
use crate::error::{Error, Result};
use crate::host::scratch;
use crate::progress::Progress;

use super::OpContext;
use crate::manifest::FileEntry;
pub use crate::repository::content_check::ArchiveFormat;
use crate::repository::content_check::{hash_member, unreadable_member, ContentCheck};
use crate::repository::object_reader::{read_object, read_shared_object};
use crate::repository::physical::{verify_physical, PhysicalCheck};
use crate::repository::runs;
use crate::repository::volumes::{check_volumes_exist, read_volume, VOLUMES_AT_ONCE};
use crate::repository::wants;
use crate::repository::BackupId;

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub backup_id: String,
    pub format: ArchiveFormat,
    pub files: usize,
    pub bytes: u64,
    /// Media volumes read (format 2 and later).
    pub volumes: usize,
    /// File-list runs read (format 3).
    pub runs: usize,
    /// Physical backups: the base's size and the WAL segments read to the restore point.
    pub physical: Option<PhysicalCheck>,
}

/// Checks a plaintext archive stream against its manifest, writing nothing. (A format-2
/// base's media are in volumes; [`verify_backup`] checks those too.)
pub fn check_archive<R: Read>(
    reader: R,
    id: &str,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    check_base(reader, id, progress).map(|(report, _)| report)
}

/// [`check_archive`], and the entries whose bytes are in volumes.
fn check_base<R: Read>(
    reader: R,
    id: &str,
    progress: &dyn Progress,
) -> Result<(VerifyReport, Vec<FileEntry>)> {
    let mut check = ContentCheck::new(id);
    read_members(reader, id, |mut member| {
        if check.take_manifest_member(&mut member)? || member.kind == MemberKind::Directory {
            return Ok(());
        }
        let path = member.path.clone();
        check.claim(&path)?;
        let (hash, size) = hash_member(&mut member, None, progress)
            .map_err(|e| unreadable_member(id, &path, &e))?;
        check.record(&path, size, hash)
    })?;
    let in_volumes = check.take_volume_entries();
    let (format, files, bytes) = check.finish()?;
    let report = VerifyReport {
        backup_id: id.to_string(),
        format,
        files: files - in_volumes.len(),
        bytes,
        volumes: 0,
        runs: 0,
        physical: None,
    };
    Ok((report, in_volumes))
}

/// Verifies backup `id`; lists too long to hold go to a scratch folder made in
/// `scratch_parent` (`host::scratch`), removed when done.
pub async fn verify_backup(
    ctx: &OpContext<'_>,
    id: &BackupId,
    scratch_parent: &Path,
) -> Result<VerifyReport> {
    let id = id.as_str();
    let scratch = scratch::create(scratch_parent)?;
    let verified = verify_all(ctx, id, scratch.path()).await;
    // Whatever a read cut by Ctrl-C looked like, it was the user's doing.
    match verified {
        Err(_) if ctx.cancel.is_cancelled() => Err(Error::Interrupted),
        other => other,
    }
}

/// The base, then every volume it takes files from: every byte a restore would use.
async fn verify_all(ctx: &OpContext<'_>, id: &str, scratch: &Path) -> Result<VerifyReport> {
    let info = ctx.store.head(id).await?;
    ctx.progress.start("verifying", Some(info.size));
    let progress = Arc::clone(&ctx.progress);
    let backup_id = id.to_string();
    let (mut report, listed) = read_object(ctx, id, move |reader| {
        check_base(reader, &backup_id, progress.as_ref())
    })
    .await?;
    let mut from_runs = Vec::new();
    if let ArchiveFormat::Manifest(header) = &report.format {
        if let Some(media) = &header.media {
            check_volumes_exist(ctx.store, id, media).await?;
            from_runs = runs::wants_from_runs(ctx, Some(header), scratch).await?;
            report.runs = media.runs.len();
            let bytes = media.volumes.iter().map(|v| v.used_bytes).sum();
            ctx.progress.start("verifying media volumes", Some(bytes));
        }
        if let Some(physical) = &header.database.physical {
            ctx.progress.start(
                "verifying the base backup and the WAL to the restore point",
                None,
            );
            report.physical = Some(verify_physical(ctx, id, physical).await?);
        }
    }
    let wants = wants::of_base_or_runs(id, listed, from_runs)?;
    let outcomes = futures::stream::iter(wants)
        .map(|want| {
            let name = want.name.clone();
            let backup_id = id.to_string();
            let progress = Arc::clone(&ctx.progress);
            async move {
                read_shared_object(ctx, &name, move |reader| {
                    read_volume(reader, &backup_id, want, |entry, member| {
                        hash_member(member, None, progress.as_ref())
                            .map_err(|e| unreadable_member(&backup_id, &entry.path, &e))
                    })
                })
                .await
            }
        })
        .buffer_unordered(VOLUMES_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    for outcome in outcomes {
        let (files, bytes) = outcome?;
        report.files += files;
        report.bytes += bytes;
        report.volumes += 1;
    }
    ctx.progress.finish();
    Ok(report)
}
