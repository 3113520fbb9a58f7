//! Where each member of a backup belongs: a pure mapping from member names to restore slots,
//! with no file system access, so it is tested on its own.

use crate::archive::MemberKind;
use crate::error::{CorruptKind, Error, Refusal, Result};
use crate::manifest::POSTGRES_DUMP_PREFIX;
use crate::synapse::media::known_media_dir;

/// A live path a restore replaces as a whole (a file or a folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The whole `--target-dir`.
    Root,
    Key,
    Database,
    DatabaseWal,
    /// A sidecar of the live database (`-wal`, `-shm`, `-journal`) that must not meet the
    /// restored database: moved aside, never replaced.
    DatabaseSidecar,
    Media(&'static str),
    Config,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Nothing to write (a folder entry for a slot's own path).
    Skip,
    /// A charm backup's member outside the layout the charm's archives have: left out and
    /// reported.
    Unknown,
    /// A database dump part: checked against the manifest in the first pass, fed to
    /// pg_restore in a second pass once everything was verified.
    DatabaseDump,
    /// Written at `rel` inside the slot's staging (`rel` empty: the slot's path itself).
    Slot { slot: Slot, rel: String },
}

/// What the destination is like, as far as routing needs to know.
pub(crate) struct Router {
    pub backup_id: String,
    /// A live restore (members go to the homeserver's own paths) rather than `--target-dir`
    /// (members keep the archive's layout).
    pub live: bool,
    pub sqlite_target: bool,
    pub postgres_target: bool,
    /// Where the charm's pipeline took its files from, without slashes (`data`).
    pub charm_root: String,
}

impl Router {
    pub fn route(&self, member: &str, kind: MemberKind, charm: bool) -> Result<Route> {
        if member.starts_with(POSTGRES_DUMP_PREFIX) && !charm && self.live {
            return if self.postgres_target {
                Ok(Route::DatabaseDump)
            } else {
                Err(Error::refused(
                    Refusal::DatabaseKindMismatch,
                    format!(
                        "backup {} holds a PostgreSQL dump but the target does not use PostgreSQL",
                        self.backup_id
                    ),
                ))
            };
        }
        let layout = if charm {
            match charm_to_layout(&self.charm_root, member) {
                Some(layout) => layout,
                None if kind == MemberKind::File => return Ok(Route::Unknown),
                None => return Ok(Route::Skip),
            }
        } else {
            member.to_string()
        };
        if !self.live {
            return Ok(Route::Slot {
                slot: Slot::Root,
                rel: layout,
            });
        }
        self.route_live(&layout)
    }

    /// Routes a member of this tool's layout (`keys/`, `database/`, `media/<dir>/`, `config/`)
    /// to the live slot it belongs to.
    fn route_live(&self, layout: &str) -> Result<Route> {
        let (top, rest) = layout.split_once('/').unwrap_or((layout, ""));
        let slot = |slot: Slot, rel: &str| {
            Ok(Route::Slot {
                slot,
                rel: rel.to_string(),
            })
        };
        match top {
            "keys" if !rest.is_empty() && !rest.contains('/') => slot(Slot::Key, ""),
            "database" => match rest {
                "homeserver.db" | "homeserver.db-wal" if !self.sqlite_target => {
                    Err(Error::refused(
                        Refusal::DatabaseKindMismatch,
                        format!(
                            "backup {} holds a SQLite database but the target uses PostgreSQL",
                            self.backup_id
                        ),
                    ))
                }
                "homeserver.db" => slot(Slot::Database, ""),
                "homeserver.db-wal" => slot(Slot::DatabaseWal, ""),
                "" => Ok(Route::Skip),
                other => Err(self.outside_layout(format!("unexpected database member {other:?}"))),
            },
            "media" => {
                let (dir, rel) = rest.split_once('/').unwrap_or((rest, ""));
                match known_media_dir(dir) {
                    Some(known) => slot(Slot::Media(known), rel),
                    None if dir.is_empty() => Ok(Route::Skip),
                    None => Err(self.outside_layout(format!("unexpected media folder {dir:?}"))),
                }
            }
            "config" => slot(Slot::Config, rest),
            _ => Err(self.outside_layout(format!("unexpected member {layout:?}"))),
        }
    }

    fn outside_layout(&self, detail: String) -> Error {
        Error::corrupt(&self.backup_id, CorruptKind::HostileMember, detail)
    }
}

/// Translates a member of the charm's archive into this tool's layout, `None` for members that
/// have no place in a restore.
///
/// The charm's pipeline ran `tar -c` over its data dir (`/data` by default, so members are named
/// `data/...`), which holds:
/// - `homeserver.db` and `homeserver.db-wal` → `database/`
/// - `<server>.signing.key` → `keys/`
/// - `media_store/<folder>/...` → `media/<folder>/...` for the folders Synapse keeps media in
///
/// and its homeserver.yaml, log config and logs, which the charm writes anew on each start. Any
/// other folder under `media_store/` (its pipeline archived whatever matched `local_*`, such as a
/// `local_thumbnails.pre-restore-…` folder an earlier restore left) has no place either.
pub(crate) fn charm_to_layout(charm_root: &str, member: &str) -> Option<String> {
    let rel = if charm_root.is_empty() {
        member
    } else {
        member.strip_prefix(charm_root)?.strip_prefix('/')?
    };
    if let Some(media) = rel.strip_prefix("media_store/") {
        let folder = media.split('/').next().unwrap_or("");
        return known_media_dir(folder).map(|_| format!("media/{media}"));
    }
    match rel {
        "homeserver.db" => Some("database/homeserver.db".to_string()),
        "homeserver.db-wal" => Some("database/homeserver.db-wal".to_string()),
        r if r.ends_with(".signing.key") && !r.contains('/') => Some(format!("keys/{r}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(live: bool, sqlite: bool) -> Router {
        Router {
            backup_id: "backup-1".into(),
            live,
            sqlite_target: sqlite,
            postgres_target: !sqlite,
            charm_root: "data".into(),
        }
    }

    fn slot(slot: Slot, rel: &str) -> Route {
        Route::Slot {
            slot,
            rel: rel.into(),
        }
    }

    #[test]
    fn members_of_this_tool_go_to_their_live_slot() {
        let r = router(true, true);
        let file = MemberKind::File;
        let cases = [
            ("keys/example.signing.key", slot(Slot::Key, "")),
            ("database/homeserver.db", slot(Slot::Database, "")),
            ("database/homeserver.db-wal", slot(Slot::DatabaseWal, "")),
            (
                "media/local_content/ab/cd/ef",
                slot(Slot::Media("local_content"), "ab/cd/ef"),
            ),
            ("media/url_cache/x", slot(Slot::Media("url_cache"), "x")),
            (
                "config/homeserver.yaml",
                slot(Slot::Config, "homeserver.yaml"),
            ),
            ("media", Route::Skip),
        ];
        for (member, expected) in cases {
            assert_eq!(r.route(member, file, false).unwrap(), expected, "{member}");
        }
    }

    #[test]
    fn members_outside_the_layout_are_refused_as_hostile() {
        let r = router(true, true);
        for member in [
            "etc/passwd",
            "media/elsewhere/x",
            "database/other.db",
            "keys/a/b",
        ] {
            let err = r.route(member, MemberKind::File, false).unwrap_err();
            assert_eq!(
                err.corrupt_kind(),
                Some(CorruptKind::HostileMember),
                "{member}"
            );
        }
    }

    #[test]
    fn a_database_of_the_wrong_kind_is_refused() {
        let postgres = router(true, false);
        let err = postgres
            .route("database/homeserver.db", MemberKind::File, false)
            .unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Refused);
        assert_eq!(
            postgres
                .route("database/postgres.dump.part-0000", MemberKind::File, false)
                .unwrap(),
            Route::DatabaseDump
        );
        let sqlite = router(true, true);
        let err = sqlite
            .route("database/postgres.dump.part-0000", MemberKind::File, false)
            .unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Refused);
    }

    #[test]
    fn target_dir_restores_keep_the_archive_layout() {
        let r = router(false, true);
        assert_eq!(
            r.route("database/postgres.dump.part-0000", MemberKind::File, false)
                .unwrap(),
            slot(Slot::Root, "database/postgres.dump.part-0000")
        );
        assert_eq!(
            r.route("anything/at/all", MemberKind::File, false).unwrap(),
            slot(Slot::Root, "anything/at/all")
        );
    }

    #[test]
    fn charm_members_are_translated() {
        let r = router(true, true);
        let cases = [
            ("data/homeserver.db", slot(Slot::Database, "")),
            ("data/homeserver.db-wal", slot(Slot::DatabaseWal, "")),
            ("data/example.test.signing.key", slot(Slot::Key, "")),
            (
                "data/media_store/local_content/aa/bb/c",
                slot(Slot::Media("local_content"), "aa/bb/c"),
            ),
            ("data/homeserver.yaml", Route::Unknown),
            (
                "data/media_store/local_thumbnails.pre-restore-backup-1/a/b",
                Route::Unknown,
            ),
            ("data/logs/x.signing.key", Route::Unknown),
            ("elsewhere/homeserver.db", Route::Unknown),
        ];
        for (member, expected) in cases {
            assert_eq!(
                r.route(member, MemberKind::File, true).unwrap(),
                expected,
                "{member}"
            );
        }
        // A folder the mapping does not know is not worth a warning.
        assert_eq!(
            r.route("data/logs", MemberKind::Directory, true).unwrap(),
            Route::Skip
        );
    }

    #[test]
    fn charm_root_may_be_the_filesystem_root() {
        assert_eq!(
            charm_to_layout("", "homeserver.db").as_deref(),
            Some("database/homeserver.db")
        );
        assert_eq!(charm_to_layout("data", "database"), None);
        assert_eq!(charm_to_layout("data", "datax/homeserver.db"), None);
    }
}
