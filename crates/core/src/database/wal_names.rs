//! The names of the files PostgreSQL archives: what `archive_command` may be handed and
//! `restore_command` asked for. Only these names become objects, so a path that is not one
//! (a typo in `archive_command`, `%p` where `%f` was meant) is refused before anything is
//! read or stored.

use std::fmt;

/// What a WAL file name names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    /// A WAL segment: timeline, log and segment number, 24 hex digits.
    Segment,
    /// A timeline history file, `TTTTTTTT.history`, written when a recovery promotes.
    History,
    /// A base backup's label, `<segment>.XXXXXXXX.backup`.
    BackupLabel,
    /// A segment cut short at a promotion, `<segment>.partial`.
    Partial,
}

/// A validated WAL file name (never a path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalFileName(String);

impl WalFileName {
    /// `name` if it is one of the names PostgreSQL archives, else why not.
    pub fn parse(name: &str) -> Result<WalFileName, String> {
        if Self::kind_of(name).is_some() {
            Ok(WalFileName(name.to_string()))
        } else {
            Err(format!(
                "{name:?} is not a WAL file name PostgreSQL archives (24 hex digits for a segment, \
                 TTTTTTTT.history, <segment>.XXXXXXXX.backup or <segment>.partial)"
            ))
        }
    }

    fn kind_of(name: &str) -> Option<WalFileKind> {
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        };
        let (stem, rest) = name.split_at(name.len().min(24));
        if hex(stem, 24) {
            return match rest {
                "" => Some(WalFileKind::Segment),
                ".partial" => Some(WalFileKind::Partial),
                _ => rest
                    .strip_prefix('.')
                    .and_then(|r| r.strip_suffix(".backup"))
                    .filter(|offset| hex(offset, 8))
                    .map(|_| WalFileKind::BackupLabel),
            };
        }
        name.strip_suffix(".history")
            .filter(|timeline| hex(timeline, 8))
            .map(|_| WalFileKind::History)
    }

    pub fn kind(&self) -> WalFileKind {
        // Parsed on construction, so always one.
        Self::kind_of(&self.0).unwrap_or(WalFileKind::Segment)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The timeline the file belongs to (a history file: the timeline it starts).
    pub fn timeline(&self) -> u32 {
        u32::from_str_radix(&self.0[..8], 16).unwrap_or(0)
    }

    /// Where in the WAL the file lies, whatever its timeline: the log and segment numbers as
    /// one ordered number. `None` for a history file, which belongs to no position.
    pub fn position(&self) -> Option<u64> {
        if self.kind() == WalFileKind::History {
            return None;
        }
        let field = |range: std::ops::Range<usize>| u64::from_str_radix(&self.0[range], 16).ok();
        Some((field(8..16)? << 32) | field(16..24)?)
    }

    /// The segment after this one on the same timeline, for segments of `segment_bytes` (a
    /// power of two, 1 MiB to 1 GiB, as `initdb --wal-segsize` allows); `None` for anything
    /// that is not a segment or a size PostgreSQL cannot have.
    pub fn next_segment(&self, segment_bytes: u64) -> Option<WalFileName> {
        if self.kind() != WalFileKind::Segment
            || !segment_bytes.is_power_of_two()
            || !((1 << 20)..=(1 << 30)).contains(&segment_bytes)
        {
            return None;
        }
        let per_log = (1u64 << 32) / segment_bytes;
        let field = |range: std::ops::Range<usize>| u64::from_str_radix(&self.0[range], 16).ok();
        let (log, seg) = (field(8..16)?, field(16..24)?);
        let (log, seg) = if seg + 1 >= per_log {
            (log.checked_add(1).filter(|l| *l <= u64::from(u32::MAX))?, 0)
        } else {
            (log, seg + 1)
        };
        Some(WalFileName(format!(
            "{:08X}{log:08X}{seg:08X}",
            self.timeline()
        )))
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_postgresql_archives_parse_and_nothing_else_does() {
        let kind = |n: &str| WalFileName::parse(n).map(|w| w.kind());
        assert_eq!(kind("000000010000000000000003"), Ok(WalFileKind::Segment));
        assert_eq!(kind("00000002.history"), Ok(WalFileKind::History));
        assert_eq!(
            kind("000000010000000000000002.00000028.backup"),
            Ok(WalFileKind::BackupLabel)
        );
        assert_eq!(
            kind("00000001000000000000000A.partial"),
            Ok(WalFileKind::Partial)
        );
        for bad in [
            "",
            "pg_wal/000000010000000000000003",
            "00000001000000000000000a",
            "0000000100000000000000031",
            "00000002.history.x",
            "0000002.history",
            "000000010000000000000002.0000002.backup",
            "../000000010000000000000003",
            "RECOVERYXLOG",
        ] {
            let error = WalFileName::parse(bad).expect_err(bad);
            assert!(error.contains("not a WAL file name"), "{error}");
        }
    }

    #[test]
    fn the_next_segment_follows_the_segment_size() {
        let next = |name: &str, size: u64| {
            WalFileName::parse(name)
                .unwrap()
                .next_segment(size)
                .map(|n| n.to_string())
        };
        let mib16 = 16 << 20;
        assert_eq!(
            next("000000010000000000000003", mib16).as_deref(),
            Some("000000010000000000000004")
        );
        assert_eq!(
            next("0000000200000000000000FF", mib16).as_deref(),
            Some("000000020000000100000000")
        );
        assert_eq!(
            next("00000001000000000000003F", 64 << 20).as_deref(),
            Some("000000010000000100000000")
        );
        assert_eq!(next("000000010000000000000003", 3 << 20), None);
        assert_eq!(next("00000002.history", mib16), None);
    }

    #[test]
    fn positions_order_files_across_timelines_and_logs() {
        let position = |name: &str| WalFileName::parse(name).unwrap().position();
        assert!(position("0000000200000000000000FF") < position("000000010000000100000000"));
        assert_eq!(
            position("000000010000000000000003.00000028.backup"),
            position("000000030000000000000003")
        );
        assert_eq!(
            position("000000010000000000000003.partial"),
            position("000000010000000000000003")
        );
        assert_eq!(position("00000002.history"), None);
    }

    #[test]
    fn the_timeline_is_read_from_the_name() {
        let name = WalFileName::parse("0000000A0000000000000003").unwrap();
        assert_eq!(name.timeline(), 10);
        assert_eq!(
            WalFileName::parse("00000002.history").unwrap().timeline(),
            2
        );
    }
}
