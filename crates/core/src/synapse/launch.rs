//! Booting an installed Synapse on a config of ours (for `drill`): which program, started in its own process group and tied to
//! the drill (it gets SIGTERM if the drill dies, however), waited for, and stopped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::HomeserverConfig;
use crate::config::Config;
use crate::error::{Error, IoContext, Result};

/// The command that precedes Synapse's `--config-path` arguments, and how it was found.
#[derive(Debug, Clone)]
pub struct SynapseCommand {
    pub words: Vec<String>,
    pub found_by: String,
}

impl SynapseCommand {
    pub fn display(&self) -> String {
        self.words.join(" ")
    }
}

const DEBIAN_PYTHON: &str = "/opt/venvs/matrix-synapse/bin/python";

/// `[drill] synapse-command`; else the interpreter and module the running Synapse uses
/// (its `/proc/PID/cmdline`); else the Debian package's virtualenv; else a
/// `python3` that imports synapse.
pub fn find_synapse_command(
    config: &Config,
    live: Option<&HomeserverConfig>,
) -> Result<SynapseCommand> {
    if let Some(command) = &config.drill.synapse_command {
        let words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
        if words.is_empty() {
            return Err(Error::config("[drill] synapse-command is empty"));
        }
        return Ok(SynapseCommand {
            words,
            found_by: "[drill] synapse-command".into(),
        });
    }
    if let Some(found) = live.and_then(running_synapse_command) {
        return Ok(found);
    }
    if Path::new(DEBIAN_PYTHON).is_file() {
        return Ok(SynapseCommand {
            words: vec![
                DEBIAN_PYTHON.into(),
                "-m".into(),
                "synapse.app.homeserver".into(),
            ],
            found_by: "the Debian package's virtualenv".into(),
        });
    }
    let imports = Command::new("python3")
        .args(["-c", "import synapse.app.homeserver"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if imports {
        return Ok(SynapseCommand {
            words: vec![
                "python3".into(),
                "-m".into(),
                "synapse.app.homeserver".into(),
            ],
            found_by: "python3 on PATH imports synapse".into(),
        });
    }
    Err(Error::config(
        "no Synapse to boot for the drill: no running Synapse was found for this homeserver.yaml, /opt/venvs/matrix-synapse is not installed and python3 cannot import synapse; set [drill] synapse-command, e.g. \"/path/to/venv/bin/python -m synapse.app.homeserver\"",
    ))
}

/// The words before `--config-path`/`-c` in the running Synapse's command line: the process
/// its pid file names (synctl's daemon), else a `synapse.app.homeserver` process started on
/// this homeserver's main config file (systemd's, a container's).
fn running_synapse_command(hs: &HomeserverConfig) -> Option<SynapseCommand> {
    let from_pid_file = hs
        .pid_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse::<i32>().ok());
    let candidates = from_pid_file.into_iter().chain(homeserver_processes());
    for pid in candidates {
        let Some(args) = command_line(pid) else {
            continue;
        };
        if from_pid_file != Some(pid) && !runs_config(pid, &args, hs.main_file()) {
            continue;
        }
        let Some(mut words) = command_before_config(&args) else {
            continue;
        };
        if !Path::new(&words[0]).is_absolute() {
            // A relative interpreter resolves against the running Synapse's PATH, not ours.
            let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
                continue;
            };
            words[0] = exe.to_string_lossy().into_owned();
        }
        return Some(SynapseCommand {
            words,
            found_by: format!("the running Synapse (pid {pid})"),
        });
    }
    None
}

fn command_line(pid: i32) -> Option<Vec<String>> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Processes whose command line runs Synapse's main process.
fn homeserver_processes() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            command_line(*pid).is_some_and(|args| {
                args.iter()
                    .any(|a| a == "synapse.app.homeserver" || a.ends_with("/synapse_homeserver"))
            })
        })
        .collect()
}

/// Whether `args` (of process `pid`) name `main_file` as a config path.
fn runs_config(pid: i32, args: &[String], main_file: &Path) -> bool {
    let want = std::fs::canonicalize(main_file).unwrap_or_else(|_| main_file.to_path_buf());
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    let mut paths = Vec::new();
    let mut next_is_path = false;
    for arg in args {
        if next_is_path {
            paths.push(arg.as_str());
            next_is_path = false;
        } else if arg == "-c" || arg == "--config-path" {
            next_is_path = true;
        } else if let Some(path) = arg.strip_prefix("--config-path=") {
            paths.push(path);
        }
    }
    paths.iter().any(|p| {
        let path = cwd.join(p);
        std::fs::canonicalize(&path).unwrap_or(path) == want
    })
}

fn command_before_config(args: &[String]) -> Option<Vec<String>> {
    let end = args.iter().position(|a| {
        a == "-c"
            || a == "--config-path"
            || a.starts_with("--config-path=")
            || (a.starts_with("-c") && a.len() > 2 && !a.starts_with("--"))
    })?;
    (end > 0).then(|| args[..end].to_vec())
}

/// A started Synapse. Dropping it stops it.
pub struct SynapseProcess {
    pid: i32,
    exited: Arc<Mutex<Option<String>>>,
    waiter: Option<std::thread::JoinHandle<()>>,
    pub log: PathBuf,
}

impl SynapseProcess {
    /// Starts `command --config-path CONFIG` in `dir`, output to `dir/synapse.log`.
    pub fn start(
        command: &SynapseCommand,
        config_file: &Path,
        dir: &Path,
    ) -> Result<SynapseProcess> {
        let log = dir.join("synapse.log");
        let out = File::create(&log).at("create", &log)?;
        let err = out.try_clone().at("open", &log)?;
        let mut cmd = Command::new(&command.words[0]);
        cmd.args(&command.words[1..])
            .arg("--config-path")
            .arg(config_file)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM)).map_err(std::io::Error::from)
            });
        }
        let exited = Arc::new(Mutex::new(None));
        let (tx, rx) = std::sync::mpsc::channel();
        let record = Arc::clone(&exited);
        // The thread that spawns Synapse lives until it exits: PR_SET_PDEATHSIG fires when the
        // spawning *thread* ends, and a runtime's worker threads come and go.
        let waiter = std::thread::Builder::new()
            .name("drill-synapse".into())
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id() as i32));
                    let status = child
                        .wait()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    if let Ok(mut slot) = record.lock() {
                        *slot = Some(status);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Other(format!("cannot start a thread for Synapse: {e}")))?;
        let pid = match rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                let _ = waiter.join();
                return Err(Error::Other(format!(
                    "cannot start Synapse with `{}`: {e}; set [drill] synapse-command",
                    command.display()
                )));
            }
            Err(_) => return Err(Error::Other("the thread starting Synapse ended".into())),
        };
        Ok(SynapseProcess {
            pid,
            exited,
            waiter: Some(waiter),
            log,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How Synapse ended, if it has.
    pub fn exit_status(&self) -> Option<String> {
        self.exited.lock().ok().and_then(|s| s.clone())
    }

    /// Polls `/health` until it answers OK, Synapse exits, `timeout` passes or the user
    /// interrupts.
    pub async fn wait_healthy(
        &self,
        base: &str,
        timeout: Duration,
        cancel: &crate::progress::Cancel,
    ) -> std::result::Result<(), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut last;
        loop {
            if cancel.is_cancelled() {
                return Err("interrupted while waiting for Synapse to start".into());
            }
            if let Some(status) = self.exit_status() {
                return Err(format!(
                    "Synapse exited ({status}) before answering; {}",
                    self.log_tail()
                ));
            }
            match client.get(format!("{base}/health")).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    if status.is_success() && body.trim() == "OK" {
                        return Ok(());
                    }
                    last = format!("HTTP {status}: {}", body.trim());
                }
                Err(e) => last = e.to_string(),
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "{base}/health did not answer OK within {}s (last: {last}); {}",
                    timeout.as_secs(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The last lines of Synapse's output, for a failure's message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(8).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        format!("its log {} ends: {}", self.log.display(), tail.join(" | "))
    }

    /// SIGTERM to the group, SIGKILL after 30 s; waits until Synapse is gone.
    pub fn stop(&mut self) {
        let group = Pid::from_raw(self.pid);
        if self.exit_status().is_none() {
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.exit_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.exit_status().is_none() {
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
        // Anything else left in its group.
        let _ = killpg(group, Signal::SIGKILL);
    }
}

impl Drop for SynapseProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a Synapse a killed drill left running, if `pid` still runs with `config_file` on its
/// command line (a reused pid is left alone).
pub fn stop_leftover(pid: i32, config_file: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = config_file.to_string_lossy();
    if !String::from_utf8_lossy(&cmdline).contains(needle.as_ref()) {
        return false;
    }
    let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while kill(Pid::from_raw(pid), None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    true
}

/// A free port on 127.0.0.1.
pub fn free_loopback_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Other(format!("cannot find a free port on 127.0.0.1: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Other(format!("cannot find a free port on 127.0.0.1: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn the_command_is_what_precedes_the_config_path() {
        for (line, expected) in [
            ("/opt/venvs/matrix-synapse/bin/python -m synapse.app.homeserver --config-path=/etc/matrix-synapse/homeserver.yaml --config-path=/etc/matrix-synapse/conf.d/", "/opt/venvs/matrix-synapse/bin/python -m synapse.app.homeserver"),
            ("/usr/local/bin/python -m synapse.app.homeserver -c /data/homeserver.yaml", "/usr/local/bin/python -m synapse.app.homeserver"),
            ("/v/bin/python /v/bin/synapse_homeserver --config-path /d/h.yaml", "/v/bin/python /v/bin/synapse_homeserver"),
        ] {
            assert_eq!(command_before_config(&words(line)), Some(words(expected)), "{line}");
        }
        assert_eq!(
            command_before_config(&words("python -m synapse.app.homeserver")),
            None
        );
        assert_eq!(command_before_config(&words("--config-path x")), None);
    }
}
