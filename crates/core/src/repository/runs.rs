//! Reading format 3's file-list runs (`manifest::runs`): the media entries of a backup are its
//! runs merged, oldest first. Each run is checked as it is read (its first line names the
//! backup that wrote it, its lines are sorted and well formed) and every entry must name a
//! volume the backup's header names.

use std::collections::HashSet;
use std::io::BufReader;

use futures::StreamExt;

use crate::archive::read_members;
use crate::error::{CorruptKind, Error, Result};
use crate::manifest::{
    merge_runs, read_run, run_owner, FileEntry, Header, RunEntry, RunRef, FORMAT_WITH_RUNS,
    RUN_MEMBER,
};

use super::object_reader::read_shared_object;
use super::OpContext;

/// Runs downloaded at once: a stack holds a handful, each one stream and one decryption thread.
const RUNS_AT_ONCE: usize = 4;
/// The most entries a run's list is given room for before it is read (a header's count is
/// not trusted with more; a larger run grows as it is read).
const MAX_PRESIZED: u64 = 1 << 20;

/// The lines of run `run`, in order.
pub(crate) async fn read_one_run(ctx: &OpContext<'_>, run: &RunRef) -> Result<Vec<RunEntry>> {
    let name = run.name.clone();
    let Some(owner) = run_owner(&name).map(str::to_string) else {
        return Err(Error::corrupt(
            &name,
            CorruptKind::ManifestMismatch,
            "a header names it as a run, but it is not named like one",
        ));
    };
    let expected = run.entries;
    read_shared_object(ctx, &run.name, move |reader| {
        // Sized by the count its backup recorded (a list grown by doubling holds up to twice
        // the room), within reason should that count be wrong.
        let mut entries = Vec::with_capacity(expected.min(MAX_PRESIZED) as usize);
        let mut count = None;
        read_members(reader, &name, |member| {
            if member.path != RUN_MEMBER || count.is_some() {
                return Err(Error::corrupt(
                    &name,
                    CorruptKind::Malformed,
                    format!("unexpected member {:?} in a run", member.path),
                ));
            }
            let data = BufReader::with_capacity(1 << 16, member.data);
            count = Some(read_run(&name, &owner, data, |e| {
                entries.push(e);
                Ok(())
            })?);
            Ok(())
        })?;
        let count = count.unwrap_or(0);
        if count as u64 != expected {
            return Err(Error::corrupt(
                &name,
                CorruptKind::ManifestMismatch,
                format!("it holds {count} entries, the backup recorded {expected}"),
            ));
        }
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

/// The media entries of a format-3 backup: its runs merged. An entry naming a volume the
/// header does not name is refused, naming the run's backup.
pub(crate) async fn media_entries(ctx: &OpContext<'_>, header: &Header) -> Result<Vec<FileEntry>> {
    let Some(media) = &header.media else {
        return Ok(Vec::new());
    };
    let entries = merge_runs(read_runs(ctx, &media.runs).await?);
    let volumes: HashSet<&str> = media.volumes.iter().map(|v| v.name.as_str()).collect();
    if let Some(stray) = entries
        .iter()
        .find(|e| !e.volume().is_some_and(|v| volumes.contains(v)))
    {
        return Err(Error::corrupt(
            &header.backup_id,
            CorruptKind::ManifestMismatch,
            format!(
                "its runs say {:?} is in {}, which its header does not name",
                stray.path,
                stray.volume().unwrap_or("no volume")
            ),
        ));
    }
    Ok(entries)
}

/// The media entries whose bytes are in volumes: those a format-2 base lists, or a format-3
/// backup's runs. A format-3 base that lists some too is refused: which list would count?
pub(crate) fn in_volumes(
    backup_id: &str,
    listed_in_base: Vec<FileEntry>,
    from_runs: Vec<FileEntry>,
) -> Result<Vec<FileEntry>> {
    match (listed_in_base.is_empty(), from_runs.is_empty()) {
        (_, true) => Ok(listed_in_base),
        (true, false) => Ok(from_runs),
        (false, false) => Err(Error::corrupt(
            backup_id,
            CorruptKind::ManifestMismatch,
            "its base lists media in volumes although its runs hold its media entries",
        )),
    }
}

/// The media entries of `header`'s backup when they are in runs (format 3), else none.
pub(crate) async fn run_entries_of(
    ctx: &OpContext<'_>,
    header: Option<&Header>,
) -> Result<Vec<FileEntry>> {
    match header {
        Some(header) if header.format_version >= FORMAT_WITH_RUNS => {
            media_entries(ctx, header).await
        }
        _ => Ok(Vec::new()),
    }
}
