//! What an incremental backup stores anew and what it takes from volumes already stored.
//!
//! The parent is the newest format-2 backup of the same server that opens as itself, whose
//! index can be read; its volumes are checked against one listing of the store, and a volume
//! that is missing or not the size recorded is never referenced again (its files are stored
//! anew), so damage in the store never spreads into new backups. A
//! media file is taken from the parent's volume when its path, size and mtime (to the
//! nanosecond) are those the parent recorded: Synapse never rewrites a media file, so the bytes
//! are those the parent read and hashed. Anything else is read and stored again.
//!
//! Rotation keeps storage bounded: a volume the new backup would use for less than
//! [`MIN_LIVE_FRACTION`] of its bytes (the rest being media deleted since) is not used; its
//! files are stored again, so it can go once the backups that still use it are pruned. Every
//! volume the newest backup references is then at least 2/3 live, so the volumes it needs hold
//! at most 1.5× its media.
//!
//! Memory: the parent's entries are one sorted list, merge-joined ([`Planner`]) with the media
//! store's files as the walk hands them over in path order, so the listing is never held (only
//! the files to store), and an unchanged file's entry is moved into the new backup, never
//! copied: at most one entry per file is held, with no hash table beside it. With storage
//! providers the listing is held first (which files are missing locally needs all of it).

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use crate::archive::read_members;
use crate::commands::OpContext;
use crate::error::{CorruptKind, Error, ErrorKind, Result};
use crate::manifest::{
    index_name, read_file_list, sort_by_path, FileEntry, Header, Role, RunRef, VolumeRef,
    FILES_MEMBER, FORMAT_WITH_RUNS,
};
use crate::repository::object_reader::read_shared_object;
use crate::repository::open::read_header;
use crate::repository::runs;
use crate::repository::trust::{split_listing, unusable_volumes, VolumeFault};

use super::sources::{Location, Source};

/// A volume is used only while at least this share of its bytes belongs to the backup.
pub const MIN_LIVE_FRACTION: (u64, u64) = (2, 3);

/// The backup an incremental backup is made against.
pub(super) struct Parent {
    pub backup_id: String,
    /// The volumes the parent uses, by name.
    pub volumes: HashMap<String, VolumeRef>,
    /// The parent's media entries, sorted by member path, each path once.
    pub entries: Vec<FileEntry>,
    /// Volumes the parent names that are missing from the store or not the size it recorded
    /// (a lifecycle rule, a half-finished cleanup, a disk fault): never referenced again.
    pub unusable: Vec<(String, VolumeFault)>,
    /// Format 3: the runs its entries were read from, oldest first; empty for format 2.
    pub runs: Vec<RunRef>,
}

impl Parent {
    /// Every shared object the parent names: what a create announces it may use.
    pub fn shared_objects(&self) -> Vec<String> {
        self.volumes
            .keys()
            .cloned()
            .chain(self.runs.iter().map(|r| r.name.clone()))
            .collect()
    }
}

/// A parent, or why there is none and the backup is full.
pub(super) enum ParentChoice {
    Parent(Parent),
    /// No earlier backup of this server in format 2: full, as expected.
    None,
    /// There was one, but it cannot be built on: full, and the reason said.
    Unusable(String),
}

/// What the backup stores and what it takes from earlier volumes.
#[derive(Default)]
pub(super) struct MediaPlan {
    pub to_store: Vec<Source>,
    /// Entries taken as they are from the parent (volume and hash included).
    pub reused: Vec<FileEntry>,
    /// The parent volumes used, with the bytes this backup takes from each.
    pub reused_volumes: Vec<VolumeRef>,
    /// Per unusable parent volume, the files read and stored again that it held.
    pub stored_again: Vec<(String, VolumeFault, usize)>,
    /// What the next run must say beside the new entries (format 3).
    pub change: ChangeSinceParent,
}

/// How the media differ from the parent's, beyond the files stored anew: what a run of the
/// night's change holds besides the new entries. All sorted by path.
#[derive(Default, Debug)]
pub(super) struct ChangeSinceParent {
    /// The parent's paths that are gone from the media store.
    pub gone: Vec<String>,
    /// The parent's paths whose file is stored anew: gone too if the file vanishes before it
    /// is read.
    pub stored_anew: Vec<String>,
    /// Paths taken from the parent whose entry changed all the same (mode, provider).
    pub retouched: HashSet<String>,
}

/// The newest backup of `server_name` that opens as itself, if it is of format 2 and its index
/// reads; and the parent's volumes checked against one listing of the store. Objects that do
/// not open as the backup they are named after are passed over with a warning: never a parent.
pub(super) async fn find_parent(ctx: &OpContext<'_>, server_name: &str) -> Result<ParentChoice> {
    let mut ids: Vec<String> = split_listing(ctx.store.list().await?)
        .backups
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    ids.reverse();
    for id in ids {
        let header = match read_header(ctx.store, &id, ctx.passphrase()?, &ctx.cancel).await {
            Ok(Some(header)) => header,
            // A charm backup: nothing ever refers to one.
            Ok(None) => continue,
            Err(e) if stops_the_search(&e) => return Err(e),
            Err(e) => {
                tracing::warn!("{id} is not taken as the parent of this backup: {e}");
                continue;
            }
        };
        if header.server_name != server_name {
            continue;
        }
        let Some(media) = header.media.clone() else {
            // Format 1: its media are inline, nothing to refer to.
            return Ok(ParentChoice::None);
        };
        let read = if header.format_version >= FORMAT_WITH_RUNS {
            runs::media_entries(ctx, &header).await
        } else {
            read_index(ctx, &header).await
        };
        let entries = match read {
            Ok(entries) => entries,
            Err(e) if stops_the_search(&e) => return Err(e),
            Err(e) => {
                return Ok(ParentChoice::Unusable(format!(
                    "the file list of {id}, the newest backup, cannot be read: {e}"
                )))
            }
        };
        let present: HashMap<String, u64> = ctx
            .store
            .list_folder("volumes")
            .await?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect();
        let unusable = unusable_volumes(&media.volumes, &present);
        return Ok(ParentChoice::Parent(Parent {
            backup_id: id,
            volumes: media
                .volumes
                .into_iter()
                .map(|v| (v.name.clone(), v))
                .collect(),
            entries,
            unusable,
            runs: media.runs,
        }));
    }
    Ok(ParentChoice::None)
}

/// An interruption, or a store that did not answer: the backup stops rather than being built on
/// an older parent (or none) for a reason that has nothing to do with the newest backup.
fn stops_the_search(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::Storage)
}

/// Reads the media entries of `header`'s backup from its index object.
async fn read_index(ctx: &OpContext<'_>, header: &Header) -> Result<Vec<FileEntry>> {
    let name = index_name(&header.backup_id);
    let backup_id = header.backup_id.clone();
    let volumes: HashSet<String> = header
        .media
        .iter()
        .flat_map(|m| m.volumes.iter().map(|v| v.name.clone()))
        .collect();
    let object = name.clone();
    read_shared_object(ctx, &name, move |reader| {
        let mut entries = Vec::new();
        let mut found = false;
        let mut listed_id = String::new();
        read_members(reader, &object, |member| {
            if member.path != FILES_MEMBER || found {
                return Err(Error::corrupt(
                    &object,
                    CorruptKind::Malformed,
                    format!("unexpected member {:?} in an index", member.path),
                ));
            }
            found = true;
            let (id, _) = read_file_list(&object, BufReader::new(member.data), |entry| {
                // Only entries that name a volume the header names can be taken over.
                if entry.role == Role::Media && entry.volume().is_some_and(|v| volumes.contains(v))
                {
                    entries.push(entry);
                }
            })?;
            listed_id = id;
            Ok(())
        })?;
        if !found || listed_id != backup_id {
            return Err(Error::corrupt(
                &object,
                CorruptKind::ManifestMismatch,
                format!("the index does not list the media of {backup_id}"),
            ));
        }
        sort_by_path(&mut entries);
        Ok(entries)
    })
    .await
}

/// Decides, file by file, what to store and what to take from `parent`, leaving out the
/// volumes in `excluded` (condemned by a prune). `files` is sorted by member path.
pub(super) fn plan_media(
    files: Vec<Source>,
    parent: Option<Parent>,
    excluded: &HashSet<String>,
    folders: &MediaFolders,
) -> Result<MediaPlan> {
    let mut planner = Planner::new(parent, excluded, folders);
    for file in files {
        planner.add(file)?;
    }
    Ok(planner.finish())
}

/// The merge join of the media store's files, handed over one by one in path order as the walk
/// finds them, with the parent's entries: the listing itself is never held, only the files to
/// store. The parent's entries are filtered in place: those taken are moved down over the
/// dropped ones as the join passes them, so no second list of them is ever built.
pub(super) struct Planner<'a> {
    parent: Option<Joined>,
    excluded: &'a HashSet<String>,
    folders: &'a MediaFolders,
    to_store: Vec<Source>,
    change: ChangeSinceParent,
    /// The last member added: the join is only right if they come in order.
    previous: String,
}

/// The parent's side of the join.
struct Joined {
    volumes: HashMap<String, VolumeRef>,
    entries: Vec<FileEntry>,
    /// The next entry not yet joined; the entries before `kept` are those taken.
    next: usize,
    kept: usize,
    unusable: Vec<(String, VolumeFault)>,
    unusable_index: HashMap<String, usize>,
    stored_again: Vec<usize>,
}

impl<'a> Planner<'a> {
    pub fn new(
        parent: Option<Parent>,
        excluded: &'a HashSet<String>,
        folders: &'a MediaFolders,
    ) -> Planner<'a> {
        let parent = parent.map(|parent| Joined {
            unusable_index: (parent.unusable.iter().enumerate())
                .map(|(i, (name, _))| (name.clone(), i))
                .collect(),
            stored_again: vec![0; parent.unusable.len()],
            unusable: parent.unusable,
            volumes: parent.volumes,
            entries: parent.entries,
            next: 0,
            kept: 0,
        });
        Planner {
            parent,
            excluded,
            folders,
            to_store: Vec::new(),
            change: ChangeSinceParent::default(),
            previous: String::new(),
        }
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
        let Some(parent) = &mut self.parent else {
            self.to_store.push(file);
            return Ok(());
        };
        // Entries before this file are gone from the media store.
        while let Some(entry) = parent.entries.get_mut(parent.next) {
            if entry.path >= file.member {
                break;
            }
            self.change.gone.push(std::mem::take(&mut entry.path));
            parent.next += 1;
        }
        let Some(entry) = parent.entries.get_mut(parent.next) else {
            self.to_store.push(file);
            return Ok(());
        };
        if entry.path != file.member {
            // New since the parent.
            self.to_store.push(file);
            return Ok(());
        }
        parent.next += 1;
        if let Some(&i) = entry.volume().and_then(|v| parent.unusable_index.get(v)) {
            parent.stored_again[i] += 1;
        } else if let Some(retouched) = take_unchanged(&file, entry, &parent.volumes, self.excluded)
        {
            if retouched {
                self.change.retouched.insert(entry.path.clone());
            }
            parent.entries.swap(parent.kept, parent.next - 1);
            parent.kept += 1;
            return Ok(());
        }
        self.change.stored_anew.push(file.member.clone());
        self.to_store.push(file);
        Ok(())
    }

    /// What to store and what to take, once every file was added.
    pub fn finish(self) -> MediaPlan {
        let Planner {
            parent,
            folders,
            mut to_store,
            mut change,
            ..
        } = self;
        let Some(mut parent) = parent else {
            return MediaPlan {
                to_store,
                ..MediaPlan::default()
            };
        };
        // Entries after the last file are gone too.
        for entry in &mut parent.entries[parent.next..] {
            change.gone.push(std::mem::take(&mut entry.path));
        }
        let mut entries = parent.entries;
        entries.truncate(parent.kept);
        let (kept, reused_volumes) = live_volumes(&entries, &parent.volumes);
        entries.retain_mut(|entry| {
            if entry.volume().is_some_and(|v| kept.contains(v)) {
                return true;
            }
            // Its volume is mostly dead: the file is stored again, from where it is now.
            change.retouched.remove(&entry.path);
            change.stored_anew.push(entry.path.clone());
            to_store.push(folders.source_of(entry));
            false
        });
        change.stored_anew.sort();
        // Stored in listing order, as a full backup stores them.
        to_store.sort_unstable_by(|a, b| a.member.cmp(&b.member));
        MediaPlan {
            to_store,
            reused: entries,
            reused_volumes,
            stored_again: parent
                .unusable
                .iter()
                .zip(parent.stored_again)
                .map(|((name, fault), files)| (name.clone(), fault.clone(), files))
                .collect(),
            change,
        }
    }
}

/// The parent volumes still worth using: those of which the candidates take at least
/// [`MIN_LIVE_FRACTION`] of the bytes; by name, and as the new header names them (sorted).
fn live_volumes(
    candidates: &[FileEntry],
    volumes: &HashMap<String, VolumeRef>,
) -> (HashSet<String>, Vec<VolumeRef>) {
    let mut used: HashMap<String, u64> = HashMap::new();
    for entry in candidates {
        if let Some(volume) = entry.volume() {
            *used.entry(volume.to_string()).or_default() += entry.size;
        }
    }
    let (live, whole) = MIN_LIVE_FRACTION;
    let kept: HashSet<String> = used
        .iter()
        .filter(|(name, used)| {
            let total = volumes.get(*name).map_or(0, |v| v.file_bytes);
            **used * whole >= total * live
        })
        .map(|(name, _)| name.clone())
        .collect();
    let mut refs: Vec<VolumeRef> = kept
        .iter()
        .filter_map(|name| {
            let volume = volumes.get(name)?;
            Some(VolumeRef {
                used_bytes: used.get(name).copied().unwrap_or(0),
                ..volume.clone()
            })
        })
        .collect();
    refs.sort_by(|a, b| a.name.cmp(&b.name));
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

/// The folders media files are read from, for a file taken from the parent at first and then
/// stored again after all (its volume mostly dead).
pub(super) struct MediaFolders {
    pub media_store: Arc<Path>,
    pub provider_copies: Arc<Path>,
}

impl MediaFolders {
    fn source_of(&self, entry: &FileEntry) -> Source {
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
    use crate::manifest::Storage;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    fn write(dir: &Path, name: &str, bytes: usize) -> (Source, FileEntry) {
        let path = dir.join(name);
        std::fs::write(&path, vec![1u8; bytes]).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let source = Source {
            member: format!("media/{name}"),
            location: super::super::sources::Location::At(path),
            role: Role::Media,
            size: bytes as u64,
            provider: None,
            stamp: Some(super::super::sources::Stamp::of(&meta)),
        };
        let entry = FileEntry {
            role: Role::Media,
            path: source.member.clone(),
            size: bytes as u64,
            mode: 0o644,
            mtime: meta.mtime(),
            mtime_nanos: Some(meta.mtime_nsec() as u32),
            sha256: crate::manifest::Sha256Digest::from_hex(&"00".repeat(32)).unwrap(),
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
            entries,
            unusable: Vec::new(),
            runs: Vec::new(),
        }
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
        let plan = plan_media(vec![a, b, c], Some(parent), &HashSet::new(), &folders()).unwrap();
        let stored: Vec<&str> = plan.to_store.iter().map(|s| s.member.as_str()).collect();
        assert_eq!(stored, vec!["media/b", "media/c"]);
        assert_eq!(plan.change.stored_anew, ["media/b"]);
        assert_eq!(plan.reused.len(), 1);
        assert_eq!(plan.reused[0].path, "media/a");
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
        let plan = plan_media(
            files,
            Some(parent(parent_entries, 30)),
            &HashSet::new(),
            &folders(),
        )
        .unwrap();
        let reused: Vec<&str> = plan.reused.iter().map(|e| e.path.as_str()).collect();
        let stored: Vec<&str> = plan.to_store.iter().map(|s| s.member.as_str()).collect();
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
        let mut planner = Planner::new(
            Some(parent(vec![a_entry, b_entry], 20)),
            &excluded,
            &folders,
        );
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
        let plan = plan_media(vec![a, b], Some(parent), &HashSet::new(), &folders()).unwrap();
        assert!(plan.reused.is_empty());
        assert!(plan.reused_volumes.is_empty());
        assert_eq!(plan.to_store.len(), 2);
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
        let plan = plan_media(
            vec![a.clone()],
            Some(parent(vec![a_entry.clone()], 100)),
            &HashSet::new(),
            &folders(),
        )
        .unwrap();
        assert!(plan.reused.is_empty());
        assert_eq!(plan.to_store.len(), 1);
        assert_eq!(plan.to_store[0].path(), Path::new("/media_store/a"));
        assert_eq!(plan.change.stored_anew, ["media/a"]);
        // 60 of 90: exactly 2/3, still used.
        let plan = plan_media(
            vec![a.clone()],
            Some(parent(vec![a_entry.clone()], 90)),
            &HashSet::new(),
            &folders(),
        )
        .unwrap();
        assert_eq!(plan.reused.len(), 1);
        assert_eq!(plan.reused_volumes[0].used_bytes, 60);
        // A condemned volume is never used.
        let excluded: HashSet<String> = ["volumes/backup-1-0000".to_string()].into();
        let plan = plan_media(
            vec![a],
            Some(parent(vec![a_entry], 60)),
            &excluded,
            &folders(),
        )
        .unwrap();
        assert!(plan.reused.is_empty());
    }
}
