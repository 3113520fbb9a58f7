use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use synapse_backup_core::config::{Config, Settings, PASSPHRASE_ENV, S3_SECRET_ENV};

use super::Context;
use crate::output::{emit, outln, CommandOutput};

/// Prints the settings as given, as TOML, with the variable that set each one from the
/// environment; secrets are redacted (the table holds no secret).
pub fn show(context: &Context) -> Result<()> {
    let config = &context.config;
    let passphrase_from = if config.backup.passphrase_file.is_some() {
        "[backup] passphrase-file"
    } else if std::env::var_os(PASSPHRASE_ENV).is_some() {
        PASSPHRASE_ENV
    } else {
        "not set"
    };
    // `[s3] region` from AWS_REGION shows as {"s3": {"region": "AWS_REGION"}}: nested like the
    // settings, so every key keeps one style.
    let mut from_environment: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for (setting, variable) in &config.origins {
        let (section, key) = setting.split_once('.').unwrap_or(("", setting));
        from_environment
            .entry(section)
            .or_default()
            .insert(key, variable);
    }
    let shown = ConfigShown {
        ok: true,
        config_file: config
            .file_read
            .then(|| config.source.display().to_string()),
        settings: &config.settings,
        from_environment,
        passphrase_from,
        config,
    };
    emit(context.json, &shown)
}

/// `config show`: the settings as given, with the variable that set each one.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ConfigShown<'a> {
    ok: bool,
    config_file: Option<String>,
    settings: &'a Settings,
    from_environment: BTreeMap<&'a str, BTreeMap<&'a str, &'a str>>,
    passphrase_from: &'static str,
    #[serde(skip)]
    config: &'a Config,
}

impl CommandOutput for ConfigShown<'_> {
    fn print_human(&self) {
        let config = self.config;
        match &self.config_file {
            Some(file) => outln!("# settings from {file}, then the environment"),
            None => outln!(
                "# no config file at {}: settings from the environment",
                config.source.display()
            ),
        }
        outln!("# passphrase from: {}", self.passphrase_from);
        for (section, values) in self.settings {
            let Some(values) = values.as_table() else {
                continue;
            };
            outln!("\n[{section}]");
            for (key, value) in values {
                let origin = config
                    .origins
                    .get(&format!("{section}.{key}"))
                    .map(|variable| format!("   # {variable}"))
                    .unwrap_or_default();
                outln!("{key} = {value}{origin}");
            }
            if section == "s3"
                && !values.contains_key("secret-key")
                && !values.contains_key("secret-key-file")
            {
                outln!("# secret key from {S3_SECRET_ENV}");
            }
        }
    }
}
