use anyhow::Result;
use serde_json::json;
use synapse_backup_core::repository::catalog::{list_backups, Details};
use synapse_backup_core::ErrorKind;

use super::Context;
use crate::output::{database_json, emit_json, human_bytes, Table};

pub async fn run(context: &Context) -> Result<()> {
    // Without a passphrase the list still works; it just cannot show what is inside.
    let passphrase = context.config.passphrase().ok();
    let store = context.store()?;
    let catalog = list_backups(store.as_ref(), passphrase.as_ref(), &context.cancel).await?;
    let backups = &catalog.backups;
    if context.json {
        let rows: Vec<_> = backups
            .iter()
            .map(|b| {
                let mut row = json!({
                    "backup-id": b.backup_id,
                    "last-modified": b.last_modified.to_rfc3339(),
                    "size": b.size,
                });
                if let (Some(kind), Some(added), Some(restore)) =
                    (b.kind(), b.added_bytes(), b.restore_bytes())
                {
                    row["kind"] = json!(kind.as_str());
                    row["added-bytes"] = json!(added);
                    row["restore-bytes"] = json!(restore);
                }
                match &b.details {
                    Details::Manifest(h) => {
                        row["format"] = json!("synapse-backup");
                        row["server-name"] = json!(h.server_name);
                        row["tool-version"] = json!(h.tool_version);
                        row["created"] = json!(h.created.to_rfc3339());
                        row["database"] = database_json(&h.database);
                        if let Some(parent) = h.media.as_ref().and_then(|m| m.parent.as_ref()) {
                            row["parent"] = json!(parent);
                        }
                    }
                    Details::Charm => row["format"] = json!("charm"),
                    Details::NotRead => {}
                    Details::Unreadable { why, .. } => row["error"] = json!(why),
                }
                row
            })
            .collect();
        emit_json(json!({
            "ok": true,
            "store": store.describe(),
            "backups": rows,
            "not-backups": catalog.strays,
        }));
        return Ok(());
    }
    let mut table = Table::new([
        "backup-id",
        "last-modified",
        "kind",
        "added",
        "restore reads",
        "server",
        "version",
    ]);
    for b in backups {
        let (server, version) = match &b.details {
            Details::Manifest(h) => (h.server_name.clone(), h.tool_version.clone()),
            Details::Charm => ("(charm backup)".into(), String::new()),
            Details::NotRead => (String::new(), String::new()),
            Details::Unreadable { kind, .. } if *kind == ErrorKind::WrongPassphrase => {
                ("(does not open: wrong passphrase?)".into(), String::new())
            }
            Details::Unreadable { .. } => ("(damaged, or not this backup)".into(), String::new()),
        };
        let kind = match (&b.details, b.kind()) {
            (Details::Charm, _) => "charm".to_string(),
            (_, Some(kind)) => kind.as_str().to_string(),
            _ => String::new(),
        };
        table.row([
            b.backup_id.to_string(),
            b.last_modified.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            kind,
            human_bytes(b.added_bytes().unwrap_or(b.size)),
            b.restore_bytes().map(human_bytes).unwrap_or_default(),
            server,
            version,
        ]);
    }
    crate::output::write_stdout(&table.render());
    if backups.is_empty() {
        eprintln!("no backups in {}", store.describe());
    }
    let unverified = catalog.unverified();
    if !unverified.is_empty() {
        eprintln!(
            "warning: {} object(s) named like backups do not open as themselves, and are never kept, pruned, used as a parent or taken as latest:",
            unverified.len()
        );
        for (id, why) in &unverified {
            eprintln!("  {id}: {why}");
        }
    }
    if !catalog.strays.is_empty() {
        eprintln!("not a backup (ignored): {}", catalog.strays.join(", "));
    }
    Ok(())
}
