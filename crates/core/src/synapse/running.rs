//! Is Synapse running? A restore must never swap files under a live homeserver.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::HomeserverConfig;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunningState {
    Stopped,
    /// The pid file names a live process.
    Pid {
        pid_file: PathBuf,
        pid: i32,
    },
    /// Something answers on a listener port of this homeserver.
    Listening {
        address: SocketAddr,
    },
}

/// Looks for a live process named by `pid_file`, then for an answer on the HTTP listeners.
pub fn is_running(hs: &HomeserverConfig) -> RunningState {
    if let Some(pid_file) = &hs.pid_file {
        if let Ok(text) = std::fs::read_to_string(pid_file) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                // EPERM means the process exists but belongs to someone else.
                let alive = matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM));
                if pid > 0 && alive {
                    return RunningState::Pid {
                        pid_file: pid_file.clone(),
                        pid,
                    };
                }
            }
        }
    }
    for address in listener_addresses(hs) {
        if TcpStream::connect_timeout(&address, Duration::from_millis(300)).is_ok() {
            return RunningState::Listening { address };
        }
    }
    RunningState::Stopped
}

/// Refuses a guessed working directory that a running Synapse contradicts. When a path of its
/// config is relative and no `[synapse] working-dir` is set, a Synapse process started with
/// this main config file runs in the directory those paths are relative to
/// (`/proc/PID/cwd`); saying so beats backing up what lies beside a wrong guess.
pub fn check_working_dir(hs: &HomeserverConfig) -> Result<(), Error> {
    if !hs.uses_working_dir || hs.working_dir.configured {
        return Ok(());
    }
    let ours = canonical(&hs.working_dir.path);
    for (pid, cwd) in synapse_processes(hs.main_file()) {
        if canonical(&cwd) != ours {
            return Err(Error::config(format!(
                "Synapse (pid {pid}) runs in {}, but relative paths of its config were resolved against {} ({}); set [synapse] working-dir = \"{}\"",
                cwd.display(),
                hs.working_dir.path.display(),
                hs.working_dir.reason,
                cwd.display()
            )));
        }
    }
    Ok(())
}

/// The values of `-c X`, `-cX`, `--config-path X` and `--config-path=X` in a command line.
fn config_path_args(args: &[String]) -> impl Iterator<Item = &str> {
    args.iter().enumerate().filter_map(|(i, arg)| {
        let next = || args.get(i + 1).map(String::as_str);
        match arg.as_str() {
            "-c" | "--config-path" => next(),
            other => other
                .strip_prefix("--config-path=")
                .or_else(|| other.strip_prefix("-c").filter(|v| !v.is_empty())),
        }
    })
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The processes whose command line names `synapse` and `main_file` (as `-c FILE`,
/// `--config-path FILE` or `--config-path=FILE`, relative to their own directory or not),
/// with their working directories. Processes of other users are invisible unless we are root.
fn synapse_processes(main_file: &Path) -> Vec<(i32, PathBuf)> {
    let main_file = canonical(main_file);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_synapse = args
            .iter()
            .any(|a| a.contains("synapse.app.") || a.ends_with("synapse_homeserver"));
        if !is_synapse {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        let names_main_file =
            config_path_args(&args).any(|value| canonical(&cwd.join(value)) == main_file);
        if names_main_file {
            found.push((pid, cwd));
        }
    }
    found
}

fn listener_addresses(hs: &HomeserverConfig) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for listener in &hs.listeners {
        let hosts: Vec<String> = if listener.bind_addresses.is_empty() {
            vec!["127.0.0.1".into()]
        } else {
            listener
                .bind_addresses
                .iter()
                .map(|a| match a.as_str() {
                    "0.0.0.0" | "" => "127.0.0.1".to_string(),
                    "::" => "::1".to_string(),
                    other => other.to_string(),
                })
                .collect()
        };
        for host in hosts {
            if let Ok(addrs) = (host.as_str(), listener.port).to_socket_addrs() {
                out.extend(addrs);
            }
        }
    }
    out
}

/// Synapse's version, asked of its first plain-HTTP listener (the admin API's
/// `server_version`, else federation's `version`, neither of which needs a login).
pub async fn server_version(hs: &HomeserverConfig) -> Result<String, String> {
    let address = listener_addresses(hs)
        .into_iter()
        .next()
        .ok_or_else(|| format!("{} has no plain HTTP listener", hs.describe_files()))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for (path, pointer) in [
        ("/_synapse/admin/v1/server_version", "/server_version"),
        ("/_matrix/federation/v1/version", "/server/version"),
    ] {
        let url = format!("http://{address}{path}");
        match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => {
                let text = resp.text().await.map_err(|e| e.to_string())?;
                let body: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))?;
                if let Some(version) = body.pointer(pointer).and_then(|v| v.as_str()) {
                    return Ok(version.to_string());
                }
                last = format!("{url} answered without a version");
            }
            Ok(resp) => last = format!("{url}: HTTP {}", resp.status()),
            Err(e) => last = format!("Synapse does not answer on {address} ({e})"),
        }
    }
    Err(last)
}

/// The key ids and public keys the running homeserver publishes at `/_matrix/key/v2/server`,
/// current and former (`old_verify_keys`), asked of its plain-HTTP listeners.
pub async fn published_keys(hs: &HomeserverConfig) -> Result<Vec<(String, String)>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut last = format!("{} has no plain HTTP listener", hs.describe_files());
    for address in listener_addresses(hs) {
        let url = format!("http://{address}/_matrix/key/v2/server");
        let body = match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => {
                resp.text().await.map_err(|e| e.to_string())?
            }
            Ok(resp) => {
                last = format!("{url}: HTTP {}", resp.status());
                continue;
            }
            Err(e) => {
                last = format!("Synapse does not answer on {address} ({e})");
                continue;
            }
        };
        let body: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{url}: {e}"))?;
        let mut keys = Vec::new();
        for field in ["verify_keys", "old_verify_keys"] {
            if let Some(map) = body.get(field).and_then(|v| v.as_object()) {
                for (id, value) in map {
                    if let Some(key) = value.get("key").and_then(|k| k.as_str()) {
                        keys.push((id.clone(), key.to_string()));
                    }
                }
            }
        }
        return Ok(keys);
    }
    Err(last)
}

/// Polls `GET /health` on the first plain-HTTP listener until it answers `OK` or `timeout` ends.
pub async fn wait_for_health(hs: &HomeserverConfig, timeout: Duration) -> Result<String, String> {
    let address = listener_addresses(hs)
        .into_iter()
        .find(|_| hs.listeners.iter().any(|l| !l.tls))
        .ok_or_else(|| {
            format!(
                "{} has no plain HTTP listener to ask for /health",
                hs.describe_files()
            )
        })?;
    let url = format!("http://{address}/health");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut last = String::from("no answer");
    while started.elapsed() < timeout {
        match client.get(&url).send().await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if status.is_success() && body.trim() == "OK" {
                    return Ok(url);
                }
                last = format!("HTTP {status}: {}", body.trim());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "{url} did not answer OK within {}s (last: {last})",
        timeout.as_secs()
    ))
}
