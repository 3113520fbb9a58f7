//! The restore's targets: the live paths it replaces, their staging paths next to them (same
//! filesystem, so the swap is a rename), where the previous data is kept, and the swap itself.
//! (About 400 lines: every target's life, from its staging to its swap, reads in one place.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::BufWriter;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::archive::MemberKind;
use crate::database::postgres::Postgres;
use crate::error::{CorruptKind, Error, IoContext, Leftover, Refusal, Result};
use crate::manifest::{DatabaseKind, Header};
use crate::synapse::media::{CACHE_MEDIA_DIRS, LOCAL_MEDIA_DIRS};
use crate::synapse::{Database, HomeserverConfig};

use super::files::{self, Owner};
use super::journal::{self, Journal, JournalEntry, Phase};
use super::route::{Route, Router, Slot};
use crate::repository::content_check::ArchiveFormat;

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

impl Destination {
    /// The path whose parent holds the lock and the journal (see `host::state_dir`).
    pub fn state_anchor(&self) -> &Path {
        match self {
            Destination::Live(hs) => &hs.media_store,
            Destination::Directory(dir) => dir,
        }
    }
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
    owner: Owner,
    /// The live folder's permission bits, given to its replacement unless the backup has them.
    mode: Option<u32>,
}

pub(crate) struct Plan {
    id: String,
    router: Router,
    targets: Vec<Target>,
    /// Charm backup members the layout has no place for.
    skipped: BTreeSet<String>,
    /// Staged folders and the permission bits (and mtime, from the backup) they get once
    /// everything is written.
    folder_modes: BTreeMap<PathBuf, (u32, Option<i64>)>,
    pub notes: Vec<String>,
    /// The target's server_name (live restores only).
    pub server_name: Option<String>,
    /// The target's PostgreSQL database, when the backup holds a dump to restore into it.
    pub postgres: Option<Postgres>,
}

impl Plan {
    /// Lays out the targets. Refuses a backup whose database kind the target does not use, a
    /// `--target-dir` that is not empty, and previous data of an earlier restore of this backup
    /// still in the way. Touches nothing and runs no program.
    pub fn new(
        destination: &Destination,
        id: &str,
        header: Option<&Header>,
        charm_source_root: &str,
    ) -> Result<Plan> {
        let mut plan = Plan {
            id: id.to_string(),
            router: Router {
                backup_id: id.to_string(),
                live: matches!(destination, Destination::Live(_)),
                sqlite_target: false,
                postgres_target: false,
                charm_root: charm_source_root.trim_matches('/').to_string(),
            },
            targets: Vec::new(),
            skipped: BTreeSet::new(),
            folder_modes: BTreeMap::new(),
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
                    return Err(Error::refused(
                        Refusal::TargetInTheWay,
                        format!(
                            "--target-dir {} is not empty; give an empty or new directory",
                            dir.display()
                        ),
                    ));
                }
                plan.add(Slot::Root, dir, true, true)?;
            }
            Destination::Live(hs) => plan.add_live_targets(hs, header)?,
        }
        for target in &plan.targets {
            if target.previous.exists() {
                return Err(Error::refused(
                    Refusal::TargetInTheWay,
                    format!(
                    "{} already exists from an earlier restore of this backup; move it away first",
                    target.previous.display()
                ),
                ));
            }
        }
        Ok(plan)
    }

    fn add_live_targets(&mut self, hs: &HomeserverConfig, header: Option<&Header>) -> Result<()> {
        self.add(Slot::Key, &hs.signing_key, false, false)?;
        match (&hs.database, header.map(|h| &h.database)) {
            (Database::Sqlite { path }, Some(info))
                if info.included && info.kind != DatabaseKind::Sqlite =>
            {
                return Err(Error::refused(
                    Refusal::DatabaseKindMismatch,
                    format!(
                    "backup {} holds a {:?} database but the target uses SQLite at {} (from {})",
                    self.id,
                    info.kind,
                    path.display(),
                    hs.origin("database")
                ),
                ));
            }
            (Database::Postgres(_), Some(info))
                if info.included && info.kind == DatabaseKind::Sqlite =>
            {
                return Err(Error::refused(Refusal::DatabaseKindMismatch, format!(
                    "backup {} holds a SQLite database but the target uses PostgreSQL ({}); restore onto a SQLite config, or port the database with synapse_port_db after restoring into --target-dir",
                    self.id,
                    hs.origin("database")
                )));
            }
            (Database::Sqlite { path }, _) => {
                self.router.sqlite_target = true;
                // SQLite keeps its -wal and -shm beside the file a symlink leads to.
                let path = &files::follow_symlinks(path)?;
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
                self.router.postgres_target = true;
                self.postgres = Some(Postgres::new(args));
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
            .main_file()
            .parent()
            .unwrap_or(Path::new("/"))
            .join(format!("restored-config-{}", self.id));
        self.add(Slot::Config, &config_dir, true, false)?;
        Ok(())
    }

    fn add(&mut self, slot: Slot, live: &Path, is_dir: bool, always: bool) -> Result<()> {
        // A live path that is a symlink (a media folder on another disk, a key mounted by
        // Kubernetes through `..data`) is restored into what it points at, staged beside that
        // on its filesystem, and the link stays.
        let resolved = if self.router.live {
            files::resolve_live_path(live)?
        } else {
            live.to_path_buf()
        };
        let live = resolved.as_path();
        let parent = live.parent().unwrap_or(Path::new("/"));
        let name = live
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| Error::config(format!("{} has no file name", live.display())))?;
        // Only root can give files away; a live restore then keeps the owners the data had.
        let owner = if self.router.live && nix::unistd::geteuid().is_root() {
            fs::metadata(live)
                .or_else(|_| fs::metadata(parent))
                .ok()
                .map(|m| (m.uid(), m.gid()))
        } else {
            None
        };
        let mode = fs::metadata(live)
            .ok()
            .filter(|m| is_dir && m.is_dir())
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        self.targets.push(Target {
            slot,
            live: live.to_path_buf(),
            staging: parent.join(format!(".{name}.staging-{}", self.id)),
            previous: parent.join(format!("{name}.pre-restore-{}", self.id)),
            is_dir,
            always,
            staged: false,
            owner,
            mode,
        });
        Ok(())
    }

    /// The live paths, for the free-space check.
    pub fn live_paths(&self) -> impl Iterator<Item = &Path> {
        self.targets.iter().map(|t| t.live.as_path())
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

    /// Maps a member to the staging path it is written to.
    pub fn place(&mut self, member: &str, kind: MemberKind, charm: bool) -> Result<Placement> {
        let (slot, rel) = match self.router.route(member, kind, charm)? {
            Route::Skip => return Ok(Placement::Skip),
            Route::Unknown => {
                self.skipped.insert(member.to_string());
                return Ok(Placement::Skip);
            }
            Route::DatabaseDump => return Ok(Placement::HashOnly),
            Route::Slot { slot, rel } => (slot, rel),
        };
        let index = self
            .targets
            .iter()
            .position(|t| t.slot == slot)
            .ok_or_else(|| Error::Other(format!("no restore target for member {member:?}")))?;
        if slot == Slot::Key && self.targets[index].staged {
            return Err(Error::corrupt(
                &self.id,
                CorruptKind::HostileMember,
                "the backup holds more than one signing key",
            ));
        }
        self.ensure_staging(index)?;
        let target = &self.targets[index];
        if !target.is_dir {
            if kind == MemberKind::Directory {
                return Err(Error::corrupt(
                    &self.id,
                    CorruptKind::HostileMember,
                    format!("member {member:?} should be a file"),
                ));
            }
            return Ok(Placement::Stage(target.staging.clone()));
        }
        if rel.is_empty() {
            // The slot's own folder: its mode is worth having.
            return Ok(match kind {
                MemberKind::Directory => Placement::Stage(target.staging.clone()),
                MemberKind::File => Placement::Skip,
            });
        }
        Ok(Placement::Stage(target.staging.join(rel)))
    }

    fn ensure_staging(&mut self, index: usize) -> Result<()> {
        let target = &mut self.targets[index];
        if target.staged {
            return Ok(());
        }
        if target.staging.exists() {
            return Err(Error::Leftover {
                path: target.staging.clone(),
                what: Leftover::Staging,
            });
        }
        if let Some(parent) = target.live.parent() {
            fs::create_dir_all(parent).at("create", parent)?;
        }
        if target.is_dir {
            fs::create_dir(&target.staging).at("create staging", &target.staging)?;
            files::chown(&target.staging, target.owner)?;
            if let Some(mode) = target.mode {
                self.folder_modes
                    .insert(target.staging.clone(), (mode, None));
            }
        }
        target.staged = true;
        Ok(())
    }

    /// The owner of what is created under a staging path.
    fn owner_of(&self, path: &Path) -> Owner {
        self.targets
            .iter()
            .find(|t| path.starts_with(&t.staging))
            .and_then(|t| t.owner)
    }

    /// Creates a folder of the backup; it gets `mode` once all files are written (a
    /// read-only folder would refuse them before).
    pub fn make_dir(&mut self, path: &Path, mode: u32, mtime: i64) -> Result<()> {
        self.folder_modes
            .insert(path.to_path_buf(), (mode, Some(mtime)));
        files::create_dirs(path, self.owner_of(path), &|p| self.mode_of_new_folder(p))
    }

    /// Gives the folders the backup lists their modes, from the backup or else from the live
    /// folder they replace. The others got theirs when they were made.
    pub fn apply_folder_modes(&self) -> Result<()> {
        for (path, (mode, mtime)) in &self.folder_modes {
            files::set_folder_mode(path, *mode, *mtime)?;
        }
        Ok(())
    }

    /// The mode a staged folder the backup does not list gets when the restore makes it: its
    /// parent's, as the backup or the live data says it, up to the target's own folder
    /// (format 3 lists a folder only when its mode is not its parent's). `None` for a listed
    /// folder (it gets its own at the end) and where nothing above says one (it keeps what it
    /// was made with).
    fn mode_of_new_folder(&self, path: &Path) -> Option<u32> {
        if self.folder_modes.contains_key(path) {
            return None;
        }
        let mut above = path.parent();
        while let Some(folder) = above {
            if let Some(&(mode, _)) = self.folder_modes.get(folder) {
                return Some(mode);
            }
            if self.targets.iter().any(|t| t.staging == folder) {
                return None;
            }
            above = folder.parent();
        }
        None
    }

    pub fn create_file(&self, path: &Path, mode: u32) -> Result<BufWriter<File>> {
        let mode_of = |p: &Path| self.mode_of_new_folder(p);
        files::create_file(path, mode, self.owner_of(path), &mode_of, &self.id)
    }

    pub fn finish_file(&self, file: BufWriter<File>, path: &Path, mtime: i64) -> Result<()> {
        files::finish_file(file, path, mtime, self.owner_of(path))
    }

    /// Refuses a live restore whose backup lacks the signing key: Synapse would silently make
    /// a new one and the server could no longer federate under its name.
    pub fn check_complete(&self, format: &ArchiveFormat) -> Result<()> {
        if let Some(summary) = self.skipped_summary() {
            tracing::warn!("{summary}");
        }
        if self.router.live {
            let key = self.targets.iter().find(|t| t.slot == Slot::Key);
            if !key.is_some_and(|t| t.staged) {
                let hint = match format {
                    ArchiveFormat::Charm => format!(
                        " (looked for {}/<server>.signing.key; pass --charm-source-root if the charm kept its data elsewhere)",
                        self.router.charm_root
                    ),
                    ArchiveFormat::Manifest(_) => String::new(),
                };
                return Err(Error::corrupt(
                    &self.id,
                    CorruptKind::ManifestMismatch,
                    format!(
                        "the backup holds no signing key{hint}; refusing to restore without it"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// How many members of a charm backup had no place in the restore.
    pub fn skipped_members(&self) -> usize {
        self.skipped.len()
    }

    /// One line naming the folders (or files) of the skipped members, with a count for each.
    fn skipped_summary(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for member in &self.skipped {
            *groups.entry(skipped_group(member)).or_default() += 1;
        }
        let listed: Vec<String> = groups
            .iter()
            .map(|(group, n)| format!("{group} ({n} {})", if *n == 1 { "file" } else { "files" }))
            .collect();
        Some(format!(
            "{} members of the charm backup were not restored, as Synapse does not use them: {}",
            self.skipped.len(),
            listed.join(", ")
        ))
    }

    /// Makes the staged data durable before the swap.
    pub fn sync(&self) -> Result<()> {
        files::sync_filesystems(
            self.targets
                .iter()
                .filter(|t| t.staged && t.staging.exists())
                .map(|t| t.live.parent().unwrap_or(Path::new("/"))),
        )
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
        journal::apply_swap(&self.journal(Phase::Swapping))?;
        Ok(self
            .swapping()
            .filter(|t| t.slot != Slot::DatabaseSidecar)
            .map(|t| t.live.clone())
            .collect())
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
            files::remove_path(&previous).at("remove", &previous)?;
        }
        Ok(())
    }
}

/// The folder a skipped member is reported under: its folder under `media_store/`, or its
/// first folder, or the file itself.
fn skipped_group(member: &str) -> String {
    let parts: Vec<&str> = member.split('/').collect();
    let depth = match parts.iter().position(|p| *p == "media_store") {
        Some(at) if parts.len() > at + 2 => at + 2,
        _ if parts.len() > 2 => 2,
        _ => parts.len(),
    };
    let mut group = parts[..depth].join("/");
    if depth < parts.len() {
        group.push('/');
    }
    group
}

#[cfg(test)]
mod tests {
    use super::skipped_group;

    #[test]
    fn skipped_members_are_grouped_by_folder() {
        assert_eq!(
            skipped_group("data/media_store/local_thumbnails.pre-restore-b/ab/cd/x"),
            "data/media_store/local_thumbnails.pre-restore-b/"
        );
        assert_eq!(
            skipped_group("data/homeserver.yaml"),
            "data/homeserver.yaml"
        );
        assert_eq!(skipped_group("data/logs/a/b.log"), "data/logs/");
        assert_eq!(skipped_group("elsewhere"), "elsewhere");
    }
}
