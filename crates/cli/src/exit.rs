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
pub const TOOL_MISSING: u8 = 8;
/// As sysexits.h's EX_SOFTWARE.
pub const INTERNAL: u8 = 70;
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
        ErrorKind::ToolMissing => TOOL_MISSING,
        ErrorKind::Internal => INTERNAL,
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
        ErrorKind::ToolMissing => "tool-missing",
        ErrorKind::Internal => "internal",
        _ => "other",
    }
}
