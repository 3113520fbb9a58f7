//! Format 3: the runs a new backup names, and the one it writes (docs/format.md, "Runs").
//!
//! A night writes one run with its change (files stored anew, paths gone, entries retouched)
//! on top of its parent's stack, or none when nothing changed. To keep the stack short it
//! merges the newest runs into its own while the newest is not [`SIZE_RATIO`] times the size
//! of what is being merged: each run then outweighs all later ones together by that factor,
//! so a stack holds about log₄(files) runs, and an entry is rewritten that many times over
//! its life. Merging down to the bottom writes the whole list, with no `gone` lines.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use crate::archive::ArchiveWriter;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{merge_keeping_gone, RunEntry, RunRef, RunWriter, RUN_MEMBER};
use crate::repository::pipe::{finish_archive, ChunkWriter, CHUNK};
use crate::repository::runs::read_runs;

use super::entry_list::EntryList;
use super::reuse::ChangeSinceParent;
use super::OpContext;

/// A run is kept under a newer one only while it is at least this many times as large.
pub(super) const SIZE_RATIO: u64 = 4;

/// Which of the parent's runs the new backup names as they are, and which it merges into its
/// own run.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Stacking {
    pub keep: Vec<RunRef>,
    /// Oldest first; merged with the night's change into the new run.
    pub merge: Vec<RunRef>,
    /// Whether the new run is the bottom of the stack: it is then the whole list.
    pub whole: bool,
    /// Whether a run is written at all (not on a night without change and without merge).
    pub write: bool,
}

/// Whether the new run is the whole list whatever the night's change: there is no parent's
/// stack to build on, or a prune has condemned part of it.
pub(super) fn builds_anew(parent_runs: &[RunRef], excluded: &HashSet<String>) -> bool {
    parent_runs.is_empty() || parent_runs.iter().any(|r| excluded.contains(&r.name))
}

/// Decides the stack for a night of `changed` lines on top of `parent_runs`. A parent run
/// that is `excluded` (condemned by a prune) cannot be named: the whole list is written anew.
pub(super) fn stack_runs(
    parent_runs: &[RunRef],
    changed: u64,
    excluded: &HashSet<String>,
) -> Stacking {
    if builds_anew(parent_runs, excluded) {
        return Stacking {
            keep: Vec::new(),
            merge: Vec::new(),
            whole: true,
            write: true,
        };
    }
    let mut keep = parent_runs.to_vec();
    let mut merge = Vec::new();
    let mut weight = changed;
    while let Some(top) = keep.last() {
        if changed == 0 || top.entries >= SIZE_RATIO * weight {
            break;
        }
        weight += top.entries;
        merge.extend(keep.pop());
    }
    merge.reverse();
    Stacking {
        whole: keep.is_empty(),
        write: changed > 0,
        keep,
        merge,
    }
}

/// The night's change as run lines, sorted by path: the entries stored anew (`new`, sorted by
/// path), the retouched ones among those taken from the parent, and `gone` for the parent's
/// paths that have no entry any more.
pub(super) fn change_lines(new: &EntryList, change: ChangeSinceParent) -> Result<Vec<RunEntry>> {
    let mut lines = Vec::with_capacity(new.tally.files + change.retouched.len());
    // A file to store anew that is not among the new entries vanished before it was read.
    let mut vanished = change.stored_anew.into_iter().peekable();
    for entry in new.entries()? {
        let entry = entry?;
        while let Some(path) = vanished.next_if(|p| p.as_str() <= entry.path.as_str()) {
            if path != entry.path {
                lines.push(RunEntry::Gone(path));
            }
        }
        lines.push(RunEntry::File(entry));
    }
    lines.extend(vanished.map(RunEntry::Gone));
    lines.extend(change.retouched.into_iter().map(RunEntry::File));
    lines.extend(change.gone.into_iter().map(RunEntry::Gone));
    lines.sort_unstable_by(|a, b| a.path().cmp(b.path()));
    Ok(lines)
}

/// Every media entry of the new backup: those taken from the parent (on disk) and those
/// stored anew, each sorted by path.
pub(super) struct WholeList {
    pub reused: EntryList,
    pub new: EntryList,
}

impl WholeList {
    pub fn is_empty(&self) -> bool {
        self.reused.tally.files == 0 && self.new.tally.files == 0
    }

    /// The entries in path order: the two lists merged from disk as they are read.
    fn write_to<W: Write>(&self, writer: &mut RunWriter<W>, path: &Path) -> Result<()> {
        let failed = |e: std::io::Error| Error::io("write", path, e);
        let mut new = self.new.entries()?.peekable();
        for reused in self.reused.entries()? {
            let reused = reused?;
            while let Some(entry) = new.next_if(|e| e.as_ref().is_ok_and(|e| e.path < reused.path))
            {
                writer.push_file(&entry?).map_err(failed)?;
            }
            writer.push_file(&reused).map_err(failed)?;
        }
        for entry in new {
            writer.push_file(&entry?).map_err(failed)?;
        }
        Ok(())
    }
}

/// What the new run holds.
pub(super) enum RunLines {
    /// The whole list: the bottom of the stack.
    Whole(WholeList),
    /// Merged runs with the night's change on top, `gone` lines kept.
    Merged(Vec<RunEntry>),
}

/// The lines of the new run: the whole list, or the merged runs with the change on top.
pub(super) async fn new_run_lines(
    ctx: &OpContext<'_>,
    stacking: &Stacking,
    whole: WholeList,
    change: Vec<RunEntry>,
) -> Result<RunLines> {
    if stacking.whole {
        return Ok(RunLines::Whole(whole));
    }
    let mut runs = read_runs(ctx, &stacking.merge).await?;
    runs.push(change);
    Ok(RunLines::Merged(merge_keeping_gone(runs)))
}

/// Writes `lines` as the run of `backup_id`: a tar of one member, [`RUN_MEMBER`], built in
/// `temp` first (a tar member declares its size before its content), for the pipeline to
/// compress and encrypt. Returns the number of lines.
pub(super) fn write_run(
    backup_id: &str,
    lines: &RunLines,
    temp: &Path,
    mtime: i64,
    out: ChunkWriter,
) -> Result<usize> {
    let list = temp.join(RUN_MEMBER);
    let count = write_lines(backup_id, lines, &list)?;
    let mut archive = ArchiveWriter::new(std::io::BufWriter::with_capacity(CHUNK, out));
    archive.append_generated_file(RUN_MEMBER, &list, mtime)?;
    finish_archive(archive)?;
    std::fs::remove_file(&list).at("remove", &list)?;
    Ok(count)
}

fn write_lines(backup_id: &str, lines: &RunLines, path: &Path) -> Result<usize> {
    let file = std::fs::File::create(path).at("create", path)?;
    let failed = |e: std::io::Error| Error::io("write", path, e);
    let mut writer = RunWriter::new(std::io::BufWriter::new(file), backup_id).map_err(failed)?;
    match lines {
        RunLines::Whole(whole) => whole.write_to(&mut writer, path)?,
        RunLines::Merged(lines) => {
            for line in lines {
                writer.push(line).map_err(failed)?;
            }
        }
    }
    let (_, count) = writer.finish().map_err(failed)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::super::entry_list::EntryListWriter;
    use super::*;
    use crate::manifest::FileEntry;

    fn run(name: &str, entries: u64) -> RunRef {
        RunRef {
            name: format!("volumes/{name}-files"),
            entries,
            object_bytes: entries * 50,
        }
    }

    #[test]
    fn small_nights_stack_and_large_ones_merge_down() {
        let none = HashSet::new();
        let parent = vec![run("a", 100_000), run("b", 2_000), run("c", 100)];
        // Nothing changed: nothing written, the parent's runs named as they are.
        let quiet = stack_runs(&parent, 0, &none);
        assert_eq!(
            (quiet.write, quiet.keep.len(), quiet.merge.len()),
            (false, 3, 0)
        );
        // 10 lines: "c" (100) outweighs them four times; a run of its own.
        let small = stack_runs(&parent, 10, &none);
        assert_eq!(
            (small.keep.len(), small.merge.len(), small.whole),
            (3, 0, false)
        );
        // 30 lines: "c" does not outweigh them; 130 against "b" does not merge it.
        let merged = stack_runs(&parent, 30, &none);
        assert_eq!(merged.merge, [run("c", 100)]);
        assert_eq!(merged.keep.len(), 2);
        // 30,000 lines: everything merges into one whole list.
        let large = stack_runs(&parent, 30_000, &none);
        assert!(large.whole && large.keep.is_empty());
        assert_eq!(large.merge.len(), 3);
    }

    #[test]
    fn a_condemned_or_absent_parent_stack_means_a_whole_list() {
        let parent = vec![run("a", 100_000), run("b", 10)];
        let condemned: HashSet<String> = [run("b", 10).name].into();
        assert!(stack_runs(&parent, 0, &condemned).whole);
        assert!(stack_runs(&[], 0, &HashSet::new()).whole);
        assert!(stack_runs(&[], 0, &HashSet::new()).write);
    }

    fn entry(path: &str) -> FileEntry {
        FileEntry {
            role: crate::manifest::Role::Media,
            path: path.into(),
            size: 1,
            mode: 0o600,
            mtime: 0,
            mtime_nanos: Some(0),
            sha256: crate::manifest::Sha256Digest::from_hex(&"00".repeat(32)).unwrap(),
            storage: crate::manifest::Storage::Volume {
                volume: "volumes/backup-1-0000".into(),
            },
            provider: None,
        }
    }

    #[test]
    fn the_change_names_new_retouched_gone_and_vanished_paths() {
        let scratch = tempfile::tempdir().unwrap();
        let mut new = EntryListWriter::create(scratch.path().join("new.tsv")).unwrap();
        new.push(&entry("media/b")).unwrap();
        let new = new.finish().unwrap();
        let change = ChangeSinceParent {
            gone: vec!["media/0".into()],
            // "d" was to be stored anew but vanished before it was read.
            stored_anew: vec!["media/b".into(), "media/d".into()],
            retouched: vec![entry("media/c")],
        };
        let lines: Vec<String> = change_lines(&new, change)
            .unwrap()
            .iter()
            .map(|l| match l {
                RunEntry::File(e) => format!("file {}", e.path),
                RunEntry::Gone(p) => format!("gone {p}"),
            })
            .collect();
        assert_eq!(
            lines,
            [
                "gone media/0",
                "file media/b",
                "file media/c",
                "gone media/d"
            ]
        );
    }
}
