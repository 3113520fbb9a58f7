//! A SHA-256 held as its 32 bytes and written as 64 lowercase hex digits (in file lists, runs
//! and messages). A backup's lists hold one per media file, so the bytes rather than the text
//! save about 100 bytes of memory per file (the string, its allocation and the allocator's
//! overhead) in every command that reads a list.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Sha256Digest {
        Sha256Digest(bytes)
    }

    /// The digest written as 64 hex digits (either case), or `None`.
    pub fn from_hex(text: &str) -> Option<Sha256Digest> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Sha256Digest(bytes))
    }

    fn write_hex<'a>(&self, buffer: &'a mut [u8; 64]) -> &'a str {
        // Cannot fail: the buffer is exactly twice the bytes, and hex digits are ASCII.
        hex::encode_to_slice(self.0, buffer).unwrap_or_default();
        std::str::from_utf8(buffer).unwrap_or_default()
    }
}

impl From<sha2::digest::Output<sha2::Sha256>> for Sha256Digest {
    fn from(output: sha2::digest::Output<sha2::Sha256>) -> Sha256Digest {
        Sha256Digest(output.into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.write_hex(&mut [0u8; 64]))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.write_hex(&mut [0u8; 64]))
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(HexVisitor)
    }
}

struct HexVisitor;

impl Visitor<'_> for HexVisitor {
    type Value = Sha256Digest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a SHA-256 as 64 hex digits")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Sha256Digest, E> {
        Sha256Digest::from_hex(text)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_and_writes_64_hex_digits_and_refuses_anything_else() {
        let text = "0123456789abcdef".repeat(4);
        let digest = Sha256Digest::from_hex(&text).unwrap();
        assert_eq!(digest.to_string(), text);
        assert_eq!(
            serde_json::to_string(&digest).unwrap(),
            format!("\"{text}\"")
        );
        let back: Sha256Digest = serde_json::from_str(&format!("\"{text}\"")).unwrap();
        assert_eq!(back, digest);
        assert_eq!(
            Sha256Digest::from_hex(&text.to_uppercase()),
            Some(digest),
            "gpg and sha256sum users may write either case"
        );
        for bad in ["", "00", &"0".repeat(63), &"g".repeat(64), &"0".repeat(66)] {
            assert!(Sha256Digest::from_hex(bad).is_none(), "{bad:?}");
            assert!(serde_json::from_str::<Sha256Digest>(&format!("\"{bad}\"")).is_err());
        }
    }
}
