//! Synapse's `media_storage_providers`: places besides `media_store_path` that hold media.
//!
//! Synapse stores each new file in its providers too, and serves a file it lacks locally from
//! the first provider that has it. Offloading (`s3_media_upload upload --delete`) then leaves a
//! provider the only copy of much of the media, so a backup must read them there.
//!
//! Synapse looks a local file up in every provider, whatever `store_local` says (that setting
//! only decides where new files are written), and so does this tool.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde_norway::Value;

use super::config_files::{scalar_text, yaml11_bool, MergedConfig};
use crate::error::{Error, Result};

/// The S3 provider of the `synapse-s3-storage-provider` package.
pub const S3_MODULE: &str = "s3_storage_provider.S3StorageProviderBackend";
/// Synapse's own file-system provider, under the names Synapse accepts for it.
const FILE_MODULES: [&str; 3] = [
    "file_system",
    "synapse.media.storage_provider.FileStorageProviderBackend",
    "synapse.rest.media.v1.storage_provider.FileStorageProviderBackend",
];

/// One entry of `media_storage_providers`, in Synapse's order.
#[derive(Debug, Clone)]
pub struct MediaProvider {
    /// The module as written in the config.
    pub module: String,
    pub store_local: bool,
    pub kind: ProviderKind,
}

#[derive(Debug, Clone)]
pub enum ProviderKind {
    S3(S3Provider),
    /// A folder that mirrors media_store_path's layout.
    Directory(PathBuf),
    /// A module this tool cannot read: media only it holds cannot be backed up.
    Unknown,
}

/// The `config` of an S3 provider. Objects are named `prefix` + the path Synapse uses under
/// media_store_path (`local_content/ab/cd/rest`); `prefix` is prepended as it is, without a
/// separator, as the provider does.
#[derive(Clone)]
pub struct S3Provider {
    pub bucket: String,
    pub endpoint_url: Option<String>,
    pub region_name: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub prefix: String,
    pub storage_class: Option<String>,
}

// The secret key stays out of logs.
impl std::fmt::Debug for S3Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Provider")
            .field("bucket", &self.bucket)
            .field("endpoint_url", &self.endpoint_url)
            .field("region_name", &self.region_name)
            .field("access_key_id", &self.access_key_id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl MediaProvider {
    /// How the provider is named in messages and in the manifest: its module and where it
    /// keeps files, never a credential.
    pub fn describe(&self) -> String {
        match &self.kind {
            ProviderKind::S3(s3) => format!(
                "S3 provider s3://{}/{}{}",
                s3.bucket,
                s3.prefix,
                s3.endpoint_url
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
            ProviderKind::Directory(path) => format!("file provider {}", path.display()),
            ProviderKind::Unknown => format!("provider {}", self.module),
        }
    }

    /// Where the provider keeps files, as the manifest records it: `s3://bucket/prefix` or the
    /// folder. A restore matches it against the providers configured then.
    pub fn location(&self) -> String {
        match &self.kind {
            ProviderKind::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
            ProviderKind::Directory(path) => path.display().to_string(),
            ProviderKind::Unknown => self.module.clone(),
        }
    }
}

/// Reads `media_storage_providers` (and the older `backup_media_store_path`, which Synapse
/// turns into a file provider placed first), resolving folders against `working_dir`.
pub(super) fn media_providers(
    merged: &MergedConfig,
    working_dir: &Path,
) -> Result<Vec<MediaProvider>> {
    let origin = |key: &str| match merged.origin(key) {
        Some(file) => format!("{key} in {}", file.display()),
        None => key.to_string(),
    };
    let mut providers = Vec::new();
    if let Some(path) = merged.get("backup_media_store_path").and_then(scalar_text) {
        providers.push(MediaProvider {
            module: "backup_media_store_path".into(),
            store_local: true,
            kind: ProviderKind::Directory(working_dir.join(path)),
        });
    }
    let entries = match merged.get("media_storage_providers") {
        None | Some(Value::Null) => return Ok(providers),
        Some(Value::Sequence(entries)) => entries,
        Some(_) => {
            return Err(Error::config(format!(
                "{} is not a list",
                origin("media_storage_providers")
            )))
        }
    };
    for (index, entry) in entries.iter().enumerate() {
        let what = format!("{}, entry {}", origin("media_storage_providers"), index + 1);
        providers.push(provider(entry, working_dir, &what)?);
    }
    Ok(providers)
}

fn provider(entry: &Value, working_dir: &Path, what: &str) -> Result<MediaProvider> {
    let module = entry
        .get("module")
        .and_then(scalar_text)
        .ok_or_else(|| Error::config(format!("{what} names no module")))?;
    let store_local = entry
        .get("store_local")
        .and_then(yaml11_bool)
        .unwrap_or(false);
    let config = entry.get("config");
    let setting = |key: &str| config.and_then(|c| c.get(key)).and_then(scalar_text);
    let kind = if module == S3_MODULE {
        if setting("sse_customer_key").is_some() {
            return Err(Error::config(format!(
                "{what}: the S3 provider encrypts with a customer key (sse_customer_key), which this tool cannot read with; its media cannot be backed up"
            )));
        }
        let bucket = setting("bucket").filter(|b| !b.is_empty()).ok_or_else(|| {
            Error::config(format!(
                "{what}: the S3 provider names no bucket (config.bucket)"
            ))
        })?;
        ProviderKind::S3(S3Provider {
            bucket,
            endpoint_url: setting("endpoint_url").filter(|e| !e.is_empty()),
            region_name: setting("region_name").filter(|r| !r.is_empty()),
            access_key_id: setting("access_key_id"),
            secret_access_key: setting("secret_access_key").map(SecretString::from),
            prefix: setting("prefix").unwrap_or_default(),
            storage_class: setting("storage_class"),
        })
    } else if FILE_MODULES.contains(&module.as_str()) {
        let directory = setting("directory").ok_or_else(|| {
            Error::config(format!(
                "{what}: the file provider names no folder (config.directory)"
            ))
        })?;
        ProviderKind::Directory(working_dir.join(directory))
    } else {
        ProviderKind::Unknown
    };
    Ok(MediaProvider {
        module,
        store_local,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn parse(yaml: &str) -> Result<Vec<MediaProvider>> {
        let mut merged = MergedConfig::empty();
        merged.add(Path::new("/etc/hs.yaml"), yaml)?;
        media_providers(&merged, Path::new("/srv/synapse"))
    }

    #[test]
    fn the_s3_provider_is_read_with_its_settings() {
        let providers = parse(
            "media_storage_providers:\n\
             - module: s3_storage_provider.S3StorageProviderBackend\n  store_local: True\n  store_remote: True\n  store_synchronous: True\n  config:\n    bucket: media\n    endpoint_url: http://127.0.0.1:3900\n    region_name: garage\n    access_key_id: GK1\n    secret_access_key: s3cr3t\n    prefix: offload/\n    storage_class: STANDARD_IA\n",
        )
        .unwrap();
        assert_eq!(providers.len(), 1);
        assert!(providers[0].store_local);
        let ProviderKind::S3(s3) = &providers[0].kind else {
            panic!("{:?}", providers[0]);
        };
        assert_eq!(s3.bucket, "media");
        assert_eq!(s3.endpoint_url.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(s3.region_name.as_deref(), Some("garage"));
        assert_eq!(s3.access_key_id.as_deref(), Some("GK1"));
        assert_eq!(
            s3.secret_access_key.as_ref().map(|s| s.expose_secret()),
            Some("s3cr3t")
        );
        assert_eq!(s3.prefix, "offload/");
        assert_eq!(s3.storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(providers[0].location(), "s3://media/offload/");
        let shown = format!("{:?} {}", providers[0], providers[0].describe());
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn file_providers_under_every_name_and_the_old_setting() {
        let providers = parse(
            "backup_media_store_path: /mnt/backup-media\n\
             media_storage_providers:\n\
             - module: file_system\n  config:\n    directory: relative/dir\n\
             - module: synapse.rest.media.v1.storage_provider.FileStorageProviderBackend\n  store_local: yes\n  config: {directory: /abs}\n\
             - module: synapse.media.storage_provider.FileStorageProviderBackend\n  config: {directory: /new}\n",
        )
        .unwrap();
        let folders: Vec<String> = providers
            .iter()
            .map(|p| match &p.kind {
                ProviderKind::Directory(path) => path.display().to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            folders,
            [
                "/mnt/backup-media",
                "/srv/synapse/relative/dir",
                "/abs",
                "/new"
            ]
        );
        // Synapse's default for store_local is false.
        assert!(providers[0].store_local && !providers[1].store_local && providers[2].store_local);
    }

    #[test]
    fn unknown_modules_are_kept_and_bad_entries_named() {
        let providers =
            parse("media_storage_providers:\n- module: my_company.SwiftProvider\n  config: {}\n")
                .unwrap();
        assert!(matches!(providers[0].kind, ProviderKind::Unknown));
        assert_eq!(providers[0].describe(), "provider my_company.SwiftProvider");
        assert!(parse("server_name: x\n").unwrap().is_empty());

        let err = |yaml: &str| parse(yaml).unwrap_err().to_string();
        let no_bucket = err("media_storage_providers:\n- module: s3_storage_provider.S3StorageProviderBackend\n  config: {prefix: x}\n");
        assert!(
            no_bucket.contains("entry 1") && no_bucket.contains("config.bucket"),
            "{no_bucket}"
        );
        let no_dir = err("media_storage_providers:\n- module: file_system\n");
        assert!(no_dir.contains("config.directory"), "{no_dir}");
        let no_module = err("media_storage_providers:\n- config: {}\n");
        assert!(no_module.contains("names no module"), "{no_module}");
        let not_a_list = err("media_storage_providers: {module: x}\n");
        assert!(not_a_list.contains("not a list"), "{not_a_list}");
        let ssec = err("media_storage_providers:\n- module: s3_storage_provider.S3StorageProviderBackend\n  config: {bucket: b, sse_customer_key: k}\n");
        assert!(
            ssec.contains("sse_customer_key") && !ssec.contains(": k"),
            "{ssec}"
        );
    }
}
