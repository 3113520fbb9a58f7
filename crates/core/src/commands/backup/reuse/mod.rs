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
//! Memory: the parent's entries are read one at a time, merged from its runs decrypted into
//! the scratch folder ([`RunsOnDisk`]), and merge-joined ([`Planner`]) with the media store's
//! files as the walk hands them over in path order; the entries taken and the files to store
//! are written to scratch files as they are decided
//! ([`EntryList`](super::entry_list::EntryList), [`ToStore`](super::to_store::ToStore)).
//! Nothing per file is held, only the night's change (paths gone, entries retouched). A
//! format-2 parent's index is read whole (one night's cost, until the first format-3 backup).
//! With storage providers the listing is held first (which files are missing locally needs
//! all of it).

mod planner;

pub(super) use planner::{plan_media, ChangeSinceParent, MediaPlan, PlanContext, Planner};

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::path::Path;

use crate::archive::read_members;
use crate::commands::OpContext;
use crate::error::{CorruptKind, Error, ErrorKind, Result};
use crate::manifest::{
    index_name, read_file_list, sort_by_path, FileEntry, Header, Role, RunRef, VolumeRef,
    FILES_MEMBER, FORMAT_WITH_RUNS,
};
use crate::repository::object_reader::read_shared_object;
use crate::repository::open::read_header;
use crate::repository::runs::RunsOnDisk;
use crate::repository::trust::{split_listing, unusable_volumes, VolumeFault};

/// The backup an incremental backup is made against.
pub(super) struct Parent {
    pub backup_id: String,
    /// The volumes the parent uses, by name.
    pub volumes: HashMap<String, VolumeRef>,
    /// The parent's media entries.
    pub entries: ParentEntries,
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

/// The parent's media entries, to be read in path order, each path once.
pub(super) enum ParentEntries {
    /// A format-2 index, read whole and sorted.
    Listed(Vec<FileEntry>),
    /// A format-3 backup's runs, decrypted into the scratch folder, merged as they are read.
    OnDisk(RunsOnDisk),
}

/// The parent's entries one at a time; an error is the parent's (its list broke off).
pub(super) type ParentStream = Box<dyn Iterator<Item = Result<FileEntry>> + Send>;

impl ParentEntries {
    /// The entries in path order. An entry of a run that names a volume its backup's header
    /// does not name is an error, naming the backup: its runs and its header disagree.
    pub fn stream(self, backup_id: &str, volumes: HashSet<String>) -> Result<ParentStream> {
        let merged = match self {
            ParentEntries::Listed(entries) => return Ok(Box::new(entries.into_iter().map(Ok))),
            ParentEntries::OnDisk(runs) => runs.merged()?,
        };
        let backup_id = backup_id.to_string();
        Ok(Box::new(merged.map(move |entry| {
            let entry = entry?;
            match entry.volume() {
                Some(volume) if volumes.contains(volume) => Ok(entry),
                volume => Err(Error::corrupt(
                    &backup_id,
                    CorruptKind::ManifestMismatch,
                    format!(
                        "its runs say {:?} is in {}, which its header does not name",
                        entry.path,
                        volume.unwrap_or("no volume")
                    ),
                )),
            }
        })))
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

/// The newest backup of `server_name` that opens as itself, if it is of format 2 and its index
/// reads; and the parent's volumes checked against one listing of the store. Objects that do
/// not open as the backup they are named after are passed over with a warning: never a parent.
/// A format-3 parent's runs are decrypted into `scratch`.
pub(super) async fn find_parent(
    ctx: &OpContext<'_>,
    server_name: &str,
    scratch: &Path,
) -> Result<ParentChoice> {
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
            RunsOnDisk::fetch(ctx, &media.runs, scratch)
                .await
                .map(ParentEntries::OnDisk)
        } else {
            read_index(ctx, &header).await.map(ParentEntries::Listed)
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
