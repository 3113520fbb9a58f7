//! Passphrase encryption as OpenPGP messages that plain `gpg --decrypt` opens.
//!
//! Writing: SKESK v4 with an iterated+salted SHA-256 S2K, AES-256, SEIPD v1 (integrity-protected
//! with an MDC). This is the packet layout GnuPG 2.2 itself writes, so every gpg in use reads it.
//! The caller says whether the plaintext goes into a ZLIB compressed data packet ([`Packing`]):
//! bookkeeping (file lists, the header, SQLite, the config) shrinks several times, media do
//! not (JPEG, PNG, MP4 are compressed already, and ZLIB over them is what made the charm's
//! pipeline slow).
//!
//! Reading: the same, plus what GnuPG writes by default (ZLIB/ZIP/BZip2 compression) and GnuPG
//! 2.4's OCB packets. Decryption streams: plaintext is released before the integrity check at the
//! end of the message, so callers must read to the end and only trust what they read once
//! [`DecryptReader`] has returned end-of-file (restore stages everything first for this reason).

use std::io::{self, BufRead, Read, Write};

use pgp::composed::{DecryptionOptions, Message, MessageBuilder, TheRing};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::{CompressionAlgorithm, Password, Seipdv1ReadMode, StringToKey};
use secrecy::{ExposeSecret, SecretString};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{find_cause, CorruptKind, Error, Result};
use crate::progress::Cancelled;
use crate::store::ReadFailed;

/// Encoded S2K count 0xFF: 65,011,712 bytes hashed, GnuPG's usual calibrated strength.
const S2K_COUNT: u8 = 0xFF;
/// OpenPGP partial body chunk; larger chunks mean fewer headers but more buffering. rPGP writes
/// a message that fits in one chunk as one packet of fixed length instead, and an object cut
/// short inside such a packet fails in a way a wrong key's garbage also can, so it could only
/// be reported as "wrong passphrase": small chunks keep every base over 64 KiB (a signing key,
/// a config and a database) in partial chunks, where a cut is told as one.
const PARTIAL_CHUNK: u32 = 1 << 16;

/// Whether an object's plaintext is compressed inside the encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// A literal data packet: for what does not shrink (media, a custom-format pg_dump).
    Plain,
    /// A ZLIB compressed data packet around the literal one, which `gpg -d` undoes by itself.
    Zlib,
}

/// Encrypts everything `plaintext` yields into `out` as one OpenPGP message.
pub fn encrypt<R, W>(
    plaintext: R,
    out: W,
    passphrase: &SecretString,
    packing: Packing,
) -> Result<()>
where
    R: Read,
    W: Write,
{
    encrypt_with_s2k_count(plaintext, out, passphrase, packing, S2K_COUNT)
}

/// [`encrypt`] with another S2K count; tests use the cheapest.
pub(crate) fn encrypt_with_s2k_count<R, W>(
    plaintext: R,
    out: W,
    passphrase: &SecretString,
    packing: Packing,
    s2k_count: u8,
) -> Result<()>
where
    R: Read,
    W: Write,
{
    let mut rng = rand::thread_rng();
    let mut builder = MessageBuilder::from_reader("", plaintext)
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    if packing == Packing::Zlib {
        builder.compression(CompressionAlgorithm::ZLIB);
    }
    builder
        .encrypt_with_password(
            StringToKey::new_iterated(&mut rng, HashAlgorithm::Sha256, s2k_count),
            &Password::from(passphrase.expose_secret()),
        )
        .map_err(|e| Error::Encryption(format!("cannot set it up: {e}")))?;
    builder
        .partial_chunk_size(PARTIAL_CHUNK)
        .map_err(|e| Error::Encryption(format!("cannot set it up: {e}")))?;
    builder.to_writer(&mut rng, out).map_err(|e| match e {
        pgp::errors::Error::IO { source, .. } => {
            Error::Encryption(format!("the stream failed: {source}"))
        }
        other => Error::Encryption(other.to_string()),
    })
}

/// A streaming reader of the plaintext of an encrypted backup.
///
/// Its errors carry their cause as a type: a store failure ([`ReadFailed`]) or Ctrl-C
/// ([`Cancelled`]) as they came from the source, damage as a [`StreamDamage`].
pub struct DecryptReader<'a> {
    inner: Message<'a>,
    /// Whether the object's bytes have run out: an error after that is a truncation.
    source_ended: Arc<AtomicBool>,
    /// The first error, returned again for every later read: rPGP panics when read again after
    /// an error ("LiteralDataReader errored"), and parsers such as serde_json do read again.
    failed: Option<(io::ErrorKind, Failure)>,
}

/// Why the encrypted stream could not be read to its end, as decryption found it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamDamage {
    #[error("the encrypted stream ends early")]
    Truncated,
    /// The MDC or AEAD tag does not match: the bytes were changed.
    #[error("{0}")]
    Integrity(String),
    #[error("{0}")]
    Unreadable(String),
}

/// A first error, kept to be returned again with its type.
#[derive(Debug, Clone)]
enum Failure {
    Store(ReadFailed),
    Cancelled,
    Damage(StreamDamage),
}

impl Failure {
    fn of(err: &io::Error, source_ended: bool) -> Failure {
        if let Some(failed) = find_cause::<ReadFailed>(err) {
            return Failure::Store(failed.clone());
        }
        if find_cause::<Cancelled>(err).is_some() {
            return Failure::Cancelled;
        }
        let integrity = find_cause::<pgp::errors::Error>(err).is_some_and(|pgp| {
            matches!(
                pgp,
                pgp::errors::Error::MdcError | pgp::errors::Error::Aead { .. }
            )
        });
        Failure::Damage(if integrity {
            StreamDamage::Integrity(err.to_string())
        } else if err.kind() == io::ErrorKind::UnexpectedEof || source_ended {
            StreamDamage::Truncated
        } else {
            StreamDamage::Unreadable(err.to_string())
        })
    }

    fn to_io(&self, kind: io::ErrorKind) -> io::Error {
        match self {
            Failure::Store(failed) => failed.clone().into_io(),
            Failure::Cancelled => io::Error::other(Cancelled),
            Failure::Damage(damage) => io::Error::new(kind, damage.clone()),
        }
    }
}

impl std::fmt::Debug for DecryptReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecryptReader")
    }
}

impl Read for DecryptReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, failure)) = &self.failed {
            return Err(failure.to_io(*kind));
        }
        self.inner.read(buf).map_err(|e| {
            let failure = Failure::of(&e, self.source_ended.load(Ordering::Relaxed));
            let kind = e.kind();
            self.failed = Some((kind, failure.clone()));
            match failure {
                // The source's own error, unchanged, for the first report.
                Failure::Store(_) | Failure::Cancelled => e,
                Failure::Damage(_) => failure.to_io(kind),
            }
        })
    }
}

/// Opens the encrypted message in `source` with `passphrase`.
///
/// `id` names the backup in errors. Telling a wrong passphrase from damage at the very start of
/// the object is not possible in OpenPGP; both report [`Error::WrongPassphrase`].
pub fn decrypt<'a, R>(source: R, passphrase: &SecretString, id: &str) -> Result<DecryptReader<'a>>
where
    R: BufRead + std::fmt::Debug + Send + 'a,
{
    let source_ended = Arc::new(AtomicBool::new(false));
    let mut source = EndWatch {
        inner: source,
        ended: Arc::clone(&source_ended),
    };
    let empty = source
        .fill_buf()
        .map_err(|e| classify_read_error(id, &e))?
        .is_empty();
    if empty {
        return Err(Error::corrupt(
            id,
            CorruptKind::Malformed,
            "the object is empty",
        ));
    }
    let (message, _) = Message::from_reader(source).map_err(|e| {
        Error::corrupt(id, CorruptKind::Malformed, format!("not an OpenPGP message ({e}); was it written by synapse-backup or gpg --symmetric?"))
    })?;
    if !message.is_encrypted() {
        return Err(Error::corrupt(
            id,
            CorruptKind::Malformed,
            "the object is an OpenPGP message but not encrypted",
        ));
    }
    let password = Password::from(passphrase.expose_secret());
    let ring = TheRing {
        message_password: vec![&password],
        decrypt_options: DecryptionOptions::new()
            .enable_gnupg_aead()
            .set_seipdv1_read_mode(Seipdv1ReadMode::Streaming),
        ..Default::default()
    };
    let (mut message, _) = message
        .decrypt_the_ring(ring, true)
        .map_err(|e| opening_error(id, e, source_ended.load(Ordering::Relaxed)))?;
    if message.is_compressed() {
        message = message
            .decompress()
            .map_err(|e| opening_error(id, e, false))?;
    }
    Ok(DecryptReader {
        inner: message,
        source_ended,
        failed: None,
    })
}

/// The error for a message that could not be opened (decrypted, decompressed).
///
/// A wrong key decrypts to garbage, and garbage fails in any way the packet parser can: I/O
/// errors, an early end ("no more data available" when it declares more than there is), an
/// unknown compression algorithm. So only a failing store, and an early end once the object
/// itself has ended (`source_ended`), are told apart from a wrong passphrase.
fn opening_error(id: &str, err: pgp::errors::Error, source_ended: bool) -> Error {
    match err {
        pgp::errors::Error::IO { source, .. }
            if find_cause::<ReadFailed>(&source).is_some()
                || find_cause::<Cancelled>(&source).is_some() =>
        {
            classify_read_error(id, &source)
        }
        pgp::errors::Error::IO { source, .. }
            if source_ended && source.kind() == io::ErrorKind::UnexpectedEof =>
        {
            Error::corrupt(id, CorruptKind::Truncated, "the object is truncated")
        }
        _ => Error::WrongPassphrase { id: id.to_string() },
    }
}

/// Notes when the object's bytes have run out.
#[derive(Debug)]
struct EndWatch<R> {
    inner: R,
    ended: Arc<AtomicBool>,
}

impl<R: BufRead> Read for EndWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.store(true, Ordering::Relaxed);
        }
        Ok(n)
    }
}

impl<R: BufRead> BufRead for EndWatch<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            self.ended.store(true, Ordering::Relaxed);
        }
        Ok(buf)
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount)
    }
}

/// Turns an I/O error from a [`DecryptReader`] (or the tar layer above it) into the library
/// error that describes it, by the typed cause it carries.
pub fn classify_read_error(id: &str, err: &io::Error) -> Error {
    if let Some(failed) = find_cause::<ReadFailed>(err) {
        return failed.to_error(id);
    }
    if find_cause::<Cancelled>(err).is_some() || err.kind() == io::ErrorKind::Interrupted {
        return Error::Interrupted;
    }
    let truncated = || {
        Error::corrupt(
            id,
            CorruptKind::Truncated,
            "the object is truncated (the encrypted stream ends early)",
        )
    };
    match find_cause::<StreamDamage>(err) {
        Some(StreamDamage::Truncated) => truncated(),
        Some(StreamDamage::Integrity(text)) => Error::corrupt(
            id,
            CorruptKind::Integrity,
            format!("the integrity check failed; the object was modified or damaged ({text})"),
        ),
        Some(StreamDamage::Unreadable(text)) => Error::corrupt(
            id,
            CorruptKind::Malformed,
            format!("cannot read the encrypted stream: {text}"),
        ),
        // The plaintext (a tar stream) ended early.
        None if err.kind() == io::ErrorKind::UnexpectedEof => truncated(),
        None => Error::corrupt(
            id,
            CorruptKind::Malformed,
            format!("cannot read the encrypted stream: {err}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn pass(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    fn encrypt_vec(data: &[u8], p: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encrypt(data, &mut out, &pass(p), Packing::Plain).unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let enc = encrypt_vec(&data, "correct horse");
        let mut r = decrypt(BufReader::new(&enc[..]), &pass("correct horse"), "t").unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_compressed_message_is_smaller_and_fails_like_a_plain_one() {
        let data: Vec<u8> = (0..2_000_000u32)
            .flat_map(|i| format!("{{\"path\":\"media/{i}\",\"size\":{}}}", i % 97).into_bytes())
            .collect();
        let mut enc = Vec::new();
        encrypt(&data[..], &mut enc, &pass("p"), Packing::Zlib).unwrap();
        assert!(
            enc.len() * 4 < data.len(),
            "{} of {}",
            enc.len(),
            data.len()
        );
        let mut back = Vec::new();
        decrypt(BufReader::new(&enc[..]), &pass("p"), "t")
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        let cut = enc[..enc.len() - 100].to_vec();
        let mut r = decrypt(BufReader::new(&cut[..]), &pass("p"), "t").unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(
            classify_read_error("t", &err).corrupt_kind(),
            Some(CorruptKind::Truncated)
        );
        let mid = enc.len() / 2;
        enc[mid] ^= 0x01;
        let mut r = decrypt(BufReader::new(&enc[..]), &pass("p"), "t").unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(
            classify_read_error("t", &err).corrupt_kind().is_some(),
            "{err}"
        );
    }

    #[test]
    fn wrong_passphrase_is_its_own_error() {
        let enc = encrypt_vec(b"hello", "right");
        let err = decrypt(BufReader::new(&enc[..]), &pass("wrong"), "t").unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::WrongPassphrase);
    }

    #[test]
    fn flipped_byte_in_the_middle_fails_at_the_end() {
        let data = vec![7u8; 2_000_000];
        let mut enc = encrypt_vec(&data, "p");
        let mid = enc.len() / 2;
        enc[mid] ^= 0x01;
        let mut r = decrypt(BufReader::new(&enc[..]), &pass("p"), "t").unwrap();
        let mut sink = Vec::new();
        let err = r.read_to_end(&mut sink).unwrap_err();
        assert_eq!(
            classify_read_error("t", &err).corrupt_kind(),
            Some(CorruptKind::Integrity)
        );
        // Reading on after the error (serde_json does) repeats it; rPGP alone would panic.
        let again = r.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(again.kind(), err.kind());
    }

    #[test]
    fn truncation_is_detected() {
        let data = vec![9u8; 1_500_000];
        let enc = encrypt_vec(&data, "p");
        let cut = &enc[..enc.len() - 100];
        let mut r = decrypt(BufReader::new(cut), &pass("p"), "t").unwrap();
        let mut sink = Vec::new();
        let err = r.read_to_end(&mut sink).unwrap_err();
        assert_eq!(
            classify_read_error("t", &err).corrupt_kind(),
            Some(CorruptKind::Truncated)
        );
    }

    #[test]
    fn empty_and_garbage_objects() {
        let e = decrypt(BufReader::new(&b""[..]), &pass("p"), "t").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = decrypt(
            BufReader::new(&b"this is not pgp at all"[..]),
            &pass("p"),
            "t",
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Corrupt);
    }
}
