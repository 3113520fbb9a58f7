//! Stopping Synapse before a live restore and starting it after, through the commands in
//! `[restore]`. Every wait here is asynchronous and gives up when the user cancels.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Hook, HookFailure, Refusal, Result};
use crate::progress::Cancel;
use crate::synapse::{is_running, wait_for_health, HomeserverConfig, RunningState};

/// How long Synapse may take to exit after `stop-command`.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_POLL: Duration = Duration::from_millis(250);

/// Whether Synapse runs, asked off the async runtime (it connects to the listeners).
async fn running_state(hs: &HomeserverConfig) -> Result<RunningState> {
    let hs = hs.clone();
    tokio::task::spawn_blocking(move || is_running(&hs))
        .await
        .map_err(|e| Error::task_failed("Synapse check", e))
}

/// Stops a running Synapse with `[restore] stop-command`, or refuses when there is none.
/// Returns whether Synapse was stopped (and so should be started again).
pub(crate) async fn stop_synapse_if_running(
    config: &Config,
    hs: &HomeserverConfig,
    cancel: &Cancel,
) -> Result<bool> {
    let state = running_state(hs).await?;
    let why = match &state {
        RunningState::Stopped => return Ok(false),
        RunningState::Pid { pid_file, pid } => {
            format!("process {pid} named by {} is alive", pid_file.display())
        }
        RunningState::Listening { address } => format!("something answers on {address}"),
    };
    let Some(stop) = &config.restore.stop_command else {
        return Err(Error::refused(Refusal::SynapseRunning, format!(
            "Synapse is running ({why}); stop it first, or set [restore] stop-command and start-command"
        )));
    };
    run_hook(Hook::Stop, stop).await?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while running_state(hs).await? != RunningState::Stopped {
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        if Instant::now() > deadline {
            return Err(Error::refused(
                Refusal::SynapseRunning,
                format!(
                    "Synapse is still running {}s after stop-command; nothing was changed",
                    STOP_TIMEOUT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(STOP_POLL).await;
    }
    Ok(true)
}

/// Starts Synapse with `[restore] start-command` and waits for `/health`; the note to report.
pub(crate) async fn start_synapse(
    config: &Config,
    hs: &HomeserverConfig,
    cancel: &Cancel,
) -> Result<String> {
    let Some(start) = &config.restore.start_command else {
        return Ok(
            "Synapse was stopped for the restore; no start-command is set, start it yourself"
                .into(),
        );
    };
    run_hook(Hook::Start, start).await?;
    let timeout = Duration::from_secs(config.restore.health_timeout_secs);
    let health = tokio::select! {
        health = wait_for_health(hs, timeout) => health,
        () = cancel.cancelled() => Err("interrupted while waiting for it".into()),
    };
    match health {
        Ok(url) => Ok(format!("Synapse started and {url} answers OK")),
        Err(why) => Err(Error::Hook {
            hook: Hook::Start,
            failure: HookFailure::Unhealthy { reason: why },
        }),
    }
}

/// Runs a configured command through `sh -c`. The commands carry no secret.
pub(super) async fn run_hook(hook: Hook, command: &str) -> Result<()> {
    tracing::info!("running {hook}: {command}");
    // What the command prints goes to stderr: stdout is the tool's own (`--json`).
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .status()
        .await
        .map_err(|e| Error::Hook {
            hook,
            failure: HookFailure::CannotRun {
                command: command.to_string(),
                reason: e.to_string(),
            },
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Hook {
            hook,
            failure: HookFailure::Failed {
                command: command.to_string(),
                status: status.to_string(),
            },
        })
    }
}
