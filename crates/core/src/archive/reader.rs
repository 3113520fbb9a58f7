//! Reads the members of an untrusted archive.
//!
//! Every member is checked before the caller sees it: only regular files and directories are
//! accepted (links, devices and FIFOs abort the read, naming the member), paths must stay
//! relative and free of `..`, and set-id and sticky bits are dropped from modes.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use crate::crypto::classify_read_error;
use crate::error::{CorruptKind, Error, Result};

use super::{check_member_path, normalize_member_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    File,
    Directory,
}

pub struct Member<'a> {
    pub path: String,
    pub kind: MemberKind,
    pub size: u64,
    /// Permission bits only (`0o777` at most).
    pub mode: u32,
    pub mtime: i64,
    pub data: &'a mut dyn Read,
}

/// Remembers the first error of the underlying stream, classified by its typed cause, which
/// the tar layer may rewrap into an error of its own.
struct ErrorTap<'a, R> {
    inner: R,
    id: &'a str,
    seen: Arc<Mutex<Option<Error>>>,
}

impl<R: Read> Read for ErrorTap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if let Ok(mut slot) = self.seen.lock() {
                if slot.is_none() {
                    *slot = Some(classify_read_error(self.id, e));
                }
            }
        })
    }
}

/// Calls `visit` for each member of the tar stream in `source`, then reads `source` to its end,
/// so that an integrity check at the end of an encrypted stream always runs.
pub fn read_members<R: Read>(
    source: R,
    id: &str,
    mut visit: impl FnMut(Member<'_>) -> Result<()>,
) -> Result<()> {
    read_members_while(source, id, |member| visit(member).map(|()| true))
}

/// Like [`read_members`], but stops (without reading on to the end) once `visit` returns false.
/// Only for a second pass over a backup already verified in full.
pub fn read_members_while<R: Read>(
    source: R,
    id: &str,
    mut visit: impl FnMut(Member<'_>) -> Result<bool>,
) -> Result<()> {
    let seen = Arc::new(Mutex::new(None));
    let tap = ErrorTap {
        inner: source,
        id,
        seen: Arc::clone(&seen),
    };
    let mut archive = tar::Archive::new(tap);
    // The stream's own failure (store, truncation, integrity, Ctrl-C) is the cause of whatever
    // the tar layer then reports.
    let stream_error = |fallback: Error| -> Error {
        seen.lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .unwrap_or(fallback)
    };
    let result = (|| -> Result<()> {
        let entries = archive.entries().map_err(|e| {
            Error::corrupt(
                id,
                CorruptKind::Malformed,
                format!("not a tar archive: {e}"),
            )
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                Error::corrupt(
                    id,
                    CorruptKind::Malformed,
                    format!("broken tar member header: {e}"),
                )
            })?;
            let raw_path = entry.path_bytes().into_owned();
            let path = String::from_utf8(raw_path).map_err(|_| {
                Error::corrupt(
                    id,
                    CorruptKind::Malformed,
                    "a member name is not valid UTF-8; refusing it",
                )
            })?;
            let path = normalize_member_path(&path);
            check_member_path(&path).map_err(|why| {
                Error::corrupt(
                    id,
                    CorruptKind::HostileMember,
                    format!("unsafe member: {why}"),
                )
            })?;
            let header = entry.header();
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => MemberKind::File,
                tar::EntryType::Directory => MemberKind::Directory,
                other => {
                    return Err(Error::corrupt(
                        id, CorruptKind::HostileMember,
                        format!(
                            "unsafe member {path:?}: it is a {}; backups hold only regular files and directories",
                            describe_type(other)
                        ),
                    ))
                }
            };
            let size = header.size().map_err(|e| {
                Error::corrupt(
                    id,
                    CorruptKind::Malformed,
                    format!("member {path:?}: bad size: {e}"),
                )
            })?;
            let mode = header.mode().unwrap_or(0o600) & 0o777;
            let mtime = header.mtime().unwrap_or(0) as i64;
            let go_on = visit(Member {
                path,
                kind,
                size,
                mode,
                mtime,
                data: &mut entry,
            })?;
            if !go_on {
                return Ok(());
            }
        }
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| {
            Error::corrupt(
                id,
                CorruptKind::Malformed,
                format!("after the archive: {e}"),
            )
        })?;
        Ok(())
    })();
    result.map_err(stream_error)
}

fn describe_type(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        _ => "special entry",
    }
}
