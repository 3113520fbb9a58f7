//! What a backup reads from the homeserver: the signing key, the config files it names, and
//! the media files, each as a [`Source`] with the member name it is archived under.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::host::walk::{self, walk_sorted, Visitor};
use crate::manifest::{path_fits_a_run, Role};
use crate::synapse::{Database, HomeserverConfig};

/// One file to archive.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub member: String,
    pub location: Location,
    pub role: Role,
    pub size: u64,
    /// The media storage provider (its place in Synapse's list) the file is read from, into
    /// `path`, because media_store_path lacks it.
    pub provider: Option<u32>,
    /// What the listing's one `lstat` saw of a media file, so that deciding whether it changed
    /// since the parent needs no second system call.
    pub stamp: Option<Stamp>,
}

/// Where a [`Source`] is read from.
#[derive(Debug, Clone)]
pub(super) enum Location {
    /// Its own path: the key, a config file, the database snapshot.
    At(PathBuf),
    /// Its member's place under a folder that `media/` stands for (the media store, or the temp
    /// folder of copies read from a storage provider), which every media file shares: a
    /// listing holds one per file, and a path of its own would double its memory.
    Under(Arc<Path>),
}

/// The parts of a file's status that say whether it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub mtime: i64,
    pub mtime_nanos: u32,
    pub mode: u32,
}

impl Stamp {
    #[cfg(test)]
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            mtime: meta.mtime(),
            mtime_nanos: meta.mtime_nsec() as u32,
            mode: meta.mode() & 0o777,
        }
    }
}

impl Source {
    pub fn new(path: &Path, member: String, role: Role) -> Result<Source> {
        Ok(Source {
            size: file_size(path)?,
            member,
            location: Location::At(path.to_path_buf()),
            role,
            provider: None,
            stamp: None,
        })
    }
}

impl Source {
    /// The path the file is read from.
    pub fn path(&self) -> Cow<'_, Path> {
        match &self.location {
            Location::At(path) => Cow::Borrowed(path),
            Location::Under(folder) => {
                let relative = self.member.strip_prefix("media/").unwrap_or(&self.member);
                Cow::Owned(folder.join(relative))
            }
        }
    }
}

/// A media folder, archived as a folder member so that its mode comes back on restore.
#[derive(Debug, Clone)]
pub(super) struct Folder {
    pub member: String,
    pub mode: u32,
    pub mtime: i64,
}

/// The files of the media folders, and the folders themselves.
#[derive(Debug, Default)]
pub(super) struct MediaListing {
    pub files: Vec<Source>,
    pub folders: Vec<Folder>,
}

/// The signing key (required), every Synapse config file read, and the files they name.
pub(super) fn key_and_config_sources(hs: &HomeserverConfig) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    if !hs.signing_key.is_file() {
        return Err(Error::config(format!(
            "the signing key {} does not exist (from {}); without it the server cannot federate under its name",
            hs.signing_key.display(),
            hs.origin("signing_key_path")
        )));
    }
    sources.push(Source::new(
        &hs.signing_key,
        format!("keys/{}", file_name(&hs.signing_key)),
        Role::SigningKey,
    )?);
    for (path, member) in config_members(&hs.files) {
        sources.push(Source::new(&path, member, Role::Config)?);
    }
    let optional = hs
        .log_config
        .iter()
        .map(|path| (path, "config/log".to_string(), "log_config"))
        .chain(hs.app_service_files.iter().map(|path| {
            let folder = "config/appservices".to_string();
            (path, folder, "app service registration")
        }))
        .chain(
            hs.referenced_files
                .iter()
                .map(|(key, path)| (path, format!("config/referenced/{key}"), *key)),
        );
    for (path, folder, what) in optional {
        if path.is_file() {
            let member = format!("{folder}/{}", file_name(path));
            sources.push(Source::new(path, member, Role::Config)?);
        } else {
            tracing::warn!("{what} {} does not exist; not backed up", path.display());
        }
    }
    Ok(sources)
}

/// The member each Synapse config file is archived as. The main file is
/// `config/homeserver.yaml`, as it always was; the others keep their place relative to it
/// (`config/conf.d/server_name.yaml`), so that `restored-config-<id>/` is a tree to compare
/// with `/etc/matrix-synapse`. A file elsewhere, or one whose name would clash, goes under
/// `config/other/<n>-<name>`, `n` being its place in Synapse's reading order.
pub(super) fn config_members(files: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let Some(main) = files.first() else {
        return Vec::new();
    };
    let main_dir = main.parent().unwrap_or(Path::new("/"));
    let mut used = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (index, path) in files.iter().enumerate() {
        let beside_main = path
            .strip_prefix(main_dir)
            .ok()
            .and_then(|rel| rel.to_str())
            .filter(|rel| {
                !rel.split('/').any(|part| part == ".." || part == ".")
                    && !rel.starts_with("log/")
                    && !rel.starts_with("appservices/")
                    && !rel.starts_with("other/")
                    && !rel.starts_with("referenced/")
            })
            .map(|rel| format!("config/{rel}"));
        let member = match (index, beside_main) {
            (0, _) => "config/homeserver.yaml".to_string(),
            (_, Some(member)) if member != "config/homeserver.yaml" && !used.contains(&member) => {
                member
            }
            _ => format!("config/other/{index}-{}", file_name(path)),
        };
        used.insert(member.clone());
        out.push((path.clone(), member));
    }
    out
}

/// Refuses paths that do not exist before anything is read: a media store that does not exist
/// is a wrong path (a relative `media_store_path` resolved elsewhere than Synapse resolves
/// it), not a server without media, and a backup of it would silently hold no media at all. An
/// existing, empty one is fine. The same for a SQLite database file.
pub(super) fn check_paths(hs: &HomeserverConfig) -> Result<()> {
    match std::fs::metadata(&hs.media_store) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::config(format!(
                "the media store {} is not a directory (from {})",
                hs.media_store.display(),
                hs.origin("media_store_path")
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::config(format!(
                "the media store {} does not exist, so a backup would hold no media (from {}); check media_store_path and [synapse] config",
                hs.media_store.display(),
                hs.origin("media_store_path")
            )))
        }
        Err(e) => return Err(Error::io("stat the media store", &hs.media_store, e)),
    }
    if let Database::Sqlite { path } = &hs.database {
        if !path.is_file() {
            return Err(Error::config(format!(
                "the SQLite database {} does not exist (from {}); check database.args.database and [synapse] config",
                path.display(),
                hs.origin("database")
            )));
        }
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into())
}

pub(super) fn file_size(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| Error::io("stat", path, e))
}

/// Lists regular files under each media folder, in the order of their paths, and the folders
/// whose mode a restore could not guess: each media folder itself, and any folder whose mode
/// is not its parent's (a restore gives an unlisted folder its parent's mode). A media store
/// has about as many folders as files, and almost all share one mode. The walk runs on several
/// threads (`host::walk`): with nothing changed since the last backup, it is most of a backup.
pub(super) fn list_media(media_store: &Path, dirs: &[&str]) -> Result<MediaListing> {
    let mut files = Vec::new();
    let folders = list_media_into(media_store, dirs, &mut |file| {
        files.push(file);
        Ok(())
    })?;
    Ok(MediaListing { files, folders })
}

/// [`list_media`], handing each file to `sink` in the order of its member path as the walk
/// finds it rather than holding them all: the join with the parent's entries takes them as
/// they come. Returns the folders.
pub(super) fn list_media_into(
    media_store: &Path,
    dirs: &[&str],
    sink: &mut dyn FnMut(Source) -> Result<()>,
) -> Result<Vec<Folder>> {
    let mut folders = Vec::new();
    let mut skipped = Vec::new();
    let media_store_folder: Arc<Path> = Arc::from(media_store);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    // In the order of their members: a folder as its name and a slash.
    let mut dirs = dirs.to_vec();
    dirs.sort_by_key(|dir| format!("{dir}/"));
    for dir in dirs {
        let root = media_store.join(dir);
        if !root.exists() {
            // A link to a disk that is not mounted is not a server without media.
            if let Ok(target) = std::fs::read_link(&root) {
                return Err(Error::config(format!(
                    "{} is a symlink to {}, which does not exist (a disk not mounted?); its media cannot be backed up",
                    root.display(),
                    target.display()
                )));
            }
            continue;
        }
        let new_visitor = || MediaVisitor {
            dir,
            root: &root,
            media_store: Arc::clone(&media_store_folder),
            listing: MediaListing::default(),
            skipped: Vec::new(),
        };
        walk_sorted(&root, threads, new_visitor, |visited| {
            folders.extend(visited.listing.folders);
            skipped.extend(visited.skipped);
            visited.listing.files.into_iter().try_for_each(&mut *sink)
        })?;
    }
    if !skipped.is_empty() {
        tracing::warn!(
            "{} entries in the media store are not backed up: {}",
            skipped.len(),
            skipped.join(", ")
        );
    }
    Ok(folders)
}

/// What [`list_media`] keeps of the walk of one media folder (or a part of it).
struct MediaVisitor<'a> {
    /// The media folder walked, under the media store: `local_content`.
    dir: &'a str,
    root: &'a Path,
    media_store: Arc<Path>,
    listing: MediaListing,
    /// Entries not backed up, and why.
    skipped: Vec<String>,
}

impl Visitor for MediaVisitor<'_> {
    fn visit(&mut self, entry: &walk::Entry<'_>) -> Result<()> {
        let path = || self.root.join(OsStr::from_bytes(entry.relative));
        if entry.kind == walk::Kind::Other {
            self.skipped
                .push(format!("{} (not a regular file)", path().display()));
            return Ok(());
        }
        let Ok(under_dir) = std::str::from_utf8(entry.relative) else {
            self.skipped
                .push(format!("{} (name not UTF-8)", path().display()));
            return Ok(());
        };
        let member = match under_dir {
            "" => format!("media/{}", self.dir),
            _ => format!("media/{}/{under_dir}", self.dir),
        };
        // A run's line and a `tar -T` list are one path per line, tab-separated.
        if !path_fits_a_run(&member) {
            self.skipped
                .push(format!("{:?} (a tab or line break in its name)", path()));
            return Ok(());
        }
        if entry.kind == walk::Kind::Folder {
            if entry.parent_mode != Some(entry.mode) {
                self.listing.folders.push(Folder {
                    member,
                    mode: entry.mode,
                    mtime: entry.mtime,
                });
            }
            return Ok(());
        }
        self.listing.files.push(Source {
            member,
            location: Location::Under(Arc::clone(&self.media_store)),
            role: Role::Media,
            size: entry.size,
            provider: None,
            stamp: Some(Stamp {
                mtime: entry.mtime,
                mtime_nanos: entry.mtime_nanos,
                mode: entry.mode & 0o777,
            }),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{config_members, list_media};
    use std::path::PathBuf;

    #[test]
    fn only_folders_whose_mode_is_not_their_parents_are_listed() {
        use std::os::unix::fs::PermissionsExt;
        let store = tempfile::tempdir().unwrap();
        let root = store.path().join("local_content");
        for dir in ["ab/cd", "ab/ce", "xy/zz"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("f"), b"x").unwrap();
        }
        let mode = |path: &str, mode: u32| {
            std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode))
                .unwrap()
        };
        for dir in ["", "ab", "ab/cd", "ab/ce", "xy"] {
            mode(dir, 0o750);
        }
        mode("xy/zz", 0o700);
        let listed = list_media(store.path(), &["local_content"]).unwrap();
        let folders: Vec<&str> = listed.folders.iter().map(|f| f.member.as_str()).collect();
        assert_eq!(
            folders,
            ["media/local_content", "media/local_content/xy/zz"]
        );
        assert_eq!(listed.files.len(), 3);
    }

    #[test]
    fn a_name_with_a_tab_or_line_break_is_skipped_and_the_rest_listed() {
        let store = tempfile::tempdir().unwrap();
        let shard = store.path().join("local_content/ab");
        std::fs::create_dir_all(&shard).unwrap();
        for name in ["good", "tab\there", "line\nbreak"] {
            std::fs::write(shard.join(name), b"x").unwrap();
        }
        let listed = list_media(store.path(), &["local_content"]).unwrap();
        let members: Vec<&str> = listed.files.iter().map(|f| f.member.as_str()).collect();
        assert_eq!(members, ["media/local_content/ab/good"]);
    }

    #[test]
    fn config_files_keep_their_place_beside_the_main_one() {
        let files: Vec<PathBuf> = [
            "/etc/matrix-synapse/homeserver.yaml",
            "/etc/matrix-synapse/conf.d/server_name.yaml",
            "/etc/matrix-synapse/log/x.yaml",
            "/srv/extra.yaml",
            "/srv/other/extra.yaml",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let members: Vec<String> = config_members(&files).into_iter().map(|(_, m)| m).collect();
        assert_eq!(
            members,
            [
                "config/homeserver.yaml",
                "config/conf.d/server_name.yaml",
                "config/other/2-x.yaml",
                "config/other/3-extra.yaml",
                "config/other/4-extra.yaml",
            ]
        );
    }
}
