//! Where each member of a backup goes, staging next to its target, and the final swap.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::archive::MemberKind;
use crate::database::postgres::Postgres;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{DatabaseKind, Header, POSTGRES_DUMP_PREFIX};
use crate::ops::backup::{CACHE_MEDIA_DIRS, LOCAL_MEDIA_DIRS};
use crate::ops::verify::ArchiveFormat;
use crate::synapse::{Database, HomeserverConfig};

use super::journal::{Journal, JournalEntry, Phase};

/// Free space kept in reserve beyond the backup's size.
const SPACE_MARGIN: u64 = 64 * 1024 * 1024;
/// Nothing restored is writable by others.
const MODE_MASK: u32 = 0o775;

/// What to do with a member.
pub(crate) enum Placement {
    Skip,
    Stage(PathBuf),
    /// Checked against the manifest only: a database dump, restored by pg_restore in a second
    /// pass once everything has been verified.
    HashOnly,
}

pub(crate) enum Destination {
    Live(Box<HomeserverConfig>),
    Directory(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Root,
    Key,
    Database,
    DatabaseWal,
    /// A sidecar of the live database (`-wal`, `-shm`, `-journal`) that must not meet the
    /// restored database: moved aside, never replaced.
    DatabaseSidecar,
    Media(&'static str),
    Config,
}

struct Target {
    slot: Slot,
    live: PathBuf,
    staging: PathBuf,
    previous: PathBuf,
    is_dir: bool,
    /// Replaced even when the backup holds nothing for it (an empty folder then).
    always: bool,
    staged: bool,
    owner: Option<(u32, u32)>,
}

pub(crate) struct Plan {
    id: String,
    live_mode: bool,
    sqlite_target: bool,
    charm_root: String,
    targets: Vec<Target>,
    skipped: BTreeSet<String>,
    pub notes: Vec<String>,
    /// The target's server_name (live restores only).
    pub server_name: Option<String>,
    /// The target's PostgreSQL database, when the backup holds a dump to restore into it.
    pub postgres: Option<Postgres>,
}

impl Plan {
    pub fn new(
        destination: &Destination,
        id: &str,
        header: Option<&Header>,
        options: &super::RestoreOptions,
    ) -> Result<Plan> {
        let charm_root = options.charm_source_root.as_str();
        let replace_database = options.replace_database;
        let mut plan = Plan {
            id: id.to_string(),
            live_mode: matches!(destination, Destination::Live(_)),
            sqlite_target: false,
            charm_root: charm_root.trim_matches('/').to_string(),
            targets: Vec::new(),
            skipped: BTreeSet::new(),
            notes: Vec::new(),
            postgres: None,
            server_name: match destination {
                Destination::Live(hs) => Some(hs.server_name.clone()),
                Destination::Directory(_) => None,
            },
        };
        match destination {
            Destination::Directory(dir) => {
                if dir.exists() && fs::read_dir(dir).at("read", dir)?.next().is_some() {
                    return Err(Error::Refused(format!(
                        "--target-dir {} is not empty; give an empty or new directory",
                        dir.display()
                    )));
                }
                plan.add(Slot::Root, dir, true, true)?;
            }
            Destination::Live(hs) => plan.add_live_targets(hs, header, replace_database)?,
        }
        for target in &plan.targets {
            if target.previous.exists() {
                return Err(Error::Refused(format!(
                    "{} already exists from an earlier restore of this backup; move it away first",
                    target.previous.display()
                )));
            }
        }
        Ok(plan)
    }

    fn add_live_targets(
        &mut self,
        hs: &HomeserverConfig,
        header: Option<&Header>,
        replace_database: bool,
    ) -> Result<()> {
        self.add(Slot::Key, &hs.signing_key, false, false)?;
        match (&hs.database, header.map(|h| &h.database)) {
            (Database::Sqlite { path }, Some(info))
                if info.included && info.kind != DatabaseKind::Sqlite =>
            {
                return Err(Error::Refused(format!(
                    "backup {} holds a {:?} database but {} uses SQLite at {}",
                    self.id,
                    info.kind,
                    hs.path.display(),
                    path.display()
                )));
            }
            (Database::Postgres(_), Some(info))
                if info.included && info.kind == DatabaseKind::Sqlite =>
            {
                return Err(Error::Refused(format!(
                    "backup {} holds a SQLite database but {} uses PostgreSQL; restore onto a SQLite config, or port the database with synapse_port_db after restoring into --target-dir",
                    self.id,
                    hs.path.display()
                )));
            }
            (Database::Sqlite { path }, _) => {
                self.sqlite_target = true;
                for suffix in ["-wal", "-shm", "-journal"] {
                    let sidecar = PathBuf::from(format!("{}{suffix}", path.display()));
                    self.add(Slot::DatabaseSidecar, &sidecar, false, false)?;
                }
                self.add(Slot::Database, path, false, false)?;
                let wal = PathBuf::from(format!("{}-wal", path.display()));
                self.add(Slot::DatabaseWal, &wal, false, false)?;
            }
            (Database::Postgres(args), Some(info))
                if info.included && info.kind == DatabaseKind::Postgresql =>
            {
                let postgres = Postgres::new(args);
                // Before anything is downloaded or stopped: the target must be empty.
                postgres.check_restore_target(replace_database)?;
                self.postgres = Some(postgres);
            }
            (Database::Postgres(_), _) => {}
        }
        for dir in LOCAL_MEDIA_DIRS {
            self.add(Slot::Media(dir), &hs.media_store.join(dir), true, true)?;
        }
        for dir in CACHE_MEDIA_DIRS {
            self.add(Slot::Media(dir), &hs.media_store.join(dir), true, false)?;
        }
        let config_dir = hs
            .path
            .parent()
            .unwrap_or(Path::new("/"))
            .join(format!("restored-config-{}", self.id));
        self.add(Slot::Config, &config_dir, true, false)?;
        Ok(())
    }

    fn add(&mut self, slot: Slot, live: &Path, is_dir: bool, always: bool) -> Result<()> {
        let parent = live.parent().unwrap_or(Path::new("/"));
        let name = live
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| Error::config(format!("{} has no file name", live.display())))?;
        let owner = if self.live_mode && nix::unistd::geteuid().is_root() {
            fs::metadata(live)
                .or_else(|_| fs::metadata(parent))
                .ok()
                .map(|m| (m.uid(), m.gid()))
        } else {
            None
        };
        self.targets.push(Target {
            slot,
            live: live.to_path_buf(),
            staging: parent.join(format!(".{name}.staging-{}", self.id)),
            previous: parent.join(format!("{name}.pre-restore-{}", self.id)),
            is_dir,
            always,
            staged: false,
            owner,
        });
        Ok(())
    }

    /// Creates the staging of targets that are replaced even when the backup has nothing for
    /// them, so that, say, thumbnails made after the backup do not survive its restore.
    pub fn prepare(&mut self) -> Result<()> {
        for index in 0..self.targets.len() {
            if self.targets[index].always {
                self.ensure_staging(index)?;
            }
        }
        Ok(())
    }

    /// Refuses when a target's filesystem has less room than `needed` bytes plus a margin.
    pub fn check_free_space(&self, needed: u64) -> Result<()> {
        let mut checked = BTreeSet::new();
        for target in &self.targets {
            let parent = existing_ancestor(&target.live);
            let Ok(meta) = fs::metadata(&parent) else {
                continue;
            };
            if !checked.insert(meta.dev()) {
                continue;
            }
            let stat = nix::sys::statvfs::statvfs(&parent).map_err(|e| {
                Error::Other(format!(
                    "cannot check free space on {}: {e}",
                    parent.display()
                ))
            })?;
            let available = stat.blocks_available() as u64 * stat.fragment_size() as u64;
            if available < needed + SPACE_MARGIN {
                return Err(Error::Refused(format!(
                    "not enough free space on the filesystem of {}: the restore stages {} MiB next to the live data and {} MiB are free; free some space (or pass --skip-space-check if the data is split across filesystems)",
                    parent.display(),
                    (needed + SPACE_MARGIN) >> 20,
                    available >> 20
                )));
            }
        }
        Ok(())
    }

    /// Maps a member to the staging path it is written to, or `None` to skip it.
    pub fn place(&mut self, member: &str, kind: MemberKind, charm: bool) -> Result<Placement> {
        if member.starts_with(POSTGRES_DUMP_PREFIX) && !charm && self.live_mode {
            return match &self.postgres {
                Some(_) => Ok(Placement::HashOnly),
                None => Err(Error::Refused(format!(
                    "backup {} holds a PostgreSQL dump but the target does not use PostgreSQL",
                    self.id
                ))),
            };
        }
        Ok(self
            .place_in_layout(member, kind, charm)?
            .map_or(Placement::Skip, Placement::Stage))
    }

    fn place_in_layout(
        &mut self,
        member: &str,
        kind: MemberKind,
        charm: bool,
    ) -> Result<Option<PathBuf>> {
        let layout = if charm {
            match self.charm_to_layout(member, kind) {
                Some(path) => path,
                None => return Ok(None),
            }
        } else {
            member.to_string()
        };
        let (slot, rel) = if self.live_mode {
            match self.route(&layout)? {
                Some(found) => found,
                None => return Ok(None),
            }
        } else {
            (Slot::Root, layout)
        };
        let index = self
            .targets
            .iter()
            .position(|t| t.slot == slot)
            .ok_or_else(|| Error::Other(format!("no target for member {member:?}")))?;
        if slot == Slot::Key && self.targets[index].staged {
            return Err(Error::corrupt(
                &self.id,
                "the backup holds more than one signing key",
            ));
        }
        self.ensure_staging(index)?;
        let target = &self.targets[index];
        if !target.is_dir {
            if kind == MemberKind::Directory {
                return Err(Error::corrupt(
                    &self.id,
                    format!("member {member:?} should be a file"),
                ));
            }
            return Ok(Some(target.staging.clone()));
        }
        if rel.is_empty() {
            return Ok(None);
        }
        Ok(Some(target.staging.join(rel)))
    }

    /// Translates a member of the charm's `tar -c /data/...` into this tool's layout.
    fn charm_to_layout(&mut self, member: &str, kind: MemberKind) -> Option<String> {
        let rel = if self.charm_root.is_empty() {
            Some(member)
        } else {
            member
                .strip_prefix(&self.charm_root)
                .and_then(|r| r.strip_prefix('/'))
        };
        let mapped = rel.and_then(|rel| {
            if let Some(media) = rel.strip_prefix("media_store/") {
                return Some(format!("media/{media}"));
            }
            match rel {
                "homeserver.db" => Some("database/homeserver.db".to_string()),
                "homeserver.db-wal" => Some("database/homeserver.db-wal".to_string()),
                r if r.ends_with(".signing.key") && !r.contains('/') => Some(format!("keys/{r}")),
                _ => None,
            }
        });
        if mapped.is_none() && kind == MemberKind::File {
            self.skipped.insert(member.to_string());
        }
        mapped
    }

    fn route(&self, layout: &str) -> Result<Option<(Slot, String)>> {
        let (top, rest) = layout.split_once('/').unwrap_or((layout, ""));
        let slot_rel = match top {
            "keys" if !rest.is_empty() && !rest.contains('/') => (Slot::Key, String::new()),
            "database" => match rest {
                "homeserver.db" | "homeserver.db-wal" if !self.sqlite_target => {
                    return Err(Error::Refused(format!(
                        "backup {} holds a SQLite database but the target uses PostgreSQL",
                        self.id
                    )))
                }
                "homeserver.db" => (Slot::Database, String::new()),
                "homeserver.db-wal" => (Slot::DatabaseWal, String::new()),
                "" => return Ok(None),
                other => {
                    return Err(Error::corrupt(
                        &self.id,
                        format!("unexpected database member {other:?}"),
                    ))
                }
            },
            "media" => {
                let (dir, rel) = rest.split_once('/').unwrap_or((rest, ""));
                match LOCAL_MEDIA_DIRS
                    .iter()
                    .chain(CACHE_MEDIA_DIRS.iter())
                    .find(|d| **d == dir)
                {
                    Some(known) => (Slot::Media(known), rel.to_string()),
                    None if dir.is_empty() => return Ok(None),
                    None => {
                        return Err(Error::corrupt(
                            &self.id,
                            format!("unexpected media folder {dir:?}"),
                        ))
                    }
                }
            }
            "config" => (Slot::Config, rest.to_string()),
            _ => {
                return Err(Error::corrupt(
                    &self.id,
                    format!("unexpected member {layout:?}"),
                ))
            }
        };
        Ok(Some(slot_rel))
    }

    fn ensure_staging(&mut self, index: usize) -> Result<()> {
        let target = &mut self.targets[index];
        if target.staged {
            return Ok(());
        }
        if target.staging.exists() {
            return Err(Error::Other(format!(
                "{} exists; it is left from another restore: remove it and retry",
                target.staging.display()
            )));
        }
        if let Some(parent) = target.live.parent() {
            fs::create_dir_all(parent).at("create", parent)?;
        }
        if target.is_dir {
            fs::create_dir(&target.staging).at("create staging", &target.staging)?;
            chown(&target.staging, target.owner)?;
        }
        target.staged = true;
        Ok(())
    }

    pub fn make_dir(&self, path: &Path) -> Result<()> {
        self.create_dirs(path)
    }

    fn create_dirs(&self, path: &Path) -> Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.create_dirs(parent)?;
        }
        match fs::create_dir(path) {
            Ok(()) => chown(path, self.owner_of(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            Err(e) => Err(Error::io("create", path, e)),
        }
    }

    fn owner_of(&self, path: &Path) -> Option<(u32, u32)> {
        self.targets
            .iter()
            .find(|t| path.starts_with(&t.staging))
            .and_then(|t| t.owner)
    }

    pub fn create_file(&self, path: &Path, mode: u32) -> Result<BufWriter<File>> {
        if let Some(parent) = path.parent() {
            self.create_dirs(parent)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode((mode & MODE_MASK) | 0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::corrupt(&self.id, format!("{} is written twice", path.display()))
                } else {
                    Error::io("create", path, e)
                }
            })?;
        Ok(BufWriter::with_capacity(256 * 1024, file))
    }

    pub fn finish_file(&self, file: BufWriter<File>, path: &Path, mtime: i64) -> Result<()> {
        let file = file
            .into_inner()
            .map_err(|e| Error::io("write", path, e.into_error()))?;
        if mtime > 0 {
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64);
            file.set_modified(when).at("set mtime of", path)?;
        }
        chown(path, self.owner_of(path))
    }

    /// Refuses a live restore whose backup lacks the signing key: Synapse would silently make
    /// a new one and the server could no longer federate under its name.
    pub fn check_complete(&self, format: &ArchiveFormat) -> Result<()> {
        if !self.skipped.is_empty() {
            let sample: Vec<&String> = self.skipped.iter().take(5).collect();
            tracing::warn!(
                "{} members of the charm backup are outside the known layout and were not restored, e.g. {sample:?}",
                self.skipped.len()
            );
        }
        if self.live_mode {
            let key = self.targets.iter().find(|t| t.slot == Slot::Key);
            if !key.is_some_and(|t| t.staged) {
                let hint = match format {
                    ArchiveFormat::Charm => format!(
                        " (looked for {}/<server>.signing.key; pass --charm-source-root if the charm kept its data elsewhere)",
                        self.charm_root
                    ),
                    ArchiveFormat::Manifest(_) => String::new(),
                };
                return Err(Error::corrupt(
                    &self.id,
                    format!(
                        "the backup holds no signing key{hint}; refusing to restore without it"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Makes the staged data durable before the swap.
    pub fn sync(&self) -> Result<()> {
        let mut synced = BTreeSet::new();
        for target in self
            .targets
            .iter()
            .filter(|t| t.staged && t.staging.exists())
        {
            let parent = target.live.parent().unwrap_or(Path::new("/"));
            let dir = File::open(parent).at("open", parent)?;
            let dev = dir.metadata().at("stat", parent)?.dev();
            if synced.insert(dev) {
                nix::unistd::syncfs(&dir)
                    .map_err(|e| Error::Other(format!("syncfs {}: {e}", parent.display())))?;
            }
        }
        Ok(())
    }

    fn database_staged(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.slot == Slot::Database && t.staged)
    }

    fn swapping(&self) -> impl Iterator<Item = &Target> {
        let database_staged = self.database_staged();
        self.targets.iter().filter(move |t| {
            if t.slot == Slot::DatabaseSidecar {
                database_staged && t.live.exists()
            } else {
                t.staged
            }
        })
    }

    pub fn journal(&self, phase: Phase) -> Journal {
        let entries = match phase {
            Phase::Staging => self.targets.iter().collect::<Vec<_>>(),
            Phase::Swapping => self.swapping().collect(),
        };
        Journal {
            backup_id: self.id.clone(),
            phase,
            entries: entries
                .into_iter()
                .map(|t| JournalEntry {
                    live: t.live.clone(),
                    staging: (t.slot != Slot::DatabaseSidecar).then(|| t.staging.clone()),
                    previous: t.previous.clone(),
                    replace_empty_dir: t.slot == Slot::Root,
                })
                .collect(),
        }
    }

    /// Renames staging into place, keeping what was there as `.pre-restore-<id>`.
    pub fn swap(&self) -> Result<Vec<PathBuf>> {
        let journal = self.journal(Phase::Swapping);
        super::journal::apply_swap(&journal)?;
        Ok(self
            .swapping()
            .filter(|t| t.slot != Slot::DatabaseSidecar)
            .map(|t| t.live.clone())
            .collect())
    }

    pub fn remove_staging(&self) {
        for target in &self.targets {
            if target.staged {
                let _ = remove_path(&target.staging);
            }
        }
    }

    pub fn existing_previous(&self) -> Vec<PathBuf> {
        self.targets
            .iter()
            .filter(|t| t.previous.exists())
            .map(|t| t.previous.clone())
            .collect()
    }

    pub fn remove_previous(&self) -> Result<()> {
        for previous in self.existing_previous() {
            remove_path(&previous).at("remove", &previous)?;
        }
        Ok(())
    }
}

pub(crate) fn remove_path(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    while !current.exists() {
        match current.parent() {
            Some(parent) => current = parent.to_path_buf(),
            None => return PathBuf::from("/"),
        }
    }
    current
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).at("chown", path)?;
    }
    Ok(())
}
