//! Who is writing an object: lets a later run tell an upload still in progress from one that a
//! SIGKILL, a crash or a dead server left behind, so it can clean up the leftovers (unfinished
//! multipart uploads, local temp files) without ever touching a backup another process is
//! writing at that moment.
//!
//! An owner is this boot of this machine, a pid and that process's start time; the start time
//! makes a reused pid harmless. Leftovers of another boot or machine cannot be checked, so they
//! are only cleaned once they are older than [`FOREIGN_STALE_AFTER`].

use std::time::Duration;

use sha2::{Digest, Sha256};

/// No backup upload takes this long; an upload from another boot or host older than this is
/// abandoned.
pub const FOREIGN_STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadOwner {
    /// A hash of the kernel's boot id: says nothing about the host, changes with every boot.
    boot: String,
    pid: u32,
    start_ticks: u64,
}

impl UploadOwner {
    /// The running process.
    pub fn current() -> UploadOwner {
        let pid = std::process::id();
        UploadOwner {
            boot: boot_tag(),
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
        }
    }

    /// A short token safe for file names and object bodies: `BOOT-PID-START`.
    pub fn token(&self) -> String {
        format!("{}-{}-{}", self.boot, self.pid, self.start_ticks)
    }

    pub fn parse(token: &str) -> Option<UploadOwner> {
        let mut fields = token.splitn(3, '-');
        let boot = fields.next()?.to_string();
        let pid = fields.next()?.parse().ok()?;
        let start_ticks = fields.next()?.parse().ok()?;
        let valid_boot = !boot.is_empty() && boot.chars().all(|c| c.is_ascii_hexdigit());
        valid_boot.then_some(UploadOwner {
            boot,
            pid,
            start_ticks,
        })
    }

    /// Whether the upload marked with `token`, last touched `age` ago, belongs to nobody any
    /// more. An unreadable token counts as foreign.
    pub fn is_abandoned(token: &str, age: Duration) -> bool {
        match UploadOwner::parse(token) {
            Some(owner) if owner.boot == boot_tag() && owner.boot != UNKNOWN_BOOT => {
                start_ticks(owner.pid) != Some(owner.start_ticks)
            }
            _ => age > FOREIGN_STALE_AFTER,
        }
    }
}

const UNKNOWN_BOOT: &str = "0";

fn boot_tag() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        Ok(id) => hex::encode(&Sha256::digest(id.trim().as_bytes())[..6]),
        Err(_) => UNKNOWN_BOOT.to_string(),
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it do not.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let me = UploadOwner::current();
        assert_eq!(UploadOwner::parse(&me.token()), Some(me));
        assert_eq!(UploadOwner::parse("nonsense"), None);
        assert_eq!(UploadOwner::parse("zz-1-2"), None);
    }

    #[test]
    fn a_live_process_does_not_abandon_its_upload() {
        let me = UploadOwner::current();
        assert!(me.start_ticks > 0, "start time read from /proc");
        assert!(!UploadOwner::is_abandoned(&me.token(), Duration::ZERO));
        assert!(!UploadOwner::is_abandoned(
            &me.token(),
            FOREIGN_STALE_AFTER * 2
        ));
    }

    #[test]
    fn a_dead_process_or_an_old_foreign_upload_is_abandoned() {
        let me = UploadOwner::current();
        let reused_pid = UploadOwner {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(UploadOwner::is_abandoned(
            &reused_pid.token(),
            Duration::ZERO
        ));
        let foreign = UploadOwner {
            boot: "abcdef".into(),
            ..me
        };
        assert!(!UploadOwner::is_abandoned(
            &foreign.token(),
            Duration::from_secs(60)
        ));
        assert!(UploadOwner::is_abandoned(
            &foreign.token(),
            FOREIGN_STALE_AFTER + Duration::from_secs(1)
        ));
        assert!(UploadOwner::is_abandoned("4242", FOREIGN_STALE_AFTER * 2));
        assert!(!UploadOwner::is_abandoned("4242", Duration::from_secs(1)));
    }
}
