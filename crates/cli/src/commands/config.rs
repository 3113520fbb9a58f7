use anyhow::Result;
use serde_json::json;
use synapse_backup_core::config::{PASSPHRASE_ENV, S3_SECRET_ENV};

use super::Context;
use crate::output::{emit_json, outln};

/// Prints the settings as given, as TOML, with the variable that set each one from the
/// environment; secrets are redacted (the table holds no secret).
pub fn show(context: &Context) -> Result<()> {
    let config = &context.config;
    let passphrase = if config.backup.passphrase_file.is_some() {
        "[backup] passphrase-file"
    } else if std::env::var_os(PASSPHRASE_ENV).is_some() {
        PASSPHRASE_ENV
    } else {
        "not set"
    };
    let file = config
        .file_read
        .then(|| config.source.display().to_string());
    if context.json {
        // `[s3] region` from AWS_REGION shows as {"s3": {"region": "AWS_REGION"}}: nested like
        // the settings, so every key keeps one style.
        let mut from_environment = serde_json::Map::new();
        for (setting, variable) in &config.origins {
            let (section, key) = setting.split_once('.').unwrap_or(("", setting));
            let entry = from_environment
                .entry(section.to_string())
                .or_insert_with(|| json!({}));
            entry[key] = json!(variable);
        }
        emit_json(json!({
            "ok": true,
            "config-file": file,
            "settings": config.settings,
            "from-environment": from_environment,
            "passphrase-from": passphrase,
        }));
        return Ok(());
    }
    match &file {
        Some(file) => outln!("# settings from {file}, then the environment"),
        None => outln!(
            "# no config file at {}: settings from the environment",
            config.source.display()
        ),
    }
    outln!("# passphrase from: {passphrase}");
    for (section, values) in &config.settings {
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
    Ok(())
}
