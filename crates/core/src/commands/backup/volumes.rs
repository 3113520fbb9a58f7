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

/// How a volume of `files` is packed: compressed when its files are small on average.
pub(super) fn packing_for(files: &[Source]) -> Packing {
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    if (bytes / files.len().max(1) as u64) < COMPRESS_BELOW_MEAN_SIZE {
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

/// Cuts the files to store into volumes of at most `volume_size` bytes each (a larger file gets
/// a volume of its own), keeping their order. Cut from the end, each tail moved out and the rest
/// shrunk, so the files are never held twice (a full backup's are all of the media store's).
pub(super) fn split_into_volumes(mut files: Vec<Source>, volume_size: u64) -> Vec<Vec<Source>> {
    let mut cuts = Vec::new();
    let mut bytes = 0u64;
    for (i, file) in files.iter().enumerate() {
        if i > 0 && bytes + file.size > volume_size {
            cuts.push(i);
            bytes = 0;
        }
        bytes += file.size;
    }
    let mut volumes: Vec<Vec<Source>> = Vec::with_capacity(cuts.len() + 1);
    for &cut in cuts.iter().rev() {
        volumes.push(files.split_off(cut));
        files.shrink_to_fit();
    }
    if !files.is_empty() {
        volumes.push(files);
    }
    volumes.reverse();
    volumes
}

/// Writes the media `files` as volume `name`, each entry (naming the volume) to `entries` as
/// its file is archived: a volume of a million small files holds no entry for each.
pub(super) fn write_volume(
    name: &str,
    files: Vec<Source>,
    mut entries: EntryListWriter,
    out: ChunkWriter,
    (progress, cancel): (&dyn Progress, &Cancel),
) -> Result<VolumeContents> {
    let mut archive = ArchiveWriter::new(BufWriter::with_capacity(CHUNK, out));
    let mut file_bytes = 0;
    let mut vanished = Vec::new();
    let volume: std::sync::Arc<str> = name.into();
    for file in files {
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
    use crate::manifest::Role;

    fn source(name: &str, size: u64) -> Source {
        Source {
            member: format!("media/{name}"),
            location: crate::commands::backup::sources::Location::At(name.into()),
            role: Role::Media,
            size,
            provider: None,
            stamp: None,
        }
    }

    #[test]
    fn only_volumes_of_small_files_are_compressed() {
        let small = vec![source("a", 100), source("b", 4000)];
        assert_eq!(packing_for(&small), Packing::Zlib);
        let large = vec![source("a", 100), source("b", 9000)];
        assert_eq!(packing_for(&large), Packing::Plain);
        assert_eq!(packing_for(&[]), Packing::Zlib);
    }

    #[test]
    fn volumes_hold_at_most_their_size_and_keep_the_order() {
        let files = vec![
            source("a", 40),
            source("b", 50),
            source("c", 20),
            source("d", 300),
            source("e", 1),
        ];
        let volumes = split_into_volumes(files, 100);
        let names: Vec<Vec<&str>> = volumes
            .iter()
            .map(|v| v.iter().map(|s| s.member.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["media/a", "media/b"],
                vec!["media/c"],
                vec!["media/d"],
                vec!["media/e"]
            ]
        );
        assert!(split_into_volumes(Vec::new(), 100).is_empty());
    }
}
