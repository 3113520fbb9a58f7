//! The whole read path: OpenPGP parsing and decryption, then the archive check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use synapse_backup_core::crypto;
use synapse_backup_core::ops::verify::check_archive;
use synapse_backup_core::progress::NoProgress;

fuzz_target!(|data: &[u8]| {
    let passphrase = SecretString::from("fuzz".to_string());
    if let Ok(reader) = crypto::decrypt(std::io::BufReader::new(data), &passphrase, "fuzz") {
        let _ = check_archive(reader, "fuzz", &NoProgress);
    }
});
