//! What a backup reads from the homeserver: the signing key, the config files it names, and
//! the media files, each as a [`Source`] with the member name it is archived under.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::Role;
use crate::synapse::HomeserverConfig;

/// One file to archive.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub member: String,
    pub path: PathBuf,
    pub role: Role,
    pub size: u64,
}

impl Source {
    pub fn new(path: &Path, member: String, role: Role) -> Result<Source> {
        Ok(Source {
            size: file_size(path)?,
            member,
            path: path.to_path_buf(),
            role,
        })
    }
}

/// The signing key (required) and the config files homeserver.yaml names.
pub(super) fn key_and_config_sources(hs: &HomeserverConfig) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    if !hs.signing_key.is_file() {
        return Err(Error::config(format!(
            "the signing key {} named by {} does not exist; without it the server cannot federate under its name",
            hs.signing_key.display(),
            hs.path.display()
        )));
    }
    sources.push(Source::new(
        &hs.signing_key,
        format!("keys/{}", file_name(&hs.signing_key)),
        Role::SigningKey,
    )?);
    sources.push(Source::new(
        &hs.path,
        "config/homeserver.yaml".into(),
        Role::Config,
    )?);
    let optional = hs
        .log_config
        .iter()
        .map(|path| (path, "config/log", "log_config"))
        .chain(
            hs.app_service_files
                .iter()
                .map(|path| (path, "config/appservices", "app service registration")),
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

/// Refuses a media store that does not exist: that is a wrong path (a relative
/// `media_store_path` resolved elsewhere than Synapse resolves it), not a server without media,
/// and a backup of it would silently hold no media at all. An existing, empty one is fine.
pub(super) fn check_media_store(hs: &HomeserverConfig) -> Result<()> {
    match std::fs::metadata(&hs.media_store) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::config(format!(
            "the media store {} named by {} is not a directory",
            hs.media_store.display(),
            hs.path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::config(format!(
            "the media store {} named by {} does not exist, so a backup would hold no media; check media_store_path (a relative path is resolved against {})",
            hs.media_store.display(),
            hs.path.display(),
            hs.path.parent().unwrap_or(Path::new("/")).display()
        ))),
        Err(e) => Err(Error::io("stat the media store", &hs.media_store, e)),
    }
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

/// Lists regular files under each media folder, sorted so archives are reproducible.
pub(super) fn list_media(media_store: &Path, dirs: &[&str]) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for dir in dirs {
        let root = media_store.join(dir);
        if !root.exists() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
            let entry = match entry {
                Ok(entry) => entry,
                // A folder removed while we walk is not an error for a live server.
                Err(e)
                    if e.io_error().map(|io| io.kind()) == Some(std::io::ErrorKind::NotFound) =>
                {
                    continue
                }
                Err(e) => {
                    let path = e.path().unwrap_or(&root).to_path_buf();
                    return Err(Error::io("list media under", path, e.into()));
                }
            };
            let kind = entry.file_type();
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                tracing::warn!("{} is not a regular file; skipped", entry.path().display());
                continue;
            }
            let relative = entry.path().strip_prefix(media_store).map_err(|_| {
                Error::Other(format!(
                    "{} escaped the media store",
                    entry.path().display()
                ))
            })?;
            let Some(relative) = relative.to_str() else {
                tracing::warn!(
                    "{} has a name that is not UTF-8; skipped",
                    entry.path().display()
                );
                continue;
            };
            let size = match entry.metadata() {
                Ok(meta) => meta.len(),
                Err(_) => continue,
            };
            out.push(Source {
                member: format!("media/{relative}"),
                path: entry.path().to_path_buf(),
                role: Role::Media,
                size,
            });
        }
    }
    Ok(out)
}
