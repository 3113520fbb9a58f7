//! `verify-backup`: download, decrypt and check a whole backup, writing nothing.
//!
//! A backup is sound when: it decrypts with the passphrase, its OpenPGP integrity check passes
//! at the end of the stream, and its members agree with its manifest (see `content_check`).

use std::io::Read;
use std::sync::Arc;

use crate::archive::{read_members, MemberKind};
use crate::error::{Error, Result};
use crate::progress::Progress;

pub use super::content_check::ArchiveFormat;
use super::content_check::{hash_member, unreadable_member, ContentCheck};
use super::{open_backup, OpContext};

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub backup_id: String,
    pub format: ArchiveFormat,
    pub files: usize,
    pub bytes: u64,
}

/// Checks a plaintext archive stream against its manifest, writing nothing.
pub fn check_archive<R: Read>(
    reader: R,
    id: &str,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
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
    let (format, files, bytes) = check.finish()?;
    Ok(VerifyReport {
        backup_id: id.to_string(),
        format,
        files,
        bytes,
    })
}

pub async fn verify_backup(ctx: &OpContext<'_>, id: &str) -> Result<VerifyReport> {
    let info = ctx.store.head(id).await?;
    let stream = ctx.store.get(id).await?;
    let handle = tokio::runtime::Handle::current();
    let backup_id = id.to_string();
    let passphrase = ctx.passphrase.clone();
    let progress = Arc::clone(&ctx.progress);
    let cancel = ctx.cancel.clone();
    progress.start("verifying", Some(info.size));
    let verified = tokio::task::spawn_blocking(move || -> Result<VerifyReport> {
        let reader = open_backup(stream, handle, &passphrase, &backup_id, cancel)?;
        let report = check_archive(reader, &backup_id, progress.as_ref())?;
        progress.finish();
        Ok(report)
    })
    .await
    .map_err(|e| Error::task_failed("verification", e))?;
    // Whatever a read cut by Ctrl-C looked like, it was the user's doing.
    match verified {
        Err(_) if ctx.cancel.is_cancelled() => Err(Error::Interrupted),
        other => other,
    }
}
