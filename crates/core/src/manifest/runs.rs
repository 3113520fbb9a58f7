//! Format 3's file-list runs: a backup's media entries as a short stack of sorted lists shared
//! between backups, the way volumes are, so that a night stores only the night's change.
//!
//! A run object is a tar of one member, [`RUN_MEMBER`]: plain text, one line per media file,
//! tab-separated, sorted by path, each path once:
//!
//! ```text
//! # synapse-backup run 3 backup-20261206040000000000
//! media/local_content/ab/cd/ef<TAB>volumes/backup-…-0000<TAB>size<TAB>mode<TAB>mtime<TAB>mtime_nanos<TAB>sha256<TAB>provider
//! media/local_content/ab/cd/gh<TAB>gone
//! ```
//!
//! `mode` is octal, `provider` is `-` for a file read locally. A later run overrides an earlier
//! one path by path, and `gone` removes the path. The first line names the backup that wrote the
//! run, so a run copied over another's name is refused. Text rather than JSON so that awk can
//! merge runs when restoring by hand (docs/format.md).

use std::io::{BufRead, Write};

use crate::archive::member_path::check_member_path;
use crate::error::{CorruptKind, Error, Result};

use super::{FileEntry, Role, Sha256Digest, Storage, VolumeNames};

const FIRST_LINE_PREFIX: &str = "# synapse-backup run 3 ";
/// The one member of a run object (a tar, as every object is): `gpg -d RUN | tar -xO` prints it.
pub const RUN_MEMBER: &str = "files.tsv";
/// The mark, in the volume column, of a path removed since an earlier run.
pub const GONE: &str = "gone";

/// The object name of the run written by backup `backup_id`. Runs sit beside the volumes so
/// that garbage collection keeps and deletes them by the same rules, unchanged.
pub fn run_name(backup_id: &str) -> String {
    format!("volumes/{backup_id}-files")
}

/// The backup that wrote run `name`.
pub fn run_owner(name: &str) -> Option<&str> {
    name.strip_prefix("volumes/")?.strip_suffix("-files")
}

/// One line of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEntry {
    File(FileEntry),
    Gone(String),
}

impl RunEntry {
    pub fn path(&self) -> &str {
        match self {
            RunEntry::File(entry) => &entry.path,
            RunEntry::Gone(path) => path,
        }
    }
}

/// Whether `path` can be written in a run (and in a `tar -T` list): no tab, no line break.
pub fn path_fits_a_run(path: &str) -> bool {
    !path.contains(['\t', '\n', '\r'])
}

/// Writes a run one entry at a time; entries must come sorted by path, each path once.
pub struct RunWriter<W: Write> {
    out: W,
    last: Option<String>,
    entries: usize,
}

impl<W: Write> RunWriter<W> {
    pub fn new(mut out: W, backup_id: &str) -> std::io::Result<Self> {
        writeln!(out, "{FIRST_LINE_PREFIX}{backup_id}")?;
        Ok(RunWriter {
            out,
            last: None,
            entries: 0,
        })
    }

    pub fn push(&mut self, entry: &RunEntry) -> std::io::Result<()> {
        match entry {
            RunEntry::Gone(path) => self.push_gone(path),
            RunEntry::File(e) => self.push_file(e),
        }
    }

    pub fn push_gone(&mut self, path: &str) -> std::io::Result<()> {
        self.check_order(path)?;
        writeln!(self.out, "{path}\t{GONE}")?;
        self.counted(path)
    }

    pub fn push_file(&mut self, e: &FileEntry) -> std::io::Result<()> {
        self.check_order(&e.path)?;
        let Storage::Volume { volume } = &e.storage else {
            return Err(std::io::Error::other(format!(
                "{:?} is not in a volume and cannot be in a run",
                e.path
            )));
        };
        let provider = e.provider.map_or("-".to_string(), |p| p.to_string());
        writeln!(
            self.out,
            "{}\t{volume}\t{}\t{:o}\t{}\t{}\t{}\t{provider}",
            e.path,
            e.size,
            e.mode,
            e.mtime,
            e.mtime_nanos.unwrap_or(0),
            e.sha256
        )?;
        self.counted(&e.path)
    }

    fn check_order(&self, path: &str) -> std::io::Result<()> {
        if !path_fits_a_run(path) || self.last.as_deref().is_some_and(|last| last >= path) {
            return Err(std::io::Error::other(format!(
                "a run's entries must be sorted, each path once, with no tab or line break: {path:?}"
            )));
        }
        Ok(())
    }

    fn counted(&mut self, path: &str) -> std::io::Result<()> {
        self.last = Some(path.to_string());
        self.entries += 1;
        Ok(())
    }

    /// The output as written so far: a buffer's lines may be moved elsewhere as the run grows.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The writer back, and how many entries the run holds.
    pub fn finish(mut self) -> std::io::Result<(W, usize)> {
        self.out.flush()?;
        Ok((self.out, self.entries))
    }
}

/// Reads run `name`, written by `backup_id`, handing each entry to `visit` in order; checks
/// the first line, every field, and the order. Returns the number of entries.
pub fn read_run<R: BufRead>(
    name: &str,
    backup_id: &str,
    reader: R,
    mut visit: impl FnMut(RunEntry) -> Result<()>,
) -> Result<usize> {
    let mut count = 0;
    for entry in RunReader::new(name, backup_id, reader)? {
        visit(entry?)?;
        count += 1;
    }
    Ok(count)
}

/// A run's lines one at a time, each checked as [`read_run`] checks it: a run of millions of
/// lines is read without being held.
pub struct RunReader<R> {
    name: String,
    lines: std::io::Lines<R>,
    number: usize,
    last: String,
    names: VolumeNames,
}

impl<R: BufRead> RunReader<R> {
    /// Checks the first line, which must name `backup_id`.
    pub fn new(name: &str, backup_id: &str, reader: R) -> Result<Self> {
        let mut lines = reader.lines();
        let first = lines
            .next()
            .transpose()
            .map_err(|e| malformed(name, format!("cannot read the run: {e}")))?
            .unwrap_or_default();
        match first.strip_prefix(FIRST_LINE_PREFIX) {
            Some(id) if id == backup_id => {}
            Some(id) => {
                return Err(Error::corrupt(
                    name,
                    CorruptKind::ManifestMismatch,
                    format!("the run was written by {id}, not {backup_id}"),
                ))
            }
            None => {
                return Err(malformed(
                    name,
                    "it does not start as a run of format 3".into(),
                ))
            }
        }
        Ok(RunReader {
            name: name.to_string(),
            lines,
            number: 1,
            last: String::new(),
            names: VolumeNames::default(),
        })
    }

    fn parse(&mut self, line: std::io::Result<String>) -> Result<RunEntry> {
        self.number += 1;
        let bad = |why: String| malformed(&self.name, format!("line {}: {why}", self.number));
        let line = line.map_err(|e| malformed(&self.name, format!("cannot read the run: {e}")))?;
        let entry = parse_line(&line, &mut self.names).map_err(bad)?;
        if self.number > 2 && self.last.as_str() >= entry.path() {
            return Err(bad(format!(
                "{:?} is out of order or repeated",
                entry.path()
            )));
        }
        self.last.clear();
        self.last.push_str(entry.path());
        Ok(entry)
    }
}

impl<R: BufRead> Iterator for RunReader<R> {
    type Item = Result<RunEntry>;

    fn next(&mut self) -> Option<Result<RunEntry>> {
        let line = self.lines.next()?;
        Some(self.parse(line))
    }
}

fn malformed(name: &str, why: String) -> Error {
    Error::corrupt(name, CorruptKind::Malformed, why)
}

/// Runs read one line at a time and merged as [`merge_runs`] merges them, oldest run first:
/// for each path the entry of the newest run that names it, unless that one says it is gone.
/// Holds one line per run, whatever their length.
pub struct MergedRuns<I: Iterator<Item = Result<RunEntry>>> {
    runs: Vec<I>,
    heads: Vec<Option<RunEntry>>,
    started: bool,
}

impl<I: Iterator<Item = Result<RunEntry>>> MergedRuns<I> {
    pub fn new(runs: Vec<I>) -> Self {
        MergedRuns {
            heads: runs.iter().map(|_| None).collect(),
            runs,
            started: false,
        }
    }

    fn advance(&mut self, run: usize) -> Result<()> {
        self.heads[run] = self.runs[run].next().transpose()?;
        Ok(())
    }

    /// The next path's line of the newest run naming it, gone or not.
    fn next_line(&mut self) -> Result<Option<RunEntry>> {
        if !self.started {
            self.started = true;
            for run in 0..self.runs.len() {
                self.advance(run)?;
            }
        }
        let Some(first) = (self.heads.iter().flatten().map(RunEntry::path)).min() else {
            return Ok(None);
        };
        let first = first.to_string();
        let mut newest = None;
        for run in 0..self.runs.len() {
            if self.heads[run].as_ref().is_some_and(|h| h.path() == first) {
                newest = self.heads[run].take();
                self.advance(run)?;
            }
        }
        Ok(newest)
    }
}

impl<I: Iterator<Item = Result<RunEntry>>> Iterator for MergedRuns<I> {
    type Item = Result<FileEntry>;

    fn next(&mut self) -> Option<Result<FileEntry>> {
        loop {
            match self.next_line() {
                Err(e) => return Some(Err(e)),
                Ok(None) => return None,
                Ok(Some(RunEntry::Gone(_))) => continue,
                Ok(Some(RunEntry::File(entry))) => return Some(Ok(entry)),
            }
        }
    }
}

fn parse_line(line: &str, names: &mut VolumeNames) -> std::result::Result<RunEntry, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    let path = fields[0];
    check_member_path(path).map_err(|why| why.to_string())?;
    if Role::of_member(path) != Some(Role::Media) {
        return Err(format!("{path:?} is not a media path"));
    }
    match fields[1..] {
        [GONE] => Ok(RunEntry::Gone(path.to_string())),
        [volume, size, mode, mtime, nanos, sha256, provider] => {
            let number = |what: &str, text: &str| format!("{what} {text:?} is not a number");
            if !volume.starts_with("volumes/") {
                return Err(format!("{volume:?} is not a volume"));
            }
            let Some(sha256) = Sha256Digest::from_hex(sha256) else {
                return Err(format!("{sha256:?} is not a SHA-256"));
            };
            Ok(RunEntry::File(FileEntry {
                role: Role::Media,
                path: path.to_string(),
                size: size.parse().map_err(|_| number("size", size))?,
                mode: u32::from_str_radix(mode, 8).map_err(|_| number("mode", mode))?,
                mtime: mtime.parse().map_err(|_| number("mtime", mtime))?,
                mtime_nanos: Some(nanos.parse().map_err(|_| number("mtime_nanos", nanos))?),
                sha256,
                storage: Storage::Volume {
                    volume: names.get(volume),
                },
                provider: match provider {
                    "-" => None,
                    p => Some(p.parse().map_err(|_| number("provider", p))?),
                },
            }))
        }
        _ => Err(format!("{} fields, not 2 or 8", fields.len())),
    }
}

/// Merges runs, each sorted by path, into the effective entries, oldest run first: for each
/// path the entry of the newest run that names it, unless that one says it is gone.
pub fn merge_runs(runs: Vec<Vec<RunEntry>>) -> Vec<FileEntry> {
    merge_keeping_gone(runs)
        .into_iter()
        .filter_map(|entry| match entry {
            RunEntry::File(file) => Some(file),
            RunEntry::Gone(_) => None,
        })
        .collect()
}

/// Merges runs as [`merge_runs`] does, keeping the `gone` marks (for a run that is not the
/// bottom of its stack: an earlier run below it may still name the path).
///
/// In place on the oldest run, the largest by far (each run outweighs all later ones), so that
/// merging never holds a second copy of it.
pub fn merge_keeping_gone(runs: Vec<Vec<RunEntry>>) -> Vec<RunEntry> {
    let mut runs = runs.into_iter();
    let mut merged = runs.next().unwrap_or_default();
    for newer in runs {
        overlay(&mut merged, newer);
    }
    merged
}

/// Lays `newer` over `older`, both sorted by path: a path in both takes `newer`'s line.
fn overlay(older: &mut Vec<RunEntry>, newer: Vec<RunEntry>) {
    let mut added = Vec::new();
    for line in newer {
        match older.binary_search_by(|e| e.path().cmp(line.path())) {
            Ok(i) => older[i] = line,
            Err(_) => added.push(line),
        }
    }
    if !added.is_empty() {
        older.reserve_exact(added.len());
        older.extend(added);
        // Each path once: no two lines compare equal, so the unstable sort is exact.
        older.sort_unstable_by(|a, b| a.path().cmp(b.path()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> RunEntry {
        RunEntry::File(FileEntry {
            role: Role::Media,
            path: path.into(),
            size,
            mode: 0o640,
            mtime: 1_767_268_800,
            mtime_nanos: Some(123),
            sha256: crate::manifest::Sha256Digest::from_hex(&"ab".repeat(32)).unwrap(),
            storage: Storage::Volume {
                volume: "volumes/backup-20260101000000000000-0000".into(),
            },
            provider: (size == 7).then_some(1),
        })
    }

    fn write(entries: &[RunEntry]) -> Vec<u8> {
        let mut writer = RunWriter::new(Vec::new(), "backup-1").unwrap();
        for entry in entries {
            writer.push(entry).unwrap();
        }
        writer.finish().unwrap().0
    }

    fn read(bytes: &[u8]) -> Result<Vec<RunEntry>> {
        let mut entries = Vec::new();
        read_run("r", "backup-1", bytes, |e| {
            entries.push(e);
            Ok(())
        })?;
        Ok(entries)
    }

    #[test]
    fn a_run_reads_back_as_written() {
        let entries = vec![
            file("media/a", 1),
            RunEntry::Gone("media/b".into()),
            file("media/c", 7),
        ];
        let bytes = write(&entries);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("media/b\tgone\n"), "{text}");
        assert!(text.contains("\t640\t"), "{text}");
        assert_eq!(read(&bytes).unwrap(), entries);
    }

    #[test]
    fn a_run_out_of_order_or_of_another_backup_is_refused() {
        let mut writer = RunWriter::new(Vec::new(), "backup-1").unwrap();
        writer.push(&file("media/b", 1)).unwrap();
        assert!(writer.push(&file("media/a", 1)).is_err());
        assert!(writer.push(&file("media/b", 1)).is_err());
        assert!(writer.push(&file("media/x\ty", 1)).is_err());
        let good = write(&[file("media/a", 1)]);
        let swapped = String::from_utf8(good.clone())
            .unwrap()
            .replace("backup-1", "backup-2");
        let err = read(swapped.as_bytes()).unwrap_err();
        assert_eq!(err.corrupt_kind(), Some(CorruptKind::ManifestMismatch));
        let text = String::from_utf8(good).unwrap();
        for broken in [
            format!("{text}media/0\tgone\n"),
            text.replace("\t640\t", "\t9x\t"),
            text.replace("media/a", "../etc/passwd"),
            text.replace("media/a", "config/a"),
            text.replace(&"ab".repeat(32), "zz"),
            format!("{text}media/b\n"),
            "not a run\n".to_string(),
        ] {
            assert_eq!(
                read(broken.as_bytes()).unwrap_err().corrupt_kind(),
                Some(CorruptKind::Malformed),
                "{broken}"
            );
        }
    }

    #[test]
    fn later_runs_win_and_gone_removes() {
        let runs = vec![
            vec![file("media/a", 1), file("media/b", 1), file("media/d", 1)],
            vec![RunEntry::Gone("media/b".into()), file("media/c", 2)],
            vec![file("media/a", 3), RunEntry::Gone("media/e".into())],
        ];
        let merged: Vec<(String, u64)> = merge_runs(runs.clone())
            .into_iter()
            .map(|e| (e.path, e.size))
            .collect();
        assert_eq!(
            merged,
            [
                ("media/a".to_string(), 3),
                ("media/c".to_string(), 2),
                ("media/d".to_string(), 1)
            ]
        );
        let kept: Vec<String> = merge_keeping_gone(runs)
            .iter()
            .map(|e| e.path().to_string())
            .collect();
        assert_eq!(
            kept,
            ["media/a", "media/b", "media/c", "media/d", "media/e"]
        );
    }

    #[test]
    fn merging_in_place_agrees_with_a_map_of_the_runs_laid_over_each_other() {
        // Runs of pseudo-random paths, sizes and gone marks, as nights stack them.
        let mut state = 7u64;
        let mut next = move |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let runs: Vec<Vec<RunEntry>> = [400u64, 90, 20, 5]
            .iter()
            .map(|&lines| {
                let mut paths: Vec<String> = (0..lines)
                    .map(|_| format!("media/{:04}", next(600)))
                    .collect();
                paths.sort();
                paths.dedup();
                paths
                    .into_iter()
                    .map(|path| match next(4) {
                        0 => RunEntry::Gone(path),
                        _ => file(&path, next(1000)),
                    })
                    .collect()
            })
            .collect();
        let mut model = std::collections::BTreeMap::new();
        for run in &runs {
            for line in run {
                model.insert(line.path().to_string(), line.clone());
            }
        }
        let expected: Vec<RunEntry> = model.into_values().collect();
        assert_eq!(merge_keeping_gone(runs.clone()), expected);
        let files: Vec<FileEntry> = expected
            .into_iter()
            .filter_map(|line| match line {
                RunEntry::File(entry) => Some(entry),
                RunEntry::Gone(_) => None,
            })
            .collect();
        assert_eq!(merge_runs(runs.clone()), files);
        let streamed: Vec<FileEntry> = MergedRuns::new(
            runs.into_iter()
                .map(|run| run.into_iter().map(Ok))
                .collect(),
        )
        .collect::<Result<_>>()
        .unwrap();
        assert_eq!(streamed, files);
    }

    #[test]
    fn a_damaged_line_stops_the_streamed_merge_with_its_run_and_line() {
        let good = String::from_utf8(write(&[file("media/a", 1), file("media/b", 1)])).unwrap();
        let broken = good.replace("media/b\t", "media/0\t");
        let runs = vec![
            RunReader::new("r1", "backup-1", good.as_bytes()).unwrap(),
            RunReader::new("r2", "backup-1", broken.as_bytes()).unwrap(),
        ];
        let e = MergedRuns::new(runs)
            .collect::<Result<Vec<_>>>()
            .unwrap_err();
        assert_eq!(e.corrupt_kind(), Some(CorruptKind::Malformed));
        assert!(
            e.to_string().contains("r2") && e.to_string().contains("line 3"),
            "{e}"
        );
    }
}
