//! Laying a data directory from a physical backup's base: unpacking the base object, the
//! recovery settings (`recovery.signal`, `restore_command` = wal-fetch, the target, the backup's
//! timeline, promote) as a marked block of `postgresql.auto.conf`, and the owner PostgreSQL
//! needs. For `--target-dir`, `DIR/postgres` is laid here, ready for `pg_ctl start` on a port of
//! the admin's choosing, with archiving off so that it never writes into the backups' store;
//! `in_place` lays the server's own data directory with the same pieces.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::archive::read_members;
use crate::config::Config;
use crate::database::physical::{PhysicalInfo, RecoveryTarget};
use crate::error::{Error, IoContext, Result};
use crate::repository::object_reader::read_shared_object;
use crate::repository::wal::base_part;

use crate::repository::OpContext;

/// The folder of `--target-dir` the data directory is laid in.
pub const DATA_DIR_NAME: &str = "postgres";
const BEGIN_MARK: &str = "# synapse-backup restore-backup ";
const END_MARK: &str = "# synapse-backup: end of the recovery settings";

/// Lays `dir/postgres` from the backup's base and writes its recovery settings; on failure
/// removes what it laid. Returns notes for the report (how to start it).
pub(super) async fn lay_data_dir(
    config: &Config,
    ctx: &OpContext<'_>,
    physical: &PhysicalInfo,
    target: &RecoveryTarget,
    dir: &Path,
) -> Result<Vec<String>> {
    let data = dir.join(DATA_DIR_NAME);
    fs::create_dir(&data).at("create", &data)?;
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).at("chmod", &data)?;
    let laid = async {
        unpack_base(ctx, &physical.base, &data).await?;
        let config_written = write_recovery_settings(config, physical, target, &data, Laid::Copy)?;
        let owner = give_to_the_server_user(&data)?;
        Ok::<_, Error>(start_notes(target, &data, owner, config_written))
    }
    .await;
    if laid.is_err() {
        let _ = fs::remove_dir_all(&data);
    }
    laid
}

/// Reads the base object and unpacks the tar its parts make up into `data`.
pub(super) async fn unpack_base(ctx: &OpContext<'_>, base: &str, data: &Path) -> Result<()> {
    let object = base.to_string();
    let target = data.to_path_buf();
    read_shared_object(ctx, base, move |reader| {
        let (pipe_reader, mut pipe_writer) = std::io::pipe().at("create a pipe for", &target)?;
        let unpacker = {
            let target = target.clone();
            std::thread::spawn(move || unpack_tar(pipe_reader, &target))
        };
        let fed = read_members(reader, &object, |mut member| {
            if !base_part(&object, &member.path, member.kind)? {
                return Ok(());
            }
            std::io::copy(&mut member.data, &mut pipe_writer)
                .map(|_| ())
                .map_err(|e| Error::io("unpack the base into", &target, e))
        });
        drop(pipe_writer);
        let unpacked = unpacker
            .join()
            .map_err(|_| Error::Other("the base's unpacking thread panicked".into()))?;
        fed?;
        unpacked.map_err(|e| Error::io("unpack the base backup into", &target, e))
    })
    .await
}

/// Unpacks pg_basebackup's tar into `target`, the large files flushed to disk behind the
/// unpacking ([`WriteBehind`]).
fn unpack_tar(tar_stream: impl std::io::Read, target: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(tar_stream);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let write_behind = WriteBehind::start();
    let unpacked = (|| {
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            if entry.header().entry_type().is_file() && entry.header().size()? >= WriteBehind::LARGE
            {
                write_behind.writing(target.join(&path));
            }
            // unpack_in refuses paths that leave `target` (`..`, absolute).
            if !entry.unpack_in(target)? {
                return Err(std::io::Error::other(format!(
                    "the base backup holds {}, which lies outside the data directory",
                    path.display()
                )));
            }
        }
        Ok(())
    })();
    write_behind.stop();
    unpacked
}

/// Flushes the large files of an unpacking to disk while it goes on. PostgreSQL fsyncs every
/// file of a restored data directory when it starts (the base has a backup_label), and with
/// gigabytes still only in the page cache that waits on the disk alone; flushed behind, the
/// disk works during the decryption instead. Best effort, and stopped (not awaited) at the
/// end: PostgreSQL's own fsync is what makes the data durable, and it reports failures.
struct WriteBehind {
    files: std::sync::mpsc::Sender<PathBuf>,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    flusher: std::thread::JoinHandle<()>,
}

impl WriteBehind {
    /// Smaller files are left to PostgreSQL: a flush each would cost more than it saves.
    const LARGE: u64 = 1 << 20;
    /// How often the file being written is flushed: relation files are 1 GiB segments.
    const TICK: std::time::Duration = std::time::Duration::from_millis(200);

    fn start() -> WriteBehind {
        use std::sync::atomic::Ordering;
        use std::sync::mpsc::RecvTimeoutError;
        let (files, queue) = std::sync::mpsc::channel::<PathBuf>();
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stopping.clone();
        let flusher = std::thread::spawn(move || {
            let mut writing: Option<(PathBuf, Option<fs::File>)> = None;
            while !stop.load(Ordering::Relaxed) {
                let next = queue.recv_timeout(Self::TICK);
                if let Some((path, file)) = &mut writing {
                    // Opened once it exists (the unpacking creates it after it is named).
                    if file.is_none() {
                        *file = fs::File::open(&*path).ok();
                    }
                    if let Some(file) = file {
                        let _ = file.sync_data();
                    }
                }
                match next {
                    Ok(path) => writing = Some((path, None)),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        WriteBehind {
            files,
            stopping,
            flusher,
        }
    }

    /// `path` is about to be written (the one before it is complete).
    fn writing(&self, path: PathBuf) {
        let _ = self.files.send(path);
    }

    fn stop(self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop(self.files);
        let _ = self.flusher.join();
    }
}

/// Where a base is laid: a copy beside the live server (`--target-dir`), or in its place.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Laid {
    Copy,
    InPlace,
}

/// `recovery.signal` and the recovery settings, appended to `postgresql.auto.conf` (the last
/// setting of a name wins) between markers, so they can be taken out once it has promoted. A
/// copy has archiving off (it must never write into the backups' store); in place, the server
/// archives its new timeline as before. A copy whose base has no `postgresql.conf` (Debian
/// keeps it in /etc/postgresql) gets a minimal one, and likewise `pg_hba.conf`; returns whether
/// it did.
pub(super) fn write_recovery_settings(
    config: &Config,
    physical: &PhysicalInfo,
    target: &RecoveryTarget,
    data: &Path,
    laid: Laid,
) -> Result<bool> {
    let signal = data.join("recovery.signal");
    fs::write(&signal, b"").at("write", &signal)?;
    let exe =
        std::env::current_exe().map_err(|e| Error::io("find", Path::new("/proc/self/exe"), e))?;
    let config_path = std::path::absolute(&config.source).unwrap_or(config.source.clone());
    let quote = |p: &Path| p.display().to_string().replace('\'', "''");
    let mut settings = format!(
        "\n{BEGIN_MARK}{id}: recover from the store to {described}\n\
         restore_command = '{exe} --config {config} wal-fetch %f %p'\n\
         {target}\n\
         recovery_target_timeline = '{timeline}'\n\
         recovery_target_action = 'promote'\n",
        id = physical.restore_point,
        described = target.describe(),
        target = target.setting(),
        exe = quote(&exe),
        config = quote(&config_path),
        timeline = physical.timeline,
    );
    if laid == Laid::Copy {
        settings.push_str("# off: a restored copy must never write WAL into the backups' store\narchive_mode = 'off'\n");
    }
    settings.push_str(END_MARK);
    settings.push('\n');
    let auto_conf = data.join("postgresql.auto.conf");
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&auto_conf)
        .and_then(|mut f| f.write_all(settings.as_bytes()))
        .at("write", &auto_conf)?;
    let mut wrote = false;
    if laid == Laid::InPlace {
        return Ok(wrote);
    }
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        fs::write(&conf, "# written by synapse-backup: the base held no postgresql.conf\nlisten_addresses = ''\n")
            .at("write", &conf)?;
        wrote = true;
    }
    let hba = data.join("pg_hba.conf");
    if !hba.exists() {
        fs::write(
            &hba,
            "# written by synapse-backup: the base held no pg_hba.conf\nlocal all all peer\n",
        )
        .at("write", &hba)?;
        wrote = true;
    }
    Ok(wrote)
}

/// PostgreSQL refuses a data directory that is not its own user's: when running as root, the
/// laid one goes to the `postgres` user, if there is one. Returns the owner's name.
fn give_to_the_server_user(data: &Path) -> Result<Option<String>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let Ok(Some(user)) = nix::unistd::User::from_name("postgres") else {
        return Ok(None);
    };
    chown_tree(data, user.uid.as_raw(), user.gid.as_raw())?;
    Ok(Some(user.name))
}

/// Gives `dir` and everything in it to `uid`:`gid` (links themselves, not what they point at).
pub(super) fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.map_err(|e| Error::Other(format!("walking {}: {e}", dir.display())))?;
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid)).at("chown", entry.path())?;
    }
    Ok(())
}

/// Takes the block [`write_recovery_settings`] appended out of `postgresql.auto.conf`, once
/// the server has promoted (a later recovery must not aim at this restore point).
pub(super) fn remove_recovery_settings(data: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let auto_conf = data.join("postgresql.auto.conf");
    let text = fs::read_to_string(&auto_conf).at("read", &auto_conf)?;
    let kept = without_recovery_block(&text);
    if kept != text {
        let temp = data.join("postgresql.auto.conf.synapse-backup");
        fs::write(&temp, kept).at("write", &temp)?;
        let meta = fs::metadata(&auto_conf).at("stat", &auto_conf)?;
        std::os::unix::fs::chown(&temp, Some(meta.uid()), Some(meta.gid())).at("chown", &temp)?;
        fs::set_permissions(&temp, meta.permissions()).at("chmod", &temp)?;
        fs::rename(&temp, &auto_conf).at("rename into place", &auto_conf)?;
    }
    Ok(())
}

fn without_recovery_block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with(BEGIN_MARK) {
            inside = true;
        } else if inside && line == END_MARK {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn start_notes(
    target: &RecoveryTarget,
    data: &Path,
    owner: Option<String>,
    config_written: bool,
) -> Vec<String> {
    // Inside the data directory: the server's user may not write the target dir itself.
    let log: PathBuf = data.join("restore.log");
    let run_as = owner
        .as_deref()
        .map(|user| format!("runuser -u {user} -- "))
        .unwrap_or_default();
    let mut notes = vec![format!(
        "the database is laid in {data} and recovers, from the store, to {target} when started; on another port, for example: {run_as}pg_ctl -D {data} -l {log} -o \"-p 5433 -c unix_socket_directories={data}\" start. It reads the WAL through wal-fetch with this config, so the server's user needs to read the config and the passphrase. Once it has promoted, TRUNCATE e2e_one_time_keys_json before a Synapse uses it (Synapse's backup documentation)",
        data = data.display(),
        target = target.describe(),
        log = log.display(),
    )];
    if config_written {
        notes.push("the base held no postgresql.conf or pg_hba.conf (Debian keeps them in /etc/postgresql): minimal ones were written; copy your own in before starting it for real use".into());
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recovery_block_comes_out_and_nothing_else() {
        let text = format!(
            "# Do not edit this file manually!\narchive_command = 'x'\n\n{BEGIN_MARK}backup-1: recover\nrestore_command = 'y'\n{END_MARK}\nwork_mem = '8MB'\n"
        );
        assert_eq!(
            without_recovery_block(&text),
            "# Do not edit this file manually!\narchive_command = 'x'\n\nwork_mem = '8MB'\n"
        );
    }
}
