//! Exit codes, one per kind of failure, as documented in `--help` and README.md.

use synapse_backup_core::ErrorKind;

pub const OK: u8 = 0;
pub const OTHER: u8 = 1;
pub const CONFIG: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const WRONG_PASSPHRASE: u8 = 4;
pub const CORRUPT: u8 = 5;
pub const REFUSED: u8 = 6;
pub const STORAGE: u8 = 7;
pub const INTERRUPTED: u8 = 130;

pub fn code_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Config => CONFIG,
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::WrongPassphrase => WRONG_PASSPHRASE,
        ErrorKind::Corrupt => CORRUPT,
        ErrorKind::Refused => REFUSED,
        ErrorKind::Storage => STORAGE,
        ErrorKind::Interrupted => INTERRUPTED,
        _ => OTHER,
    }
}

/// The kind's name in `--json` error documents (`error-kind`).
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Config => "config",
        ErrorKind::NotFound => "not-found",
        ErrorKind::WrongPassphrase => "wrong-passphrase",
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::Refused => "refused",
        ErrorKind::Storage => "storage",
        ErrorKind::Interrupted => "interrupted",
        _ => "other",
    }
}

/// A line telling the user what to try, for the failures where there is something to try.
pub fn hint_for(kind: ErrorKind) -> Option<&'static str> {
    match kind {
        ErrorKind::WrongPassphrase => Some("check [backup] passphrase-file or SYNAPSE_BACKUP_PASSPHRASE: it must be the passphrase the backup was made with"),
        ErrorKind::Corrupt => Some("nothing was changed; try an older backup (list-backups) and run verify-backup on it"),
        ErrorKind::NotFound => Some("run list-backups to see the backup ids in this store"),
        ErrorKind::Storage => Some("check [s3] endpoint, bucket, region, access-key and the secret key, and that the endpoint is reachable"),
        _ => None,
    }
}
