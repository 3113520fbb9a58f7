//! The merge join of the media store's files, as the walk hands them over in path order, with
//! the parent's entries as its runs are read: what to store anew, what to take as it is.
//!
//! Rotation keeps storage bounded: a volume the new backup would use for less than
//! [`MIN_LIVE_FRACTION`] of its bytes (the rest being media deleted since) is not used; its
//! files are stored again, so it can go once the backups that still use it are pruned. Every
//! volume the newest backup references is then at least 2/3 live, so the volumes it needs hold
//! at most 1.5× its media.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::manifest::{FileEntry, VolumeRef};
use crate::repository::trust::VolumeFault;

use super::super::entry_list::{keep_only, EntryList, EntryListWriter, Tally};
use super::super::sources::Source;
use super::super::to_store::{MediaFolders, ToStore, ToStoreWriter};
use super::{Parent, ParentStream};

/// A volume is used only while at least this share of its bytes belongs to the backup.
pub const MIN_LIVE_FRACTION: (u64, u64) = (2, 3);

/// What the backup stores and what it takes from earlier volumes.
#[derive(Default)]
pub(in crate::commands::backup) struct MediaPlan {
    /// The files to store anew, on disk in path order.
    pub to_store: ToStore,
    /// Entries taken as they are from the parent (volume and hash included), on disk.
    pub reused: EntryList,
    /// The parent volumes used, with the bytes this backup takes from each.
    pub reused_volumes: Vec<VolumeRef>,
    /// Per unusable parent volume, the files read and stored again that it held.
    pub stored_again: Vec<(String, VolumeFault, usize)>,
    /// What the next run must say beside the new entries (format 3).
    pub change: ChangeSinceParent,
    /// Why the parent was given up half-way (its list broke off): the backup is full.
    pub parent_dropped: Option<String>,
}

/// How the media differ from the parent's, beyond the files stored anew: what a run of the
/// night's change holds besides the new entries. All sorted by path.
#[derive(Default, Debug)]
pub(in crate::commands::backup) struct ChangeSinceParent {
    /// The parent's paths that are gone from the media store.
    pub gone: Vec<String>,
    /// The parent's paths whose file is stored anew: gone too if the file vanishes before it
    /// is read.
    pub stored_anew: Vec<String>,
    /// Entries taken from the parent that changed all the same (mode, provider), as taken.
    pub retouched: Vec<FileEntry>,
}

/// Decides, file by file, what to store and what to take from `parent`, leaving out the
/// volumes in `excluded` (condemned by a prune). `files` is sorted by member path.
pub(in crate::commands::backup) fn plan_media(
    files: Vec<Source>,
    parent: Option<Parent>,
    context: &PlanContext<'_>,
) -> Result<MediaPlan> {
    let mut planner = Planner::new(parent, context)?;
    for file in files {
        planner.add(file)?;
    }
    planner.finish()
}

/// What the join needs besides the two sides: the volumes a prune condemned, where media are
/// read from, and a scratch folder for the list of entries taken.
pub(in crate::commands::backup) struct PlanContext<'a> {
    pub excluded: &'a HashSet<String>,
    pub folders: &'a MediaFolders,
    pub scratch: &'a Path,
}

/// The join itself: neither side is held, only the files to store and the paths gone.
pub(in crate::commands::backup) struct Planner<'a> {
    parent: Option<Joined>,
    context: &'a PlanContext<'a>,
    to_store: ToStoreWriter,
    change: ChangeSinceParent,
    kept: Option<EntryListWriter>,
    parent_dropped: Option<String>,
    /// The last member added: the join is only right if they come in order.
    previous: String,
}

/// The parent's side of the join.
struct Joined {
    backup_id: String,
    volumes: HashMap<String, VolumeRef>,
    stream: ParentStream,
    /// The next entry not yet joined; `None` once the parent's list is done.
    head: Option<FileEntry>,
    /// Whether `head` was consumed and the next must be read before the next file is joined.
    consumed: bool,
    unusable: Vec<(String, VolumeFault)>,
    unusable_index: HashMap<String, usize>,
    stored_again: Vec<usize>,
}

impl Joined {
    /// Reads the next entry if the head was consumed. Its error is the parent's.
    fn refill(&mut self) -> Result<()> {
        if self.consumed {
            self.consumed = false;
            self.head = self.stream.next().transpose()?;
        }
        Ok(())
    }
}

/// What the join decided for one file.
enum Decision {
    /// Not in the parent: stored.
    New,
    /// In the parent, changed or in a volume that cannot be used: stored again.
    Anew,
    /// Taken from the parent as it is.
    Taken,
}

impl<'a> Planner<'a> {
    pub fn new(parent: Option<Parent>, context: &'a PlanContext<'a>) -> Result<Planner<'a>> {
        let parent = match parent {
            None => None,
            Some(parent) => {
                let names = parent.volumes.keys().cloned().collect();
                Some(Joined {
                    stream: parent.entries.stream(&parent.backup_id, names)?,
                    backup_id: parent.backup_id,
                    head: None,
                    consumed: true,
                    unusable_index: (parent.unusable.iter().enumerate())
                        .map(|(i, (name, _))| (name.clone(), i))
                        .collect(),
                    stored_again: vec![0; parent.unusable.len()],
                    unusable: parent.unusable,
                    volumes: parent.volumes,
                })
            }
        };
        Ok(Planner {
            parent,
            context,
            to_store: ToStoreWriter::create(context.scratch.join("to-store.tsv"))?,
            change: ChangeSinceParent::default(),
            kept: None,
            parent_dropped: None,
            previous: String::new(),
        })
    }

    /// The next file of the media store; its member path sorts after the last one's.
    pub fn add(&mut self, file: Source) -> Result<()> {
        if !self.previous.is_empty() && file.member.as_str() <= self.previous.as_str() {
            return Err(Error::Other(format!(
                "the media listing is out of order ({} after {}); this is a bug, please report it",
                file.member, self.previous
            )));
        }
        self.previous.clear();
        self.previous.push_str(&file.member);
        let decision = match self.join(&file) {
            Ok(decision) => decision,
            Err(Failure::Parent(e)) => {
                self.drop_parent(e)?;
                Decision::New
            }
            Err(Failure::Ours(e)) => return Err(e),
        };
        match decision {
            Decision::Taken => Ok(()),
            Decision::New => self.to_store.push(&file),
            Decision::Anew => {
                self.change.stored_anew.push(file.member.clone());
                self.to_store.push(&file)
            }
        }
    }

    /// Joins `file` with the parent's entries. The parent's list is read on before anything
    /// is decided for the file, so a parent that breaks off leaves the file undecided.
    fn join(&mut self, file: &Source) -> std::result::Result<Decision, Failure> {
        let Some(parent) = &mut self.parent else {
            return Ok(Decision::New);
        };
        parent.refill().map_err(Failure::Parent)?;
        // Entries before this file are gone from the media store.
        while let Some(entry) = parent.head.take_if(|entry| entry.path < file.member) {
            self.change.gone.push(entry.path);
            parent.consumed = true;
            parent.refill().map_err(Failure::Parent)?;
        }
        let Some(mut entry) = parent.head.take_if(|entry| entry.path == file.member) else {
            return Ok(Decision::New);
        };
        parent.consumed = true;
        if let Some(&i) = entry.volume().and_then(|v| parent.unusable_index.get(v)) {
            parent.stored_again[i] += 1;
            return Ok(Decision::Anew);
        }
        let Some(retouched) =
            take_unchanged(file, &mut entry, &parent.volumes, self.context.excluded)
        else {
            return Ok(Decision::Anew);
        };
        let kept = match &mut self.kept {
            Some(kept) => kept,
            None => self
                .kept
                .insert(EntryListWriter::create(self.kept_path()).map_err(Failure::Ours)?),
        };
        kept.push(&entry).map_err(Failure::Ours)?;
        if retouched {
            self.change.retouched.push(entry);
        }
        Ok(Decision::Taken)
    }

    fn kept_path(&self) -> PathBuf {
        self.context.scratch.join("taken-from-parent.tsv")
    }

    /// Gives the parent up after its list broke off: everything taken from it so far is
    /// stored anew, and so is every file still to come. The backup is full, and says why.
    fn drop_parent(&mut self, e: Error) -> Result<()> {
        if e.kind() == ErrorKind::Interrupted {
            return Err(e);
        }
        let Some(parent) = self.parent.take() else {
            return Err(e);
        };
        tracing::warn!(
            "the file list of {}, the parent, broke off ({e}): this backup is full, storing every media file anew",
            parent.backup_id
        );
        self.parent_dropped = Some(format!(
            "the file list of {}, the newest backup, cannot be read: {e}",
            parent.backup_id
        ));
        self.change = ChangeSinceParent::default();
        if let Some(kept) = self.kept.take() {
            let folders = self.context.folders;
            for entry in kept.finish()?.entries()? {
                self.to_store.push_late(folders.source_of(&entry?));
            }
        }
        Ok(())
    }

    /// What to store and what to take, once every file was added.
    pub fn finish(mut self) -> Result<MediaPlan> {
        // Entries after the last file are gone too.
        if let Err(e) = self.drain_parent() {
            self.drop_parent(e)?;
        }
        let kept_path = self.kept_path();
        let Planner {
            parent,
            context,
            mut to_store,
            mut change,
            kept,
            parent_dropped,
            ..
        } = self;
        let Some(parent) = parent else {
            return Ok(MediaPlan {
                to_store: to_store.finish(context.folders)?,
                parent_dropped,
                ..MediaPlan::default()
            });
        };
        let (live, reused_volumes) = match &kept {
            Some(kept) => live_volumes(&kept.per_volume, &parent.volumes),
            None => (HashSet::new(), Vec::new()),
        };
        let reused = match kept {
            None => EntryList::default(),
            Some(kept) if !kept.has_others_than(&live) => kept.finish()?,
            Some(kept) => {
                let all = kept.finish()?;
                let rewritten = kept_path.with_extension("live.tsv");
                keep_only(all, &live, &rewritten, |entry| {
                    // Its volume is mostly dead: the file is stored again, from where it is now.
                    change.stored_anew.push(entry.path.clone());
                    to_store.push_late(context.folders.source_of(&entry));
                })?
            }
        };
        change
            .retouched
            .retain(|e| e.volume().is_some_and(|v| live.contains(v)));
        change.stored_anew.sort();
        Ok(MediaPlan {
            // Stored in listing order, as a full backup stores them.
            to_store: to_store.finish(context.folders)?,
            reused,
            reused_volumes,
            stored_again: parent
                .unusable
                .iter()
                .zip(parent.stored_again)
                .map(|((name, fault), files)| (name.clone(), fault.clone(), files))
                .collect(),
            change,
            parent_dropped,
        })
    }

    fn drain_parent(&mut self) -> Result<()> {
        let Some(parent) = &mut self.parent else {
            return Ok(());
        };
        parent.refill()?;
        while let Some(entry) = parent.head.take() {
            self.change.gone.push(entry.path);
            parent.consumed = true;
            parent.refill()?;
        }
        Ok(())
    }
}

/// Whose fault a failed join is: the parent's list (the backup goes on, full) or ours.
enum Failure {
    Parent(Error),
    Ours(Error),
}

/// The parent volumes still worth using: those of which the candidates take at least
/// [`MIN_LIVE_FRACTION`] of the bytes; by name, and as the new header names them (sorted).
fn live_volumes(
    used: &HashMap<String, Tally>,
    volumes: &HashMap<String, VolumeRef>,
) -> (HashSet<String>, Vec<VolumeRef>) {
    let (live, whole) = MIN_LIVE_FRACTION;
    let mut refs: Vec<VolumeRef> = used
        .iter()
        .filter_map(|(name, tally)| {
            let volume = volumes.get(name)?;
            (tally.bytes * whole >= volume.file_bytes * live).then(|| VolumeRef {
                used_bytes: tally.bytes,
                ..volume.clone()
            })
        })
        .collect();
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    let kept = refs.iter().map(|v| v.name.clone()).collect();
    (kept, refs)
}

/// Updates the parent's `entry` for `file` and says whether that changed it (its mode, or
/// where it was read from), when the file is as the parent read it; `None` when it is not.
fn take_unchanged(
    file: &Source,
    entry: &mut FileEntry,
    volumes: &HashMap<String, VolumeRef>,
    excluded: &HashSet<String>,
) -> Option<bool> {
    let volume = entry.volume()?;
    if excluded.contains(volume) || !volumes.contains_key(volume) {
        return None;
    }
    if file.provider.is_some() {
        // Not on disk to stat: a file a provider holds is taken over when its path and size
        // are those stored, as Synapse never rewrites a media file (its name is its id). It
        // may have been stored when it was still local.
        if entry.size != file.size {
            return None;
        }
        let retouched = entry.provider != file.provider;
        entry.provider = file.provider;
        return Some(retouched);
    }
    // The listing's own lstat: a media file is a regular file, so it is what a stat would say.
    let stamp = file.stamp?;
    let same = file.size == entry.size
        && stamp.mtime == entry.mtime
        && entry.mtime_nanos == Some(stamp.mtime_nanos);
    if !same {
        return None;
    }
    let retouched = entry.mode != stamp.mode || entry.provider.is_some();
    entry.mode = stamp.mode;
    entry.provider = None;
    Some(retouched)
}

#[cfg(test)]
mod tests {
    use super::super::super::sources::Location;
    use super::super::ParentEntries;
    use super::*;
    use crate::manifest::Role;
    use crate::manifest::{
        run_name, sort_by_path, RunEntry, RunRef, RunWriter, Sha256Digest, Storage,
    };
    use crate::repository::runs::RunsOnDisk;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::sync::Arc;

    fn write(dir: &Path, name: &str, bytes: usize) -> (Source, FileEntry) {
        let path = dir.join(name);
        std::fs::write(&path, vec![1u8; bytes]).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let source = Source {
            member: format!("media/{name}"),
            location: Location::At(path),
            role: Role::Media,
            size: bytes as u64,
            provider: None,
            stamp: Some(super::super::super::sources::Stamp::of(&meta)),
        };
        let entry = FileEntry {
            role: Role::Media,
            path: source.member.clone(),
            size: bytes as u64,
            mode: 0o644,
            mtime: meta.mtime(),
            mtime_nanos: Some(meta.mtime_nsec() as u32),
            sha256: Sha256Digest::from_hex(&"00".repeat(32)).unwrap(),
            storage: Storage::Volume {
                volume: "volumes/backup-1-0000".into(),
            },
            provider: None,
        };
        (source, entry)
    }

    fn folders() -> MediaFolders {
        MediaFolders {
            media_store: Arc::from(Path::new("/media_store")),
            provider_copies: Arc::from(Path::new("/tmp/provider")),
        }
    }

    fn parent(entries: Vec<FileEntry>, file_bytes: u64) -> Parent {
        Parent {
            backup_id: "backup-1".into(),
            volumes: [(
                "volumes/backup-1-0000".to_string(),
                VolumeRef {
                    name: "volumes/backup-1-0000".into(),
                    file_bytes,
                    used_bytes: file_bytes,
                    object_bytes: file_bytes,
                },
            )]
            .into(),
            entries: ParentEntries::Listed(entries),
            unusable: Vec::new(),
            runs: Vec::new(),
        }
    }

    /// Plans with no condemned volume, the join's scratch in `dir`.
    fn join(dir: &Path, files: Vec<Source>, parent: Parent) -> MediaPlan {
        plan_excluding(dir, files, parent, &HashSet::new())
    }

    fn plan_excluding(
        dir: &Path,
        files: Vec<Source>,
        parent: Parent,
        excluded: &HashSet<String>,
    ) -> MediaPlan {
        let folders = folders();
        let context = PlanContext {
            excluded,
            folders: &folders,
            scratch: dir,
        };
        plan_media(files, Some(parent), &context).unwrap()
    }

    fn stored(plan: &MediaPlan) -> Vec<String> {
        let sources = plan.to_store.sources().unwrap();
        sources.map(|s| s.unwrap().member).collect()
    }

    fn reused_paths(plan: &MediaPlan) -> Vec<String> {
        let entries = plan.reused.entries().unwrap();
        entries.map(|e| e.unwrap().path).collect()
    }

    #[test]
    fn unchanged_files_are_taken_and_changed_ones_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_entry) = write(dir.path(), "a", 100);
        let (b, mut b_entry) = write(dir.path(), "b", 100);
        let (c, _) = write(dir.path(), "c", 10);
        b_entry.mtime_nanos = b_entry.mtime_nanos.map(|n| (n + 1) % 1_000_000_000);
        // Only "a" (100 of the volume's 150 bytes) is still as the parent read it.
        let parent = parent(vec![a_entry, b_entry], 150);
        let plan = join(dir.path(), vec![a, b, c], parent);
        let stored = stored(&plan);
        assert_eq!(stored, vec!["media/b", "media/c"]);
        assert_eq!(plan.change.stored_anew, ["media/b"]);
        assert_eq!(plan.reused.tally.files, 1);
        assert_eq!(reused_paths(&plan), ["media/a"]);
        let used: Vec<&str> = plan
            .reused_volumes
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(used, vec!["volumes/backup-1-0000"]);
    }

    #[test]
    fn the_join_passes_over_files_gone_and_files_new_in_any_place() {
        let dir = tempfile::tempdir().unwrap();
        let written: Vec<(Source, FileEntry)> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|name| write(dir.path(), name, 10))
            .collect();
        // The parent had a, c, d and f; the media store now holds b, c, e and f.
        let parent_entries: Vec<FileEntry> =
            [0, 2, 3, 5].iter().map(|&i| written[i].1.clone()).collect();
        let files: Vec<Source> = [1, 2, 4, 5].iter().map(|&i| written[i].0.clone()).collect();
        let plan = join(dir.path(), files, parent(parent_entries, 30));
        let reused = reused_paths(&plan);
        let stored = stored(&plan);
        assert_eq!(reused, ["media/c", "media/f"]);
        assert_eq!(stored, ["media/b", "media/e"]);
        assert_eq!(plan.change.gone, ["media/a", "media/d"]);
        assert!(plan.change.stored_anew.is_empty());
        assert!(plan.change.retouched.is_empty());
    }

    #[test]
    fn an_index_out_of_order_is_sorted_and_the_later_entry_of_a_path_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (_, a) = write(dir.path(), "a", 1);
        let (_, b) = write(dir.path(), "b", 1);
        let mut b_again = b.clone();
        b_again.size = 2;
        let mut entries = vec![b, a, b_again];
        sort_by_path(&mut entries);
        let seen: Vec<(&str, u64)> = entries.iter().map(|e| (e.path.as_str(), e.size)).collect();
        assert_eq!(seen, [("media/a", 1), ("media/b", 2)]);
    }

    #[test]
    fn files_out_of_order_are_refused_rather_than_joined_wrongly() {
        // A file joined after the parent's entry for it was passed would be both "gone" and
        // stored anew in the same run.
        let dir = tempfile::tempdir().unwrap();
        let (a, a_entry) = write(dir.path(), "a", 10);
        let (b, b_entry) = write(dir.path(), "b", 10);
        let excluded = HashSet::new();
        let folders = folders();
        let context = PlanContext {
            excluded: &excluded,
            folders: &folders,
            scratch: dir.path(),
        };
        let mut planner = Planner::new(Some(parent(vec![a_entry, b_entry], 20)), &context).unwrap();
        planner.add(b).unwrap();
        let e = planner.add(a).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
    }

    #[test]
    fn files_in_an_unusable_volume_are_stored_again_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_entry) = write(dir.path(), "a", 100);
        let (b, b_entry) = write(dir.path(), "b", 100);
        let mut parent = parent(vec![a_entry, b_entry], 200);
        parent.unusable = vec![("volumes/backup-1-0000".into(), VolumeFault::Missing)];
        let plan = join(dir.path(), vec![a, b], parent);
        assert_eq!(plan.reused.tally.files, 0);
        assert!(plan.reused_volumes.is_empty());
        assert_eq!(plan.to_store.files, 2);
        assert_eq!(
            plan.stored_again,
            [("volumes/backup-1-0000".to_string(), VolumeFault::Missing, 2)]
        );
    }

    #[test]
    fn a_mostly_dead_volume_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_entry) = write(dir.path(), "a", 60);
        // The volume held 100 bytes; 60 are still live: under 2/3.
        let plan = join(
            dir.path(),
            vec![a.clone()],
            parent(vec![a_entry.clone()], 100),
        );
        assert!(reused_paths(&plan).is_empty());
        assert_eq!(plan.to_store.files, 1);
        let first = plan.to_store.sources().unwrap().next().unwrap().unwrap();
        assert_eq!(first.path(), Path::new("/media_store/a"));
        assert_eq!(plan.change.stored_anew, ["media/a"]);
        // 60 of 90: exactly 2/3, still used.
        let plan = join(
            dir.path(),
            vec![a.clone()],
            parent(vec![a_entry.clone()], 90),
        );
        assert_eq!(reused_paths(&plan), ["media/a"]);
        assert_eq!(plan.reused_volumes[0].used_bytes, 60);
        // A condemned volume is never used.
        let excluded: HashSet<String> = ["volumes/backup-1-0000".to_string()].into();
        let plan = plan_excluding(dir.path(), vec![a], parent(vec![a_entry], 60), &excluded);
        assert_eq!(plan.reused.tally.files, 0);
    }

    /// Writes `lines` as run `owner`'s into `dir`, as a parent's run is copied out of the store.
    fn run_on_disk(dir: &Path, owner: &str, lines: &[RunEntry]) -> (RunRef, String, PathBuf) {
        let path = dir.join(format!("{owner}.tsv"));
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = RunWriter::new(file, owner).unwrap();
        for line in lines {
            writer.push(line).unwrap();
        }
        writer.finish().unwrap();
        let run = RunRef {
            name: run_name(owner),
            entries: lines.len() as u64,
            object_bytes: 0,
        };
        (run, owner.to_string(), path)
    }

    fn on_disk(runs: Vec<(RunRef, String, PathBuf)>, file_bytes: u64) -> Parent {
        let mut parent = parent(Vec::new(), file_bytes);
        parent.entries = ParentEntries::OnDisk(RunsOnDisk::from_files(runs));
        parent
    }

    #[test]
    fn a_parent_s_runs_are_joined_from_disk_and_its_gone_lines_honoured() {
        let media = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let written: Vec<(Source, FileEntry)> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|name| write(media.path(), name, 10))
            .collect();
        let file = |i: usize| RunEntry::File(written[i].1.clone());
        let mut e_changed = written[4].1.clone();
        e_changed.mtime += 1;
        let bottom = run_on_disk(
            scratch.path(),
            "backup-1",
            &[file(0), file(1), file(2), file(3)],
        );
        let top = run_on_disk(
            scratch.path(),
            "backup-2",
            &[RunEntry::Gone("media/b".into()), RunEntry::File(e_changed)],
        );
        // The media store holds a, c, e (not as the parent read it) and f (new).
        let files: Vec<Source> = [0, 2, 4, 5].iter().map(|&i| written[i].0.clone()).collect();
        let plan = join(scratch.path(), files, on_disk(vec![bottom, top], 20));
        assert_eq!(reused_paths(&plan), ["media/a", "media/c"]);
        assert_eq!(plan.change.gone, ["media/d"]);
        assert_eq!(plan.change.stored_anew, ["media/e"]);
        let stored = stored(&plan);
        assert_eq!(stored, ["media/e", "media/f"]);
        assert!(plan.parent_dropped.is_none());
    }

    #[test]
    fn a_parent_whose_runs_break_off_is_given_up_and_every_file_stored() {
        let media = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let written: Vec<(Source, FileEntry)> = ["a", "b", "c"]
            .iter()
            .map(|name| write(media.path(), name, 10))
            .collect();
        let lines: Vec<RunEntry> = written
            .iter()
            .map(|w| RunEntry::File(w.1.clone()))
            .collect();
        let (run, owner, path) = run_on_disk(scratch.path(), "backup-1", &lines);
        // "c"'s line damaged after "a" and "b" were taken: they are stored after all.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("media/c\t", "media/c\tx\t")).unwrap();
        let files: Vec<Source> = written.iter().map(|w| w.0.clone()).collect();
        let plan = join(scratch.path(), files, on_disk(vec![(run, owner, path)], 30));
        let why = plan.parent_dropped.as_deref().unwrap_or_default();
        assert!(why.contains("backup-1") && why.contains("line 4"), "{why}");
        let stored = stored(&plan);
        assert_eq!(stored, ["media/a", "media/b", "media/c"]);
        assert_eq!(plan.reused.tally, Tally::default());
        assert!(plan.change.gone.is_empty() && plan.change.stored_anew.is_empty());
    }

    #[test]
    fn a_run_naming_a_volume_its_header_does_not_is_not_built_on() {
        let media = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let (a, mut a_entry) = write(media.path(), "a", 10);
        a_entry.storage = Storage::volume("volumes/backup-0-0000");
        let run = run_on_disk(scratch.path(), "backup-1", &[RunEntry::File(a_entry)]);
        let plan = join(scratch.path(), vec![a], on_disk(vec![run], 10));
        let why = plan.parent_dropped.as_deref().unwrap_or_default();
        assert!(why.contains("does not name"), "{why}");
        assert_eq!(plan.to_store.files, 1);
    }
}
