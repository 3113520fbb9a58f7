//! Man pages and shell completions, generated from the same argument definitions the program
//! parses, so they never drift from it. The Debian package build writes them (scripts/build-deb.sh).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use serde::Serialize;

use crate::args::{Cli, GenerateArgs};
use crate::exit;
use crate::output::{emit, outln, CommandOutput};

const BIN_NAME: &str = "synapse-backup";

pub fn run(args: &GenerateArgs, json: bool) -> Result<()> {
    let mut written = Vec::new();
    if let Some(dir) = &args.man_dir {
        written.extend(man_pages(dir)?);
    }
    if let Some(dir) = &args.completions_dir {
        written.extend(completions(dir)?);
    }
    emit(json, &Generated { ok: true, written })
}

/// `generate`: the files written.
#[derive(Serialize)]
struct Generated {
    ok: bool,
    written: Vec<PathBuf>,
}

impl CommandOutput for Generated {
    fn print_human(&self) {
        for path in &self.written {
            outln!("{}", path.display());
        }
    }
}

fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    create_dir(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    // The main page again, with the sections a man page reader looks for.
    let main_page = dir.join(format!("{BIN_NAME}.1"));
    fs::write(&main_page, main_page_text()?)
        .with_context(|| format!("cannot write {}", main_page.display()))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(BIN_NAME) && name.ends_with(".1")
        })
        .collect();
    pages.sort();
    Ok(pages)
}

/// clap_mangen's page for the program, its `--help` epilogue replaced by EXIT STATUS,
/// ENVIRONMENT, FILES and SEE ALSO.
fn main_page_text() -> Result<Vec<u8>> {
    let man = clap_mangen::Man::new(Cli::command());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(b".SH \"EXIT STATUS\"\n");
    for (code, meaning) in [
        (exit::OK, "success"),
        (exit::OTHER, "any other error (local I/O, ...)"),
        (exit::CONFIG, "bad configuration or arguments"),
        (exit::NOT_FOUND, "the backup does not exist in the store"),
        (exit::WRONG_PASSPHRASE, "the passphrase does not open the backup"),
        (exit::CORRUPT, "the backup is damaged or failed verification"),
        (exit::REFUSED, "refused by a safety rule (server_name mismatch, Synapse running, not enough space, lock held, newer format)"),
        (exit::STORAGE, "the object store is unreachable or refused the request"),
        (exit::TOOL_MISSING, "a program this needs is not installed (pg_dump, pg_restore, psql)"),
        (exit::INTERNAL, "an internal error: a bug in synapse-backup"),
        (exit::INTERRUPTED, "interrupted (Ctrl-C or SIGTERM); the operation stopped cleanly"),
    ] {
        page.extend_from_slice(format!(".TP\n\\fB{code}\\fR\n{meaning}\n").as_bytes());
    }
    page.extend_from_slice(
        concat!(
            ".SH ENVIRONMENT\n",
            ".TP\n\\fBSYNAPSE_BACKUP_CONFIG\\fR\n",
            "the configuration file, when --config is not given\n",
            ".TP\n\\fBSYNAPSE_BACKUP_PASSPHRASE\\fR\n",
            "the backup passphrase, when [backup] passphrase-file is not set\n",
            ".TP\n\\fBSYNAPSE_BACKUP_\\fISECTION\\fB_\\fIKEY\\fR\n",
            "any setting of the configuration file, over the file: [s3] bucket is SYNAPSE_BACKUP_S3_BUCKET\n",
            ".TP\n\\fBAWS_ENDPOINT_URL\\fR, \\fBAWS_REGION\\fR, \\fBAWS_DEFAULT_REGION\\fR, ",
            "\\fBAWS_ACCESS_KEY_ID\\fR, \\fBAWS_SECRET_ACCESS_KEY\\fR\n",
            "fill in an [s3] setting that neither the file nor a SYNAPSE_BACKUP_S3_ variable sets\n",
            ".SH FILES\n",
            ".TP\n\\fI/etc/synapse-backup/config.toml\\fR\n",
            "the configuration (mode 0600); synapse-backup config show prints what is in effect\n",
            ".TP\n\\fI/usr/lib/systemd/system/synapse-backup.timer\\fR\n",
            "the nightly backup and prune; synapse-backup-verify.timer verifies the newest weekly\n",
            ".SH \"SEE ALSO\"\n",
            "gpg(1), tar(1), systemd.timer(5), /usr/share/doc/synapse-backup/README.md ",
            "(the configuration, restoring, and disaster recovery by hand)\n",
        )
        .as_bytes(),
    );
    man.render_version_section(&mut page)?;
    Ok(page)
}

fn completions(dir: &Path) -> Result<Vec<PathBuf>> {
    create_dir(dir)?;
    let mut command = Cli::command();
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| {
            clap_complete::generate_to(shell, &mut command, BIN_NAME, dir).with_context(|| {
                format!(
                    "cannot write the {shell} completions into {}",
                    dir.display()
                )
            })
        })
        .collect()
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}: check the path and its permissions",
            dir.display()
        )
    })
}
