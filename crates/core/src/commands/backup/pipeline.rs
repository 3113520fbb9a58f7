//! The backup stream: tar → OpenPGP → store in one pass, with bounded memory.
//!
//! Three stages run at once: a blocking thread writes the tar (reading and hashing files), a
//! second blocking thread encrypts, and the async store uploads. The first two are joined by an
//! in-process pipe of 1 MiB chunks (`pipe::chunk_pipe`), the last two by a bounded channel of
//! 1 MiB chunks (`pipe::QUEUE_DEPTH` deep). If any stage fails the upload is aborted, so a
//! half backup never becomes visible.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::archive::ArchiveWriter;
use crate::database::postgres::DumpProcess;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{
    FileEntry, FileListWriter, Header, ListTotals, Role, FILES_MEMBER, HEADER_MEMBER,
    POSTGRES_DUMP_PREFIX,
};
use crate::progress::{Cancel, Progress};
use crate::repository::pipe::{finish_archive, ChunkWriter, CHUNK};

use super::sources::{Folder, Source};

/// A running pg_dump, read through a buffer.
pub(super) type Dump = std::io::BufReader<DumpProcess>;

/// Everything the archive holds, in the order it is written.
pub(super) struct ArchiveContents {
    pub header: Header,
    /// The media folders, right after the header: members carrying their modes.
    pub folders: Vec<Folder>,
    /// Keys and config first, then media.
    pub sources: Vec<Source>,
    /// Written after the keys and config, before the media, as it was taken.
    pub dump: Option<Dump>,
    /// Where the file list is built before it goes in as the last member.
    pub list_path: PathBuf,
    /// Plain lists for restoring by hand, by member path (format 3: the runs, oldest first).
    pub lists: Vec<(String, Vec<u8>)>,
}

pub(super) struct Archived {
    pub totals: ListTotals,
    /// Media deleted between listing and reading (a purge running meanwhile).
    pub vanished: Vec<String>,
}

/// Writes the whole archive; the file list is built in a temp file as members are written,
/// and goes in last.
pub(super) fn write_archive(
    contents: ArchiveContents,
    out: ChunkWriter,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Archived> {
    let ArchiveContents {
        header,
        folders,
        sources,
        mut dump,
        list_path,
        lists,
    } = contents;
    let mtime = header.created.timestamp();
    let mut archive = ArchiveWriter::new(BufWriter::with_capacity(CHUNK, out));
    let header_json = serde_json::to_vec_pretty(&header)
        .map_err(|e| Error::Internal(format!("cannot encode the manifest: {e}")))?;
    archive.append_bytes(HEADER_MEMBER, &header_json, mtime)?;
    for folder in &folders {
        archive.append_dir(&folder.member, folder.mode, folder.mtime)?;
    }
    let mut files = FileList::create(&list_path, &header.backup_id)?;
    let mut vanished = Vec::new();
    // By value: each source's paths are freed once archived, while the file list grows.
    for source in sources {
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        if source.role == Role::Media {
            if let Some(dump) = dump.take() {
                files.push_all(write_dump(&mut archive, dump, mtime, progress, cancel)?)?;
            }
        }
        match archive.append_file(
            &source.member,
            &source.path(),
            source.role,
            progress,
            cancel,
        )? {
            Some(entry) => files.push(&entry)?,
            None if source.role == Role::Media => {
                tracing::info!(
                    "{} was deleted during the backup; skipped",
                    source.path().display()
                );
                vanished.push(source.member);
            }
            None => {
                return Err(Error::io(
                    "read (it disappeared during the backup)",
                    source.path().into_owned(),
                    std::io::ErrorKind::NotFound.into(),
                ))
            }
        }
    }
    if let Some(dump) = dump.take() {
        files.push_all(write_dump(&mut archive, dump, mtime, progress, cancel)?)?;
    }
    for (member, list) in &lists {
        archive.append_bytes(member, list, mtime)?;
    }
    let totals = files.finish()?;
    archive.append_generated_file(FILES_MEMBER, &list_path, mtime)?;
    finish_archive(archive)?;
    Ok(Archived { totals, vanished })
}

/// The file list, written to a temp file entry by entry.
struct FileList<'a> {
    writer: FileListWriter<BufWriter<std::fs::File>>,
    path: &'a Path,
}

impl<'a> FileList<'a> {
    fn create(path: &'a Path, backup_id: &str) -> Result<FileList<'a>> {
        let file = std::fs::File::create(path).at("create", path)?;
        let writer = FileListWriter::new(BufWriter::new(file), backup_id)
            .at("write the file list to", path)?;
        Ok(FileList { writer, path })
    }

    fn push(&mut self, entry: &FileEntry) -> Result<()> {
        self.writer
            .push(entry)
            .at("write the file list to", self.path)
    }

    fn push_all(&mut self, entries: Vec<FileEntry>) -> Result<()> {
        entries.iter().try_for_each(|entry| self.push(entry))
    }

    fn finish(self) -> Result<ListTotals> {
        let (_, totals) = self
            .writer
            .finish()
            .at("write the file list to", self.path)?;
        Ok(totals)
    }
}

fn write_dump<W: Write>(
    archive: &mut ArchiveWriter<W>,
    mut dump: Dump,
    mtime: i64,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Vec<FileEntry>> {
    let written = archive.append_stream_in_parts(
        POSTGRES_DUMP_PREFIX,
        &mut dump,
        Role::Database,
        mtime,
        progress,
        cancel,
    );
    // pg_dump's exit status says whether the stream was complete.
    let finished = dump.into_inner().finish();
    let entries = written?;
    finished?;
    Ok(entries)
}
