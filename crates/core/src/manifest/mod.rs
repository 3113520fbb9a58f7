//! The manifest: what a backup holds, in two tar members.
//!
//! - [`HEADER_MEMBER`] is the first member. It carries what is known before any file is read
//!   (format version, tool version, server_name, time, database kind), so `list-backups` can show
//!   it after decrypting only the first few kilobytes.
//! - [`FILES_MEMBER`] is the last member. It lists every stored file with its SHA-256, which is
//!   only known once the file has been read. Writing it last means every byte of a live server
//!   is read exactly once, and its presence marks a backup that was written to the end.
//!
//! `docs/format.md` describes both for people recovering by hand.

mod digest;
mod file_list;
mod runs;

pub use digest::Sha256Digest;
pub use file_list::{read_file_list, FileListWriter, ListTotals};
pub use runs::{
    merge_keeping_gone, merge_runs, path_fits_a_run, read_run, run_name, run_owner, MergedRuns,
    RunEntry, RunReader, RunWriter, RUN_MEMBER,
};

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{CorruptKind, Error, Refusal, Result};

/// Raised when the layout of the archive or of the manifest changes incompatibly. Version 3
/// keeps the media entries in runs shared between backups; version 2 kept media in shared
/// volumes with the whole file list in every base; version 1 held media inline
/// (`docs/format.md`).
pub const FORMAT_VERSION: u32 = 3;
/// Version 4 is version 3 whose database is physical (`database.physical`): a base backup and
/// the WAL archive, not a dump. Only such backups carry it, so older tools still read the rest.
pub const PHYSICAL_FORMAT_VERSION: u32 = 4;
/// The newest version this tool reads.
pub const NEWEST_FORMAT_VERSION: u32 = PHYSICAL_FORMAT_VERSION;
/// The first version whose media entries are in runs, not in the base's file list.
pub const FORMAT_WITH_RUNS: u32 = 3;
/// The folder of a base that holds plain lists for restoring by hand: in format 2 one list of
/// member paths per volume, for `tar -x -T`; in format 3 [`RUNS_LIST`] alone.
pub const VOLUME_LISTS_FOLDER: &str = "volumes";
/// Format 3: the member that names the backup's runs, oldest first, one per line.
pub const RUNS_LIST: &str = "volumes/runs.list";
pub const HEADER_MEMBER: &str = "manifest.json";
pub const FILES_MEMBER: &str = "manifest-files.json";
pub const TOOL_NAME: &str = "synapse-backup";

/// What a stored file is, which decides where a restore puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    SigningKey,
    Database,
    Media,
    Config,
}

impl Role {
    /// The top-level folder of the role inside the archive.
    pub fn folder(self) -> &'static str {
        match self {
            Role::SigningKey => "keys",
            Role::Database => "database",
            Role::Media => "media",
            Role::Config => "config",
        }
    }

    pub fn of_member(path: &str) -> Option<Role> {
        let top = path.split('/').next()?;
        [Role::SigningKey, Role::Database, Role::Media, Role::Config]
            .into_iter()
            .find(|r| r.folder() == top)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseKind {
    Sqlite,
    Postgresql,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseInfo {
    pub kind: DatabaseKind,
    /// False when the database is backed up by other tools (`--skip-database`); a restore
    /// then reminds the user to restore it first.
    pub included: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Server version, encoding and collation of a PostgreSQL database when it was dumped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<crate::database::postgres::PostgresInfo>,
    /// Users, rooms, events and local media rows in the database's snapshot (from 0.1.x
    /// releases that run drills; `drill` compares the restored database with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<crate::database::counts::RowCounts>,
    /// Physical mode (format 4): the base and the restore point; no dump in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<crate::database::physical::PhysicalInfo>,
}

/// Prefix of the members holding a PostgreSQL custom-format dump, cut into parts because a tar
/// member must declare its size before its content and the dump's size is known only at its
/// end. Concatenated in name order they are the dump: `cat database/postgres.dump.part-* |
/// pg_restore ...`.
pub const POSTGRES_DUMP_PREFIX: &str = "database/postgres.dump.part-";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub backup_id: String,
    pub server_name: String,
    pub created: DateTime<Utc>,
    pub database: DatabaseInfo,
    pub include_remote_media: bool,
    /// Sum of the sizes of the files found when the backup started; a restore uses it to check
    /// free space before it downloads anything.
    pub expected_bytes: u64,
    pub files_member: String,
    /// Format 2: the media volumes the backup's media live in. Absent in format 1, whose
    /// media are inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaVolumes>,
}

/// Where a format-2 backup's media are: volumes it wrote and volumes of earlier backups it
/// refers to. Known before the base is written, so it is in the header and a listing or a
/// prune reads it from the first kilobytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaVolumes {
    pub kind: BackupKind,
    /// The backup whose index decided what was new; `None` for a full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub volumes: Vec<VolumeRef>,
    /// Synapse's media storage providers when the backup was made, in its order; a file's
    /// `provider` is a place in this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRecord>,
    /// Media the database lists that were neither under media_store_path nor in a provider
    /// (kept only with `--allow-missing-media`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<MissingMedia>,
    /// Format 3: the runs holding the media entries, oldest first (a later one overrides an
    /// earlier one path by path). Empty when the backup has no media.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRef>,
}

/// A run a format-3 backup's media entries are in: written by it or by an earlier backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    /// The object's name in the store, `volumes/<backup-id>-files`.
    pub name: String,
    /// How many lines (files, and paths gone) it holds: what compaction weighs.
    pub entries: u64,
    /// Size of the stored object.
    pub object_bytes: u64,
}

/// A shared object a header names with its size: a volume or a run.
pub trait SharedObject {
    fn name(&self) -> &str;
    fn object_bytes(&self) -> u64;
    /// The backup that wrote it, when the name is one this kind of object is written under.
    fn owner(&self) -> Option<&str>;
}

impl SharedObject for VolumeRef {
    fn name(&self) -> &str {
        &self.name
    }
    fn object_bytes(&self) -> u64 {
        self.object_bytes
    }
    fn owner(&self) -> Option<&str> {
        volume_owner(&self.name)
    }
}

impl SharedObject for RunRef {
    fn name(&self) -> &str {
        &self.name
    }
    fn object_bytes(&self) -> u64 {
        self.object_bytes
    }
    fn owner(&self) -> Option<&str> {
        run_owner(&self.name)
    }
}

/// A media storage provider as a backup records it: no credential, only what tells it apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    /// The module as homeserver.yaml names it.
    pub module: String,
    /// `s3://bucket/prefix` or the folder.
    pub location: String,
}

/// How many media files a backup lacks, the first [`MISSING_RECORDED`] of them, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingMedia {
    pub count: usize,
    /// Paths under media_store_path, with the media id: `local_content/ab/cd/rest (abcdrest)`.
    pub first: Vec<String>,
    /// Providers that could not be asked, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// How many missing media a header names one by one (the count is always whole).
pub const MISSING_RECORDED: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    Full,
    Incremental,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRef {
    /// The object's name in the store, `volumes/<backup-id>-<nnnn>`.
    pub name: String,
    /// Bytes of every file the volume holds, live or not.
    pub file_bytes: u64,
    /// Bytes of the files this backup takes from it.
    pub used_bytes: u64,
    /// Size of the stored object.
    pub object_bytes: u64,
}

impl MediaVolumes {
    /// The volumes this backup wrote itself (named after it), as opposed to those it shares.
    pub fn own<'a>(&'a self, backup_id: &'a str) -> impl Iterator<Item = &'a VolumeRef> + 'a {
        self.volumes
            .iter()
            .filter(move |v| volume_owner(&v.name) == Some(backup_id))
    }
}

/// The name of the `index`-th volume of backup `backup_id`.
pub fn volume_name(backup_id: &str, index: usize) -> String {
    format!("volumes/{backup_id}-{index:04}")
}

/// The backup that wrote volume `name`.
pub fn volume_owner(name: &str) -> Option<&str> {
    let base = name.strip_prefix("volumes/")?;
    let (owner, number) = base.rsplit_once('-')?;
    (number.len() == 4 && number.bytes().all(|b| b.is_ascii_digit())).then_some(owner)
}

/// The backup that wrote shared object `name`: a volume or (format 3) a run.
pub fn shared_object_owner(name: &str) -> Option<&str> {
    volume_owner(name).or_else(|| run_owner(name))
}

/// The name of the index object of backup `backup_id`: its media entries alone, so that the
/// next backup learns what is stored without downloading this one.
pub fn index_name(backup_id: &str) -> String {
    format!("index/{backup_id}")
}

/// How a file's content is stored: in the backup's own object, or (format 2, media) in a
/// volume, which may have been written by an earlier backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Storage {
    Inline,
    /// Shared by every entry of the volume read from one list ([`VolumeNames`]): a backup's
    /// list names a few volumes hundreds of thousands of times.
    Volume {
        volume: Arc<str>,
    },
}

impl Storage {
    #[cfg(test)]
    pub fn volume(name: &str) -> Storage {
        Storage::Volume {
            volume: Arc::from(name),
        }
    }
}

/// The volume names of one list, each held once, for its entries to share.
#[derive(Default)]
pub struct VolumeNames(HashSet<Arc<str>>);

impl VolumeNames {
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(name) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(Arc::clone(&shared));
        shared
    }

    /// Makes `storage` share this list's copy of its volume name.
    pub fn share(&mut self, storage: &mut Storage) {
        if let Storage::Volume { volume } = storage {
            *volume = self.get(volume);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub role: Role,
    /// Member path inside the archive, relative, `/`-separated.
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// The nanoseconds of the mtime (format 2), so that a file rewritten within the same
    /// second is not taken for unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_nanos: Option<u32>,
    pub sha256: Sha256Digest,
    #[serde(default = "inline")]
    pub storage: Storage,
    /// The media storage provider (its place in [`MediaVolumes::providers`]) the file was read
    /// from because media_store_path lacked it; `None` for a file read locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<u32>,
}

impl FileEntry {
    pub fn volume(&self) -> Option<&str> {
        match &self.storage {
            Storage::Volume { volume } => Some(volume),
            Storage::Inline => None,
        }
    }
}

fn inline() -> Storage {
    Storage::Inline
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    pub format_version: u32,
    pub backup_id: String,
    pub files: Vec<FileEntry>,
}

impl Header {
    /// Parses and checks a header read from an archive of backup `id`.
    pub fn from_json(id: &str, bytes: &[u8]) -> Result<Header> {
        let header: Header = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(
                id,
                CorruptKind::Malformed,
                format!("{HEADER_MEMBER} is not valid: {e}"),
            )
        })?;
        check_version(id, header.format_version)?;
        Ok(header)
    }
}

impl FileList {
    pub fn from_json(id: &str, bytes: &[u8]) -> Result<FileList> {
        let list: FileList = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(
                id,
                CorruptKind::Malformed,
                format!("{FILES_MEMBER} is not valid: {e}"),
            )
        })?;
        check_version(id, list.format_version)?;
        for entry in &list.files {
            crate::archive::member_path::check_member_path(&entry.path).map_err(|why| {
                Error::corrupt(id, CorruptKind::Malformed, format!("{FILES_MEMBER}: {why}"))
            })?;
        }
        Ok(list)
    }
}

/// Puts a file list in path order, one entry per path, the later entry of a path winning (as
/// in a map). Every tool writes its lists sorted; one that is not is put in order rather than
/// trusted.
pub fn sort_by_path(entries: &mut Vec<FileEntry>) {
    let sorted = entries.windows(2).all(|pair| pair[0].path < pair[1].path);
    if !sorted {
        // Reversed, the stable sort puts a path's later entry first, and dedup keeps the first.
        entries.reverse();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries.dedup_by(|later, first| later.path == first.path);
    }
}

pub(crate) fn check_version(id: &str, version: u32) -> Result<()> {
    if version > NEWEST_FORMAT_VERSION {
        return Err(Error::refused(Refusal::NewerFormat, format!(
            "backup {id} uses format version {version}, newer than this synapse-backup understands ({NEWEST_FORMAT_VERSION}); upgrade synapse-backup"
        )));
    }
    if version == 0 {
        return Err(Error::corrupt(
            id,
            CorruptKind::Malformed,
            "manifest format_version is 0",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format_version: FORMAT_VERSION,
            tool: TOOL_NAME.into(),
            tool_version: "0.1.0".into(),
            backup_id: "backup-20260101000000000000".into(),
            server_name: "example.org".into(),
            created: Utc::now(),
            database: DatabaseInfo {
                kind: DatabaseKind::Sqlite,
                included: true,
                note: None,
                postgres: None,
                counts: None,
                physical: None,
            },
            include_remote_media: false,
            expected_bytes: 3,
            files_member: FILES_MEMBER.into(),
            media: None,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = header();
        let json = serde_json::to_vec(&h).unwrap();
        assert_eq!(Header::from_json("x", &json).unwrap(), h);
    }

    #[test]
    fn future_version_is_refused() {
        let mut h = header();
        h.format_version = NEWEST_FORMAT_VERSION + 1;
        let json = serde_json::to_vec(&h).unwrap();
        let err = Header::from_json("x", &json).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Refused);
    }

    #[test]
    fn file_list_rejects_escaping_paths() {
        let json = br#"{"format_version":1,"backup_id":"b","files":[{"role":"media","path":"../etc/passwd","size":1,"mode":420,"mtime":0,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}]}"#;
        assert!(FileList::from_json("b", json).is_err());
    }

    #[test]
    fn volumes_name_their_owner() {
        let name = volume_name("backup-20260101000000000000", 7);
        assert_eq!(name, "volumes/backup-20260101000000000000-0007");
        assert_eq!(volume_owner(&name), Some("backup-20260101000000000000"));
        assert_eq!(volume_owner("volumes/backup-x"), None);
        assert_eq!(volume_owner("index/backup-x-0001"), None);
    }

    #[test]
    fn format_1_headers_still_parse() {
        let mut h = header();
        h.format_version = 1;
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains("\"media\""), "{json}");
        assert_eq!(Header::from_json("x", json.as_bytes()).unwrap().media, None);
    }

    #[test]
    fn roles_map_to_folders() {
        assert_eq!(
            Role::of_member("media/local_content/ab/cd/ef"),
            Some(Role::Media)
        );
        assert_eq!(
            Role::of_member("keys/x.signing.key"),
            Some(Role::SigningKey)
        );
        assert_eq!(Role::of_member("other/x"), None);
    }
}
