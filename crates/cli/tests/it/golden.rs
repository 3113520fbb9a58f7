//! Golden tests of the human output: `--help` of the command and of each subcommand, the
//! `list-backups` table, and the message and exit code of common mistakes. Each case is compared
//! with a file in `tests/it/golden/`, so that a change to what users read is made on purpose.
//!
//! To regenerate the files after an intended change, run
//!
//! ```text
//! SYNAPSE_BACKUP_BLESS=1 cargo test -p synapse-backup --test it golden::
//! ```
//!
//! and review `git diff crates/cli/tests/it/golden/`. What varies from run to run is replaced by
//! placeholders before comparing: the scratch folder (`[TMP]`), backup ids (`backup-[ID]`),
//! dates (`[TIMESTAMP]`), sizes in the table (`[SIZE]`) and the tool's version (`[VERSION]`).
//! A placeholder replaces the text only, not the padding after it: in the table the columns of
//! the rows no longer line up with the header, but what the padding is stays checked.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::*;
use crate::exit;

const BLESS_ENV: &str = "SYNAPSE_BACKUP_BLESS";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/golden")
}

/// Compares `actual` with golden file `name`, or writes it when blessing.
#[track_caller]
fn check(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var(BLESS_ENV).as_deref() == Ok("1") {
        fs::create_dir_all(golden_dir()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with {BLESS_ENV}=1 (actual output below)\n{actual}",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "the output differs from {} (first at line {}); if the change is intended, rerun \
             with {BLESS_ENV}=1 and review the diff\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display(),
            first + 1
        );
    }
}

/// Runs the binary with `args` and an environment that cannot change how it prints.
fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("SYNAPSE_BACKUP_CONFIG")
        .env_remove("SYNAPSE_BACKUP_PASSPHRASE")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run synapse-backup")
}

/// The command as typed, its exit code, stdout and stderr, in one text.
fn transcript(shown_args: &str, out: &Output) -> String {
    format!(
        "$ synapse-backup {shown_args}\nexit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status
            .code()
            .map_or_else(|| "killed".to_string(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Placeholders for what varies
// ---------------------------------------------------------------------------------------------

/// Replaces every stretch of `text` that `matches` (which returns the length of a match at the
/// start of the text it is given) with `placeholder`.
fn replace_matches(
    text: &str,
    placeholder: &str,
    matches: impl Fn(&str) -> Option<usize>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(c) = text[at..].chars().next() {
        match matches(&text[at..]) {
            Some(len) if len > 0 => {
                out.push_str(placeholder);
                at += len;
            }
            _ => {
                out.push(c);
                at += c.len_utf8();
            }
        }
    }
    out
}

/// A matcher for a fixed shape, where `9` stands for any digit.
fn shape(pattern: &'static str) -> impl Fn(&str) -> Option<usize> {
    move |text| {
        let text = text.as_bytes();
        let fits = text.len() >= pattern.len()
            && pattern.bytes().zip(text).all(|(p, &t)| match p {
                b'9' => t.is_ascii_digit(),
                _ => p == t,
            });
        fits.then_some(pattern.len())
    }
}

/// An RFC 3339 time as the tool and its logs print it: `2026-01-01T12:00:00`, then optional
/// fractional seconds and `Z` or an offset.
fn rfc3339(text: &str) -> Option<usize> {
    let mut len = shape("9999-99-99T99:99:99")(text)?;
    let rest = &text.as_bytes()[len..];
    if rest.first() == Some(&b'.') {
        len += 1 + rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
    }
    let rest = &text[len..];
    if rest.starts_with('Z') {
        len += 1;
    } else if let Some(offset) = shape("+99:99")(rest).or_else(|| shape("-99:99")(rest)) {
        len += offset;
    }
    Some(len)
}

/// A size as `human_bytes` prints it: `512 B`, `2.0 MiB`.
fn size(text: &str) -> Option<usize> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let mut len = digits;
    let rest = &text.as_bytes()[len..];
    if rest.first() == Some(&b'.') {
        let fraction = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if fraction == 0 {
            return None;
        }
        len += 1 + fraction;
    }
    ["B", "KiB", "MiB", "GiB", "TiB"].iter().find_map(|unit| {
        let after = text[len..].strip_prefix(' ')?.strip_prefix(unit)?;
        let ends = after.chars().next().is_none_or(|c| !c.is_alphanumeric());
        ends.then_some(len + 1 + unit.len())
    })
}

/// The placeholders every golden text gets: the scratch folder, backup ids and dates.
fn normalize(text: &str, scratch: &Path) -> String {
    let mut text = text.to_string();
    let mut scratch_names = vec![scratch.display().to_string()];
    if let Ok(canonical) = scratch.canonicalize() {
        scratch_names.push(canonical.display().to_string());
    }
    for name in scratch_names {
        text = text.replace(&name, "[TMP]");
    }
    let text = replace_matches(&text, "backup-[ID]", shape("backup-99999999999999999999"));
    let text = replace_matches(&text, "[TIMESTAMP]", shape("9999-99-99 99:99:99 UTC"));
    replace_matches(&text, "[TIMESTAMP]", rfc3339)
}

#[test]
fn placeholders_replace_only_what_varies() {
    let scratch = Path::new("/tmp/.tmpAbC123");
    assert_eq!(
        normalize(
            "/tmp/.tmpAbC123/store/backup-20260101120000000000 at 2026-01-01 12:00:00 UTC, \
             2026-01-01T12:00:00.123456Z, 2026-01-01T12:00:00+00:00; backup-2026 stays",
            scratch
        ),
        "[TMP]/store/backup-[ID] at [TIMESTAMP], [TIMESTAMP], [TIMESTAMP]; backup-2026 stays"
    );
    assert_eq!(
        replace_matches(
            "512 B | 2.0 MiB | 10.5 GiB | 3 Bytes | 1.5KiB",
            "[SIZE]",
            size
        ),
        "[SIZE] | [SIZE] | [SIZE] | 3 Bytes | 1.5KiB"
    );
}

// ---------------------------------------------------------------------------------------------
// --help
// ---------------------------------------------------------------------------------------------

const SUBCOMMANDS: [&str; 6] = [
    "create-backup",
    "list-backups",
    "verify-backup",
    "restore-backup",
    "delete-backup",
    "prune-backups",
];

#[test]
fn help_of_the_command() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(exit::OK.into()));
    check("help.txt", &transcript("--help", &out));
}

#[test]
fn help_of_each_subcommand() {
    for subcommand in SUBCOMMANDS {
        let out = run(&[subcommand, "--help"]);
        assert_eq!(
            out.status.code(),
            Some(exit::OK.into()),
            "{subcommand} --help"
        );
        check(
            &format!("help-{subcommand}.txt"),
            &transcript(&format!("{subcommand} --help"), &out),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// list-backups
// ---------------------------------------------------------------------------------------------

#[test]
fn list_backups_table_of_a_local_store_with_two_backups() {
    let world = World::new();
    world.create_backup();
    world.create_backup();
    let out = world.run(&["list-backups"]);
    assert_success(&out, "list-backups");
    let text = normalize(&transcript("list-backups", &out), world.dir.path());
    let text = replace_matches(&text, "[SIZE]", size);
    let version = format!(" | {}\n", env!("CARGO_PKG_VERSION"));
    check(
        "list-backups.txt",
        &text.replace(&version, " | [VERSION]\n"),
    );
}

// ---------------------------------------------------------------------------------------------
// Mistakes: the message on stderr and the exit code
// ---------------------------------------------------------------------------------------------

/// Runs `args` on `config` and checks the transcript against golden file `name`.
fn check_error(name: &str, world: &World, config: &Path, args: &[&str], code: u8) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(&all);
    assert_eq!(
        out.status.code(),
        Some(code.into()),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = format!("--config {} {}", config.display(), args.join(" "));
    check(
        name,
        &normalize(&transcript(&shown, &out), world.dir.path()),
    );
}

#[test]
fn error_for_a_missing_config_file() {
    let world = World::new();
    check_error(
        "error-missing-config.txt",
        &world,
        &world.path("nope.toml"),
        &["list-backups"],
        exit::CONFIG,
    );
}

#[test]
fn error_for_an_unknown_config_key() {
    let world = World::new();
    let config = fs::read_to_string(&world.config).unwrap();
    fs::write(&world.config, format!("{config}typo-key = 1\n")).unwrap();
    check_error(
        "error-unknown-config-key.txt",
        &world,
        &world.config,
        &["list-backups"],
        exit::CONFIG,
    );
}

#[test]
fn error_for_an_unknown_backup_id_in_restore() {
    let world = World::new();
    world.create_backup();
    check_error(
        "error-unknown-backup-id.txt",
        &world,
        &world.config,
        &["restore-backup", "backup-19990101000000000000"],
        exit::NOT_FOUND,
    );
}

#[test]
fn error_for_a_wrong_passphrase_in_verify() {
    let world = World::new();
    let id = world.create_backup();
    world.set_passphrase("not the passphrase");
    check_error(
        "error-wrong-passphrase.txt",
        &world,
        &world.config,
        &["verify-backup", &id],
        exit::WRONG_PASSPHRASE,
    );
}
