//! Who is writing an object: lets a later run tell an upload still in progress from one that a
//! SIGKILL, a crash or a dead server left behind, so it can clean up the leftovers (unfinished
//! multipart uploads, local temp files) without ever touching a backup another process is
//! writing at that moment.
//!
//! An owner is this boot of this machine seen from this pid namespace (containers on one host
//! share the boot id but not their pids), a user, a pid and that process's start time; the start
//! time makes a reused pid harmless. Leftovers of another boot, machine, container or user (whose
//! processes `/proc` may hide) cannot be checked, so they are only cleaned once they are older
//! than [`FOREIGN_STALE_AFTER`]. When anything cannot be read, the answer is "foreign".

use std::time::Duration;

use sha2::{Digest, Sha256};

/// No backup upload takes this long; an upload from another boot or host older than this is
/// abandoned.
pub const FOREIGN_STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadOwner {
    /// A hash of the kernel's boot id and the pid namespace: says nothing about the host,
    /// changes with every boot.
    boot: String,
    uid: u32,
    pid: u32,
    /// 0 when it could not be read: such an owner can never be checked.
    start_ticks: u64,
}

impl UploadOwner {
    /// The running process.
    pub fn current() -> UploadOwner {
        let pid = std::process::id();
        UploadOwner {
            boot: boot_tag(),
            uid: nix::unistd::getuid().as_raw(),
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
        }
    }

    /// A short token safe for file names and object bodies: `BOOT-UID-PID-START`.
    pub fn token(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.boot, self.uid, self.pid, self.start_ticks
        )
    }

    pub fn parse(token: &str) -> Option<UploadOwner> {
        let mut fields = token.splitn(4, '-');
        let boot = fields.next()?.to_string();
        let uid = fields.next()?.parse().ok()?;
        let pid = fields.next()?.parse().ok()?;
        let start_ticks = fields.next()?.parse().ok()?;
        let valid_boot = !boot.is_empty() && boot.chars().all(|c| c.is_ascii_hexdigit());
        valid_boot.then_some(UploadOwner {
            boot,
            uid,
            pid,
            start_ticks,
        })
    }

    /// Whether the upload marked with `token`, last touched `age` ago, belongs to nobody any
    /// more. An unreadable token counts as foreign.
    pub fn is_abandoned(token: &str, age: Duration) -> bool {
        let me = UploadOwner::current();
        match UploadOwner::parse(token) {
            // Checkable: same boot and pid namespace, same user (whose processes `/proc`
            // always shows us), and a start time that was read.
            Some(owner)
                if owner.boot == me.boot
                    && owner.boot != UNKNOWN_BOOT
                    && owner.uid == me.uid
                    && owner.start_ticks != 0 =>
            {
                start_ticks(owner.pid) != Some(owner.start_ticks)
            }
            _ => age > FOREIGN_STALE_AFTER,
        }
    }
}

const UNKNOWN_BOOT: &str = "0";

/// The boot id and the pid namespace, hashed.
fn boot_tag() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let namespace = std::fs::read_link("/proc/self/ns/pid");
    match (boot, namespace) {
        (Ok(boot), Ok(namespace)) => {
            let mut hasher = Sha256::new();
            hasher.update(boot.trim().as_bytes());
            hasher.update(namespace.as_os_str().as_encoded_bytes());
            hex::encode(&hasher.finalize()[..6])
        }
        _ => UNKNOWN_BOOT.to_string(),
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
        assert_eq!(UploadOwner::parse("zz-0-1-2"), None);
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
            ..me.clone()
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
