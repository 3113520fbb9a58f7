//! `wal-push PATH`: PostgreSQL's `archive_command`.
//!
//! Exit 0 tells PostgreSQL it may recycle the file, so it is returned only once the store holds
//! the object durably. A file already stored with the same content is success (a retry after a
//! crash between upload and answer); with other content it is refused and nothing is
//! overwritten: two clusters archiving to one store would otherwise destroy each other's WAL.
//!
//! Throughput: PostgreSQL calls the command for one file at a time and waits, and a file costs
//! about 0.3 CPU seconds (the passphrase's key derivation, compression, encryption). A call
//! whose file must be uploaded therefore takes a batch: its own file and the next
//! [`PUSH_AHEAD`] segments already marked `.ready` in `archive_status/`, uploaded
//! [`push_parallelism`] at a time, and records what it stored (`host::wal_records`). The calls
//! for those segments then only hash the local file, compare it with the record, and check that
//! the object is still there at its size. So a backlog is archived on every core, and the
//! uploads of one file overlap the encryption of the next.

use std::path::{Path, PathBuf};

use futures::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};

use crate::database::wal_names::{WalFileKind, WalFileName};
use crate::error::{Error, IoContext, Refusal, Result};
use crate::host::wal_records::{PushedRecord, WalRecords};
use crate::manifest::Sha256Digest;
use crate::repository::wal::{put_wal_file, read_wal_file, wal_object, StoredWal};
use crate::repository::OpContext;

/// Segments uploaded ahead of PostgreSQL's asking, besides the one asked for.
pub const PUSH_AHEAD: usize = 7;

/// Uploads at once in a batch: one per core, at least two (one file's upload overlaps the
/// next one's encryption), at most four (each holds its own buffers).
pub fn push_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Uploaded now.
    Stored(StoredWal),
    /// The store already held this very content (uploaded ahead, or a retry).
    AlreadyStored,
}

#[derive(Debug)]
pub struct PushReport {
    pub name: WalFileName,
    pub outcome: PushOutcome,
    /// The segments uploaded ahead, each with what became of it; a failure here is only
    /// logged: PostgreSQL hands that file over again, and it is pushed then.
    pub ahead: Vec<(WalFileName, Result<PushOutcome>)>,
}

/// Archives the file at `path` (as `archive_command` hands it: relative to the data directory,
/// which is the working directory). When it must be uploaded, up to `ahead` segments ready
/// after it go with it, `parallel` at a time.
pub async fn wal_push(
    ctx: &OpContext<'_>,
    path: &Path,
    records: &WalRecords,
    (ahead, parallel): (usize, usize),
) -> Result<PushReport> {
    let name = name_of(path)?;
    if !path.is_file() {
        return Err(Error::io(
            "archive",
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file (archive_command must pass %p, the path, not %f)",
            ),
        ));
    }
    let object = wal_object(&name);
    let stored = match ctx.store.head(&object).await {
        Ok(info) => Some(info.size),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(object_bytes) = stored {
        // Stored ahead by an earlier call, or a retry: proven, not uploaded again.
        let outcome = confirm_stored(ctx, &name, path, records, object_bytes).await?;
        records.remove(&name);
        return Ok(PushReport {
            name,
            outcome,
            ahead: Vec::new(),
        });
    }
    let later = if name.kind() == WalFileKind::Segment {
        ready_after(path, &name, ahead)
    } else {
        Vec::new()
    };
    // This call's own file first, then the batch, `parallel` uploads at a time.
    let own = std::iter::once(
        async {
            put_wal_file(ctx, &name, path)
                .await
                .map(PushOutcome::Stored)
        }
        .boxed(),
    );
    let batch = later
        .iter()
        .map(|(later_name, later_path)| push_ahead(ctx, later_name, later_path, records).boxed());
    let mut outcomes = futures::stream::iter(own.chain(batch))
        .buffered(parallel.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter();
    let outcome = outcomes
        .next()
        .unwrap_or_else(|| Err(Error::Internal("the batch lost its own file".into())))?;
    let ahead: Vec<_> = later.into_iter().map(|(n, _)| n).zip(outcomes).collect();
    for (later_name, result) in &ahead {
        if let Err(e) = result {
            tracing::warn!("uploading {later_name} ahead failed (it is pushed again when PostgreSQL asks): {e}");
        }
    }
    Ok(PushReport {
        name,
        outcome,
        ahead,
    })
}

fn name_of(path: &Path) -> Result<WalFileName> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    WalFileName::parse(&file_name).map_err(|e| {
        Error::config(format!(
            "wal-push {}: {e}; set archive_command = 'synapse-backup --config FILE wal-push %p'",
            path.display()
        ))
    })
}

/// The segments after `name` that PostgreSQL has marked ready (`archive_status/<name>.ready`
/// beside the file's folder), oldest first, at most `ahead`.
fn ready_after(path: &Path, name: &WalFileName, ahead: usize) -> Vec<(WalFileName, PathBuf)> {
    let folder = path.parent().unwrap_or(Path::new(""));
    let status = folder.join("archive_status");
    let Ok(entries) = std::fs::read_dir(&status) else {
        return Vec::new();
    };
    let mut ready: Vec<WalFileName> = entries
        .flatten()
        .filter_map(|entry| {
            let marker = entry.file_name().to_string_lossy().into_owned();
            let stem = marker.strip_suffix(".ready")?;
            WalFileName::parse(stem).ok()
        })
        .filter(|n| n.kind() == WalFileKind::Segment && n > name)
        .collect();
    ready.sort();
    ready
        .into_iter()
        .take(ahead)
        .map(|n| {
            let p = folder.join(n.as_str());
            (n, p)
        })
        .filter(|(_, p)| p.is_file())
        .collect()
}

/// Uploads a segment ready after the one asked for, and records it; one already stored is left
/// alone (PostgreSQL's own call for it proves it).
async fn push_ahead(
    ctx: &OpContext<'_>,
    name: &WalFileName,
    path: &Path,
    records: &WalRecords,
) -> Result<PushOutcome> {
    match ctx.store.head(&wal_object(name)).await {
        Ok(_) => return Ok(PushOutcome::AlreadyStored),
        Err(Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let put = put_wal_file(ctx, name, path).await?;
    records.put(
        name,
        PushedRecord {
            sha256: put.sha256,
            object_bytes: put.object_bytes,
        },
    );
    Ok(PushOutcome::Stored(put))
}

/// Proves that the stored `wal/<name>` holds this very file: by the record of our own upload
/// (and the object still its recorded size), else by reading the object.
async fn confirm_stored(
    ctx: &OpContext<'_>,
    name: &WalFileName,
    path: &Path,
    records: &WalRecords,
    object_bytes: u64,
) -> Result<PushOutcome> {
    let local = hash_file(path).await?;
    if let Some(record) = records.get(name) {
        if record.object_bytes == object_bytes && record.sha256 == local {
            return Ok(PushOutcome::AlreadyStored);
        }
    }
    let (_, in_store) = read_wal_file(ctx, name, None).await?;
    if in_store == local {
        return Ok(PushOutcome::AlreadyStored);
    }
    let object = wal_object(name);
    Err(Error::refused(
        Refusal::WalConflict,
        format!(
            "{object} is already in {} with other content (SHA-256 {in_store}, this file's is \
             {local}); nothing was overwritten. Another PostgreSQL cluster archives to this \
             store, or this one was set up again over an old archive: give each cluster its \
             own store path",
            ctx.store.describe()
        ),
    ))
}

async fn hash_file(path: &Path) -> Result<Sha256Digest> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<Sha256Digest> {
        let mut file = std::fs::File::open(&path).at("open", &path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).at("read", &path)?;
        Ok(Sha256Digest::from_bytes(hasher.finalize().into()))
    })
    .await
    .map_err(|e| Error::task_failed("hashing a WAL file", e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segments_ready_after_this_one_are_taken_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        for n in 1..=6 {
            let name = format!("00000001000000000000000{n}");
            std::fs::write(wal.join(&name), b"x").unwrap();
            let mark = if n == 4 { "done" } else { "ready" };
            std::fs::write(
                wal.join("archive_status").join(format!("{name}.{mark}")),
                b"",
            )
            .unwrap();
        }
        std::fs::write(
            wal.join("archive_status").join("00000002.history.ready"),
            b"",
        )
        .unwrap();
        let own = WalFileName::parse("000000010000000000000002").unwrap();
        let names: Vec<String> = ready_after(&wal.join(own.as_str()), &own, 2)
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(
            names,
            ["000000010000000000000003", "000000010000000000000005"]
        );
        let last = WalFileName::parse("000000010000000000000006").unwrap();
        assert!(ready_after(&wal.join(last.as_str()), &last, 3).is_empty());
    }

    #[test]
    fn a_path_that_is_not_a_wal_file_is_a_configuration_error() {
        let e = name_of(Path::new("pg_wal/RECOVERYXLOG")).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        assert!(e.to_string().contains("wal-push %p"), "{e}");
    }
}
