//! PostgreSQL's archived WAL files in the store: `wal/<name>`, each an encrypted tar of one
//! member named as the file, so `gpg -d wal/NAME | tar -x` gives the file back by hand, and every
//! object in the store still starts as a tar (how a wrong passphrase is told from damage).
//!
//! WAL compresses well (often 3–5×, and a segment switched early is mostly zeros), so a file
//! whose first MiB deflates to less than 90 % goes into OpenPGP's ZLIB packet; one that does
//! not (a segment full of already-compressed media rows) is stored plain, with no CPU spent.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::DeflateEncoder;
use sha2::{Digest, Sha256};

use crate::archive::{read_members, ArchiveWriter, MemberKind};
use crate::config::Config;
use crate::crypto::Packing;
use crate::database::archiver::ArchiverState;
use crate::database::physical::{BaseBackupProcess, BaseStart};
use crate::database::wal_names::WalFileName;
use crate::error::{CorruptKind, Error, IoContext, Result};
use crate::manifest::{Role, Sha256Digest};
use crate::progress::NoProgress;
use crate::repository::pipe::{finish_archive, CHUNK};

use super::object_reader::read_object;
use super::object_writer::write_object;
use super::OpContext;

/// The store folder of WAL files.
pub const WAL_FOLDER: &str = "wal";
/// How much of a file is deflated to decide whether compressing it pays.
const SAMPLE: usize = 1 << 20;

/// The object name of WAL file `name`.
pub fn wal_object(name: &WalFileName) -> String {
    format!("{WAL_FOLDER}/{name}")
}

/// A WAL file as stored: its plaintext's size and SHA-256, and the object's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredWal {
    pub size: u64,
    pub sha256: Sha256Digest,
    pub object_bytes: u64,
}

/// Whether archive_command's wal-push writes into the store the backups go to: a restore of a
/// backup needs its WAL in the same store. The reason when it does not, or cannot be told.
pub fn wal_push_store(state: &ArchiverState, config: &Config) -> std::result::Result<(), String> {
    let path = state
        .wal_push_config()
        .unwrap_or_else(|| std::path::PathBuf::from(crate::config::DEFAULT_CONFIG_PATH));
    let theirs = Config::load(&path, true)
        .and_then(|other| crate::store::open(&other.store))
        .map_err(|e| format!("the config archive_command names cannot be read here ({e})"))?
        .describe();
    let ours = crate::store::open(&config.store)
        .map_err(|e| e.to_string())?
        .describe();
    if theirs == ours {
        Ok(())
    } else {
        Err(format!(
            "wal-push archives into {theirs} ({}), not into this config's store {ours}: a restore finds no WAL beside the backups",
            path.display()
        ))
    }
}

/// Encrypts the file at `path` into `wal/<name>`; returns once the store holds it durably (the
/// store's `put` returns only then). Overwrites: the caller checks first.
pub async fn put_wal_file(
    ctx: &OpContext<'_>,
    name: &WalFileName,
    path: &Path,
) -> Result<StoredWal> {
    let size = std::fs::metadata(path).at("stat", path)?.len();
    let packing = if compression_pays(path)? {
        Packing::Zlib
    } else {
        Packing::Plain
    };
    let member = name.to_string();
    let source = path.to_path_buf();
    let (entry, object_bytes) =
        write_object(ctx, &wal_object(name), size, packing, move |out, cancel| {
            let mut archive = ArchiveWriter::new(std::io::BufWriter::with_capacity(CHUNK, out));
            let entry = archive
                .append_file(&member, &source, Role::Database, &NoProgress, cancel)?
                .ok_or_else(|| {
                    Error::io(
                        "read (it disappeared while being archived)",
                        &source,
                        std::io::ErrorKind::NotFound.into(),
                    )
                })?;
            finish_archive(archive)?;
            Ok(entry)
        })
        .await?;
    if entry.size != size {
        return Err(Error::Other(format!(
            "{} changed size while it was archived ({size} then {} bytes); PostgreSQL hands \
             archive_command only finished files: is the path right?",
            path.display(),
            entry.size
        )));
    }
    Ok(StoredWal {
        size,
        sha256: entry.sha256,
        object_bytes,
    })
}

/// The object of the base backup taken by backup `backup_id`.
pub fn base_object(backup_id: &str) -> String {
    format!("{WAL_FOLDER}/base-{backup_id}")
}

/// Members of a base object: pg_basebackup's tar, cut into parts (a tar member declares its
/// size first, the stream's is known only at its end). Concatenated in name order they are the
/// tar: `gpg -d wal/base-ID | tar -xO | tar -x -C DATADIR`.
pub const BASE_PART_PREFIX: &str = "postgres/base.tar.part-";

/// Whether a member of base object `object` is one of its parts (`false`: a folder, skipped);
/// anything else is damage, not something to restore or skip.
pub fn base_part(object: &str, path: &str, kind: MemberKind) -> Result<bool> {
    if kind == MemberKind::Directory {
        return Ok(false);
    }
    if !path.starts_with(BASE_PART_PREFIX) {
        return Err(Error::corrupt(
            object,
            CorruptKind::Malformed,
            format!("it holds {path:?}, not a part of pg_basebackup's tar"),
        ));
    }
    Ok(true)
}

/// Streams a running pg_basebackup into `name`; where its recovery starts, and the object's
/// size. Stored plain: a base is taken weekly and is as large as the database, so zlib's CPU
/// would cost more than the bytes it saves.
pub async fn put_base_backup(
    ctx: &OpContext<'_>,
    name: &str,
    mut process: BaseBackupProcess,
    expected_bytes: u64,
) -> Result<(BaseStart, u64)> {
    let mtime = chrono::Utc::now().timestamp();
    write_object(
        ctx,
        name,
        expected_bytes,
        Packing::Plain,
        move |out, cancel| {
            let mut archive = ArchiveWriter::new(std::io::BufWriter::with_capacity(CHUNK, out));
            let streamed = archive.append_stream_in_parts(
                BASE_PART_PREFIX,
                &mut process,
                Role::Database,
                mtime,
                &NoProgress,
                cancel,
            );
            if let Err(e) = streamed {
                process.abort();
                return Err(e);
            }
            // A failing pg_basebackup ends its stream early: its exit status tells.
            let start = process.finish()?;
            finish_archive(archive)?;
            Ok(start)
        },
    )
    .await
}

/// Whether deflating the file's first MiB takes it below 90 %.
fn compression_pays(path: &Path) -> Result<bool> {
    let mut sample = Vec::with_capacity(SAMPLE);
    std::fs::File::open(path)
        .at("open", path)?
        .take(SAMPLE as u64)
        .read_to_end(&mut sample)
        .at("read", path)?;
    if sample.is_empty() {
        return Ok(false);
    }
    let mut encoder = DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let deflated = encoder
        .write_all(&sample)
        .and_then(|()| encoder.finish())
        .map(|out| out.len())
        .unwrap_or(usize::MAX);
    Ok(deflated.saturating_mul(10) < sample.len().saturating_mul(9))
}

/// Reads `wal/<name>` to its end (so its integrity check runs) and returns its file's size and
/// SHA-256; with `dest`, also writes the file there (through a temp file beside it, renamed
/// into place only once the whole object checked out).
pub async fn read_wal_file(
    ctx: &OpContext<'_>,
    name: &WalFileName,
    dest: Option<&Path>,
) -> Result<(u64, Sha256Digest)> {
    let object = wal_object(name);
    let member = name.to_string();
    let temp = dest.map(temp_beside);
    let temp_for_read = temp.clone();
    let outcome = read_object(ctx, &object, {
        let object = object.clone();
        move |reader| read_the_member(reader, &object, &member, temp_for_read.as_deref())
    })
    .await;
    let (size, sha256) = match outcome {
        Ok(found) => found,
        Err(e) => {
            if let Some(temp) = &temp {
                let _ = std::fs::remove_file(temp);
            }
            return Err(e);
        }
    };
    if let (Some(temp), Some(dest)) = (&temp, dest) {
        std::fs::rename(temp, dest).at("rename into place", dest)?;
    }
    Ok((size, sha256))
}

fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.synapse-backup-{}", std::process::id()))
}

/// The one member `member` of the object's tar, hashed and (with `temp`) written out.
fn read_the_member(
    reader: impl Read,
    object: &str,
    member: &str,
    temp: Option<&Path>,
) -> Result<(u64, Sha256Digest)> {
    let mut found = None;
    read_members(reader, object, |entry| {
        if found.is_some() || entry.kind != MemberKind::File || entry.path != member {
            return Err(Error::corrupt(
                object,
                CorruptKind::Malformed,
                format!(
                    "it holds {:?} where only the WAL file {member} belongs",
                    entry.path
                ),
            ));
        }
        let mut out = match temp {
            Some(temp) => Some(std::io::BufWriter::with_capacity(
                CHUNK,
                std::fs::File::create(temp).at("create", temp)?,
            )),
            None => None,
        };
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; CHUNK];
        let mut size = 0u64;
        loop {
            let n = entry
                .data
                .read(&mut buffer)
                .map_err(|e| crate::crypto::classify_read_error(object, &e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            if let (Some(out), Some(temp)) = (out.as_mut(), temp) {
                out.write_all(&buffer[..n]).at("write", temp)?;
            }
            size += n as u64;
        }
        if let (Some(out), Some(temp)) = (out, temp) {
            out.into_inner()
                .map_err(|e| Error::io("write", temp, e.into_error()))?
                .sync_all()
                .at("fsync", temp)?;
        }
        found = Some((size, Sha256Digest::from_bytes(hasher.finalize().into())));
        Ok(())
    })?;
    found.ok_or_else(|| {
        Error::corrupt(
            object,
            CorruptKind::Malformed,
            format!("it does not hold the WAL file {member}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_chosen_by_what_a_sample_gains() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = dir.path().join("zeros");
        std::fs::write(&zeros, vec![0u8; 3 << 20]).unwrap();
        assert!(compression_pays(&zeros).unwrap());
        let random = dir.path().join("random");
        let bytes: Vec<u8> = (0..(2 << 20)).map(|_| rand::random::<u8>()).collect();
        std::fs::write(&random, bytes).unwrap();
        assert!(!compression_pays(&random).unwrap());
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(!compression_pays(&empty).unwrap());
    }
}
