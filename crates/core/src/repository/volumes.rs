//! Format 2: the media a backup keeps in volumes, some written by earlier backups. Restore and
//! verify read the base first (its file list says which file is in which volume), check that
//! every volume is in the store, then read each volume, taking the members the backup lists
//! and checking each against its size and SHA-256. A volume may hold files the backup does not
//! include (media purged since it was written); they are skipped, so a restore never brings
//! back purged media.

use std::collections::HashMap;
use std::io::Read;

use futures::StreamExt;

use crate::archive::{read_members, Member, MemberKind};
use crate::error::{CorruptKind, Error, ErrorKind, Result};
use crate::manifest::{FileEntry, MediaVolumes, Sha256Digest, SharedObject};
use crate::repository::trust::{describe_faults, unusable_volumes};
use crate::repository::wants::VolumeWant;
use crate::repository::BackupId;
use crate::store::Store;

/// HEAD requests at once when checking that a backup's volumes exist.
const HEADS_AT_ONCE: usize = 8;
/// Volumes downloaded, decrypted and read at once by restore and verify: each is one stream
/// and one decryption thread, so several keep both the network and the cores busy.
pub(crate) const VOLUMES_AT_ONCE: usize = 4;

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
    mut take: impl FnMut(&FileEntry, &mut Member<'_>) -> Result<(Sha256Digest, u64)>,
) -> Result<(usize, u64)> {
    let name = want.name.clone();
    let mut wanted = want.open()?;
    let mut files = 0usize;
    let mut bytes = 0u64;
    read_members(reader, &name, |mut member| {
        if member.kind == MemberKind::Directory {
            return Ok(());
        }
        // Not in this backup: media purged after the volume was written.
        let Some(entry) = wanted.take(&member.path)? else {
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
    let (absent, first) = wanted.absent(5)?;
    if absent > 0 {
        return Err(Error::corrupt(
            backup_id,
            CorruptKind::ManifestMismatch,
            format!(
                "{absent} file(s) the backup lists are not in {name}, e.g. {}",
                first.join(", ")
            ),
        ));
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Role, Storage};
    use crate::repository::wants::by_volume;
    use sha2::{Digest, Sha256};

    fn entry(volume: &str, path: &str, bytes: &[u8]) -> FileEntry {
        FileEntry {
            role: Role::Media,
            path: path.into(),
            size: bytes.len() as u64,
            mode: 0o600,
            mtime: 0,
            mtime_nanos: Some(0),
            sha256: Sha256::digest(bytes).into(),
            storage: Storage::volume(volume),
            provider: None,
        }
    }

    fn volume_tar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder.append_data(&mut header, path, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn hash(member: &mut Member<'_>) -> Result<(Sha256Digest, u64)> {
        let mut bytes = Vec::new();
        member.data.read_to_end(&mut bytes).unwrap();
        Ok((Sha256::digest(&bytes).into(), bytes.len() as u64))
    }

    #[test]
    fn a_volume_hands_over_each_listed_member_once_and_names_those_it_lacks() {
        let tar = volume_tar(&[
            ("media/a", b"alpha"),
            ("media/purged", b"not listed"),
            ("media/b", b"beta"),
            ("media/b", b"beta"),
        ]);
        let listed = |paths: &[&str]| {
            let all = [
                ("media/a", &b"alpha"[..]),
                ("media/b", b"beta"),
                ("media/c", b"c"),
            ];
            let entries = all
                .iter()
                .filter(|(p, _)| paths.contains(p))
                .map(|(p, bytes)| entry("volumes/v", p, bytes))
                .collect();
            by_volume(entries).pop().unwrap()
        };
        let mut taken = Vec::new();
        let read = read_volume(
            &tar[..],
            "backup-1",
            listed(&["media/a", "media/b"]),
            |e, m| {
                taken.push(e.path.clone());
                hash(m)
            },
        );
        assert_eq!(read.unwrap(), (2, 9));
        assert_eq!(
            taken,
            ["media/a", "media/b"],
            "a member twice is taken once"
        );
        let lacking = read_volume(
            &tar[..],
            "backup-1",
            listed(&["media/a", "media/c"]),
            |_, m| hash(m),
        )
        .unwrap_err();
        assert_eq!(lacking.corrupt_kind(), Some(CorruptKind::ManifestMismatch));
        assert!(lacking.to_string().contains("media/c"), "{lacking}");
        let mut changed = entry("volumes/v", "media/a", b"alpha");
        changed.sha256 = Sha256::digest(b"other").into();
        let changed = by_volume(vec![changed]).pop().unwrap();
        let err = read_volume(&tar[..], "backup-1", changed, |_, m| hash(m)).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
