//! Writing restored files into staging: folders and files created by the restore only
//! (`O_EXCL`), permission bits masked, owners carried over from the live data when run as
//! root, mtimes kept; and the durability steps (fsync of folders, syncfs) the swap relies on.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{CorruptKind, Error, IoContext, Result};

/// Nothing restored is writable by others.
const MODE_MASK: u32 = 0o775;

/// A uid and gid to give what the restore creates.
pub(crate) type Owner = Option<(u32, u32)>;

/// The mode a folder the restore makes gets at once (`None`: none, it keeps what it was made
/// with or gets its own later).
pub(crate) type ModeOfNewFolder<'a> = &'a dyn Fn(&Path) -> Option<u32>;

/// Creates `path` and the folders above it that are missing, each owned by `owner` and given
/// the mode `mode_of` says, so that no second walk of the staged tree is needed for it.
pub(crate) fn create_dirs(path: &Path, owner: Owner, mode_of: ModeOfNewFolder<'_>) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dirs(parent, owner, mode_of)?;
    }
    match fs::create_dir(path) {
        Ok(()) => {
            chown(path, owner)?;
            match mode_of(path) {
                Some(mode) => set_folder_mode(path, mode, None),
                None => Ok(()),
            }
        }
        // Made by another thread meanwhile, which gives it the same mode.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(Error::io("create", path, e)),
    }
}

/// Creates a new file (never opens an existing one: a member written twice is damage).
pub(crate) fn create_file(
    path: &Path,
    mode: u32,
    owner: Owner,
    mode_of: ModeOfNewFolder<'_>,
    backup_id: &str,
) -> Result<BufWriter<File>> {
    if let Some(parent) = path.parent() {
        create_dirs(parent, owner, mode_of)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode((mode & MODE_MASK) | 0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::corrupt(
                    backup_id,
                    CorruptKind::HostileMember,
                    format!("{} is written twice", path.display()),
                )
            } else {
                Error::io("create", path, e)
            }
        })?;
    Ok(BufWriter::with_capacity(256 * 1024, file))
}

/// Flushes a file written by [`create_file`] and gives it its mtime and owner.
pub(crate) fn finish_file(
    file: BufWriter<File>,
    path: &Path,
    mtime: i64,
    owner: Owner,
) -> Result<()> {
    let file = file
        .into_inner()
        .map_err(|e| Error::io("write", path, e.into_error()))?;
    if mtime > 0 {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64);
        file.set_modified(when).at("set mtime of", path)?;
    }
    chown(path, owner)
}

pub(crate) fn set_folder_mode(path: &Path, mode: u32, mtime: Option<i64>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Still usable by the restore's own user, and never writable by others.
    let mode = (mode & MODE_MASK) | 0o700;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).at("set the mode of", path)?;
    if let Some(mtime) = mtime.filter(|t| *t > 0) {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64);
        File::open(path)
            .and_then(|dir| dir.set_modified(when))
            .at("set mtime of", path)?;
    }
    Ok(())
}

pub(crate) fn chown(path: &Path, owner: Owner) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).at("chown", path)?;
    }
    Ok(())
}

/// Removes a file or a whole folder; a missing one is not an error.
pub(crate) fn remove_path(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `path` with symlinks at its end followed, link after link, to the path they lead to (which
/// need not exist yet). Folders above it are left to the kernel, which follows them anyway.
pub(crate) fn follow_symlinks(path: &Path) -> Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_SYMLINKS {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&current).at("read the symlink", &current)?;
                let parent = current.parent().unwrap_or(Path::new("/"));
                current = parent.join(target);
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(Error::io("look at", &current, e)),
        }
    }
    Err(Error::config(format!(
        "{} is a chain of more than {MAX_SYMLINKS} symlinks (a loop?)",
        path.display()
    )))
}

/// Where a live restore target really is: symlinks at its end followed, and the folder it
/// lands in made canonical (so that a Kubernetes `..data` link swapped by the kubelet cannot
/// move the staging or the journal's paths under us). A link into a folder that does not
/// exist (a disk not mounted) is an error rather than a folder created on the wrong disk.
pub(crate) fn resolve_live_path(live: &Path) -> Result<PathBuf> {
    let resolved = follow_symlinks(live)?;
    if resolved == live {
        return Ok(resolved);
    }
    let parent = resolved.parent().unwrap_or(Path::new("/"));
    let name = resolved.file_name().unwrap_or_default();
    match fs::canonicalize(parent) {
        Ok(parent) => Ok(parent.join(name)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::config(format!(
            "{} is a symlink to {}, whose folder {} does not exist (a disk not mounted?); mount it or fix the link",
            live.display(),
            resolved.display(),
            parent.display()
        ))),
        Err(e) => Err(Error::io("resolve", parent, e)),
    }
}

/// As Linux's limit on symlinks followed in one lookup.
const MAX_SYMLINKS: usize = 40;

/// The nearest ancestor of `path` (or itself) that exists.
pub(crate) fn existing_ancestor(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    while !current.exists() {
        match current.parent() {
            Some(parent) => current = parent.to_path_buf(),
            None => return PathBuf::from("/"),
        }
    }
    current
}

/// Makes a rename or removal inside `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("fsync directory", dir)
}

/// `syncfs` on the filesystem of each of `folders`, once per filesystem.
pub(crate) fn sync_filesystems<'a>(folders: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let mut synced = BTreeSet::new();
    for folder in folders {
        let dir = File::open(folder).at("open", folder)?;
        let dev = dir.metadata().at("stat", folder)?.dev();
        if synced.insert(dev) {
            nix::unistd::syncfs(&dir)
                .map_err(|e| Error::io("syncfs", folder, std::io::Error::from(e)))?;
        }
    }
    Ok(())
}
