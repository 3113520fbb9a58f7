//! The content check that verify and restore share: a backup is sound when the first member is
//! the header, the last is the file list, and every data member appears in the list with the
//! same size and SHA-256 (and nothing else does).

use std::collections::{HashMap, HashSet};
use std::io::Read;

use sha2::{Digest, Sha256};

use crate::archive::{Member, MemberKind};
use crate::error::{CorruptKind, Error, Result};
use crate::manifest::{
    read_file_list, FileEntry, Header, Role, Sha256Digest, FILES_MEMBER, HEADER_MEMBER,
    VOLUME_LISTS_FOLDER,
};
use crate::progress::Progress;
use crate::repository::trust::check_header_names;

/// The largest manifest member accepted, so a hostile archive cannot make us allocate without
/// bound (50,000 files need about 10 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 512 * 1024 * 1024;

/// What kind of archive a backup object holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// Written by synapse-backup, with a manifest.
    Manifest(Box<Header>),
    /// Written by the Synapse charm's `tar | gpg` pipeline: no manifest.
    Charm,
}

/// Tracks the members of one archive and checks them against its manifest.
pub(crate) struct ContentCheck {
    id: String,
    format: Option<ArchiveFormat>,
    seen: HashMap<String, (u64, Sha256Digest)>,
    /// Paths claimed but not yet recorded (their content is being read).
    claimed: HashSet<String>,
    /// Every folder that some member lies in.
    folders: HashSet<String>,
    list: Option<ListRead>,
    bytes: u64,
    /// Format 2: the entries whose bytes are in volumes, to be read from there.
    in_volumes: Vec<FileEntry>,
}

/// What the file list said, compared entry by entry as it was read.
struct ListRead {
    backup_id: String,
    entries: usize,
    /// The first entry that disagreed with the archive.
    problem: Option<String>,
}

impl ContentCheck {
    pub fn new(id: &str) -> Self {
        ContentCheck {
            id: id.to_string(),
            format: None,
            seen: HashMap::new(),
            claimed: HashSet::new(),
            folders: HashSet::new(),
            list: None,
            bytes: 0,
            in_volumes: Vec::new(),
        }
    }

    pub fn format(&self) -> Option<&ArchiveFormat> {
        self.format.as_ref()
    }

    /// Handles the manifest members. Returns `true` when `member` was one of them (and has been
    /// consumed); data members return `false` and must be passed to [`Self::record`] after
    /// their content was read.
    pub fn take_manifest_member(&mut self, member: &mut Member<'_>) -> Result<bool> {
        if self.list.is_some() {
            return Err(Error::corrupt(
                &self.id,
                CorruptKind::ManifestMismatch,
                format!(
                    "member {:?} comes after the file list, which must be last",
                    member.path
                ),
            ));
        }
        let first = self.format.is_none();
        if first {
            if member.path == HEADER_MEMBER && member.kind == MemberKind::File {
                let bytes = read_small(member, &self.id)?;
                let header = Header::from_json(&self.id, &bytes)?;
                check_header_names(&self.id, &header)?;
                self.format = Some(ArchiveFormat::Manifest(Box::new(header)));
                return Ok(true);
            }
            self.format = Some(ArchiveFormat::Charm);
            return Ok(false);
        }
        if member.path == HEADER_MEMBER && self.is_manifest() {
            return Err(Error::corrupt(
                &self.id,
                CorruptKind::ManifestMismatch,
                "a second manifest header in the archive",
            ));
        }
        if member.path == FILES_MEMBER && self.is_manifest() {
            self.list = Some(self.read_list(member)?);
            return Ok(true);
        }
        if self.volumes().is_some() && is_volume_list(&member.path) {
            // The lists for restoring by hand; the file list says the same, and is checked.
            std::io::copy(
                &mut (&mut member.data).take(MAX_MANIFEST_BYTES),
                &mut std::io::sink(),
            )
            .map_err(|e| {
                Error::corrupt(
                    &self.id,
                    CorruptKind::Malformed,
                    format!("cannot read {}: {e}", member.path),
                )
            })?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The volumes a format-2 header names.
    fn volumes(&self) -> Option<HashSet<String>> {
        match &self.format {
            Some(ArchiveFormat::Manifest(header)) => header
                .media
                .as_ref()
                .map(|m| m.volumes.iter().map(|v| v.name.clone()).collect()),
            _ => None,
        }
    }

    /// Format 2: the file-list entries whose bytes are in volumes, sorted by path. Call once
    /// the archive was read to its end.
    pub fn take_volume_entries(&mut self) -> Vec<FileEntry> {
        std::mem::take(&mut self.in_volumes)
    }

    /// Reads the file list, the last member, comparing each entry with what the archive held as
    /// it goes: only the entry being read is in memory. A disagreement is kept for `finish`,
    /// which reports problems in a fixed order (another backup's list before a changed file).
    fn read_list(&mut self, member: &mut Member<'_>) -> Result<ListRead> {
        if member.size > MAX_MANIFEST_BYTES {
            return Err(Error::corrupt(
                &self.id,
                CorruptKind::Malformed,
                format!("{} is implausibly large", member.path),
            ));
        }
        let volumes = self.volumes().unwrap_or_default();
        let seen = &mut self.seen;
        let in_volumes = &mut self.in_volumes;
        let mut problem = None;
        let (backup_id, entries) = read_file_list(
            &self.id,
            // serde_json reads a byte at a time; each would go down to the decryptor.
            std::io::BufReader::with_capacity(1 << 16, (&mut member.data).take(MAX_MANIFEST_BYTES)),
            |entry| {
                if problem.is_some() {
                    return;
                }
                match entry.volume() {
                    None => problem = disagreement(seen, &entry),
                    Some(volume) if !volumes.contains(volume) => {
                        problem = Some(format!(
                            "{:?} is said to be in {volume}, which the header does not name",
                            entry.path
                        ))
                    }
                    Some(_) if entry.role != Role::Media => {
                        problem = Some(format!(
                            "{:?} is said to be in a media volume but is not media",
                            entry.path
                        ))
                    }
                    Some(_) => in_volumes.push(entry),
                }
            },
        )?;
        self.in_volumes.sort_by(|a, b| a.path.cmp(&b.path));
        if let Some(pair) = self.in_volumes.windows(2).find(|w| w[0].path == w[1].path) {
            problem.get_or_insert(format!("{:?} is listed twice", pair[0].path));
        }
        Ok(ListRead {
            backup_id,
            entries,
            problem,
        })
    }

    fn is_manifest(&self) -> bool {
        matches!(self.format, Some(ArchiveFormat::Manifest(_)))
    }

    /// Claims a data member's path before its content is read: a path stored twice, or used
    /// both as a file and as a folder, is refused here, by its member name.
    pub fn claim(&mut self, path: &str) -> Result<()> {
        if self.seen.contains_key(path) || self.claimed.contains(path) {
            return Err(Error::corrupt(
                &self.id,
                CorruptKind::HostileMember,
                format!("member {path:?} appears twice"),
            ));
        }
        if self.folders.contains(path) {
            return Err(Error::corrupt(
                &self.id,
                CorruptKind::HostileMember,
                format!("member {path:?} is a file where other members need a folder"),
            ));
        }
        let mut ancestor = path;
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            if self.seen.contains_key(parent) || self.claimed.contains(parent) {
                return Err(Error::corrupt(
                    &self.id,
                    CorruptKind::HostileMember,
                    format!("member {path:?} lies under {parent:?}, which is a file"),
                ));
            }
            if !self.folders.insert(parent.to_string()) {
                break;
            }
            ancestor = parent;
        }
        self.claimed.insert(path.to_string());
        Ok(())
    }

    /// Records a claimed data member's size and hash once its content was read.
    pub fn record(&mut self, path: &str, size: u64, sha256: Sha256Digest) -> Result<()> {
        self.bytes += size;
        self.claimed.remove(path);
        self.seen.insert(path.to_string(), (size, sha256));
        Ok(())
    }

    /// Checks completeness once the whole archive has been read.
    pub fn finish(self) -> Result<(ArchiveFormat, usize, u64)> {
        let id = self.id;
        let format = self.format.ok_or_else(|| {
            Error::corrupt(&id, CorruptKind::Malformed, "the archive holds no members")
        })?;
        if let ArchiveFormat::Manifest(header) = &format {
            let list = self.list.ok_or_else(|| {
                Error::corrupt(
                    &id,
                    CorruptKind::ManifestMismatch,
                    format!("{FILES_MEMBER} is missing: the backup was cut short"),
                )
            })?;
            if list.backup_id != header.backup_id {
                return Err(Error::corrupt(
                    &id,
                    CorruptKind::ManifestMismatch,
                    "the file list belongs to another backup",
                ));
            }
            if let Some(problem) = list.problem {
                return Err(Error::corrupt(&id, CorruptKind::ManifestMismatch, problem));
            }
            if let Some(extra) = self.seen.keys().next() {
                return Err(Error::corrupt(
                    &id,
                    CorruptKind::ManifestMismatch,
                    format!("{extra:?} is in the archive but not in the manifest"),
                ));
            }
            return Ok((format, list.entries, self.bytes));
        }
        Ok((format, self.seen.len(), self.bytes))
    }
}

/// Checks one file-list entry against the members read (and removes it from them), describing
/// how they disagree.
fn disagreement(
    seen: &mut HashMap<String, (u64, Sha256Digest)>,
    entry: &FileEntry,
) -> Option<String> {
    match seen.remove(&entry.path) {
        None => Some(format!(
            "{:?} is in the manifest but not in the archive",
            entry.path
        )),
        Some((size, _)) if size != entry.size => Some(format!(
            "{:?} has {size} bytes, the manifest says {}",
            entry.path, entry.size
        )),
        Some((_, hash)) if hash != entry.sha256 => Some(format!(
            "{:?} does not match its SHA-256 in the manifest",
            entry.path
        )),
        Some(_) => None,
    }
}

fn is_volume_list(path: &str) -> bool {
    path.strip_prefix(VOLUME_LISTS_FOLDER)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| name.ends_with(".list") && !name.contains('/'))
}

fn read_small(member: &mut Member<'_>, id: &str) -> Result<Vec<u8>> {
    if member.size > MAX_MANIFEST_BYTES {
        return Err(Error::corrupt(
            id,
            CorruptKind::Malformed,
            format!("{} is implausibly large", member.path),
        ));
    }
    let mut bytes = Vec::with_capacity(member.size as usize);
    member
        .data
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            Error::corrupt(
                id,
                CorruptKind::Malformed,
                format!("cannot read {}: {e}", member.path),
            )
        })?;
    Ok(bytes)
}

/// Reads a member to its end, returning its SHA-256 and length, copying it to `out` if given.
pub(crate) fn hash_member(
    member: &mut Member<'_>,
    mut out: Option<&mut dyn std::io::Write>,
    progress: &dyn Progress,
) -> std::io::Result<(Sha256Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = member.data.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        if let Some(out) = out.as_mut() {
            out.write_all(&buffer[..n]).map_err(|e| {
                // Tagged so the caller can tell a local write failure from a stream failure.
                std::io::Error::new(e.kind(), WriteFailed(e))
            })?;
        }
        total += n as u64;
        progress.advance(n as u64);
    }
    Ok((hasher.finalize().into(), total))
}

/// Marks an error that came from writing locally, not from the backup stream.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct WriteFailed(#[source] pub std::io::Error);

/// A member whose content could not be read. The stream's own failure (store, truncation,
/// integrity, Ctrl-C) is reported by `read_members`, which saw it first; this is what remains.
pub(crate) fn unreadable_member(id: &str, path: &str, err: &std::io::Error) -> Error {
    Error::corrupt(
        id,
        CorruptKind::Malformed,
        format!("reading {path:?}: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A charm archive's check (no header member first), with `paths` claimed and recorded.
    fn charm_check(paths: &[&str]) -> Result<ContentCheck> {
        let mut check = ContentCheck::new("backup-x");
        let mut data: &[u8] = b"";
        let mut first = Member {
            path: "data/homeserver.yaml".into(),
            kind: MemberKind::File,
            size: 0,
            mode: 0o644,
            mtime: 0,
            data: &mut data,
        };
        assert!(!check.take_manifest_member(&mut first)?);
        assert_eq!(check.format(), Some(&ArchiveFormat::Charm));
        for path in paths {
            check.claim(path)?;
            check.record(path, 3, Sha256Digest::from_bytes([0; 32]))?;
        }
        Ok(check)
    }

    fn hostile(result: Result<ContentCheck>) -> String {
        let err = result.err().expect("the member must be refused");
        assert_eq!(
            err.corrupt_kind(),
            Some(CorruptKind::HostileMember),
            "{err}"
        );
        err.to_string()
    }

    #[test]
    fn a_path_stored_twice_is_refused_by_name() {
        let message = hostile(charm_check(&["data/a", "data/a"]));
        assert!(message.contains("\"data/a\" appears twice"), "{message}");
    }

    #[test]
    fn a_file_where_other_members_need_a_folder_is_refused() {
        let message = hostile(charm_check(&["data/a/b", "data/a"]));
        assert!(
            message.contains("where other members need a folder"),
            "{message}"
        );
    }

    #[test]
    fn a_member_under_a_file_is_refused() {
        let message = hostile(charm_check(&["data/a", "data/a/b"]));
        assert!(message.contains("lies under \"data/a\""), "{message}");
    }

    #[test]
    fn a_charm_archive_counts_what_it_holds() {
        let check = charm_check(&["data/a", "data/b/c"]).unwrap();
        let (format, files, bytes) = check.finish().unwrap();
        assert_eq!((format, files, bytes), (ArchiveFormat::Charm, 2, 6));
    }

    #[test]
    fn an_archive_without_members_is_malformed() {
        let err = ContentCheck::new("backup-x").finish().unwrap_err();
        assert_eq!(err.corrupt_kind(), Some(CorruptKind::Malformed), "{err}");
    }

    #[test]
    fn volume_lists_are_recognised_only_directly_in_their_folder() {
        assert!(is_volume_list(&format!(
            "{VOLUME_LISTS_FOLDER}/v-0001.list"
        )));
        assert!(!is_volume_list(&format!(
            "{VOLUME_LISTS_FOLDER}/x/v-0001.list"
        )));
        assert!(!is_volume_list(&format!(
            "{VOLUME_LISTS_FOLDER}/v-0001.txt"
        )));
        assert!(!is_volume_list("media/v-0001.list"));
    }
}
