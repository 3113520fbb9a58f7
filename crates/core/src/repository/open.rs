//! Opening a stored backup for reading: download stream → decryption → plaintext reader; and
//! reading its header alone.

use std::io::{self, Read};

use secrecy::SecretString;

use crate::archive::normalize_member_path;
use crate::crypto::{self, classify_read_error, DecryptReader};
use crate::error::{find_cause, CorruptKind, Error, Result};
use crate::manifest::{Header, HEADER_MEMBER};
use crate::progress::{is_cancelled_error, Cancel};
use crate::repository::trust::check_header_names;
use crate::store::{ByteStream, ReadFailed, Store};

use super::content_check::MAX_MANIFEST_BYTES;
use super::pipe::ObjectReader;

const TAR_BLOCK: usize = 512;

/// The plaintext of a backup: its first tar block, already read and checked, then the rest.
pub type BackupReader<'a> = io::Chain<io::Cursor<Vec<u8>>, DecryptReader<'a>>;

/// Decrypts `stream` (the object of backup `id`). Call from a blocking thread.
pub fn open_backup(
    stream: ByteStream,
    handle: tokio::runtime::Handle,
    passphrase: &secrecy::SecretString,
    id: &str,
    cancel: Cancel,
) -> Result<BackupReader<'static>> {
    let reader = ObjectReader::new(stream, handle, cancel.clone());
    // A read cut by Ctrl-C must not pass for a wrong passphrase or a damaged object.
    let interrupted = |e: Error| {
        if cancel.is_cancelled() {
            Error::Interrupted
        } else {
            e
        }
    };
    let decrypted = crypto::decrypt(reader, passphrase, id).map_err(interrupted)?;
    check_plaintext_start(decrypted, id).map_err(interrupted)
}

/// Reads the first tar block and checks that it is one.
///
/// OpenPGP has no key check (rPGP rightly skips the "quick check", an oracle), so a wrong
/// passphrase only shows as garbage. Most garbage fails to parse as a packet at once, but now
/// and then it passes for a packet header, and the error would only come later, as "damaged".
/// Every backup, ours and the charm's, is a tar, and garbage is never a valid tar header.
pub fn check_plaintext_start<'a>(
    mut decrypted: DecryptReader<'a>,
    id: &str,
) -> Result<BackupReader<'a>> {
    let mut first = vec![0u8; TAR_BLOCK];
    let mut filled = 0;
    while filled < TAR_BLOCK {
        match decrypted.read(&mut first[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && !is_cancelled_error(&e) => {}
            Err(e)
                if is_cancelled_error(&e)
                    || e.kind() == io::ErrorKind::UnexpectedEof
                    || find_cause::<ReadFailed>(&e).is_some() =>
            {
                return Err(classify_read_error(id, &e))
            }
            Err(_) => return Err(Error::WrongPassphrase { id: id.to_string() }),
        }
    }
    first.truncate(filled);
    // Shorter than a block: not garbage from a wrong key, which goes on for the whole object; the
    // tar reader says what is wrong with it.
    if filled == TAR_BLOCK && !is_tar_header(&first) {
        if is_damaged_tar_header(&first) {
            return Err(Error::corrupt(
                id,
                CorruptKind::Integrity,
                "the header of its first member is damaged (the object was modified or damaged)",
            ));
        }
        return Err(Error::WrongPassphrase { id: id.to_string() });
    }
    Ok(io::Cursor::new(first).chain(decrypted))
}

/// A tar header with a few bytes changed: a wrong key gives random bytes, of which about 3 in 8
/// are NUL or printable ASCII, while a header is nearly all of them, and damage in CFB mode
/// changes at most 17 bytes of it. (A small object damaged in its middle is damaged here.)
fn is_damaged_tar_header(block: &[u8]) -> bool {
    let textual = block
        .iter()
        .filter(|&&b| b == 0 || (0x20..0x7f).contains(&b))
        .count();
    textual * 5 >= block.len() * 4
}

/// A block of zeros (an empty archive) or a header whose checksum adds up, summed unsigned or
/// signed as old tars did.
fn is_tar_header(block: &[u8]) -> bool {
    if block.iter().all(|&b| b == 0) {
        return true;
    }
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .map(|field| field.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|digits| u32::from_str_radix(digits, 8).ok());
    let Some(stored) = stored else {
        return false;
    };
    let field = 148..156;
    let unsigned: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| if field.contains(&i) { 32 } else { u32::from(b) })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if field.contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    stored == unsigned || i64::from(stored) == signed
}

/// Reads the manifest header of backup `id`, or `None` for a backup without one. A header
/// naming another backup than `id` is damage (`repository::trust::check_header_names`).
///
/// The header is read before the end of the stream, so its integrity is not yet proven; it is
/// used for display and early refusals only, never to decide that a backup is sound.
pub async fn read_header(
    store: &dyn Store,
    id: &str,
    passphrase: &SecretString,
    cancel: &Cancel,
) -> Result<Option<Header>> {
    let header = read_stored_header(store, id, passphrase, cancel).await?;
    if let Some(header) = &header {
        check_header_names(id, header)?;
    }
    Ok(header)
}

/// The header object `id` holds, whatever backup it names: the sweep keeps the volumes of any
/// header it can read, even one stored under the wrong name.
pub async fn read_stored_header(
    store: &dyn Store,
    id: &str,
    passphrase: &SecretString,
    cancel: &Cancel,
) -> Result<Option<Header>> {
    let stream = store.get(id).await?;
    let handle = tokio::runtime::Handle::current();
    let passphrase = passphrase.clone();
    let id = id.to_string();
    let cancel = cancel.clone();
    tokio::task::spawn_blocking(move || -> Result<Option<Header>> {
        let reader = open_backup(stream, handle, &passphrase, &id, cancel)?;
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive.entries().map_err(|e| {
            Error::corrupt(
                &id,
                CorruptKind::Malformed,
                format!("not a tar archive: {e}"),
            )
        })?;
        let Some(first) = entries.next() else {
            return Err(Error::corrupt(
                &id,
                CorruptKind::Malformed,
                "the archive is empty",
            ));
        };
        let mut first = first.map_err(|e| {
            Error::corrupt(
                &id,
                CorruptKind::Malformed,
                format!("broken first member: {e}"),
            )
        })?;
        // Named as the full reader names it, so `./manifest.json` counts as the manifest too.
        let name = normalize_member_path(&String::from_utf8_lossy(&first.path_bytes()));
        let is_header = name == HEADER_MEMBER && first.header().entry_type().is_file();
        if !is_header {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        (&mut first)
            .take(MAX_MANIFEST_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Error::corrupt(
                    &id,
                    CorruptKind::Malformed,
                    format!("cannot read {HEADER_MEMBER}: {e}"),
                )
            })?;
        Header::from_json(&id, &bytes).map(Some)
    })
    .await
    .map_err(|e| Error::task_failed("header read", e))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use secrecy::SecretString;

    fn pass(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn a_damaged_header_is_told_from_random_bytes() {
        let tar = a_tar();
        let mut block = tar[..TAR_BLOCK].to_vec();
        assert!(is_tar_header(&block));
        // CFB damage: one byte flipped and the next 16-byte block garbled.
        for (i, b) in block[100..117].iter_mut().enumerate() {
            *b ^= 0x5a ^ (i as u8).wrapping_mul(37);
        }
        assert!(!is_tar_header(&block) && is_damaged_tar_header(&block));
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..1000 {
            let random: Vec<u8> = (0..TAR_BLOCK)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            assert!(!is_damaged_tar_header(&random));
        }
    }

    fn a_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        // Larger than what opening the message reads, as real backups are: the object has not
        // ended when a wrong key's garbage claims more data than there is.
        let data = vec![7u8; 3_000_000];
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "media/a", &data[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    /// A wrong key decrypts to garbage that now and then (about 1 in 1,000 here) passes the
    /// packet parser as a literal or compressed packet; every wrong passphrase must still read
    /// as a wrong passphrase, never as damage.
    #[test]
    fn any_wrong_passphrase_is_a_wrong_passphrase() {
        let tar = a_tar();
        let mut object = Vec::new();
        // The cheapest S2K, so thousands of tries take under a second.
        crypto::encrypt_with_s2k_count(
            &tar[..],
            &mut object,
            &pass("right"),
            crypto::Packing::Plain,
            0,
        )
        .unwrap();
        let object: std::sync::Arc<[u8]> = object.into();
        for attempt in 0..20_000 {
            let passphrase = pass(&format!("wrong {attempt}"));
            let err = crypto::decrypt(io::Cursor::new(object.clone()), &passphrase, "t")
                .and_then(|reader| check_plaintext_start(reader, "t"))
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::WrongPassphrase,
                "attempt {attempt}: {err}"
            );
        }
        let reader = crypto::decrypt(io::Cursor::new(object), &pass("right"), "t").unwrap();
        let mut plain = Vec::new();
        check_plaintext_start(reader, "t")
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert!(plain == tar, "the plaintext came back changed");
    }

    #[test]
    fn tar_headers_are_recognised() {
        let tar = a_tar();
        assert!(is_tar_header(&tar[..TAR_BLOCK]));
        assert!(is_tar_header(&[0u8; TAR_BLOCK]));
        let mut changed = tar[..TAR_BLOCK].to_vec();
        changed[0] ^= 1;
        assert!(!is_tar_header(&changed));
        assert!(!is_tar_header(&[0x41u8; TAR_BLOCK]));
    }
}
