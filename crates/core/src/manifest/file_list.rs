//! The file list, [`FILES_MEMBER`], written and read one entry at a time: a backup of millions
//! of files never holds its list in memory, whether it is being made, verified or restored.

use std::fmt;
use std::io::{Read, Write};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{check_version, FileEntry, VolumeNames, FILES_MEMBER, FORMAT_VERSION};
use crate::archive::member_path::check_member_path;
use crate::error::{CorruptKind, Error, Result};

/// How many files a file list holds, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListTotals {
    pub files: usize,
    pub file_bytes: u64,
}

/// Writes a [`FileList`] one entry at a time, byte for byte as `serde_json::to_writer` writes
/// the whole list, so that a backup of millions of files never holds its list in memory.
pub struct FileListWriter<W: Write> {
    out: W,
    totals: ListTotals,
}

impl<W: Write> FileListWriter<W> {
    pub fn new(mut out: W, backup_id: &str) -> std::io::Result<Self> {
        write!(
            out,
            "{{\"format_version\":{},\"backup_id\":{},\"files\":[",
            FORMAT_VERSION,
            serde_json::to_string(backup_id)?
        )?;
        Ok(FileListWriter {
            out,
            totals: ListTotals::default(),
        })
    }

    pub fn push(&mut self, entry: &FileEntry) -> std::io::Result<()> {
        if self.totals.files > 0 {
            self.out.write_all(b",")?;
        }
        serde_json::to_writer(&mut self.out, entry)?;
        self.totals.files += 1;
        self.totals.file_bytes += entry.size;
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<(W, ListTotals)> {
        self.out.write_all(b"]}")?;
        self.out.flush()?;
        Ok((self.out, self.totals))
    }
}

/// Reads a file list from `reader`, handing each entry (its path already checked) to `visit`
/// as it is parsed, and returns the list's backup id and entry count.
///
/// Refuses what [`FileList`](super::FileList) deserialization refuses (bad JSON, missing or
/// repeated fields, trailing data), a format version from the future, and unsafe paths.
pub fn read_file_list<R: Read>(
    id: &str,
    reader: R,
    mut visit: impl FnMut(FileEntry),
) -> Result<(String, usize)> {
    let mut unsafe_path: Option<String> = None;
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let parsed = ListSeed {
        visit: &mut visit,
        unsafe_path: &mut unsafe_path,
    }
    .deserialize(&mut deserializer)
    .and_then(|parsed| deserializer.end().map(|()| parsed));
    if let Some(why) = unsafe_path {
        return Err(Error::corrupt(
            id,
            CorruptKind::Malformed,
            format!("{FILES_MEMBER}: {why}"),
        ));
    }
    let (version, backup_id, count) = parsed.map_err(|e| {
        Error::corrupt(
            id,
            CorruptKind::Malformed,
            format!("{FILES_MEMBER} is not valid: {e}"),
        )
    })?;
    check_version(id, version)?;
    Ok((backup_id, count))
}

struct ListSeed<'a, F> {
    visit: &'a mut F,
    unsafe_path: &'a mut Option<String>,
}

impl<'de, F: FnMut(FileEntry)> DeserializeSeed<'de> for ListSeed<'_, F> {
    type Value = (u32, String, usize);

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        // As a derived struct: an object, or (serde accepts it) an array of the three fields.
        deserializer.deserialize_struct("FileList", &["format_version", "backup_id", "files"], self)
    }
}

impl<'de, F: FnMut(FileEntry)> Visitor<'de> for ListSeed<'_, F> {
    type Value = (u32, String, usize);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a file list object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let version = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let backup_id = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        let count = seq
            .next_element_seed(EntriesSeed {
                visit: &mut *self.visit,
                unsafe_path: &mut *self.unsafe_path,
                names: VolumeNames::default(),
            })?
            .ok_or_else(|| de::Error::invalid_length(2, &self))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(4, &self));
        }
        Ok((version, backup_id, count))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut version: Option<u32> = None;
        let mut backup_id: Option<String> = None;
        let mut count: Option<usize> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format_version" if version.is_none() => version = Some(map.next_value()?),
                "backup_id" if backup_id.is_none() => backup_id = Some(map.next_value()?),
                "files" if count.is_none() => {
                    count = Some(map.next_value_seed(EntriesSeed {
                        visit: &mut *self.visit,
                        unsafe_path: &mut *self.unsafe_path,
                        names: VolumeNames::default(),
                    })?)
                }
                "format_version" | "backup_id" | "files" => {
                    return Err(de::Error::custom(format!("duplicate field `{key}`")))
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((
            version.ok_or_else(|| de::Error::missing_field("format_version"))?,
            backup_id.ok_or_else(|| de::Error::missing_field("backup_id"))?,
            count.ok_or_else(|| de::Error::missing_field("files"))?,
        ))
    }
}

struct EntriesSeed<'a, F> {
    visit: &'a mut F,
    unsafe_path: &'a mut Option<String>,
    names: VolumeNames,
}

impl<'de, F: FnMut(FileEntry)> DeserializeSeed<'de> for EntriesSeed<'_, F> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(FileEntry)> Visitor<'de> for EntriesSeed<'_, F> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of files")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while let Some(entry) = seq.next_element::<FileEntry>()? {
            if let Err(why) = check_member_path(&entry.path) {
                // Kept aside so the error keeps its own words rather than serde's.
                *self.unsafe_path = Some(why.to_string());
                return Err(de::Error::custom("unsafe path"));
            }
            let mut entry = entry;
            self.names.share(&mut entry.storage);
            (self.visit)(entry);
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::manifest::{FileList, Role, Storage};

    #[test]
    fn the_streamed_file_list_is_what_serde_writes() {
        let entry = |path: &str, size| FileEntry {
            role: Role::Media,
            path: path.into(),
            size,
            mode: 0o644,
            mtime: 1_767_268_800,
            sha256: crate::manifest::Sha256Digest::from_hex(&"ab".repeat(32)).unwrap(),
            mtime_nanos: None,
            storage: Storage::Inline,
            provider: None,
        };
        for files in [
            vec![],
            vec![entry("media/a", 1)],
            vec![entry("media/\"q\"", 2), entry("media/é", 3)],
        ] {
            let list = FileList {
                format_version: FORMAT_VERSION,
                backup_id: "backup-20260101120000000000".into(),
                files: files.clone(),
            };
            let mut writer = FileListWriter::new(Vec::new(), &list.backup_id).unwrap();
            for file in &files {
                writer.push(file).unwrap();
            }
            let (bytes, totals) = writer.finish().unwrap();
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                serde_json::to_string(&list).unwrap()
            );
            assert_eq!(totals.files, files.len());
            assert_eq!(totals.file_bytes, files.iter().map(|f| f.size).sum::<u64>());
        }
    }

    fn list_json(files: &[FileEntry]) -> String {
        serde_json::to_string(&FileList {
            format_version: FORMAT_VERSION,
            backup_id: "backup-20260101120000000000".into(),
            files: files.to_vec(),
        })
        .unwrap()
    }

    fn an_entry(path: &str) -> FileEntry {
        FileEntry {
            role: Role::Media,
            path: path.into(),
            size: 5,
            mode: 0o600,
            mtime: 0,
            sha256: crate::manifest::Sha256Digest::from_hex(&"00".repeat(32)).unwrap(),
            mtime_nanos: None,
            storage: Storage::Inline,
            provider: None,
        }
    }

    #[test]
    fn entries_are_handed_over_one_by_one() {
        let files = [an_entry("media/a"), an_entry("media/b")];
        let mut seen = Vec::new();
        let (backup_id, count) =
            read_file_list("t", list_json(&files).as_bytes(), |e| seen.push(e)).unwrap();
        assert_eq!(backup_id, "backup-20260101120000000000");
        assert_eq!(count, 2);
        assert_eq!(seen, files);
    }

    /// Found by the `manifest` fuzz target: serde accepts a struct written as an array.
    #[test]
    fn the_array_form_serde_accepts_is_accepted() {
        let array = r#"[1,"",[]]"#;
        let whole = FileList::from_json("t", array.as_bytes()).unwrap();
        let (backup_id, count) = read_file_list("t", array.as_bytes(), |_| {}).unwrap();
        assert_eq!((backup_id, count), (whole.backup_id, whole.files.len()));
        for refused in [r#"[1,""]"#, r#"[1,"",[],2]"#] {
            assert!(
                FileList::from_json("t", refused.as_bytes()).is_err(),
                "{refused}"
            );
            assert!(
                read_file_list("t", refused.as_bytes(), |_| {}).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn what_the_whole_list_parser_refuses_is_refused() {
        let good = list_json(&[an_entry("media/a")]);
        let refused = [
            ("not json", "not json".to_string()),
            ("trailing data", format!("{good} {{}}")),
            (
                "missing files",
                r#"{"format_version":1,"backup_id":"b"}"#.to_string(),
            ),
            (
                "repeated files",
                r#"{"format_version":1,"backup_id":"b","files":[],"files":[]}"#.to_string(),
            ),
            ("unsafe path", list_json(&[an_entry("../etc/passwd")])),
        ];
        for (what, json) in refused {
            let err = read_file_list("t", json.as_bytes(), |_| {}).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
        }
        let future = good.replace(
            &format!(r#""format_version":{FORMAT_VERSION}"#),
            r#""format_version":99"#,
        );
        let err = read_file_list("t", future.as_bytes(), |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
        let err =
            read_file_list("t", list_json(&[an_entry("/abs")]).as_bytes(), |_| {}).unwrap_err();
        assert!(err.to_string().contains(FILES_MEMBER), "{err}");
    }
}
