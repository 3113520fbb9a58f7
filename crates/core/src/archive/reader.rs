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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(1_700_000_000);
        header
    }

    /// A member named `name` byte for byte, past the tar crate's own checks (which refuse
    /// `..` and absolute paths when writing).
    fn raw_member(out: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, data: &[u8], mode: u32) {
        let mut header = header(kind, data.len() as u64, mode);
        let field = &mut header.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn finish(mut out: Vec<u8>) -> Vec<u8> {
        out.extend_from_slice(&[0; 1024]);
        out
    }

    /// A member as read: path, kind, mode and content.
    type Seen = (String, MemberKind, u32, Vec<u8>);

    fn read_all(bytes: &[u8]) -> Result<Vec<Seen>> {
        let mut seen = Vec::new();
        read_members(bytes, "backup-x", |member| {
            let mut data = Vec::new();
            member
                .data
                .read_to_end(&mut data)
                .map_err(|e| Error::Other(e.to_string()))?;
            seen.push((member.path, member.kind, member.mode, data));
            Ok(())
        })?;
        Ok(seen)
    }

    fn corrupt_kind(result: Result<impl std::fmt::Debug>) -> (CorruptKind, String) {
        let err = result.expect_err("the archive must be refused");
        (
            err.corrupt_kind().expect("a Corrupt error"),
            err.to_string(),
        )
    }

    #[test]
    fn files_and_folders_come_through_with_permission_bits_only() {
        let mut out = Vec::new();
        raw_member(&mut out, b"./data/", tar::EntryType::Directory, b"", 0o1777);
        raw_member(
            &mut out,
            b"data/key",
            tar::EntryType::Regular,
            b"secret",
            0o4755,
        );
        let members = read_all(&finish(out)).unwrap();
        assert_eq!(members[0].0, "data");
        assert_eq!(members[0].1, MemberKind::Directory);
        assert_eq!(members[0].2, 0o777, "sticky bit dropped");
        assert_eq!(
            members[1],
            (
                "data/key".into(),
                MemberKind::File,
                0o755,
                b"secret".to_vec()
            )
        );
    }

    #[test]
    fn links_devices_and_fifos_are_refused_by_name() {
        for (kind, word) in [
            (tar::EntryType::Symlink, "symbolic link"),
            (tar::EntryType::Link, "hard link"),
            (tar::EntryType::Char, "character device"),
            (tar::EntryType::Fifo, "FIFO"),
        ] {
            let mut out = Vec::new();
            raw_member(&mut out, b"data/evil", kind, b"", 0o644);
            let (kind, message) = corrupt_kind(read_all(&finish(out)));
            assert_eq!(kind, CorruptKind::HostileMember, "{message}");
            assert!(
                message.contains("data/evil") && message.contains(word),
                "{message}"
            );
        }
    }

    #[test]
    fn paths_that_leave_the_target_are_refused() {
        for name in [&b"../etc/passwd"[..], b"/etc/passwd", b"data/../../x"] {
            let mut out = Vec::new();
            raw_member(&mut out, name, tar::EntryType::Regular, b"x", 0o644);
            let (kind, message) = corrupt_kind(read_all(&finish(out)));
            assert_eq!(kind, CorruptKind::HostileMember, "{message}");
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_is_malformed() {
        let mut out = Vec::new();
        raw_member(
            &mut out,
            b"data/\xff\xfe",
            tar::EntryType::Regular,
            b"x",
            0o644,
        );
        let (kind, message) = corrupt_kind(read_all(&finish(out)));
        assert_eq!(kind, CorruptKind::Malformed, "{message}");
    }

    #[test]
    fn a_broken_member_header_is_malformed() {
        let mut out = Vec::new();
        raw_member(&mut out, b"data/a", tar::EntryType::Regular, b"x", 0o644);
        out[148] ^= 0x01; // the checksum no longer matches
        let (kind, message) = corrupt_kind(read_all(&finish(out)));
        assert_eq!(kind, CorruptKind::Malformed, "{message}");
    }

    #[test]
    fn a_member_cut_short_is_an_error_not_a_short_file() {
        let mut out = Vec::new();
        raw_member(
            &mut out,
            b"data/a",
            tar::EntryType::Regular,
            &[7; 2000],
            0o644,
        );
        out.truncate(512 + 1000);
        assert!(read_all(&out).is_err());
    }

    #[test]
    fn the_source_is_read_to_its_end_even_past_the_archive() {
        struct Counting<'a>(&'a [u8], usize);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n;
                Ok(n)
            }
        }
        let mut out = Vec::new();
        raw_member(&mut out, b"data/a", tar::EntryType::Regular, b"x", 0o644);
        let mut bytes = finish(out);
        // What follows the end-of-archive blocks (an encrypted stream's trailer is read this way).
        bytes.extend_from_slice(&[0; 10_000]);
        let total = bytes.len();
        let mut source = Counting(&bytes, 0);
        read_members(&mut source, "backup-x", |_| Ok(())).unwrap();
        assert_eq!(source.1, total);
    }

    #[test]
    fn reading_while_stops_where_asked() {
        let mut out = Vec::new();
        raw_member(&mut out, b"a", tar::EntryType::Regular, b"1", 0o644);
        raw_member(&mut out, b"b", tar::EntryType::Regular, b"2", 0o644);
        let bytes = finish(out);
        let mut seen = Vec::new();
        read_members_while(&bytes[..], "backup-x", |member| {
            seen.push(member.path);
            Ok(false)
        })
        .unwrap();
        assert_eq!(seen, ["a"]);
    }
}
