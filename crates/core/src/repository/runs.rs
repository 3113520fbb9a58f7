//! Reading format 3's file-list runs (`manifest::runs`): the media entries of a backup are its
//! runs merged, oldest first. Each run is checked as it is read (its first line names the
//! backup that wrote it, its lines are sorted and well formed) and every entry must name a
//! volume the backup's header names.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::archive::read_members;
use crate::error::{CorruptKind, Error, IoContext, Result};
use crate::manifest::{
    read_run, run_owner, Header, MergedRuns, RunEntry, RunReader, RunRef, FORMAT_WITH_RUNS,
    RUN_MEMBER,
};

use super::object_reader::read_shared_object;
use super::wants::{spill_by_volume, VolumeWant};
use super::OpContext;

/// Runs downloaded at once: a stack holds a handful, each one stream and one decryption thread.
const RUNS_AT_ONCE: usize = 4;
/// The most entries a run's list is given room for before it is read (a header's count is
/// not trusted with more; a larger run grows as it is read).
const MAX_PRESIZED: u64 = 1 << 20;

/// The backup that wrote `run`, which its first line must name.
fn owner_of(run: &RunRef) -> Result<String> {
    run_owner(&run.name).map(str::to_string).ok_or_else(|| {
        Error::corrupt(
            &run.name,
            CorruptKind::ManifestMismatch,
            "a header names it as a run, but it is not named like one",
        )
    })
}

/// Runs copied out of the store as plain text into a scratch folder, to be merged from disk
/// ([`RunsOnDisk::merged`]) rather than held: what a create joins the media store with.
pub(crate) struct RunsOnDisk {
    runs: Vec<(RunRef, String, PathBuf)>,
}

/// The media entries of one backup read from its runs on disk, one at a time, in path order.
pub(crate) type MergedOnDisk = MergedRuns<RunReader<BufReader<File>>>;

impl RunsOnDisk {
    /// Decrypts each of `runs` into `dir` and checks that it holds the number of lines its
    /// backup recorded; the lines themselves are checked as they are merged.
    pub(crate) async fn fetch(ctx: &OpContext<'_>, runs: &[RunRef], dir: &Path) -> Result<Self> {
        let fetched = futures::stream::iter(runs)
            .map(|run| fetch_run(ctx, run, dir))
            .buffered(RUNS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let runs = runs
            .iter()
            .zip(fetched)
            .map(|(run, path)| Ok((run.clone(), owner_of(run)?, path?)))
            .collect::<Result<_>>()?;
        Ok(RunsOnDisk { runs })
    }

    /// Runs already on disk: each, who wrote it, and its file.
    #[cfg(test)]
    pub(crate) fn from_files(runs: Vec<(RunRef, String, PathBuf)>) -> Self {
        RunsOnDisk { runs }
    }

    /// The effective entries, merged from the files one line per run at a time.
    pub(crate) fn merged(&self) -> Result<MergedOnDisk> {
        let readers = (self.runs.iter())
            .map(|(run, owner, path)| {
                let file = File::open(path).at("open", path)?;
                RunReader::new(&run.name, owner, BufReader::with_capacity(1 << 16, file))
            })
            .collect::<Result<_>>()?;
        Ok(MergedRuns::new(readers))
    }
}

/// Copies run `run`'s one member into `dir`, counting its lines as they pass.
async fn fetch_run(ctx: &OpContext<'_>, run: &RunRef, dir: &Path) -> Result<PathBuf> {
    let name = run.name.clone();
    let owner = owner_of(run)?;
    let path = dir.join(format!("{owner}.tsv"));
    let target = path.clone();
    let expected = run.entries;
    read_shared_object(ctx, &run.name, move |reader| {
        let lines = read_run_member(reader, &name, |data| copy_counting_lines(data, &target))?;
        // The first line names the run's backup (checked first: a run copied over another's
        // name is told as such); each entry is one line after it.
        let first = File::open(&target).at("open", &target)?;
        RunReader::new(&name, &owner, BufReader::new(first))?;
        check_count(&name, lines.saturating_sub(1), expected)?;
        Ok(target)
    })
    .await?;
    Ok(path)
}

/// Hands the one member a run object holds, [`RUN_MEMBER`], to `read`, and returns what it
/// counted (0 when there is no member); any other member, or a second one, is damage.
fn read_run_member(
    reader: impl Read,
    name: &str,
    mut read: impl FnMut(&mut dyn Read) -> Result<u64>,
) -> Result<u64> {
    let mut counted = None;
    read_members(reader, name, |mut member| {
        if member.path != RUN_MEMBER || counted.is_some() {
            return Err(Error::corrupt(
                name,
                CorruptKind::Malformed,
                format!("unexpected member {:?} in a run", member.path),
            ));
        }
        counted = Some(read(&mut member.data)?);
        Ok(())
    })?;
    Ok(counted.unwrap_or(0))
}

/// A run must hold the number of entries its backup recorded.
fn check_count(name: &str, entries: u64, expected: u64) -> Result<()> {
    if entries != expected {
        return Err(Error::corrupt(
            name,
            CorruptKind::ManifestMismatch,
            format!("it holds {entries} entries, the backup recorded {expected}"),
        ));
    }
    Ok(())
}

fn copy_counting_lines(mut data: impl Read, path: &Path) -> Result<u64> {
    let mut out = std::io::BufWriter::new(File::create(path).at("create", path)?);
    let mut buffer = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    loop {
        let read = match data.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        };
        lines += buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64;
        out.write_all(&buffer[..read]).at("write", path)?;
    }
    out.flush().at("write", path)?;
    Ok(lines)
}

/// The lines of run `run`, in order.
pub(crate) async fn read_one_run(ctx: &OpContext<'_>, run: &RunRef) -> Result<Vec<RunEntry>> {
    let name = run.name.clone();
    let owner = owner_of(run)?;
    let expected = run.entries;
    read_shared_object(ctx, &run.name, move |reader| {
        // Sized by the count its backup recorded (a list grown by doubling holds up to twice
        // the room), within reason should that count be wrong.
        let mut entries = Vec::with_capacity(expected.min(MAX_PRESIZED) as usize);
        let count = read_run_member(reader, &name, |data| {
            let data = BufReader::with_capacity(1 << 16, data);
            let count = read_run(&name, &owner, data, |e| {
                entries.push(e);
                Ok(())
            })?;
            Ok(count as u64)
        })?;
        check_count(&name, count, expected)?;
        Ok(entries)
    })
    .await
}

/// The runs of `header`, each as its lines, oldest first.
pub(crate) async fn read_runs(ctx: &OpContext<'_>, runs: &[RunRef]) -> Result<Vec<Vec<RunEntry>>> {
    futures::stream::iter(runs)
        .map(|run| read_one_run(ctx, run))
        .buffered(RUNS_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// What restore and verify take from each volume of a format-3 backup: its runs copied into
/// `dir`, merged from there and grouped by volume into scratch lists beside them (the copies
/// are removed once merged). None for an earlier format, whose base lists its media.
pub(crate) async fn wants_from_runs(
    ctx: &OpContext<'_>,
    header: Option<&Header>,
    dir: &Path,
) -> Result<Vec<VolumeWant>> {
    let Some((header, media)) = header
        .filter(|h| h.format_version >= FORMAT_WITH_RUNS)
        .and_then(|h| Some((h, h.media.as_ref()?)))
    else {
        return Ok(Vec::new());
    };
    let copies = dir.join("runs");
    std::fs::create_dir_all(&copies).at("create", &copies)?;
    let runs = RunsOnDisk::fetch(ctx, &media.runs, &copies).await?;
    let volumes: HashSet<String> = media.volumes.iter().map(|v| v.name.clone()).collect();
    let backup_id = header.backup_id.clone();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let wants = spill_by_volume(&backup_id, runs.merged()?, &volumes, &dir)?;
        std::fs::remove_dir_all(&copies).at("remove", &copies)?;
        Ok(wants)
    })
    .await
    .map_err(|e| Error::task_failed("grouping the backup's media entries by volume", e))?
}
