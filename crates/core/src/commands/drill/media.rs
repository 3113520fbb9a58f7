//! The media check: a random sample of the local media rows of the restored database (drawn by
//! the database, so a drill never holds every row), each
//! downloaded from the drill's Synapse (with one of its thumbnails) and compared with the
//! restored file, whose SHA-256 the restore already matched against the manifest.

use std::collections::BTreeMap;
use std::path::Path;

use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};

use super::database::ScratchDatabase;
use super::probes::Probe;

/// `Ok(None)` when the database lists no local media.
pub async fn check_sample(
    probe: &Probe,
    db: &ScratchDatabase,
    media_store: &Path,
    server_name: &str,
    sample: usize,
) -> Result<Option<String>, String> {
    let (rows, total) = db.media_sample(sample.max(1)).map_err(|e| e.to_string())?;
    let mut thumbnails: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut chosen = Vec::new();
    for row in &rows {
        if row.path.starts_with("local_thumbnails/") {
            thumbnails
                .entry(row.media_id.as_str())
                .or_default()
                .push(row.path.as_str());
        } else {
            chosen.push(row);
        }
    }
    if chosen.is_empty() {
        return Ok(None);
    }
    let mut rng = rand::thread_rng();
    let mut failures = Vec::new();
    let (mut files, mut thumbs) = (0, 0);
    for row in &chosen {
        let expected = match digest_of_file(&media_store.join(&row.path)) {
            Ok(digest) => digest,
            Err(e) => {
                failures.push(format!(
                    "{}: the backup has no file for this row ({e})",
                    row.media_id
                ));
                continue;
            }
        };
        match probe.download(server_name, &row.media_id).await {
            Ok(bytes) if digest(&bytes) == expected => files += 1,
            Ok(bytes) => failures.push(format!(
                "{}: Synapse served {} bytes that differ from the backup's file",
                row.media_id,
                bytes.len()
            )),
            Err(e) => failures.push(format!("{}: {e}", row.media_id)),
        }
        let Some(own) = thumbnails.get(row.media_id.as_str()) else {
            continue;
        };
        let Some(pick) = own.choose(&mut rng) else {
            continue;
        };
        match check_thumbnail(probe, server_name, &row.media_id, pick, own, media_store).await {
            Ok(()) => thumbs += 1,
            Err(e) => failures.push(format!("{}: thumbnail {pick}: {e}", row.media_id)),
        }
    }
    if failures.is_empty() {
        Ok(Some(format!(
            "{files} media files and {thumbs} thumbnails (a random {} of {} local media rows) served with the bytes of the backup",
            chosen.len(),
            total
        )))
    } else {
        let first: Vec<String> = failures.iter().take(5).cloned().collect();
        Err(format!(
            "{} of {} sampled media failed: {}",
            failures.len(),
            chosen.len(),
            first.join("; ")
        ))
    }
}

/// Asks for a thumbnail of the size `pick` has; Synapse may choose another of the media's
/// stored thumbnails, so any of them (`own`) matches.
async fn check_thumbnail(
    probe: &Probe,
    server_name: &str,
    media_id: &str,
    pick: &str,
    own: &[&str],
    media_store: &Path,
) -> Result<(), String> {
    let name = pick.rsplit('/').next().unwrap_or_default();
    let fields: Vec<&str> = name.splitn(5, '-').collect();
    let [width, height, _, _, method] = fields.as_slice() else {
        return Err("not a thumbnail file name".into());
    };
    let bytes = probe
        .thumbnail(server_name, media_id, width, height, method)
        .await?;
    let served = digest(&bytes);
    for path in own {
        if digest_of_file(&media_store.join(path)).is_ok_and(|d| d == served) {
            return Ok(());
        }
    }
    Err(format!(
        "Synapse served {} bytes that match none of the backup's thumbnails of this media",
        bytes.len()
    ))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn digest_of_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().into())
}
