//! Settings from the environment, for containers and charms that run the tool without a config
//! file: every `[section] key` is also `SYNAPSE_BACKUP_<SECTION>_<KEY>` (upper case, `-` as
//! `_`), which overrides the file; the standard `AWS_ENDPOINT_URL`, `AWS_REGION` /
//! `AWS_DEFAULT_REGION` and `AWS_ACCESS_KEY_ID` fill in an `[s3]` setting neither sets
//! (`AWS_SECRET_ACCESS_KEY` and `SYNAPSE_BACKUP_PASSPHRASE` are read where they are used).

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// How an environment value becomes a TOML value.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    Boolean,
    /// One path, or a TOML array of paths (`["/etc/a.yaml", "/etc/conf.d"]`).
    Paths,
}

/// Every setting of the config file, by section.
const SETTINGS: [(&str, &[(&str, Kind)]); 9] = [
    (
        "synapse",
        &[("config", Kind::Paths), ("working-dir", Kind::Text)],
    ),
    (
        "s3",
        &[
            ("endpoint", Kind::Text),
            ("bucket", Kind::Text),
            ("path", Kind::Text),
            ("region", Kind::Text),
            ("s3-uri-style", Kind::Text),
            ("access-key", Kind::Text),
            ("secret-key", Kind::Text),
            ("secret-key-file", Kind::Text),
            ("storage-class", Kind::Text),
            ("tls-ca-chain", Kind::Text),
            ("upload-concurrency", Kind::Integer),
            ("max-upload-rate", Kind::Text),
            ("max-download-rate", Kind::Text),
            ("max-retries", Kind::Integer),
            ("request-timeout-secs", Kind::Integer),
        ],
    ),
    ("local", &[("path", Kind::Text)]),
    (
        "drill",
        &[
            ("work-dir", Kind::Text),
            ("synapse-command", Kind::Text),
            ("postgres", Kind::Text),
            ("media-sample", Kind::Integer),
            ("start-timeout-secs", Kind::Integer),
        ],
    ),
    (
        "backup",
        &[
            ("passphrase-file", Kind::Text),
            ("include-remote-media", Kind::Boolean),
            ("read-concurrency", Kind::Integer),
            ("provider-downloads", Kind::Integer),
            ("temp-dir", Kind::Text),
            ("volume-size", Kind::Text),
        ],
    ),
    (
        "restore",
        &[
            ("stop-command", Kind::Text),
            ("start-command", Kind::Text),
            ("health-timeout-secs", Kind::Integer),
        ],
    ),
    (
        "monitoring",
        &[
            ("textfile-dir", Kind::Text),
            ("ping-url", Kind::Text),
            ("ping-timeout-secs", Kind::Integer),
        ],
    ),
    (
        "postgres",
        &[
            ("mode", Kind::Text),
            ("connection", Kind::Text),
            ("base-backup-every", Kind::Text),
            ("archive-timeout-secs", Kind::Integer),
            ("data-dir", Kind::Text),
            ("stop-command", Kind::Text),
            ("start-command", Kind::Text),
            ("recovery-timeout-secs", Kind::Integer),
        ],
    ),
    (
        "retention",
        &[
            ("keep-last", Kind::Integer),
            ("keep-daily", Kind::Integer),
            ("keep-weekly", Kind::Integer),
            ("keep-monthly", Kind::Integer),
            ("delete-grace-secs", Kind::Integer),
        ],
    ),
];

const PREFIX: &str = "SYNAPSE_BACKUP_";

/// The variable that sets `[section] key`.
pub fn variable_name(section: &str, key: &str) -> String {
    format!(
        "{PREFIX}{}_{}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase().replace('-', "_")
    )
}

/// Where each setting that did not come from the file came from: `"s3.bucket"` → variable.
pub type Origins = BTreeMap<String, String>;

/// Lays `env` (name, value pairs) over the file's `table`. A `SYNAPSE_BACKUP_<SECTION>_…`
/// variable of a known section that names no setting is an error (a typo must not be ignored);
/// other `SYNAPSE_BACKUP_*` variables (`…_PASSPHRASE`, `…_CONFIG`) are not settings.
pub fn overlay(table: &mut toml::Table, env: &[(String, String)]) -> Result<Origins> {
    let mut origins = Origins::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((section, keys)) = SETTINGS.iter().find(|(section, _)| {
            rest.strip_prefix(&section.to_ascii_uppercase())
                .is_some_and(|r| r.starts_with('_'))
        }) else {
            continue;
        };
        let Some((key, kind)) = keys
            .iter()
            .find(|(key, _)| variable_name(section, key) == *name)
        else {
            return Err(Error::config(format!(
                "environment variable {name}: [{section}] has no such setting; known: {}",
                keys.iter()
                    .map(|(key, _)| variable_name(section, key))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let value = to_toml(value, *kind)
            .map_err(|why| Error::config(format!("environment variable {name}: {why}")))?;
        set(table, section, key, value);
        origins.insert(format!("{section}.{key}"), name.clone());
    }
    aws_fallbacks(table, env, &mut origins);
    Ok(origins)
}

/// The AWS SDKs' variables, for `[s3]` settings that neither the file nor our own variables set.
fn aws_fallbacks(table: &mut toml::Table, env: &[(String, String)], origins: &mut Origins) {
    let Some(s3) = table.get("s3").and_then(|s| s.as_table()) else {
        return;
    };
    let mut fill = Vec::new();
    for (key, variables) in [
        ("endpoint", &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"][..]),
        ("region", &["AWS_REGION", "AWS_DEFAULT_REGION"][..]),
        ("access-key", &["AWS_ACCESS_KEY_ID"][..]),
    ] {
        if s3.contains_key(key) {
            continue;
        }
        let found = variables.iter().find_map(|variable| {
            env.iter()
                .find(|(name, value)| name == variable && !value.is_empty())
                .map(|(name, value)| (name.clone(), value.clone()))
        });
        if let Some((name, value)) = found {
            fill.push((key, name, value));
        }
    }
    for (key, name, value) in fill {
        set(table, "s3", key, toml::Value::String(value));
        origins.insert(format!("s3.{key}"), name);
    }
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(section) = entry {
        section.insert(key.to_string(), value);
    }
}

fn to_toml(value: &str, kind: Kind) -> std::result::Result<toml::Value, String> {
    match kind {
        Kind::Text => Ok(toml::Value::String(value.to_string())),
        Kind::Integer => value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{value:?} is not a whole number")),
        Kind::Boolean => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" | "" => Ok(toml::Value::Boolean(false)),
            other => Err(format!("{other:?} is not true or false")),
        },
        Kind::Paths if value.trim_start().starts_with('[') => {
            let parsed: toml::Table = format!("v = {value}")
                .parse()
                .map_err(|e| format!("not a TOML array of paths: {e}"))?;
            parsed
                .get("v")
                .cloned()
                .ok_or_else(|| "not a TOML array of paths".to_string())
        }
        Kind::Paths => Ok(toml::Value::String(value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_override_the_file_and_are_typed() {
        let mut table: toml::Table = "[s3]\nbucket = \"from-file\"\nmax-retries = 3\n"
            .parse()
            .unwrap();
        let origins = overlay(
            &mut table,
            &env(&[
                ("SYNAPSE_BACKUP_S3_BUCKET", "from-env"),
                ("SYNAPSE_BACKUP_S3_MAX_RETRIES", "7"),
                ("SYNAPSE_BACKUP_S3_S3_URI_STYLE", "path"),
                ("SYNAPSE_BACKUP_BACKUP_INCLUDE_REMOTE_MEDIA", "yes"),
                (
                    "SYNAPSE_BACKUP_SYNAPSE_CONFIG",
                    "[\"/etc/a.yaml\", \"/etc/conf.d\"]",
                ),
                ("SYNAPSE_BACKUP_PASSPHRASE", "not a setting"),
                ("SYNAPSE_BACKUP_REQUIRE_S3", "not a setting either"),
                ("AWS_DEFAULT_REGION", "eu-1"),
                ("AWS_ACCESS_KEY_ID", "AKIA"),
            ]),
        )
        .unwrap();
        assert_eq!(table["s3"]["bucket"].as_str(), Some("from-env"));
        assert_eq!(table["s3"]["max-retries"].as_integer(), Some(7));
        assert_eq!(table["s3"]["s3-uri-style"].as_str(), Some("path"));
        assert_eq!(table["s3"]["region"].as_str(), Some("eu-1"));
        assert_eq!(table["s3"]["access-key"].as_str(), Some("AKIA"));
        assert_eq!(
            table["backup"]["include-remote-media"].as_bool(),
            Some(true)
        );
        assert_eq!(
            table["synapse"]["config"].as_array().map(|a| a.len()),
            Some(2)
        );
        assert_eq!(origins["s3.bucket"], "SYNAPSE_BACKUP_S3_BUCKET");
        assert_eq!(origins["s3.region"], "AWS_DEFAULT_REGION");
        assert!(!origins.contains_key("s3.max-upload-rate"));
    }

    #[test]
    fn a_misspelt_variable_is_an_error_naming_it() {
        let mut table = toml::Table::new();
        let err = overlay(&mut table, &env(&[("SYNAPSE_BACKUP_S3_ENDPIONT", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SYNAPSE_BACKUP_S3_ENDPIONT")
                && err.contains("SYNAPSE_BACKUP_S3_ENDPOINT"),
            "{err}"
        );
        let err = overlay(
            &mut table,
            &env(&[("SYNAPSE_BACKUP_S3_MAX_RETRIES", "many")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a whole number"), "{err}");
    }

    #[test]
    fn aws_variables_never_override_a_setting() {
        let mut table: toml::Table = "[s3]\nregion = \"file\"\n".parse().unwrap();
        overlay(&mut table, &env(&[("AWS_REGION", "env")])).unwrap();
        assert_eq!(table["s3"]["region"].as_str(), Some("file"));
        // And without an [s3] section they configure nothing.
        let mut empty = toml::Table::new();
        overlay(&mut empty, &env(&[("AWS_REGION", "env")])).unwrap();
        assert!(empty.is_empty());
    }
}
