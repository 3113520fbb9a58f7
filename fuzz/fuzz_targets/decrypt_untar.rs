//! The whole read path: OpenPGP parsing and decryption, the first-block check, then the
//! archive check, as `verify-backup` runs them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use synapse_backup_core::crypto;
use synapse_backup_core::repository::check_plaintext_start;
use synapse_backup_core::commands::verify::check_archive;
use synapse_backup_core::progress::NoProgress;

fuzz_target!(|data: &[u8]| {
    let passphrase = SecretString::from("fuzz".to_string());
    let opened = crypto::decrypt(std::io::BufReader::new(data), &passphrase, "fuzz")
        .and_then(|reader| check_plaintext_start(reader, "fuzz"));
    if let Ok(reader) = opened {
        let _ = check_archive(reader, "fuzz", &NoProgress);
    }
});
