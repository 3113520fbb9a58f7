//! A backup's media entries written to a scratch file in path order as they are found, rather
//! than held: the parent's entries a backup takes as they are (at millions of files, a night
//! with no change would otherwise hold every one), and the entries of the files it stores
//! anew (a full backup's are every file's). Beside the file, what the entries come to per
//! volume (a handful of volumes): all that deciding which volumes are still worth using, and
//! the header's totals, need. The new run is then written by merging such lists from disk.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::manifest::{FileEntry, RunWriter};
use crate::repository::wants::{read_scratch_list, SCRATCH_LIST_OWNER};

/// How many files, and bytes, a set of entries holds, and how many of them a storage provider
/// holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(in crate::commands::backup) struct Tally {
    pub files: usize,
    pub bytes: u64,
    pub provider_files: usize,
    pub provider_bytes: u64,
}

impl Tally {
    pub fn add(&mut self, entry: &FileEntry) {
        self.files += 1;
        self.bytes += entry.size;
        if entry.provider.is_some() {
            self.provider_files += 1;
            self.provider_bytes += entry.size;
        }
    }

    pub fn plus(self, other: Tally) -> Tally {
        Tally {
            files: self.files + other.files,
            bytes: self.bytes + other.bytes,
            provider_files: self.provider_files + other.provider_files,
            provider_bytes: self.provider_bytes + other.provider_bytes,
        }
    }
}

/// Media entries on disk, sorted by path, each path once, and their tally.
#[derive(Debug, Default)]
pub(super) struct EntryList {
    list: Option<PathBuf>,
    pub tally: Tally,
}

impl EntryList {
    /// The entries, in path order, read back one at a time.
    pub fn entries(&self) -> Result<Box<dyn Iterator<Item = Result<FileEntry>> + Send>> {
        match &self.list {
            Some(path) => read_scratch_list(path),
            None => Ok(Box::new(std::iter::empty())),
        }
    }
}

/// Writes an [`EntryList`] one entry at a time, in path order, tallied per volume.
pub(super) struct EntryListWriter {
    path: PathBuf,
    list: RunWriter<BufWriter<File>>,
    pub per_volume: HashMap<String, Tally>,
}

impl EntryListWriter {
    pub fn create(path: PathBuf) -> Result<Self> {
        let file = File::create(&path).at("create", &path)?;
        let list = RunWriter::new(BufWriter::with_capacity(1 << 16, file), SCRATCH_LIST_OWNER)
            .at("write", &path)?;
        Ok(EntryListWriter {
            path,
            list,
            per_volume: HashMap::new(),
        })
    }

    pub fn push(&mut self, entry: &FileEntry) -> Result<()> {
        self.list.push_file(entry).at("write", &self.path)?;
        let volume = entry.volume().unwrap_or_default();
        match self.per_volume.get_mut(volume) {
            Some(tally) => tally.add(entry),
            None => {
                let mut tally = Tally::default();
                tally.add(entry);
                self.per_volume.insert(volume.to_string(), tally);
            }
        }
        Ok(())
    }

    /// The list as written.
    pub fn finish(self) -> Result<EntryList> {
        let (_, _) = self.list.finish().at("write", &self.path)?;
        let tally = (self.per_volume.values()).fold(Tally::default(), |sum, t| sum.plus(*t));
        Ok(EntryList {
            list: Some(self.path),
            tally,
        })
    }

    /// Whether any entry is in a volume outside `kept`.
    pub fn has_others_than(&self, kept: &HashSet<String>) -> bool {
        self.per_volume.keys().any(|volume| !kept.contains(volume))
    }
}

/// Rewrites `list` into `rewritten` without the entries outside the `kept` volumes, handing
/// each of those to `dropped`.
pub(super) fn keep_only(
    list: EntryList,
    kept: &HashSet<String>,
    rewritten: &Path,
    mut dropped: impl FnMut(FileEntry),
) -> Result<EntryList> {
    let mut writer = EntryListWriter::create(rewritten.to_path_buf())?;
    for entry in list.entries()? {
        let entry = entry?;
        if entry.volume().is_some_and(|v| kept.contains(v)) {
            writer.push(&entry)?;
        } else {
            dropped(entry);
        }
    }
    if let Some(old) = list.list {
        std::fs::remove_file(&old).at("remove", &old)?;
    }
    writer.finish()
}
