//! Staging the media a format-2 backup keeps in volumes: several volumes downloaded, decrypted
//! and written at once (each on its own thread), every member checked against the backup's
//! file list by `repository::volumes::read_volume`.

use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::archive::{Member, MemberKind};
use crate::error::{find_cause, Error, Result};
use crate::manifest::{FileEntry, Sha256Digest};
use crate::progress::Progress;

use super::plan::{Placement, Plan};
use super::to_provider::ProviderSink;
use crate::commands::OpContext;
use crate::repository::content_check::{hash_member, unreadable_member, WriteFailed};
use crate::repository::object_reader::read_shared_object;
use crate::repository::pipe::{read_ahead, QUEUE_DEPTH};
use crate::repository::volumes::{read_volume, VOLUMES_AT_ONCE};
use crate::repository::wants::VolumeWant;

/// Stages every volume's members; the plan back, and the files and bytes staged. On a failure
/// the restore's staging transaction removes what was staged.
pub(super) async fn stage_volumes(
    ctx: &OpContext<'_>,
    id: &str,
    plan: Plan,
    wants: Vec<VolumeWant>,
    sink: Option<Arc<ProviderSink>>,
) -> Result<(Plan, (usize, u64))> {
    let plan = Arc::new(Mutex::new(plan));
    let outcomes = futures::stream::iter(wants)
        .map(|want| stage_one(ctx, id, Arc::clone(&plan), sink.clone(), want))
        .buffer_unordered(VOLUMES_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    let plan = Arc::try_unwrap(plan)
        .map_err(|_| Error::task_failed("restore", "a volume is still being staged"))?
        .into_inner()
        .map_err(|_| Error::task_failed("restore", "a volume's staging panicked"))?;
    let mut files = 0;
    let mut bytes = 0;
    for (f, b) in outcomes.into_iter().collect::<Result<Vec<_>>>()? {
        files += f;
        bytes += b;
    }
    Ok((plan, (files, bytes)))
}

async fn stage_one(
    ctx: &OpContext<'_>,
    id: &str,
    plan: Arc<Mutex<Plan>>,
    sink: Option<Arc<ProviderSink>>,
    want: VolumeWant,
) -> Result<(usize, u64)> {
    if ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    let name = want.name.clone();
    let backup_id = id.to_string();
    let progress = Arc::clone(&ctx.progress);
    read_shared_object(ctx, &name, move |reader| {
        let reader = read_ahead(reader, QUEUE_DEPTH)
            .map_err(|e| Error::Other(format!("cannot start the read-ahead thread: {e}")))?;
        read_volume(reader, &backup_id, want, |entry, member| {
            stage_member(
                &plan,
                sink.as_deref(),
                &backup_id,
                entry,
                member,
                progress.as_ref(),
            )
        })
    })
    .await
}

/// Writes one media member of a volume into staging; its SHA-256 and length. The plan is
/// locked only to place and create the file, not while it is written.
fn stage_member(
    plan: &Mutex<Plan>,
    sink: Option<&ProviderSink>,
    id: &str,
    entry: &FileEntry,
    member: &mut Member<'_>,
    progress: &dyn Progress,
) -> Result<(Sha256Digest, u64)> {
    if let Some((path, mut file)) = sink.map(|s| s.create(entry)).transpose()?.flatten() {
        let hashed = hash_member(member, Some(&mut file), progress).map_err(|e| {
            if find_cause::<WriteFailed>(&e).is_some() {
                Error::io("write", &path, e)
            } else {
                unreadable_member(id, &entry.path, &e)
            }
        })?;
        std::io::Write::flush(&mut file).map_err(|e| Error::io("write", &path, e))?;
        return Ok(hashed);
    }
    let locked = || {
        plan.lock()
            .map_err(|_| Error::task_failed("restore", "another volume's staging panicked"))
    };
    let (staged_path, mut file) = {
        let mut plan = locked()?;
        match plan.place(&entry.path, MemberKind::File, false)? {
            Placement::Stage(path) => {
                let file = plan.create_file(&path, member.mode)?;
                (path, file)
            }
            Placement::Skip | Placement::HashOnly => {
                drop(plan);
                return hash_member(member, None, progress)
                    .map_err(|e| unreadable_member(id, &entry.path, &e));
            }
        }
    };
    let (hash, size) = hash_member(member, Some(&mut file), progress).map_err(|e| {
        if find_cause::<WriteFailed>(&e).is_some() {
            Error::io("write", &staged_path, e)
        } else {
            unreadable_member(id, &entry.path, &e)
        }
    })?;
    locked()?.finish_file(file, &staged_path, member.mtime)?;
    Ok((hash, size))
}
