//! The tar layer: writing members while hashing them, and reading members of an untrusted archive
//! with every safety rule applied before a byte reaches the disk.

pub mod member_path;
mod reader;
mod writer;

pub use member_path::{check_member_path, normalize_member_path};
pub use reader::{read_members, read_members_while, Member, MemberKind};
pub use writer::{ArchiveWriter, HashingReader};
