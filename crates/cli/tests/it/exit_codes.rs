//! The exit codes are an interface (scripts and the charm act on them): every failure kind is
//! pinned to the code `--help` and README.md document, so that a change is noticed.

use synapse_backup_core::ErrorKind;

use crate::exit;

/// Every `ErrorKind`, each with its documented exit code. The match has no catch-all: a new
/// kind does not compile until it is given a code here.
fn documented_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Other => 1,
        ErrorKind::Config => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::WrongPassphrase => 4,
        ErrorKind::Corrupt => 5,
        ErrorKind::Refused => 6,
        ErrorKind::Storage => 7,
        ErrorKind::ToolMissing => 8,
        ErrorKind::Internal => 70,
        ErrorKind::Interrupted => 130,
    }
}

const ALL_KINDS: [ErrorKind; 10] = [
    ErrorKind::Other,
    ErrorKind::Config,
    ErrorKind::NotFound,
    ErrorKind::WrongPassphrase,
    ErrorKind::Corrupt,
    ErrorKind::Refused,
    ErrorKind::Storage,
    ErrorKind::ToolMissing,
    ErrorKind::Internal,
    ErrorKind::Interrupted,
];

#[test]
fn every_error_kind_maps_to_its_documented_exit_code() {
    for kind in ALL_KINDS {
        assert_eq!(
            exit::code_for(kind),
            documented_code(kind),
            "exit code of ErrorKind::{kind:?}"
        );
    }
    assert_eq!(
        [
            exit::OK,
            exit::OTHER,
            exit::CONFIG,
            exit::NOT_FOUND,
            exit::WRONG_PASSPHRASE,
            exit::CORRUPT,
            exit::REFUSED,
            exit::STORAGE,
            exit::TOOL_MISSING,
            exit::INTERNAL,
            exit::INTERRUPTED,
        ],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 70, 130]
    );
}
