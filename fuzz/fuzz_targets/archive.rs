//! The archive reader and the manifest check over an arbitrary (decrypted) tar stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synapse_backup_core::commands::verify::check_archive;
use synapse_backup_core::progress::NoProgress;

fuzz_target!(|data: &[u8]| {
    let _ = check_archive(data, "fuzz", &NoProgress);
});
