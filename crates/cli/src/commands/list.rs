use anyhow::Result;
use serde::Serialize;
use synapse_backup_core::repository::catalog::{list_backups, BackupListing, Catalog, Details};
use synapse_backup_core::repository::physical::restorable_span;
use synapse_backup_core::repository::wal::base_object;
use synapse_backup_core::ErrorKind;

use super::Context;
use crate::output::{emit, human_bytes, CommandOutput, DatabaseOut, Table};

pub async fn run(context: &Context) -> Result<()> {
    // Without a passphrase the list still works; it just cannot show what is inside.
    let passphrase = context.config.passphrase().ok();
    let store = context.store()?;
    let catalog = list_backups(store.as_ref(), passphrase.as_ref(), &context.cancel).await?;
    let physical = catalog.verified().filter_map(|b| match &b.details {
        Details::Manifest(h) => h.database.physical.as_ref(),
        _ => None,
    });
    let span = restorable_span(store.as_ref(), physical).await?;
    let store = store.describe();
    let mut listed = Listed::of(&catalog, &store);
    listed.restorable = span.map(|s| SpanOut {
        from: s.from.to_rfc3339(),
        wal_stored_until: s.wal_stored_until.map(|t| t.to_rfc3339()),
    });
    emit(context.json, &listed)?;
    Ok(())
}

/// What `list-backups` prints.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Listed<'a> {
    ok: bool,
    store: &'a str,
    backups: Vec<ListRow<'a>>,
    not_backups: &'a [String],
    /// With physical backups: the span `restore-backup --to-time` can reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    restorable: Option<SpanOut>,
    #[serde(skip)]
    catalog: &'a Catalog,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct SpanOut {
    /// The oldest physical backup's restore point.
    from: String,
    /// When the newest WAL segment was stored.
    wal_stored_until: Option<String>,
}

/// One object named like a backup. What is known of it depends on whether it was opened.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ListRow<'a> {
    backup_id: &'a str,
    last_modified: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    added_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restore_bytes: Option<u64>,
    /// `synapse-backup` or `charm`, once opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<DatabaseOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<&'a str>,
    /// Named like a backup, but it does not open as one.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl<'a> ListRow<'a> {
    fn of(b: &'a BackupListing) -> Self {
        let sizes = match (b.kind(), b.added_bytes(), b.restore_bytes()) {
            (Some(kind), Some(added), Some(restore)) => Some((kind.as_str(), added, restore)),
            _ => None,
        };
        let mut row = ListRow {
            backup_id: b.backup_id.as_str(),
            last_modified: b.last_modified.to_rfc3339(),
            size: b.size,
            kind: sizes.map(|s| s.0),
            added_bytes: sizes.map(|s| s.1),
            restore_bytes: sizes.map(|s| s.2),
            format: None,
            server_name: None,
            tool_version: None,
            created: None,
            database: None,
            parent: None,
            error: None,
        };
        match &b.details {
            Details::Manifest(h) => {
                row.format = Some("synapse-backup");
                row.server_name = Some(&h.server_name);
                row.tool_version = Some(&h.tool_version);
                row.created = Some(h.created.to_rfc3339());
                row.database = Some(DatabaseOut::of(&h.database));
                row.parent = h.media.as_ref().and_then(|m| m.parent.as_deref());
            }
            Details::Charm => row.format = Some("charm"),
            Details::NotRead => {}
            Details::Unreadable { why, .. } => row.error = Some(why),
        }
        row
    }
}

impl<'a> Listed<'a> {
    fn of(catalog: &'a Catalog, store: &'a str) -> Self {
        Listed {
            ok: true,
            store,
            backups: catalog.backups.iter().map(ListRow::of).collect(),
            not_backups: &catalog.strays,
            restorable: None,
            catalog,
        }
    }
}

impl CommandOutput for Listed<'_> {
    fn print_human(&self) {
        let mut table = Table::new([
            "backup-id",
            "last-modified",
            "kind",
            "added",
            "restore reads",
            "server",
            "version",
        ]);
        for b in &self.catalog.backups {
            table.row(table_row(b));
        }
        crate::output::write_stdout(&table.render());
        if self.backups.is_empty() {
            eprintln!("no backups in {}", self.store);
        }
        if let Some(span) = &self.restorable {
            eprintln!(
                "PostgreSQL (physical): restore-backup --to-time reaches any moment from {} to the last archived WAL ({})",
                span.from,
                span.wal_stored_until
                    .as_deref()
                    .map(|t| format!("stored {t}"))
                    .unwrap_or_else(|| "none stored yet".into())
            );
        }
        let unverified = self.catalog.unverified();
        if !unverified.is_empty() {
            eprintln!(
                "warning: {} object(s) named like backups do not open as themselves, and are never kept, pruned, used as a parent or taken as latest:",
                unverified.len()
            );
            for (id, why) in &unverified {
                eprintln!("  {id}: {why}");
            }
        }
        if !self.not_backups.is_empty() {
            eprintln!("not a backup (ignored): {}", self.not_backups.join(", "));
        }
    }
}

fn table_row(b: &BackupListing) -> [String; 7] {
    let (server, version) = match &b.details {
        Details::Manifest(h) => (h.server_name.clone(), h.tool_version.clone()),
        Details::Charm => ("(charm backup)".into(), String::new()),
        Details::NotRead => (String::new(), String::new()),
        Details::Unreadable { kind, .. } if *kind == ErrorKind::WrongPassphrase => {
            ("(does not open: wrong passphrase?)".into(), String::new())
        }
        Details::Unreadable { .. } => ("(damaged, or not this backup)".into(), String::new()),
    };
    let mut kind = match (&b.details, b.kind()) {
        (Details::Charm, _) => "charm".to_string(),
        (_, Some(kind)) => kind.as_str().to_string(),
        _ => String::new(),
    };
    // Physical backups say whether they carry their base or replay the WAL onto an earlier one.
    if let Details::Manifest(h) = &b.details {
        if let Some(p) = &h.database.physical {
            let took = p.base == base_object(&p.restore_point);
            kind.push_str(if took { " +db base" } else { " +db WAL" });
        }
    }
    [
        b.backup_id.to_string(),
        b.last_modified.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        kind,
        human_bytes(b.added_bytes().unwrap_or(b.size)),
        b.restore_bytes().map(human_bytes).unwrap_or_default(),
        server,
        version,
    ]
}
