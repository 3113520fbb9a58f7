//! Writes tar members while computing each file's SHA-256 from the very bytes written.

use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{DatabaseTool, Error, IoContext, Result};
use crate::manifest::{FileEntry, Role, Sha256Digest, Storage};
use crate::progress::{is_cancelled_error, Cancel, Progress};

/// Only permission bits travel; set-id and sticky bits never do.
const MODE_MASK: u32 = 0o777;
const READ_BUFFER: usize = 1 << 20;
/// Size of each member of a stream stored in parts (a database dump); one is buffered at a time.
pub const STREAM_PART_SIZE: usize = 8 * 1024 * 1024;

pub struct ArchiveWriter<W: Write> {
    builder: tar::Builder<W>,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(out: W) -> Self {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        ArchiveWriter { builder }
    }

    /// Adds a generated member (a manifest, a part of a dump), readable by its owner only.
    pub fn append_bytes(&mut self, member: &str, bytes: &[u8], mtime: i64) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(mtime.max(0) as u64);
        self.builder
            .append_data(&mut header, member, bytes)
            .at("write archive member", member)
    }

    /// Adds a folder member, so that a restore gives the folder its mode and mtime back.
    pub fn append_dir(&mut self, member: &str, mode: u32, mtime: i64) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(mode & MODE_MASK);
        header.set_mtime(mtime.max(0) as u64);
        self.builder
            .append_data(&mut header, format!("{member}/"), io::empty())
            .at("write archive member", member)
    }

    /// Adds a generated member the tool wrote to a temp file (the file list), readable by its
    /// owner only.
    pub fn append_generated_file(&mut self, member: &str, path: &Path, mtime: i64) -> Result<()> {
        let mut file = std::fs::File::open(path).at("open", path)?;
        let size = file.metadata().at("stat", path)?.len();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(0o600);
        header.set_mtime(mtime.max(0) as u64);
        self.builder
            .append_data(&mut header, member, &mut file)
            .at("write archive member", member)
    }

    /// Streams the file at `source` into the archive as `member` and returns its manifest entry.
    ///
    /// Returns `Ok(None)` when the file vanished since it was listed (Synapse may delete media
    /// while a backup runs). A file that shrinks while being read fails the backup, since its
    /// tar header already promised the old size.
    pub fn append_file(
        &mut self,
        member: &str,
        source: &Path,
        role: Role,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Option<FileEntry>> {
        let file = match std::fs::File::open(source) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", source, e)),
        };
        let meta = file.metadata().at("stat", source)?;
        let size = meta.len();
        let mode = meta.mode() & MODE_MASK;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(meta.mtime().max(0) as u64);
        header.set_uid(meta.uid() as u64);
        header.set_gid(meta.gid() as u64);
        let mut reader = HashingReader::new(
            std::io::BufReader::with_capacity(READ_BUFFER, file).take(size),
            Some(size),
            progress,
            cancel,
        );
        self.builder
            .append_data(&mut header, member, &mut reader)
            .map_err(|e| {
                if is_cancelled_error(&e) {
                    Error::Interrupted
                } else {
                    Error::io("archive", source, e)
                }
            })?;
        Ok(Some(FileEntry {
            role,
            path: member.to_string(),
            size,
            mode,
            mtime: meta.mtime(),
            mtime_nanos: Some(meta.mtime_nsec() as u32),
            sha256: reader.finish(),
            storage: Storage::Inline,
            provider: None,
        }))
    }

    /// Stores everything `source` yields as members `<prefix>00000`, `<prefix>00001`, … of at
    /// most [`STREAM_PART_SIZE`] bytes each: a stream of unknown length, with bounded memory.
    pub fn append_stream_in_parts(
        &mut self,
        prefix: &str,
        source: &mut dyn Read,
        role: Role,
        mtime: i64,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Vec<FileEntry>> {
        let mut entries = Vec::new();
        let part_size = STREAM_PART_SIZE;
        let mut buffer = Vec::with_capacity(part_size);
        for index in 0.. {
            buffer.clear();
            (&mut *source)
                .take(part_size as u64)
                .read_to_end(&mut buffer)
                .map_err(|e| {
                    Error::database(
                        DatabaseTool::PgDump,
                        format!("reading the database dump: {e}"),
                    )
                })?;
            if buffer.is_empty() && index > 0 {
                break;
            }
            cancel.check().map_err(|_| Error::Interrupted)?;
            let member = format!("{prefix}{index:05}");
            self.append_bytes(&member, &buffer, mtime)?;
            progress.advance(buffer.len() as u64);
            entries.push(FileEntry {
                role,
                path: member,
                size: buffer.len() as u64,
                mode: 0o600,
                mtime,
                sha256: Sha256::digest(&buffer).into(),
                mtime_nanos: None,
                storage: Storage::Inline,
                provider: None,
            });
            if buffer.len() < part_size {
                break;
            }
        }
        Ok(entries)
    }

    pub fn finish(self) -> Result<W> {
        self.builder
            .into_inner()
            .map_err(|e| Error::Other(format!("cannot finish the archive: {e}")))
    }
}

/// Hashes what passes through, reports progress, stops on cancel, and fails on a short read
/// when the expected length is known.
pub struct HashingReader<'p, R: Read> {
    inner: R,
    hasher: Sha256,
    expected: Option<u64>,
    seen: u64,
    progress: &'p dyn Progress,
    cancel: &'p Cancel,
}

impl<'p, R: Read> HashingReader<'p, R> {
    pub fn new(
        inner: R,
        expected: Option<u64>,
        progress: &'p dyn Progress,
        cancel: &'p Cancel,
    ) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            expected,
            seen: 0,
            progress,
            cancel,
        }
    }

    pub fn finish(self) -> Sha256Digest {
        self.hasher.finalize().into()
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check()?;
        let n = self.inner.read(buf)?;
        if n == 0 {
            if let Some(expected) = self.expected {
                if self.seen < expected {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "file shrank while being read ({} of {expected} bytes)",
                            self.seen
                        ),
                    ));
                }
            }
        }
        self.hasher.update(&buf[..n]);
        self.seen += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}
