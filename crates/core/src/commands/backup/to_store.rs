//! The media files a backup stores anew, written to a scratch list in path order as the join
//! decides them and read back one volume at a time as the volume is written: a full backup of
//! millions of files holds no `Source` per file. The few decided out of order (files of a
//! volume given up after the join, or of a parent given up half-way) are held and merged in
//! when the list is finished.
//!
//! One line per file, tab-separated: `member`, `size`, `provider` (`-` when read locally). A
//! media member holds no tab or line break (the listing refuses those names). Where the file
//! is read from follows from the provider: the media store, or the copies read from a
//! provider, as [`MediaFolders`] says.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::manifest::{FileEntry, Role};

use super::sources::{Location, Source};

/// Writes the files to store, in path order; those out of order wait for [`finish`].
///
/// [`finish`]: ToStoreWriter::finish
pub(super) struct ToStoreWriter {
    path: PathBuf,
    out: BufWriter<File>,
    last: String,
    files: usize,
    bytes: u64,
    late: Vec<Source>,
}

impl ToStoreWriter {
    pub fn create(path: PathBuf) -> Result<Self> {
        let file = File::create(&path).at("create", &path)?;
        Ok(ToStoreWriter {
            out: BufWriter::with_capacity(1 << 16, file),
            path,
            last: String::new(),
            files: 0,
            bytes: 0,
            late: Vec::new(),
        })
    }

    /// The next file in path order.
    pub fn push(&mut self, file: &Source) -> Result<()> {
        if self.files > 0 && file.member <= self.last {
            return Err(Error::Other(format!(
                "the files to store are out of order ({} after {}); this is a bug, please report it",
                file.member, self.last
            )));
        }
        self.write(file)?;
        self.last.clear();
        self.last.push_str(&file.member);
        Ok(())
    }

    fn write(&mut self, file: &Source) -> Result<()> {
        let provider = file.provider.map_or("-".to_string(), |p| p.to_string());
        writeln!(self.out, "{}\t{}\t{provider}", file.member, file.size).at("write", &self.path)?;
        self.files += 1;
        self.bytes += file.size;
        Ok(())
    }

    /// A file decided after the files after it: merged in by [`finish`](Self::finish).
    pub fn push_late(&mut self, file: Source) {
        self.late.push(file);
    }

    /// The list, with the late files merged into their places.
    pub fn finish(mut self, folders: &MediaFolders) -> Result<ToStore> {
        self.out.flush().at("write", &self.path)?;
        if self.late.is_empty() {
            return Ok(self.list(folders));
        }
        let mut late = std::mem::take(&mut self.late);
        late.sort_unstable_by(|a, b| a.member.cmp(&b.member));
        let early = self.list(folders);
        let mut merged = ToStoreWriter::create(self.path.with_extension("merged.tsv"))?;
        let mut late = late.into_iter().peekable();
        for file in early.sources()? {
            let file = file?;
            while let Some(before) = late.next_if(|l| l.member < file.member) {
                merged.push(&before)?;
            }
            merged.push(&file)?;
        }
        for file in late {
            merged.push(&file)?;
        }
        std::fs::remove_file(&self.path).at("remove", &self.path)?;
        merged.finish(folders)
    }

    fn list(&self, folders: &MediaFolders) -> ToStore {
        ToStore {
            path: Some(self.path.clone()),
            files: self.files,
            bytes: self.bytes,
            media_store: Some(Arc::clone(&folders.media_store)),
            provider_copies: Some(Arc::clone(&folders.provider_copies)),
        }
    }
}

/// The files to store, on disk in path order.
#[derive(Debug, Clone, Default)]
pub(super) struct ToStore {
    path: Option<PathBuf>,
    pub files: usize,
    pub bytes: u64,
    media_store: Option<Arc<Path>>,
    provider_copies: Option<Arc<Path>>,
}

/// One volume's share of the list: where its lines start, how many, their bytes, and how
/// many of its files a storage provider holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct VolumeCut {
    pub offset: u64,
    pub files: usize,
    pub bytes: u64,
    pub provider_files: usize,
}

impl ToStore {
    /// Every file, in path order.
    pub fn sources(&self) -> Result<SourceLines> {
        self.lines_from(0, usize::MAX)
    }

    /// The files of volume `cut`, in path order.
    pub fn volume(&self, cut: &VolumeCut) -> Result<SourceLines> {
        self.lines_from(cut.offset, cut.files)
    }

    fn lines_from(&self, offset: u64, count: usize) -> Result<SourceLines> {
        let (Some(path), Some(media_store), Some(provider_copies)) =
            (&self.path, &self.media_store, &self.provider_copies)
        else {
            return Ok(SourceLines::empty());
        };
        let mut file = File::open(path).at("open", path)?;
        file.seek(SeekFrom::Start(offset)).at("read", path)?;
        Ok(SourceLines {
            path: path.clone(),
            lines: Some(BufReader::with_capacity(1 << 16, file)),
            left: count,
            media_store: Arc::clone(media_store),
            provider_copies: Arc::clone(provider_copies),
        })
    }

    /// Cuts the list into volumes of at most `volume_size` bytes each (a larger file gets a
    /// volume of its own), keeping the order: one pass over the list, holding nothing per file.
    pub fn cut_into_volumes(&self, volume_size: u64) -> Result<Vec<VolumeCut>> {
        let mut cuts: Vec<VolumeCut> = Vec::new();
        let mut offset = 0u64;
        let mut lines = self.sources()?;
        while let Some((source, length)) = lines.next_with_length()? {
            match cuts.last_mut() {
                Some(cut) if cut.bytes + source.size <= volume_size || cut.files == 0 => {
                    cut.files += 1;
                    cut.bytes += source.size;
                    cut.provider_files += usize::from(source.provider.is_some());
                }
                _ => cuts.push(VolumeCut {
                    offset,
                    files: 1,
                    bytes: source.size,
                    provider_files: usize::from(source.provider.is_some()),
                }),
            }
            offset += length;
        }
        Ok(cuts)
    }
}

/// The files of a [`ToStore`] list read back one at a time.
pub(super) struct SourceLines {
    path: PathBuf,
    lines: Option<BufReader<File>>,
    left: usize,
    media_store: Arc<Path>,
    provider_copies: Arc<Path>,
}

impl SourceLines {
    fn empty() -> Self {
        SourceLines {
            path: PathBuf::new(),
            lines: None,
            left: 0,
            media_store: Arc::from(Path::new("")),
            provider_copies: Arc::from(Path::new("")),
        }
    }

    /// The next file and the length of its line.
    fn next_with_length(&mut self) -> Result<Option<(Source, u64)>> {
        let Some(lines) = &mut self.lines else {
            return Ok(None);
        };
        if self.left == 0 {
            return Ok(None);
        }
        let mut line = String::new();
        let length = lines.read_line(&mut line).at("read", &self.path)?;
        if length == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let bad = || {
            Error::Other(format!(
                "{} is not a list of files to store: {line:?}",
                self.path.display()
            ))
        };
        let mut fields = line.trim_end_matches('\n').split('\t');
        let (Some(member), Some(size), Some(provider), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let size = size.parse().map_err(|_| bad())?;
        let provider = match provider {
            "-" => None,
            p => Some(p.parse().map_err(|_| bad())?),
        };
        let folder = match provider {
            Some(_) => &self.provider_copies,
            None => &self.media_store,
        };
        let source = Source {
            member: member.to_string(),
            location: Location::Under(Arc::clone(folder)),
            role: Role::Media,
            size,
            provider,
            stamp: None,
        };
        Ok(Some((source, length as u64)))
    }
}

impl Iterator for SourceLines {
    type Item = Result<Source>;

    fn next(&mut self) -> Option<Result<Source>> {
        self.next_with_length()
            .transpose()
            .map(|next| next.map(|(source, _)| source))
    }
}

/// The folders media files are read from, for a file taken from the parent at first and then
/// stored again after all (its volume mostly dead).
pub(super) struct MediaFolders {
    pub media_store: Arc<Path>,
    pub provider_copies: Arc<Path>,
}

impl MediaFolders {
    pub(super) fn source_of(&self, entry: &FileEntry) -> Source {
        let folder = match entry.provider {
            Some(_) => &self.provider_copies,
            None => &self.media_store,
        };
        Source {
            member: entry.path.clone(),
            location: Location::Under(Arc::clone(folder)),
            role: Role::Media,
            size: entry.size,
            provider: entry.provider,
            stamp: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folders() -> MediaFolders {
        MediaFolders {
            media_store: Arc::from(Path::new("/media_store")),
            provider_copies: Arc::from(Path::new("/copies")),
        }
    }

    fn source(name: &str, size: u64, provider: Option<u32>) -> Source {
        Source {
            member: format!("media/{name}"),
            location: Location::Under(Arc::from(Path::new("/elsewhere"))),
            role: Role::Media,
            size,
            provider,
            stamp: None,
        }
    }

    fn members(lines: SourceLines) -> Vec<String> {
        lines.map(|s| s.unwrap().member).collect()
    }

    #[test]
    fn late_files_are_merged_into_their_places_and_files_read_from_their_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ToStoreWriter::create(dir.path().join("list.tsv")).unwrap();
        writer.push(&source("b", 1, None)).unwrap();
        writer.push(&source("d", 2, Some(0))).unwrap();
        assert!(writer.push(&source("c", 1, None)).is_err());
        writer.push_late(source("e", 4, None));
        writer.push_late(source("a", 8, None));
        let list = writer.finish(&folders()).unwrap();
        assert_eq!((list.files, list.bytes), (4, 15));
        let sources: Vec<Source> = list.sources().unwrap().map(|s| s.unwrap()).collect();
        let names: Vec<&str> = sources.iter().map(|s| s.member.as_str()).collect();
        assert_eq!(names, ["media/a", "media/b", "media/d", "media/e"]);
        assert_eq!(sources[2].path(), Path::new("/copies/d"));
        assert_eq!(sources[1].path(), Path::new("/media_store/b"));
        assert_eq!(sources[2].provider, Some(0));
    }

    #[test]
    fn volumes_hold_at_most_their_size_and_keep_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ToStoreWriter::create(dir.path().join("list.tsv")).unwrap();
        for (name, size) in [("a", 40), ("b", 50), ("c", 20), ("d", 300), ("e", 1)] {
            writer.push(&source(name, size, None)).unwrap();
        }
        let list = writer.finish(&folders()).unwrap();
        let cuts = list.cut_into_volumes(100).unwrap();
        let volumes: Vec<Vec<String>> = cuts
            .iter()
            .map(|cut| members(list.volume(cut).unwrap()))
            .collect();
        assert_eq!(
            volumes,
            [
                vec!["media/a", "media/b"],
                vec!["media/c"],
                vec!["media/d"],
                vec!["media/e"]
            ]
        );
        assert_eq!(cuts[0].bytes, 90);
        assert!(ToStore::default().cut_into_volumes(100).unwrap().is_empty());
    }
}
