//! Step 5 of a create: the new volumes, then the new run, then the base, each → OpenPGP →
//! store. The base goes last, so its existence means the backup is complete; on a failure,
//! what was written is removed again (no other backup can name it yet).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;

use crate::config::Config;
use crate::crypto::Packing;
use crate::error::Result;
use crate::manifest::{
    run_name, volume_name, volume_owner, BackupKind, DatabaseInfo, Header, MediaVolumes,
    MissingMedia, RunEntry, RunRef, VolumeRef, FILES_MEMBER, FORMAT_VERSION,
    PHYSICAL_FORMAT_VERSION, RUNS_LIST, TOOL_NAME,
};
use crate::synapse::HomeserverConfig;

use crate::provider::ProviderAccess;

use super::entry_list::{EntryList, EntryListWriter};
use super::offloaded;
use super::pipeline::{self, ArchiveContents};
use super::reuse::{ChangeSinceParent, MediaPlan};
use super::sources::{self, Source};
use super::to_store::{SourceLines, ToStore, VolumeCut};
use super::{runs, stream_to_store, volumes, BackupOptions, OpContext, StoredAgain};

/// Everything one backup stores, decided.
pub(super) struct BackupContents<'a> {
    pub backup_id: &'a str,
    pub hs: &'a HomeserverConfig,
    pub options: &'a BackupOptions,
    pub parent: Option<String>,
    pub sources: Vec<Source>,
    pub folders: Vec<sources::Folder>,
    pub dump: Option<pipeline::Dump>,
    pub snapshot_info: DatabaseInfo,
    pub plan: MediaPlan,
    /// Format 3: the parent's runs, oldest first (none for a format-2 parent, or none at all).
    pub parent_runs: Vec<RunRef>,
    /// Volumes and runs a prune has condemned: never named again.
    pub condemned: &'a HashSet<String>,
    /// The storage providers, how to read them, and what none of them had.
    pub providers: offloaded::Offloaded,
    pub temp: &'a Path,
}

/// What a backup stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub kind: BackupKind,
    /// Only when the backup takes files from it.
    pub parent: Option<String>,
    pub files: usize,
    pub file_bytes: u64,
    pub reused_files: usize,
    pub reused_bytes: u64,
    pub object_bytes: u64,
    pub provider_files: usize,
    pub provider_bytes: u64,
    /// Media the database lists that the backup lacks (only with `--allow-missing-media`).
    pub missing: Option<MissingMedia>,
    /// Files that vanished between listing and reading (Synapse deleted them meanwhile).
    pub vanished: Vec<String>,
    /// Volumes of the parent that are missing or damaged in the store, and how many of this
    /// backup's files each held: those files were read and stored anew.
    pub stored_again: Vec<StoredAgain>,
}

/// Writes the new volumes, the new run and the base; on failure removes what it wrote.
pub(super) async fn write_backup(
    config: &Config,
    ctx: &OpContext<'_>,
    contents: BackupContents<'_>,
) -> Result<Stored> {
    let mut written: Vec<String> = Vec::new();
    let outcome = write_objects(config, ctx, contents, &mut written).await;
    if outcome.is_err() {
        for name in written {
            if let Err(e) = ctx.store.delete(&name).await {
                tracing::warn!("could not remove {name} after the failed backup: {e}");
            }
        }
    }
    outcome
}

async fn write_objects(
    config: &Config,
    ctx: &OpContext<'_>,
    contents: BackupContents<'_>,
    written: &mut Vec<String>,
) -> Result<Stored> {
    let base_bytes: u64 = contents.sources.iter().map(|s| s.size).sum();
    let reused_files = contents.plan.reused.tally.files;
    let reused_bytes = contents.plan.reused.tally.bytes;
    log_intent(ctx, &contents, reused_files, reused_bytes);
    let BackupContents {
        backup_id,
        plan,
        providers,
        ..
    } = contents;
    let stored_again = warn_stored_again(plan.stored_again);
    let new_bytes = plan.to_store.bytes;
    ctx.progress
        .start("backing up", Some(new_bytes + base_bytes));

    let new = write_new_volumes(
        config,
        ctx,
        backup_id,
        plan.to_store,
        (&providers.access, contents.temp),
        written,
    )
    .await?;
    let mut volume_refs = plan.reused_volumes;
    volume_refs.extend(new.refs);
    let created = Utc::now();
    let listed = MediaList {
        reused: plan.reused,
        new: new.entries,
        change: plan.change,
        parent_runs: contents.parent_runs,
        condemned: contents.condemned,
    }
    .write(
        ctx,
        backup_id,
        (contents.temp, created.timestamp()),
        written,
    )
    .await?;
    let kind = kind_of(backup_id, &volume_refs);
    let parent = contents.parent.filter(|_| kind == BackupKind::Incremental);
    let header = Header {
        format_version: if contents.snapshot_info.physical.is_some() {
            PHYSICAL_FORMAT_VERSION
        } else {
            FORMAT_VERSION
        },
        tool: TOOL_NAME.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        backup_id: backup_id.to_string(),
        server_name: contents.hs.server_name.clone(),
        created,
        database: contents.snapshot_info,
        include_remote_media: contents.options.include_remote_media,
        expected_bytes: base_bytes + listed.bytes,
        files_member: FILES_MEMBER.into(),
        media: Some(MediaVolumes {
            kind,
            parent: parent.clone(),
            volumes: volume_refs,
            providers: providers.providers,
            missing: providers.missing.clone(),
            runs: listed.runs,
        }),
    };
    let base = ArchiveContents {
        lists: vec![(RUNS_LIST.to_string(), runs_list(&header))],
        header,
        folders: contents.folders,
        sources: contents.sources,
        dump: contents.dump,
        list_path: contents.temp.join(FILES_MEMBER),
    };
    let (archived, stored_base_bytes) =
        write_base(ctx, backup_id, base_bytes, base, written).await?;
    ctx.progress.finish();
    let mut vanished = new.vanished;
    vanished.extend(archived.vanished);
    Ok(Stored {
        kind,
        parent,
        files: archived.totals.files + listed.files,
        file_bytes: archived.totals.file_bytes + listed.bytes,
        reused_files,
        reused_bytes,
        object_bytes: new.object_bytes + listed.run_bytes + stored_base_bytes,
        provider_files: listed.provider_files,
        provider_bytes: listed.provider_bytes,
        missing: providers.missing,
        vanished,
        stored_again,
    })
}

/// Writes the base, last: what it archived and the object's size.
async fn write_base(
    ctx: &OpContext<'_>,
    backup_id: &str,
    base_bytes: u64,
    base: ArchiveContents,
    written: &mut Vec<String>,
) -> Result<(pipeline::Archived, u64)> {
    // Not compressed: a compressed object fails in its first bytes when it is damaged anywhere
    // near them, which for the base (read first, with nothing yet proving the passphrase)
    // could not be told from a wrong passphrase. Its big parts moved out in format 3 anyway.
    let progress = Arc::clone(&ctx.progress);
    written.push(backup_id.to_string());
    stream_to_store(
        ctx,
        backup_id,
        base_bytes,
        Packing::Plain,
        move |out, cancel| pipeline::write_archive(base, out, progress.as_ref(), cancel),
    )
    .await
}

/// The parent's unusable volumes, each said loudly: their files are stored anew.
fn warn_stored_again(
    stored_again: Vec<(String, crate::repository::trust::VolumeFault, usize)>,
) -> Vec<StoredAgain> {
    let stored_again: Vec<StoredAgain> = stored_again
        .into_iter()
        .map(|(volume, fault, files)| StoredAgain {
            volume,
            why: fault.to_string(),
            files,
        })
        .collect();
    for lost in &stored_again {
        tracing::warn!(
            "media volume {} of the parent backup is {}: its {} file(s) are read and stored anew, and nothing refers to it again (verify-backup of the backups that use it will fail: check the store)",
            lost.volume,
            lost.why,
            lost.files
        );
    }
    stored_again
}

fn log_intent(
    ctx: &OpContext<'_>,
    contents: &BackupContents<'_>,
    reused_files: usize,
    reused_bytes: u64,
) {
    let to_store = &contents.plan.to_store;
    tracing::info!(
        "backing up {} as {} to {}: {} media files ({} bytes) to store, {reused_files} ({reused_bytes} bytes) already stored{}",
        contents.hs.server_name,
        contents.backup_id,
        ctx.store.describe(),
        to_store.files,
        to_store.bytes,
        contents
            .parent
            .as_deref()
            .map(|p| format!(" (compared with {p})"))
            .unwrap_or_default(),
    );
}

/// What the new volumes hold.
struct NewVolumes {
    /// Their entries, in path order, on disk.
    entries: EntryList,
    refs: Vec<VolumeRef>,
    vanished: Vec<String>,
    object_bytes: u64,
}

/// Streams the media to store into new volumes, one at a time, each read from the list as it
/// is written, while the next volume's provider media download.
async fn write_new_volumes(
    config: &Config,
    ctx: &OpContext<'_>,
    backup_id: &str,
    to_store: ToStore,
    (access, scratch): (&[Option<ProviderAccess>], &Path),
    written: &mut Vec<String>,
) -> Result<NewVolumes> {
    // Volumes hold the files in path order, one after the other: so does the list.
    let mut entries = EntryListWriter::create(scratch.join("stored-anew.tsv"))?;
    let mut refs = Vec::new();
    let mut vanished = Vec::new();
    let mut object_bytes = 0;
    let downloads = config.backup.provider_downloads;
    let cuts = to_store.cut_into_volumes(config.backup.volume_size)?;
    let mut queue = cuts.iter().enumerate();
    let mut next = prepare_volume(&to_store, queue.next(), access, downloads).await?;
    while let Some(PreparedVolume { index, cut, files }) = next.take() {
        let name = volume_name(backup_id, index);
        let (files, fetched, bytes) = match files {
            VolumeFiles::Fetched(fetched) => {
                vanished.extend(fetched.gone);
                let paths = offloaded::fetched_paths(&fetched.files);
                // Sizes as downloaded, which may differ from what the database said.
                let bytes = fetched.files.iter().map(|s| s.size).sum();
                let files: SourceStream = Box::new(fetched.files.into_iter().map(Ok));
                (files, paths, bytes)
            }
            VolumeFiles::Streamed(lines) => {
                (Box::new(lines) as SourceStream, Vec::new(), cut.bytes)
            }
        };
        let packing = volumes::packing_for(cut.files, bytes);
        let progress = Arc::clone(&ctx.progress);
        let volume = name.clone();
        written.push(name.clone());
        let list = entries;
        // The next volume's provider media download while this one is written: at most two
        // volumes of them in the temp dir.
        let (stored, following) = futures::join!(
            stream_to_store(ctx, &name, bytes, packing, move |out, cancel| {
                volumes::write_volume(&volume, files, list, out, (progress.as_ref(), cancel))
            }),
            prepare_volume(&to_store, queue.next(), access, downloads)
        );
        offloaded::remove_fetched(&fetched);
        let (contents, size) = stored?;
        next = following?;
        entries = contents.entries;
        let file_bytes = contents.file_bytes;
        refs.push(VolumeRef {
            name,
            file_bytes,
            used_bytes: file_bytes,
            object_bytes: size,
        });
        object_bytes += size;
        vanished.extend(contents.vanished);
    }
    Ok(NewVolumes {
        entries: entries.finish()?,
        refs,
        vanished,
        object_bytes,
    })
}

type SourceStream = Box<dyn Iterator<Item = Result<Source>> + Send>;

/// A volume about to be written: its number, its share of the list, and its files.
struct PreparedVolume {
    index: usize,
    cut: VolumeCut,
    files: VolumeFiles,
}

enum VolumeFiles {
    /// Read from the list as the volume is written.
    Streamed(SourceLines),
    /// With files from storage providers, downloaded first (held: a volume's worth).
    Fetched(offloaded::FetchedVolume),
}

/// Opens the next volume's files; those a storage provider holds are downloaded first.
async fn prepare_volume(
    to_store: &ToStore,
    next: Option<(usize, &VolumeCut)>,
    access: &[Option<ProviderAccess>],
    downloads: usize,
) -> Result<Option<PreparedVolume>> {
    let Some((index, cut)) = next else {
        return Ok(None);
    };
    let lines = to_store.volume(cut)?;
    let files = if cut.provider_files == 0 {
        VolumeFiles::Streamed(lines)
    } else {
        let listed = lines.collect::<Result<Vec<Source>>>()?;
        VolumeFiles::Fetched(offloaded::fetch_volume(listed, access, downloads).await?)
    };
    Ok(Some(PreparedVolume {
        index,
        cut: *cut,
        files,
    }))
}

/// The media entries of the new backup, and what its run is made from.
struct MediaList<'a> {
    /// Taken over from the parent.
    reused: EntryList,
    /// Stored anew in this backup's volumes.
    new: EntryList,
    change: ChangeSinceParent,
    parent_runs: Vec<RunRef>,
    condemned: &'a HashSet<String>,
}

/// What the media list came to: the runs the header names and the totals it records.
struct MediaListed {
    runs: Vec<RunRef>,
    run_bytes: u64,
    files: usize,
    bytes: u64,
    provider_files: usize,
    provider_bytes: u64,
}

impl MediaList<'_> {
    /// Writes the night's run (if anything changed, or runs are merged) on the parent's stack.
    async fn write(
        self,
        ctx: &OpContext<'_>,
        backup_id: &str,
        temp_and_mtime: (&Path, i64),
        written: &mut Vec<String>,
    ) -> Result<MediaListed> {
        // The change is only worth listing when a parent's stack is built on.
        let change = if runs::builds_anew(&self.parent_runs, self.condemned) {
            Vec::new()
        } else {
            runs::change_lines(&self.new, self.change)?
        };
        let stacking = runs::stack_runs(&self.parent_runs, change.len() as u64, self.condemned);
        let tally = self.reused.tally.plus(self.new.tally);
        let whole = runs::WholeList {
            reused: self.reused,
            new: self.new,
        };
        let (runs, run_bytes) = write_runs(
            ctx,
            backup_id,
            stacking,
            whole,
            change,
            temp_and_mtime,
            written,
        )
        .await?;
        Ok(MediaListed {
            runs,
            run_bytes,
            files: tally.files,
            bytes: tally.bytes,
            provider_files: tally.provider_files,
            provider_bytes: tally.provider_bytes,
        })
    }
}

/// Writes the new run if the stacking asks for one; the runs the backup names, oldest first,
/// and the new run's size.
async fn write_runs(
    ctx: &OpContext<'_>,
    backup_id: &str,
    stacking: runs::Stacking,
    whole: runs::WholeList,
    change: Vec<RunEntry>,
    (temp, mtime): (&Path, i64),
    written: &mut Vec<String>,
) -> Result<(Vec<RunRef>, u64)> {
    let mut refs = stacking.keep.clone();
    if !stacking.write || (stacking.whole && whole.is_empty()) {
        return Ok((refs, 0));
    }
    let lines = runs::new_run_lines(ctx, &stacking, whole, change).await?;
    let name = run_name(backup_id);
    let id = backup_id.to_string();
    let temp = temp.to_path_buf();
    written.push(name.clone());
    let (entries, object_bytes) = stream_to_store(ctx, &name, 0, Packing::Zlib, move |out, _| {
        runs::write_run(&id, &lines, &temp, mtime, out)
    })
    .await?;
    refs.push(RunRef {
        name,
        entries: entries as u64,
        object_bytes,
    });
    Ok((refs, object_bytes))
}

/// The base's list of its runs, oldest first, one name per line, for restoring by hand.
fn runs_list(header: &Header) -> Vec<u8> {
    header
        .media
        .iter()
        .flat_map(|m| &m.runs)
        .map(|r| format!("{}\n", r.name))
        .collect::<String>()
        .into_bytes()
}

/// Incremental when it takes anything from an earlier backup's volumes.
fn kind_of(backup_id: &str, volumes: &[VolumeRef]) -> BackupKind {
    if volumes
        .iter()
        .any(|v| volume_owner(&v.name) != Some(backup_id))
    {
        BackupKind::Incremental
    } else {
        BackupKind::Full
    }
}
