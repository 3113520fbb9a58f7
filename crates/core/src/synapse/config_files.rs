//! Finding and merging Synapse's config files the way Synapse itself does.
//!
//! Synapse takes `--config-path` several times; a directory contributes its `*.yaml` files in
//! sorted order, and each file's top-level keys replace the same keys of the files before it
//! (`dict.update`). Each file is read with PyYAML's `safe_load`: anchors, aliases and merge keys
//! (`<<: *defaults`) apply, the standard `!!str`/`!!int`/… tags convert, any other tag is an
//! error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use crate::error::{Error, Result};

/// Every config file Synapse would read, their merged top-level keys, and which file set each.
#[derive(Clone)]
pub struct MergedConfig {
    pub files: Vec<PathBuf>,
    keys: BTreeMap<String, (Value, usize)>,
}

// Keys only: the values hold secrets (macaroon_secret_key, database passwords).
impl std::fmt::Debug for MergedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergedConfig")
            .field("files", &self.files)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MergedConfig {
    /// No file read yet.
    pub fn empty() -> MergedConfig {
        MergedConfig {
            files: Vec::new(),
            keys: BTreeMap::new(),
        }
    }

    /// Reads the files `config_paths` (files or directories) name, as Synapse does.
    pub fn load(config_paths: &[PathBuf]) -> Result<MergedConfig> {
        let files = find_config_files(config_paths)?;
        let mut merged = MergedConfig::empty();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::config(format!(
                    "cannot read Synapse config {}: {e}; [synapse] config lists the files and folders Synapse is started with (--config-path)",
                    path.display()
                ))
            })?;
            merged.add(&path, &text)?;
        }
        Ok(merged)
    }

    /// Adds one file's text, its top-level keys replacing those read before.
    pub fn add(&mut self, path: &Path, text: &str) -> Result<()> {
        let index = self.files.len();
        self.files.push(path.to_path_buf());
        let value = parse_like_pyyaml(text)
            .map_err(|e| Error::config(format!("{}: not valid YAML: {e}", path.display())))?;
        match value {
            Value::Mapping(mapping) => {
                for (key, value) in mapping {
                    let key = match key {
                        Value::String(s) => s,
                        other => scalar_text(&other).unwrap_or_default(),
                    };
                    self.keys.insert(key, (value, index));
                }
            }
            // Synapse prints "IGNORING" for such a file and goes on; so do we, more loudly.
            _ => tracing::warn!(
                "{} is empty or not a key-value map; Synapse ignores it",
                path.display()
            ),
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).map(|(value, _)| value)
    }

    /// The file that set `key` last, the one whose value Synapse uses.
    pub fn origin(&self, key: &str) -> Option<&Path> {
        self.keys
            .get(key)
            .map(|(_, index)| self.files[*index].as_path())
    }
}

/// Synapse's `find_config_files`: a directory gives its `*.yaml` regular files, sorted by name
/// (sub-folders and other files are ignored, as Synapse does, with a note); anything else is
/// taken as a file.
pub fn find_config_files(config_paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for config_path in config_paths {
        if !config_path.is_dir() {
            if !config_path.exists() {
                return Err(Error::config(format!(
                    "the Synapse config path {} does not exist; [synapse] config must list what Synapse is started with (--config-path)",
                    config_path.display()
                )));
            }
            files.push(config_path.clone());
            continue;
        }
        let entries = std::fs::read_dir(config_path)
            .map_err(|e| Error::io("list the Synapse config folder", config_path, e))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io("list the Synapse config folder", config_path, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if !path.is_file() {
                tracing::info!("{} is not a file; Synapse ignores it", path.display());
            } else if !name.ends_with(".yaml") {
                tracing::info!(
                    "{} does not end in .yaml; Synapse ignores it",
                    path.display()
                );
            } else {
                found.push(path);
            }
        }
        found.sort();
        files.extend(found);
    }
    if files.is_empty() {
        return Err(Error::config(format!(
            "no Synapse config file found in {}; [synapse] config must name homeserver.yaml",
            config_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(files)
}

/// Parses YAML as PyYAML's `safe_load` would, for the values a config holds.
fn parse_like_pyyaml(text: &str) -> std::result::Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    let LastWins(mut value) = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    // One pass merges one level: a merged map may bring its own `<<` (an anchor that merges
    // another), which PyYAML flattens too.
    for _ in 0..MAX_MERGE_DEPTH {
        value.apply_merge().map_err(|e| e.to_string())?;
        if !has_merge_key(&value) {
            return resolve_tags(value);
        }
    }
    Err(format!(
        "merge keys (<<) nested more than {MAX_MERGE_DEPTH} deep"
    ))
}

const MAX_MERGE_DEPTH: usize = 16;

fn has_merge_key(value: &Value) -> bool {
    match value {
        Value::Mapping(mapping) => {
            mapping.contains_key("<<") || mapping.values().any(has_merge_key)
        }
        Value::Sequence(items) => items.iter().any(has_merge_key),
        Value::Tagged(tagged) => has_merge_key(&tagged.value),
        _ => false,
    }
}

/// A YAML value read as PyYAML reads it where serde_norway's own `Value` differs: a key given
/// twice in a mapping keeps its last value (admins append overrides to homeserver.yaml)
/// instead of failing the whole file.
struct LastWins(Value);

impl<'de> serde::Deserialize<'de> for LastWins {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LastWinsVisitor).map(LastWins)
    }
}

struct LastWinsVisitor;

impl<'de> serde::de::Visitor<'de> for LastWinsVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Number(i.into()))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::Number(u.into()))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Number(f.into()))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(LastWinsVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(LastWins(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut mapping = Mapping::new();
        while let Some((LastWins(key), LastWins(value))) = map.next_entry()? {
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use serde::de::VariantAccess;
        let (tag, contents) = data.variant::<String>()?;
        let LastWins(value) = contents.newtype_variant()?;
        Ok(Value::Tagged(Box::new(serde_norway::value::TaggedValue {
            tag: serde_norway::value::Tag::new(tag),
            value,
        })))
    }
}

/// Applies the standard tags PyYAML's safe loader knows; refuses any other, as it does.
fn resolve_tags(value: Value) -> std::result::Result<Value, String> {
    Ok(match value {
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag
                .strip_prefix("tag:yaml.org,2002:")
                .or_else(|| tag.strip_prefix("!!"))
                .unwrap_or(&tag)
                .to_string();
            let inner = resolve_tags(tagged.value)?;
            let text = scalar_text(&inner);
            // Names the tag, never the value: it may be a secret.
            let bad = || format!("a value tagged {tag} cannot be read as {name}");
            match name.as_str() {
                "str" => Value::String(text.ok_or_else(bad)?),
                "int" | "float" => {
                    let text = text.ok_or_else(bad)?;
                    serde_norway::from_str::<Value>(&text)
                        .ok()
                        .filter(|v| v.is_number())
                        .ok_or_else(bad)?
                }
                "bool" => Value::Bool(yaml11_bool(&inner).ok_or_else(bad)?),
                "null" => Value::Null,
                "map" | "seq" | "binary" | "timestamp" | "set" | "omap" | "pairs" => inner,
                _ => {
                    return Err(format!(
                        "the tag {tag} is not one Synapse's YAML loader (PyYAML safe_load) accepts"
                    ))
                }
            }
        }
        Value::Mapping(mapping) => {
            let mut out = Mapping::new();
            for (k, v) in mapping {
                out.insert(resolve_tags(k)?, resolve_tags(v)?);
            }
            Value::Mapping(out)
        }
        Value::Sequence(items) => Value::Sequence(
            items
                .into_iter()
                .map(resolve_tags)
                .collect::<std::result::Result<_, _>>()?,
        ),
        other => other,
    })
}

/// A scalar as the text it was written as (numbers and booleans included).
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A boolean as YAML 1.1 (PyYAML) reads one: `yes`/`no`/`on`/`off` too.
pub(super) fn yaml11_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "yes" | "y" | "true" | "on" => Some(true),
            "no" | "n" | "false" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(files: &[(&str, &str)]) -> MergedConfig {
        let mut merged = MergedConfig::empty();
        for (path, text) in files {
            merged.add(Path::new(path), text).unwrap();
        }
        merged
    }

    #[test]
    fn later_files_replace_whole_top_level_keys() {
        let m = merged(&[
            (
                "/etc/hs.yaml",
                "media_store_path: /a\ndatabase:\n  name: sqlite3\n  args: {database: /x.db}\n",
            ),
            (
                "/etc/conf.d/db.yaml",
                "database:\n  name: psycopg2\nserver_name: b.c\n",
            ),
            ("/etc/conf.d/empty.yaml", ""),
        ]);
        assert_eq!(m.get("media_store_path").unwrap(), "/a");
        assert_eq!(
            m.origin("media_store_path"),
            Some(Path::new("/etc/hs.yaml"))
        );
        // Not a deep merge: the args of the first file's database are gone.
        assert!(m.get("database").unwrap().get("args").is_none());
        assert_eq!(m.origin("database"), Some(Path::new("/etc/conf.d/db.yaml")));
        assert_eq!(m.files.len(), 3);
    }

    #[test]
    fn merge_keys_anchors_and_standard_tags_apply() {
        let m = merged(&[(
            "/hs.yaml",
            "defaults: &db\n  name: sqlite3\n  args:\n    database: /from/anchor.db\n\
             database:\n  <<: *db\n  txn_limit: 10\n\
             server_name: !!str 1234\nport: !!int \"8008\"\n",
        )]);
        let db = m.get("database").unwrap();
        assert_eq!(db.get("name").unwrap(), "sqlite3");
        assert_eq!(db["args"]["database"], "/from/anchor.db");
        assert_eq!(m.get("server_name").unwrap(), "1234");
        assert_eq!(m.get("port").unwrap().as_u64(), Some(8008));
    }

    #[test]
    fn unknown_tags_are_refused_like_safe_load() {
        let mut m = merged(&[]);
        let err = m
            .add(
                Path::new("/hs.yaml"),
                "server_name: !python/name:os.system x\n",
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/hs.yaml") && err.contains("safe_load"),
            "{err}"
        );
    }

    #[test]
    fn a_folder_gives_its_yaml_files_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir_all(conf_d.join("sub")).unwrap();
        for name in ["b.yaml", "a.yaml", "c.yml", "README"] {
            std::fs::write(conf_d.join(name), "x: 1\n").unwrap();
        }
        let main = dir.path().join("homeserver.yaml");
        std::fs::write(&main, "x: 0\n").unwrap();
        let files = find_config_files(&[main.clone(), conf_d.clone()]).unwrap();
        assert_eq!(
            files,
            vec![main, conf_d.join("a.yaml"), conf_d.join("b.yaml")]
        );
        let err = find_config_files(&[dir.path().join("nope.yaml")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.yaml"), "{err}");
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value_and_merges_chain() {
        let m = merged(&[(
            "/hs.yaml",
            "media_store_path: /first\nbase: &a {name: sqlite3, args: {database: /a.db}}\n\
             mid: &b {<<: *a, cp_min: 1}\ndatabase: {<<: *b}\nmedia_store_path: /last\n",
        )]);
        assert_eq!(m.get("media_store_path").unwrap(), "/last");
        let db = m.get("database").unwrap();
        assert_eq!(db["args"]["database"], "/a.db");
        assert_eq!(db["cp_min"].as_u64(), Some(1));
        assert!(db.get("<<").is_none());
        assert!(!format!("{m:?}").contains("/a.db"), "Debug shows keys only");
    }
}
