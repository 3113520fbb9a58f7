//! Telling someone how the night went: a node_exporter textfile with the last run's facts, and
//! Healthchecks-style pings (`/start`, success, `/fail`). Neither may fail a backup: a problem
//! here is a warning, never an error of the command.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, IoContext, Result};

/// `[monitoring]` settings.
#[derive(Debug, Clone, Default)]
pub struct MonitoringSettings {
    /// node_exporter's `--collector.textfile.directory`.
    pub textfile_dir: Option<PathBuf>,
    /// A Healthchecks-style check URL.
    pub ping_url: Option<String>,
    pub ping_timeout: Duration,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    pub server_name: Option<String>,
    pub bytes: Option<u64>,
    pub files: Option<u64>,
}

/// One monitored run of a command.
pub struct Monitor<'a> {
    settings: &'a MonitoringSettings,
    command: &'static str,
    started: SystemTime,
    client: Option<reqwest::Client>,
}

impl<'a> Monitor<'a> {
    /// Sends the start ping, if any (and if `pings`: a command run for every WAL file does not).
    pub async fn start(
        settings: &'a MonitoringSettings,
        command: &'static str,
        pings: bool,
    ) -> Monitor<'a> {
        let client = settings.ping_url.as_ref().filter(|_| pings).and_then(|_| {
            reqwest::Client::builder()
                .timeout(settings.ping_timeout)
                .build()
                .map_err(|e| tracing::warn!("monitoring pings disabled: {e}"))
                .ok()
        });
        let monitor = Monitor {
            settings,
            command,
            started: SystemTime::now(),
            client,
        };
        monitor.ping("/start", String::new()).await;
        monitor
    }

    /// Writes the textfile and sends the success or failure ping. `failure` is the error text
    /// (which never holds a secret) and the exit code.
    pub async fn finish(self, facts: &RunFacts, failure: Option<(&str, u8)>) {
        if let Some(dir) = &self.settings.textfile_dir {
            if let Err(e) = write_textfile(dir, self.command, self.started, facts, failure) {
                tracing::warn!("monitoring textfile not written: {e}");
            }
        }
        match failure {
            None => {
                let body = format!(
                    "{} succeeded in {:.1}s",
                    self.command,
                    self.elapsed().as_secs_f64()
                );
                self.ping("", body).await
            }
            Some((error, code)) => {
                let body = format!("{} failed (exit {code}): {error}", self.command);
                self.ping("/fail", body).await
            }
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed().unwrap_or(Duration::ZERO)
    }

    async fn ping(&self, suffix: &str, body: String) {
        let (Some(client), Some(url)) = (&self.client, &self.settings.ping_url) else {
            return;
        };
        let url = format!("{}{suffix}", url.trim_end_matches('/'));
        match client.post(&url).body(body).send().await {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => tracing::warn!("monitoring ping {url} answered HTTP {}", resp.status()),
            Err(e) => tracing::warn!("monitoring ping {url} failed: {e}"),
        }
    }
}

const PREFIX: &str = "synapse_backup";

/// Writes `synapse_backup_<command>.prom` in `dir` atomically (a temp file renamed), keeping the
/// last success time of an earlier run when this one failed.
fn write_textfile(
    dir: &Path,
    command: &str,
    started: SystemTime,
    facts: &RunFacts,
    failure: Option<(&str, u8)>,
) -> Result<()> {
    let file = dir.join(format!("{PREFIX}_{}.prom", command.replace('-', "_")));
    let now = unix_seconds(SystemTime::now());
    let labels = format!(
        "command=\"{}\",server_name=\"{}\"",
        escape(command),
        escape(facts.server_name.as_deref().unwrap_or("unknown"))
    );
    let last_success = match failure {
        None => Some(now),
        Some(_) => previous_value(&file, "last_success_timestamp_seconds"),
    };
    let duration = SystemTime::now()
        .duration_since(started)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let mut metrics: Vec<(&str, &str, String)> = vec![
        (
            "last_attempt_timestamp_seconds",
            "When the command last ran (Unix time).",
            format!("{now}"),
        ),
        (
            "last_duration_seconds",
            "How long the last run took.",
            format!("{duration:.3}"),
        ),
        (
            "last_exit_code",
            "The last run's exit code (0: success).",
            format!("{}", failure.map(|(_, code)| code).unwrap_or(0)),
        ),
    ];
    if let Some(success) = last_success {
        metrics.push((
            "last_success_timestamp_seconds",
            "When the command last succeeded (Unix time).",
            format!("{success}"),
        ));
    }
    // The drill's own names, for alerts that read as what they mean.
    if command == "drill" {
        if let Some(success) =
            previous_or(last_success, &file, "last_drill_success_timestamp_seconds")
        {
            metrics.push((
                "last_drill_success_timestamp_seconds",
                "When a drill last proved a backup boots as a homeserver (Unix time).",
                format!("{success}"),
            ));
        }
        metrics.push((
            "last_drill_duration_seconds",
            "How long the last drill took.",
            format!("{duration:.3}"),
        ));
    }
    // PostgreSQL's archiving: alert on the age of this (the archive is behind), not on a
    // single failure, which PostgreSQL retries.
    if command == "wal-push" {
        if let Some(success) = last_success {
            metrics.push((
                "last_wal_archived_timestamp_seconds",
                "When wal-push last stored a WAL file PostgreSQL handed it (Unix time).",
                format!("{success}"),
            ));
        }
    }
    if let Some(bytes) = facts.bytes {
        metrics.push((
            "last_size_bytes",
            "Bytes of the homeserver's files in the last backup.",
            bytes.to_string(),
        ));
    }
    if let Some(files) = facts.files {
        metrics.push(("last_files", "Files in the last backup.", files.to_string()));
    }
    let mut text = String::new();
    for (name, help, value) in metrics {
        text.push_str(&format!(
            "# HELP {PREFIX}_{name} {help}\n# TYPE {PREFIX}_{name} gauge\n{PREFIX}_{name}{{{labels}}} {value}\n"
        ));
    }
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        file.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&temp, text).at("write", &temp)?;
    std::fs::rename(&temp, &file).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        Error::io("rename into place", &file, e)
    })
}

/// `value`, else the earlier textfile's value of `metric`.
fn previous_or(value: Option<u64>, file: &Path, metric: &str) -> Option<u64> {
    value.or_else(|| previous_value(file, metric))
}

/// The value of `metric` in an earlier textfile, if there is one.
fn previous_value(file: &Path, metric: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let name = format!("{PREFIX}_{metric}{{");
    text.lines()
        .find(|line| line.starts_with(&name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A label value as the exposition format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_the_last_success_time() {
        let dir = tempfile::tempdir().unwrap();
        let facts = RunFacts {
            server_name: Some("ex\"ample".into()),
            bytes: Some(42),
            files: Some(3),
        };
        write_textfile(dir.path(), "create-backup", SystemTime::now(), &facts, None).unwrap();
        let file = dir.path().join("synapse_backup_create_backup.prom");
        let success = previous_value(&file, "last_success_timestamp_seconds").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("server_name=\"ex\\\"ample\""), "{text}");
        assert!(text.contains("synapse_backup_last_size_bytes{"), "{text}");

        write_textfile(
            dir.path(),
            "create-backup",
            SystemTime::now(),
            &RunFacts::default(),
            Some(("boom", 7)),
        )
        .unwrap();
        assert_eq!(
            previous_value(&file, "last_success_timestamp_seconds"),
            Some(success)
        );
        assert_eq!(previous_value(&file, "last_exit_code"), Some(7));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left");
    }

    #[test]
    fn a_drill_reports_its_success_time_and_duration_under_its_own_names() {
        let dir = tempfile::tempdir().unwrap();
        let facts = RunFacts::default();
        write_textfile(dir.path(), "drill", SystemTime::now(), &facts, None).unwrap();
        let file = dir.path().join("synapse_backup_drill.prom");
        let success = previous_value(&file, "last_drill_success_timestamp_seconds").unwrap();
        assert!(std::fs::read_to_string(&file)
            .unwrap()
            .contains("synapse_backup_last_drill_duration_seconds{"));
        write_textfile(
            dir.path(),
            "drill",
            SystemTime::now(),
            &facts,
            Some(("media failed", 5)),
        )
        .unwrap();
        assert_eq!(
            previous_value(&file, "last_drill_success_timestamp_seconds"),
            Some(success)
        );
        assert_eq!(previous_value(&file, "last_exit_code"), Some(5));
    }
}
