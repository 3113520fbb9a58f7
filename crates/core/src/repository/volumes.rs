//! Format 2: the media a backup keeps in volumes, some written by earlier backups. Restore and
//! verify read the base first (its file list says which file is in which volume), check that
//! every volume is in the store, then read each volume, taking the members the backup lists
//! and checking each against its size and SHA-256. A volume may hold files the backup does not
//! include (media purged since it was written); they are skipped, so a restore never brings
//! back purged media.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use futures::StreamExt;

use crate::archive::{read_members, Member, MemberKind};
use crate::error::{CorruptKind, Error, ErrorKind, Result};
use crate::manifest::{FileEntry, MediaVolumes, SharedObject};
use crate::repository::trust::{describe_faults, unusable_volumes};
use crate::repository::BackupId;
use crate::store::Store;

/// HEAD requests at once when checking that a backup's volumes exist.
const HEADS_AT_ONCE: usize = 8;
/// Volumes downloaded, decrypted and read at once by restore and verify: each is one stream
/// and one decryption thread, so several keep both the network and the cores busy.
pub(crate) const VOLUMES_AT_ONCE: usize = 4;

/// The entries a backup takes from one volume, by member path.
pub(crate) struct VolumeWant {
    pub name: String,
    pub entries: HashMap<String, FileEntry>,
}

/// Groups `entries` (each naming its volume) by volume, in volume name order.
pub(crate) fn by_volume(entries: Vec<FileEntry>) -> Vec<VolumeWant> {
    let mut volumes: BTreeMap<String, HashMap<String, FileEntry>> = BTreeMap::new();
    for entry in entries {
        if let Some(volume) = entry.volume() {
            volumes
                .entry(volume.to_string())
                .or_default()
                .insert(entry.path.clone(), entry);
        }
    }
    volumes
        .into_iter()
        .map(|(name, entries)| VolumeWant { name, entries })
        .collect()
}

/// Checks that every one of `volumes` (named by backup `backup_id`) is in the store with the
/// size the backup recorded, naming each one that is not, before anything is downloaded.
pub(crate) async fn check_volumes_exist(
    store: &dyn Store,
    backup_id: &str,
    media: &MediaVolumes,
) -> Result<()> {
    let wanted: Vec<(&str, u64, Option<&str>)> = media
        .volumes
        .iter()
        .map(|v| (v.name(), v.object_bytes(), v.owner()))
        .chain(
            media
                .runs
                .iter()
                .map(|r| (r.name(), r.object_bytes(), r.owner())),
        )
        .collect();
    let named = wanted
        .iter()
        .filter(|(_, _, owner)| owner.is_some_and(BackupId::is_backup_name));
    let heads = futures::stream::iter(named)
        .map(|&(name, _, _)| async move {
            let head = store.head(name).await;
            (name.to_string(), head)
        })
        .buffer_unordered(HEADS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    let mut present = HashMap::new();
    for (name, head) in heads {
        match head {
            Ok(info) => {
                present.insert(name, info.size);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut faults = unusable_volumes(&media.volumes, &present);
    faults.extend(unusable_volumes(&media.runs, &present));
    if faults.is_empty() {
        return Ok(());
    }
    Err(Error::corrupt(
        backup_id,
        CorruptKind::ManifestMismatch,
        format!(
            "{} media volume(s) or file-list run(s) this backup needs are missing or damaged in {}: {}",
            faults.len(),
            store.describe(),
            describe_faults(&faults)
        ),
    ))
}

/// Reads the plaintext of volume `want.name`, handing each member the backup lists to `take`
/// (which reads it and returns its SHA-256 and length) and checking the result against the
/// list. Returns the files and bytes taken.
pub(crate) fn read_volume<R: Read>(
    reader: R,
    backup_id: &str,
    want: VolumeWant,
    mut take: impl FnMut(&FileEntry, &mut Member<'_>) -> Result<(String, u64)>,
) -> Result<(usize, u64)> {
    let VolumeWant { name, mut entries } = want;
    let mut files = 0usize;
    let mut bytes = 0u64;
    read_members(reader, &name, |mut member| {
        if member.kind == MemberKind::Directory {
            return Ok(());
        }
        // Not in this backup: media purged after the volume was written.
        let Some(entry) = entries.remove(&member.path) else {
            return Ok(());
        };
        let (hash, size) = take(&entry, &mut member)?;
        if size != entry.size || hash != entry.sha256 {
            return Err(Error::corrupt(
                backup_id,
                CorruptKind::ManifestMismatch,
                format!(
                    "{:?} in {name} does not match the backup's file list ({size} bytes read, {} listed)",
                    entry.path, entry.size
                ),
            ));
        }
        files += 1;
        bytes += size;
        Ok(())
    })?;
    if !entries.is_empty() {
        let mut absent: Vec<&str> = entries.keys().map(String::as_str).collect();
        absent.sort_unstable();
        absent.truncate(5);
        return Err(Error::corrupt(
            backup_id,
            CorruptKind::ManifestMismatch,
            format!(
                "{} file(s) the backup lists are not in {name}, e.g. {}",
                entries.len(),
                absent.join(", ")
            ),
        ));
    }
    Ok((files, bytes))
}
