//! The `synapse-backup` command: parses arguments, sets up logging, signals and progress, runs
//! one command from `commands`, and maps failures to documented exit codes.

mod args;
mod commands;
mod exit;
mod output;
mod progress_bar;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use synapse_backup_core::config::{Config, CONFIG_ENV, DEFAULT_CONFIG_PATH};
use synapse_backup_core::monitoring::{Monitor, RunFacts};
use synapse_backup_core::progress::Cancel;
use synapse_backup_core::synapse::HomeserverConfig;

use args::Cli;
use commands::Context;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(argument_error(e)),
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    let code = runtime.block_on(run(cli));
    // Blocking tasks may still be winding down after a failure; don't wait for them forever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    ExitCode::from(code)
}

async fn run(cli: Cli) -> u8 {
    // Writing man pages and completions needs no configuration (a package build has none).
    if let args::Command::Generate(what) = &cli.command {
        return match commands::generate(what, cli.json) {
            Ok(()) => exit::OK,
            Err(e) => report(&e, cli.json),
        };
    }
    let asked = cli
        .config
        .clone()
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
    let explicit = asked.is_some();
    let config_path = asked.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let config = match Config::load(&config_path, explicit) {
        Ok(config) => config,
        Err(e) => return report(&anyhow::Error::new(e), cli.json),
    };
    let cancel = Cancel::new();
    spawn_signal_handler(cancel.clone());
    let context = Context {
        config,
        json: cli.json,
        progress: Arc::new(progress_bar::TerminalProgress::new(
            !cli.json && std::io::stderr().is_terminal(),
        )),
        cancel,
    };
    // The commands a timer runs report to monitoring; a failure to report never fails them.
    let monitor = match cli.command.monitored_as() {
        Some(name) => {
            Some(Monitor::start(&context.config.monitoring, name, cli.command.pings()).await)
        }
        None => None,
    };
    let (mut facts, failure) = match commands::run(&context, &cli.command).await {
        Ok(facts) => (facts, None),
        Err(e) => {
            let code = report(&e, context.json);
            (RunFacts::default(), Some((format!("{e:#}"), code)))
        }
    };
    let code = failure.as_ref().map_or(exit::OK, |(_, code)| *code);
    if let Some(monitor) = monitor {
        if facts.server_name.is_none() {
            facts.server_name = HomeserverConfig::load(&context.config.synapse)
                .ok()
                .map(|hs| hs.server_name);
        }
        let failure = failure.as_ref().map(|(text, code)| (text.as_str(), *code));
        monitor.finish(&facts, failure).await;
    }
    code
}

/// Prints the error chain and a hint on stderr (and, under `--json`, as the run's document on
/// stdout), and returns the exit code for it.
fn report(error: &anyhow::Error, json: bool) -> u8 {
    eprintln!("error: {error:#}");
    let core_error = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<synapse_backup_core::Error>());
    let kind = core_error
        .map(|e| e.kind())
        .unwrap_or(synapse_backup_core::ErrorKind::Other);
    // The advice is the library's, by what failed (Error::hint).
    let hint = core_error.and_then(|e| e.hint());
    if let Some(hint) = &hint {
        eprintln!("hint: {hint}");
    }
    let code = exit::code_for(kind);
    if json {
        output::emit_json_error(
            &format!("{error:#}"),
            exit::kind_name(kind),
            code,
            hint.as_deref(),
        );
    }
    code
}

/// glibc gives threads that allocate at once arenas of their own (up to 8 per core), and
/// memory freed into one is not reused by the others: streams whose chunks are allocated on the
/// network threads and freed on the archive threads then hold far more than they use. Reading
/// 1 GiB of media from a storage provider peaked at 145–217 MiB with the default and at 76–109
/// MiB with two arenas, at the same speed; a backup of local media alone goes from 66 to 76 MiB
/// (`scripts/bench/providers.sh`, docs/design.md). An admin's own `MALLOC_ARENA_MAX` is left
/// as it is: glibc has read it already, and the benchmark compares the two that way.
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Bad arguments: clap's message on stderr, exit 2, and under `--json` an error document, so a
/// program that asked for JSON gets JSON even when it misspelt an option. `--help` and
/// `--version` print as usual.
fn argument_error(error: clap::Error) -> u8 {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let _ = error.print();
    let code = exit::CONFIG;
    if std::env::args_os().any(|arg| arg == "--json") {
        // clap's message without its usage block, on one line.
        let rendered = error.render().to_string();
        let message = rendered.split("\n\n").next().unwrap_or("invalid arguments");
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        output::emit_json_error(
            message.trim_start_matches("error: "),
            exit::kind_name(synapse_backup_core::ErrorKind::Config),
            code,
            None,
        );
    }
    code
}

/// Ctrl-C or SIGTERM asks the running operation to stop cleanly (abort the upload, remove
/// staging); a second one exits at once.
fn spawn_signal_handler(cancel: Cancel) {
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        for _ in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if cancel.is_cancelled() {
                eprintln!("interrupted again; exiting now");
                std::process::exit(exit::INTERRUPTED.into());
            }
            eprintln!("interrupted; stopping cleanly (press Ctrl-C again to exit at once)");
            cancel.cancel();
        }
    });
}

/// Logs go to stderr. Other crates stay at `info` at most, whatever the verbosity: HTTP
/// libraries at `debug` may print request headers.
fn init_logging(verbose: u8) {
    let ours = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = format!("warn,synapse_backup={ours},synapse_backup_core={ours}");
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only for a person at a terminal: journald and log files get plain text.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
