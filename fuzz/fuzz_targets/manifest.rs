//! The manifest parsers must refuse garbage without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synapse_backup_core::manifest::{FileList, Header};

fuzz_target!(|data: &[u8]| {
    let _ = Header::from_json("fuzz", data);
    let _ = FileList::from_json("fuzz", data);
});
