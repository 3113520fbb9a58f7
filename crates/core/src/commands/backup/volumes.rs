//! Media volumes, as plaintext archives for the pipeline to encrypt.
//!
//! A volume is a tar of `media/...` members and nothing else, so that `gpg -d | tar -x -T list`
//! restores from it by hand.

use std::io::BufWriter;

use crate::archive::ArchiveWriter;
use crate::error::{Error, Result};
use crate::manifest::Storage;
use crate::progress::{Cancel, Progress};
use crate::repository::pipe::{finish_archive, ChunkWriter, CHUNK};

use super::entry_list::EntryListWriter;
use super::sources::Source;
use crate::crypto::Packing;

/// Below this mean file size a volume is compressed: each file costs a 512-byte tar header and
/// up to 511 bytes of padding, a fifth or more of a 4 KiB file, and ZLIB removes nearly all of
/// it even when the files themselves do not shrink. Above it, deflating media that do not
/// shrink costs more CPU than the little it saves.
pub(super) const COMPRESS_BELOW_MEAN_SIZE: u64 = 4096;

/// How a volume of `files` files and `bytes` bytes is packed: compressed when its files are
/// small on average.
pub(super) fn packing_for(files: usize, bytes: u64) -> Packing {
    if (bytes / files.max(1) as u64) < COMPRESS_BELOW_MEAN_SIZE {
        Packing::Zlib
    } else {
        Packing::Plain
    }
}

/// What one volume ended up holding.
pub(super) struct VolumeContents {
    /// The list its entries were written to, handed back.
    pub entries: EntryListWriter,
    /// The bytes of its files.
    pub file_bytes: u64,
    /// Media deleted between listing and reading (a purge running meanwhile).
    pub vanished: Vec<String>,
}

/// Writes the media `files` as volume `name`, each entry (naming the volume) to `entries` as
/// its file is archived: a volume of a million small files holds no entry for each.
pub(super) fn write_volume(
    name: &str,
    files: impl Iterator<Item = Result<Source>>,
    mut entries: EntryListWriter,
    out: ChunkWriter,
    (progress, cancel): (&dyn Progress, &Cancel),
) -> Result<VolumeContents> {
    let mut archive = ArchiveWriter::new(BufWriter::with_capacity(CHUNK, out));
    let mut file_bytes = 0;
    let mut vanished = Vec::new();
    let volume: std::sync::Arc<str> = name.into();
    for file in files {
        let file = file?;
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        match archive.append_file(&file.member, &file.path(), file.role, progress, cancel)? {
            Some(mut entry) => {
                entry.storage = Storage::Volume {
                    volume: volume.clone(),
                };
                entry.provider = file.provider;
                file_bytes += entry.size;
                entries.push(&entry)?;
            }
            None => {
                tracing::info!(
                    "{} was deleted during the backup; skipped",
                    file.path().display()
                );
                vanished.push(file.member);
            }
        }
    }
    finish_archive(archive)?;
    Ok(VolumeContents {
        entries,
        file_bytes,
        vanished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_volumes_of_small_files_are_compressed() {
        assert_eq!(packing_for(2, 4100), Packing::Zlib);
        assert_eq!(packing_for(2, 9100), Packing::Plain);
        assert_eq!(packing_for(0, 0), Packing::Zlib);
    }
}
