//! Synapse's media store layout: which folders under `media_store_path` hold what.

/// Media folders Synapse keeps for its own users' uploads: always backed up.
pub const LOCAL_MEDIA_DIRS: [&str; 2] = ["local_content", "local_thumbnails"];

/// Caches of other servers' media and URL previews: re-fetchable, so skipped by default.
pub const CACHE_MEDIA_DIRS: [&str; 5] = [
    "remote_content",
    "remote_thumbnail",
    "remote_thumbnails",
    "url_cache",
    "url_cache_thumbnails",
];

/// The media folders a backup reads: the local ones, and the caches when asked.
pub fn backed_up_media_dirs(include_remote: bool) -> Vec<&'static str> {
    let mut dirs: Vec<&'static str> = LOCAL_MEDIA_DIRS.to_vec();
    if include_remote {
        dirs.extend(CACHE_MEDIA_DIRS);
    }
    dirs
}

/// The known media folder called `name`, from either list.
pub fn known_media_dir(name: &str) -> Option<&'static str> {
    LOCAL_MEDIA_DIRS
        .iter()
        .chain(CACHE_MEDIA_DIRS.iter())
        .find(|dir| **dir == name)
        .copied()
}
