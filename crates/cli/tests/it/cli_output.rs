//! How the CLI writes for programs rather than people: a closed pipe on stdout and logs that
//! go to a file or journald.

use std::process::{Command, Stdio};

use crate::common::*;
use crate::exit;

/// `list-backups | head -1`: the reader goes away; the tool ends quietly, without a panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let world = World::new();
    world.create_backup();
    world.create_backup();
    let mut child = Command::new(binary())
        .args(["--config", world.config.to_str().unwrap(), "list-backups"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closing the only read end before the tool writes is `head` exiting at once.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(exit::OK.into()), "{stderr}");
}

/// Logs on stderr that is not a terminal carry no colour escape codes.
#[test]
fn logs_off_a_terminal_have_no_colour_codes() {
    let world = World::new();
    let out = world.run(&["-v", "create-backup"]);
    assert_success(&out, "create-backup -v");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INFO"),
        "expected info logs at -v: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "colour codes in: {stderr:?}");
}
