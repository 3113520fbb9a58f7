//! The manifest parsers must refuse garbage without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synapse_backup_core::manifest::{read_file_list, FileList, Header};

fuzz_target!(|data: &[u8]| {
    let _ = Header::from_json("fuzz", data);
    let _ = FileList::from_json("fuzz", data);
    // The streaming reader verify and restore use must agree with the whole-list parser.
    let mut streamed = Vec::new();
    let read = read_file_list("fuzz", data, |entry| streamed.push(entry));
    if let Ok(list) = FileList::from_json("fuzz", data) {
        let (backup_id, count) = read.expect("the streaming reader refused a valid list");
        assert_eq!(backup_id, list.backup_id);
        assert_eq!(count, list.files.len());
        assert_eq!(streamed, list.files);
    }
});
