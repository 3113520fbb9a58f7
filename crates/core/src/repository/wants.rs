//! What restore and verify take from each media volume: the backup's entries grouped by
//! volume, each group in path order, read one entry at a time beside the volume's members.
//!
//! A format-3 backup's entries come from its runs merged from disk; they are written to one
//! scratch list per volume ([`spill_by_volume`]) rather than held, since at millions of media
//! files the lists would be most of a restore's memory. A format-2 base's entries are held by
//! its file list already and are grouped in memory ([`by_volume`]).
//!
//! A volume written by this tool holds its files in path order, so a volume's members and its
//! list are joined by walking both: an entry passed by without its member is set aside (in a
//! volume whose members are out of order it is found there later), and a member with no entry
//! is media purged since the volume was written.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::{CorruptKind, Error, IoContext, Result};
use crate::manifest::{FileEntry, RunEntry, RunReader, RunWriter};

/// The first line's backup id of a scratch list of entries (a run in all but name, never stored).
pub(crate) const SCRATCH_LIST_OWNER: &str = "scratch";
/// Lines held for all volumes together before each volume's are appended to its list: bounds
/// memory whatever the number of volumes, and opens each list once per this many bytes.
const SPILL_BUFFER_BYTES: usize = 8 << 20;

/// The entries of a scratch list at `path`, in path order, read back one at a time.
pub(crate) fn read_scratch_list(
    path: &Path,
) -> Result<Box<dyn Iterator<Item = Result<FileEntry>> + Send>> {
    let file = File::open(path).at("open", path)?;
    let name = path.display().to_string();
    let lines = RunReader::new(
        &name,
        SCRATCH_LIST_OWNER,
        BufReader::with_capacity(1 << 16, file),
    )?;
    Ok(Box::new(lines.filter_map(|line| match line {
        Ok(RunEntry::File(entry)) => Some(Ok(entry)),
        Ok(RunEntry::Gone(_)) => None,
        Err(e) => Some(Err(e)),
    })))
}

/// The entries a backup takes from one volume, sorted by member path, each path once.
pub(crate) struct VolumeWant {
    pub name: String,
    entries: WantedEntries,
}

enum WantedEntries {
    Held(Vec<FileEntry>),
    /// A scratch list on disk, read when the volume is.
    Listed(PathBuf),
}

impl VolumeWant {
    /// Starts reading the entries, for the volume's members to be matched against.
    pub(crate) fn open(self) -> Result<WantCursor> {
        let ahead = match self.entries {
            WantedEntries::Held(entries) => Box::new(entries.into_iter().map(Ok)),
            WantedEntries::Listed(path) => read_scratch_list(&path)?,
        };
        Ok(WantCursor {
            ahead,
            next: None,
            passed: BTreeMap::new(),
        })
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> &[FileEntry] {
        match &self.entries {
            WantedEntries::Held(entries) => entries,
            WantedEntries::Listed(_) => &[],
        }
    }
}

/// A volume's wanted entries, walked beside its members.
pub(crate) struct WantCursor {
    ahead: Box<dyn Iterator<Item = Result<FileEntry>> + Send>,
    next: Option<FileEntry>,
    /// Entries walked past without their member turning up: absent, unless the volume holds
    /// its members out of order (one of an earlier tool, say).
    passed: BTreeMap<String, FileEntry>,
}

impl WantCursor {
    /// The entry of member `path`, the first time it is asked for; `None` if the backup does
    /// not list it here or it was found already.
    pub(crate) fn take(&mut self, path: &str) -> Result<Option<FileEntry>> {
        loop {
            if self.next.is_none() {
                self.next = self.ahead.next().transpose()?;
            }
            let Some(next) = self.next.take() else { break };
            match next.path.as_str().cmp(path) {
                Ordering::Less => {
                    self.passed.insert(next.path.clone(), next);
                }
                Ordering::Equal => return Ok(Some(next)),
                Ordering::Greater => {
                    self.next = Some(next);
                    break;
                }
            }
        }
        Ok(self.passed.remove(path))
    }

    /// How many entries were never found, and the first few of their paths in order (those
    /// set aside all sort before those not reached).
    pub(crate) fn absent(mut self, named: usize) -> Result<(usize, Vec<String>)> {
        let mut count = self.passed.len();
        let mut first: Vec<String> = self.passed.into_keys().take(named).collect();
        for entry in self.next.take().map(Ok).into_iter().chain(self.ahead) {
            let entry = entry?;
            count += 1;
            if first.len() < named {
                first.push(entry.path);
            }
        }
        Ok((count, first))
    }
}

/// Groups `entries` (each naming its volume) by volume, in volume name order, held in memory;
/// of a path listed twice, the later entry counts.
pub(crate) fn by_volume(entries: Vec<FileEntry>) -> Vec<VolumeWant> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for volume in entries.iter().filter_map(FileEntry::volume) {
        *counts.entry(volume).or_default() += 1;
    }
    // Sized exactly, so that the entries moved in take no more room than they left.
    let mut volumes: BTreeMap<String, Vec<FileEntry>> = counts
        .into_iter()
        .map(|(name, count)| (name.to_string(), Vec::with_capacity(count)))
        .collect();
    for entry in entries {
        let Some(list) = entry.volume().and_then(|v| volumes.get_mut(v)) else {
            continue;
        };
        list.push(entry);
    }
    volumes
        .into_iter()
        .map(|(name, mut entries)| {
            crate::manifest::sort_by_path(&mut entries);
            VolumeWant {
                name,
                entries: WantedEntries::Held(entries),
            }
        })
        .collect()
}

/// What a backup takes from each volume: grouped from the entries a format-2 base lists, or
/// from a format-3 backup's runs (`from_runs`). A format-3 base that lists some too is
/// refused: which list would count?
pub(crate) fn of_base_or_runs(
    backup_id: &str,
    listed_in_base: Vec<FileEntry>,
    from_runs: Vec<VolumeWant>,
) -> Result<Vec<VolumeWant>> {
    match (listed_in_base.is_empty(), from_runs.is_empty()) {
        (_, true) => Ok(by_volume(listed_in_base)),
        (true, false) => Ok(from_runs),
        (false, false) => Err(Error::corrupt(
            backup_id,
            CorruptKind::ManifestMismatch,
            "its base lists media in volumes although its runs hold its media entries",
        )),
    }
}

/// One volume's scratch list as it is written: lines buffered, appended now and then.
struct Spill {
    path: PathBuf,
    lines: RunWriter<Vec<u8>>,
}

impl Spill {
    fn append_buffered(&mut self) -> Result<()> {
        let lines = std::mem::take(self.lines.get_mut());
        if lines.is_empty() {
            return Ok(());
        }
        let mut file = (OpenOptions::new().create(true).append(true))
            .open(&self.path)
            .at("open", &self.path)?;
        file.write_all(&lines).at("write", &self.path)
    }
}

/// Writes `entries` (in path order, each path once, of backup `backup_id`) into one scratch
/// list per volume in `dir`; the volumes in name order. An entry naming a volume outside
/// `volumes` (those the backup's header names) is refused.
pub(crate) fn spill_by_volume(
    backup_id: &str,
    entries: impl Iterator<Item = Result<FileEntry>>,
    volumes: &HashSet<String>,
    dir: &Path,
) -> Result<Vec<VolumeWant>> {
    spill_holding(backup_id, entries, volumes, dir, SPILL_BUFFER_BYTES)
}

/// [`spill_by_volume`], appending the lines whenever `hold` bytes of them are buffered.
fn spill_holding(
    backup_id: &str,
    entries: impl Iterator<Item = Result<FileEntry>>,
    volumes: &HashSet<String>,
    dir: &Path,
    hold: usize,
) -> Result<Vec<VolumeWant>> {
    let mut spills: HashMap<String, Spill> = HashMap::new();
    let mut buffered = 0usize;
    for entry in entries {
        let entry = entry?;
        let Some(volume) = entry.volume().filter(|v| volumes.contains(*v)) else {
            return Err(Error::corrupt(
                backup_id,
                CorruptKind::ManifestMismatch,
                format!(
                    "its runs say {:?} is in {}, which its header does not name",
                    entry.path,
                    entry.volume().unwrap_or("no volume")
                ),
            ));
        };
        if !spills.contains_key(volume) {
            let path = dir.join(format!("wanted-{}.tsv", spills.len()));
            let lines = RunWriter::new(Vec::new(), SCRATCH_LIST_OWNER).at("write", &path)?;
            spills.insert(volume.to_string(), Spill { path, lines });
        }
        let Some(spill) = spills.get_mut(volume) else {
            continue;
        };
        let before = spill.lines.get_mut().len();
        spill.lines.push_file(&entry).at("write", &spill.path)?;
        buffered += spill.lines.get_mut().len() - before;
        if buffered >= hold {
            for spill in spills.values_mut() {
                spill.append_buffered()?;
            }
            buffered = 0;
        }
    }
    let mut wants = Vec::with_capacity(spills.len());
    for (name, mut spill) in spills {
        spill.append_buffered()?;
        wants.push(VolumeWant {
            name,
            entries: WantedEntries::Listed(spill.path),
        });
    }
    wants.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(wants)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Role, Storage};
    use sha2::{Digest, Sha256};

    fn entry(volume: &str, path: &str, size: u64) -> FileEntry {
        FileEntry {
            role: Role::Media,
            path: path.into(),
            size,
            mode: 0o600,
            mtime: 0,
            mtime_nanos: Some(0),
            sha256: Sha256::digest(path.as_bytes()).into(),
            storage: Storage::volume(volume),
            provider: None,
        }
    }

    fn taken(want: VolumeWant, members: &[&str]) -> (Vec<String>, usize, Vec<String>) {
        let mut cursor = want.open().unwrap();
        let mut taken = Vec::new();
        for member in members {
            if let Some(entry) = cursor.take(member).unwrap() {
                taken.push(entry.path);
            }
        }
        let (absent, named) = cursor.absent(2).unwrap();
        (taken, absent, named)
    }

    #[test]
    fn entries_are_grouped_by_volume_sorted_with_the_later_of_a_path_winning() {
        let wants = by_volume(vec![
            entry("volumes/v2", "media/b", 1),
            entry("volumes/v1", "media/z", 1),
            entry("volumes/v2", "media/a", 1),
            entry("volumes/v2", "media/b", 2),
        ]);
        let names: Vec<&str> = wants.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["volumes/v1", "volumes/v2"]);
        let v2: Vec<(&str, u64)> = (wants[1].held().iter())
            .map(|e| (e.path.as_str(), e.size))
            .collect();
        assert_eq!(v2, [("media/a", 1), ("media/b", 2)]);
    }

    #[test]
    fn members_in_order_or_not_each_find_their_entry_once() {
        let want = || {
            by_volume(
                ["media/a", "media/b", "media/c", "media/d"]
                    .map(|p| entry("volumes/v", p, 1))
                    .to_vec(),
            )
            .pop()
            .unwrap()
        };
        let in_order = taken(
            want(),
            &["media/a", "media/b", "media/purged", "media/c", "media/d"],
        );
        assert_eq!(
            in_order,
            (
                ["media/a", "media/b", "media/c", "media/d"]
                    .map(String::from)
                    .to_vec(),
                0,
                vec![]
            )
        );
        let shuffled = taken(want(), &["media/d", "media/b", "media/b", "media/a"]);
        assert_eq!(
            shuffled.0,
            ["media/d", "media/b", "media/a"],
            "a member twice is taken once"
        );
        assert_eq!((shuffled.1, shuffled.2), (1, vec!["media/c".to_string()]));
        let none = taken(want(), &["media/0"]);
        assert_eq!(
            (none.1, none.2),
            (4, vec!["media/a".to_string(), "media/b".to_string()])
        );
    }

    #[test]
    fn entries_spilled_per_volume_read_back_as_held_ones() {
        let dir = tempfile::tempdir().unwrap();
        let volumes: HashSet<String> = ["volumes/v1", "volumes/v2"].map(String::from).into();
        let entries: Vec<FileEntry> = (0..1000)
            .map(|i| {
                entry(
                    if i % 3 == 0 {
                        "volumes/v1"
                    } else {
                        "volumes/v2"
                    },
                    &format!("media/{i:04}"),
                    i,
                )
            })
            .collect();
        // Appended every few lines, so that each list is written in many pieces.
        let spilled = spill_holding(
            "backup-1",
            entries.clone().into_iter().map(Ok),
            &volumes,
            dir.path(),
            1000,
        )
        .unwrap();
        let held = by_volume(entries);
        assert_eq!(spilled.len(), 2);
        for (spilled, held) in spilled.into_iter().zip(held) {
            assert_eq!(spilled.name, held.name);
            let expected = held.held().to_vec();
            let mut cursor = spilled.open().unwrap();
            for e in &expected {
                assert_eq!(cursor.take(&e.path).unwrap().as_ref(), Some(e));
            }
            assert_eq!(cursor.absent(1).unwrap().0, 0);
        }
    }

    #[test]
    fn an_entry_in_a_volume_the_header_does_not_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let volumes: HashSet<String> = ["volumes/v1".to_string()].into();
        let entries = [
            entry("volumes/v1", "media/a", 1),
            entry("volumes/elsewhere", "media/b", 1),
        ];
        let err = spill_by_volume(
            "backup-1",
            entries.into_iter().map(Ok),
            &volumes,
            dir.path(),
        )
        .err()
        .unwrap();
        assert_eq!(err.corrupt_kind(), Some(CorruptKind::ManifestMismatch));
        assert!(err.to_string().contains("volumes/elsewhere"), "{err}");
    }
}
