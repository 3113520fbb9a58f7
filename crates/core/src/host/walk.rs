//! A walk of a folder tree in the order of its paths' bytes, on several threads.
//!
//! A night in which nothing changed spends most of its time here: Synapse's media store has
//! about one folder per file (`local_thumbnails/ab/cd/rest/` holds a media's thumbnails), so
//! the walk is one `open`, `getdents64` and `close` per folder and one stat per entry. Each
//! folder is opened and each entry stat'ed relative to its parent's descriptor, so the kernel
//! resolves one name, not the whole path, and the root's sub-folders (Synapse's first-level
//! shards) are walked on several threads, their results handed over in order.
//!
//! Symlinks below the root are not followed (they are reported as [`Kind::Other`]); the root
//! itself is (a `local_content` on another disk).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};

use crate::error::{Error, Result};

/// Folders nested deeper than this under the root are refused rather than walked: each level
/// holds a descriptor, and no media store nests more than a handful of levels.
const MAX_DEPTH: usize = 128;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Folder,
    File,
    /// A symlink, socket, device or fifo: never followed or read.
    Other,
}

/// One entry of the walk, as its one stat saw it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Its path under the root, `/`-separated, as bytes (a name need not be UTF-8); empty for
    /// the root.
    pub relative: &'a [u8],
    pub kind: Kind,
    /// 0 for the root.
    pub depth: usize,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nanos: u32,
    /// `st_mode`, file type bits included.
    pub mode: u32,
    /// The mode of the folder holding it; `None` for the root.
    pub parent_mode: Option<u32>,
}

/// What the walk hands each entry to. Each of the root's sub-folders gets a visitor of its own
/// (made by the walk's `new_visitor`), possibly on another thread; visitors come back to the
/// caller in path order.
pub trait Visitor: Send {
    fn visit(&mut self, entry: &Entry<'_>) -> Result<()>;
}

/// Walks `root` (which must be a folder, or a symlink to one), handing every entry to a
/// visitor in path order, and each visitor to `merge` in path order. Entries removed while the
/// walk runs are passed over; any other failure stops the walk and is returned.
pub fn walk_sorted<V, F, M>(root: &Path, threads: usize, new_visitor: F, mut merge: M) -> Result<()>
where
    V: Visitor,
    F: Fn() -> V + Sync,
    M: FnMut(V) -> Result<()>,
{
    let root_meta = std::fs::metadata(root).map_err(|e| Error::io("stat", root, e))?;
    let mut root_dir = Dir::open(root, dir_flags(), Mode::empty())
        .map_err(|e| Error::io("open the folder", root, e.into()))?;
    let root_mode = std::os::unix::fs::PermissionsExt::mode(&root_meta.permissions());
    let mut first = new_visitor();
    first.visit(&Entry {
        relative: b"",
        kind: Kind::Folder,
        depth: 0,
        size: root_meta.len(),
        mtime: std::os::unix::fs::MetadataExt::mtime(&root_meta),
        mtime_nanos: std::os::unix::fs::MetadataExt::mtime_nsec(&root_meta) as u32,
        mode: root_mode,
        parent_mode: None,
    })?;
    merge(first)?;
    let children = read_sorted(&mut root_dir, root, b"")?;
    // A `Dir` is not shared between threads; a descriptor of the same folder is.
    let root_fd = root_dir
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("open the folder", root, e))?;
    drop(root_dir);
    let root_fd = root_fd.as_fd();
    let walker = Walker {
        root,
        new_visitor: &new_visitor,
    };
    let threads = threads.clamp(1, children.len().max(1));
    if threads == 1 {
        for child in &children {
            merge(walker.unit(root_fd, child, root_mode)?)?;
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (sender, results) = mpsc::channel::<(usize, Result<V>)>();
        for _ in 0..threads {
            let sender = sender.clone();
            let (walker, children, next, stop) = (&walker, &children, &next, &stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(child) = children.get(index) else {
                        break;
                    };
                    let result = walker.unit(root_fd, child, root_mode);
                    if sender.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        // Units finish out of order; they are merged in order, so at most the units the
        // threads are ahead by wait here.
        let mut waiting = BTreeMap::new();
        let mut expected = 0;
        for (index, result) in results {
            waiting.insert(index, result);
            while let Some(result) = waiting.remove(&expected) {
                expected += 1;
                if let Err(e) = result.and_then(&mut merge) {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(())
    })
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

/// An entry of a folder, stat'ed.
struct Child {
    name: Vec<u8>,
    stat: FileStat,
}

impl Child {
    fn kind(&self) -> Kind {
        match SFlag::from_bits_truncate(self.stat.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Folder,
            SFlag::S_IFREG => Kind::File,
            _ => Kind::Other,
        }
    }
}

struct Walker<'a, F> {
    root: &'a Path,
    new_visitor: &'a F,
}

impl<V: Visitor, F: Fn() -> V> Walker<'_, F> {
    /// One of the root's entries, and everything under it, with a visitor of its own.
    fn unit(&self, root_fd: BorrowedFd<'_>, child: &Child, root_mode: u32) -> Result<V> {
        let mut visitor = (self.new_visitor)();
        let mut relative = Vec::with_capacity(256);
        relative.extend_from_slice(&child.name);
        self.descend(root_fd, child, root_mode, &mut relative, 1, &mut visitor)?;
        Ok(visitor)
    }

    /// Visits `child` of the folder `dir` (whose mode is `parent_mode`) and, if it is a
    /// folder, what it holds. `relative` is the child's path, on entry and on return.
    fn descend(
        &self,
        dir: BorrowedFd<'_>,
        child: &Child,
        parent_mode: u32,
        relative: &mut Vec<u8>,
        depth: usize,
        visitor: &mut V,
    ) -> Result<()> {
        let kind = child.kind();
        let mode = child.stat.st_mode;
        visitor.visit(&Entry {
            relative,
            kind,
            depth,
            size: child.stat.st_size.max(0) as u64,
            mtime: child.stat.st_mtime,
            mtime_nanos: child.stat.st_mtime_nsec as u32,
            mode,
            parent_mode: Some(parent_mode),
        })?;
        if kind != Kind::Folder {
            return Ok(());
        }
        if depth >= MAX_DEPTH {
            return Err(Error::Other(format!(
                "{} is nested more than {MAX_DEPTH} folders deep; no media store is: move the stray tree out of it",
                self.path_of(relative).display()
            )));
        }
        let flags = dir_flags() | OFlag::O_NOFOLLOW;
        let mut sub = match Dir::openat(dir, child.name.as_slice(), flags, Mode::empty()) {
            Ok(sub) => sub,
            // Removed since it was listed: a live server's, and nothing to back up.
            Err(Errno::ENOENT) => return Ok(()),
            // Replaced by a file or a link since it was listed: what it holds now is not
            // known, so the backup stops rather than leave it out unsaid.
            Err(e @ (Errno::ENOTDIR | Errno::ELOOP)) => return Err(Error::io(
                "open the folder (it changed while the media were listed; run the backup again)",
                self.path_of(relative),
                e.into(),
            )),
            Err(e) => {
                return Err(Error::io(
                    "open the folder",
                    self.path_of(relative),
                    e.into(),
                ))
            }
        };
        for grandchild in read_sorted(&mut sub, self.root, relative)? {
            let len = relative.len();
            relative.push(b'/');
            relative.extend_from_slice(&grandchild.name);
            let result = self.descend(sub.as_fd(), &grandchild, mode, relative, depth + 1, visitor);
            relative.truncate(len);
            result?;
        }
        Ok(())
    }

    fn path_of(&self, relative: &[u8]) -> std::path::PathBuf {
        self.root.join(OsStr::from_bytes(relative))
    }
}

/// The entries of `dir` (at `relative` under `root`), each stat'ed without following a link,
/// in the order that keeps the whole walk in its paths' byte order: a folder sorts as its name
/// followed by `/`, since that is how every path under it goes on.
fn read_sorted(dir: &mut Dir, root: &Path, relative: &[u8]) -> Result<Vec<Child>> {
    let path_of = || root.join(OsStr::from_bytes(relative));
    let mut names: Vec<Vec<u8>> = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| Error::io("read the folder", path_of(), e.into()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    let mut children = Vec::with_capacity(names.len());
    for name in names {
        let stat = match fstatat(dir.as_fd(), name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                let mut path = relative.to_vec();
                path.push(b'/');
                path.extend_from_slice(&name);
                return Err(Error::io(
                    "stat",
                    root.join(OsStr::from_bytes(&path)),
                    e.into(),
                ));
            }
        };
        children.push(Child { name, stat });
    }
    children.sort_unstable_by(|a, b| sort_key(a).cmp(sort_key(b)));
    Ok(children)
}

fn sort_key(child: &Child) -> impl Iterator<Item = &u8> {
    let slash: &[u8] = if child.kind() == Kind::Folder {
        b"/"
    } else {
        b""
    };
    child.name.iter().chain(slash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Every entry's path, kind and parent's mode, in the order visited.
    #[derive(Default)]
    struct Record(Vec<(String, Kind, Option<u32>)>);

    impl Visitor for Record {
        fn visit(&mut self, entry: &Entry<'_>) -> Result<()> {
            let path = String::from_utf8_lossy(entry.relative).into_owned();
            if path == "stop" {
                return Err(Error::Other("stopped at stop".into()));
            }
            self.0
                .push((path, entry.kind, entry.parent_mode.map(|m| m & 0o777)));
            Ok(())
        }
    }

    fn walk(root: &Path, threads: usize) -> Result<Vec<(String, Kind, Option<u32>)>> {
        let mut seen = Vec::new();
        walk_sorted(root, threads, Record::default, |record| {
            seen.extend(record.0);
            Ok(())
        })?;
        Ok(seen)
    }

    #[test]
    fn entries_come_in_the_byte_order_of_their_paths_on_any_number_of_threads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("media");
        // "a.b" sorts before "a/…" ('.' < '/'), and "a0" after it: a walk that sorted names
        // alone would put the folder "a" first.
        for folder in ["a/x", "a/y/z", "b", "c/d"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        for file in [
            "a.b", "a0", "a/x/1", "a/y/z/2", "a/y.txt", "b/3", "c/d/4", "c/d5",
        ] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        let one = walk(&root, 1).unwrap();
        // A folder sorts as its name and a slash: where the paths under it begin.
        let paths: Vec<String> = one
            .iter()
            .map(|(path, kind, _)| match kind {
                Kind::Folder if !path.is_empty() => format!("{path}/"),
                _ => path.clone(),
            })
            .collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        assert_eq!(paths.len(), 1 + 7 + 8);
        for threads in [2, 3, 16] {
            assert_eq!(walk(&root, threads).unwrap(), one, "{threads} threads");
        }
    }

    #[test]
    fn links_inside_are_not_followed_the_root_is_and_parents_modes_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("elsewhere");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::fs::write(real.join("sub/file"), b"x").unwrap();
        std::os::unix::fs::symlink(real.join("sub"), real.join("link")).unwrap();
        std::fs::set_permissions(real.join("sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let root = dir.path().join("media");
        std::os::unix::fs::symlink(&real, &root).unwrap();
        let root_mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        let seen = walk(&root, 2).unwrap();
        assert_eq!(
            seen,
            [
                (String::new(), Kind::Folder, None),
                ("link".into(), Kind::Other, Some(root_mode)),
                ("sub".into(), Kind::Folder, Some(root_mode)),
                ("sub/file".into(), Kind::File, Some(0o700)),
            ]
        );
    }

    #[test]
    fn a_visitors_error_stops_the_walk_and_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "stop", "z"] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
        }
        for threads in [1, 2] {
            let e = walk(dir.path(), threads).unwrap_err();
            assert!(e.to_string().contains("stopped at stop"), "{e}");
        }
    }
}
