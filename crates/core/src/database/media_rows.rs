//! The local media Synapse's database says exist: one path under media_store_path per
//! `local_media_repository` row and per thumbnail row, laid out as Synapse's `filepath.py`
//! lays them out. URL-preview media (`url_cache` set) live in the preview cache, and a row
//! without a length is an upload still pending (no file yet): neither is listed.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::postgres::Postgres;
use crate::error::{DatabaseTool, Error, Result};

/// A file a media row names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    pub media_id: String,
    /// The file's path relative to media_store_path.
    pub path: String,
}

const CONTENT_ROWS: &str = "SELECT media_id FROM local_media_repository WHERE url_cache IS NULL AND media_length IS NOT NULL";
const THUMBNAIL_ROWS: &str = "SELECT t.media_id, t.thumbnail_width, t.thumbnail_height, t.thumbnail_type, t.thumbnail_method FROM local_media_repository_thumbnails t JOIN local_media_repository m ON m.media_id = t.media_id WHERE m.url_cache IS NULL";

/// The rows of the SQLite database at `path` (the backup's own snapshot, so that they match
/// the database the backup holds). The second value counts rows whose id cannot be a path.
pub fn sqlite_media_rows(path: &Path) -> Result<(Vec<MediaRow>, usize)> {
    let fail = sqlite_failure(path, "list");
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
    let mut rows = Rows::default();
    rows.sqlite_content(&db, CONTENT_ROWS).map_err(fail)?;
    rows.sqlite_thumbnails(&db, THUMBNAIL_ROWS).map_err(fail)?;
    Ok((rows.found, rows.unusable))
}

/// The rows of the PostgreSQL database, read with `psql`.
pub fn postgres_media_rows(postgres: &Postgres) -> Result<(Vec<MediaRow>, usize)> {
    let mut rows = Rows::default();
    rows.psql_content(&postgres.rows(CONTENT_ROWS)?);
    rows.psql_thumbnails(&postgres.rows(THUMBNAIL_ROWS)?);
    Ok((rows.found, rows.unusable))
}

const CONTENT_COUNT: &str = "SELECT count(*) FROM local_media_repository WHERE url_cache IS NULL AND media_length IS NOT NULL";

/// A random `n` of the content rows (`ORDER BY random()`, in SQLite and PostgreSQL alike).
fn content_sample_sql(n: usize) -> String {
    format!("{CONTENT_ROWS} ORDER BY random() LIMIT {n}")
}

/// The thumbnail rows of the media `rows` found.
fn thumbnails_of_sql(rows: &[MediaRow]) -> String {
    let quoted: Vec<String> = rows
        .iter()
        .map(|row| format!("'{}'", row.media_id.replace('\'', "''")))
        .collect();
    format!("{THUMBNAIL_ROWS} AND t.media_id IN ({})", quoted.join(", "))
}

/// A random `n` of the local media rows of the SQLite database at `path`, with their
/// thumbnail rows, and how many content rows it has in all: what a drill samples, without
/// holding every row.
pub fn sqlite_media_sample(path: &Path, n: usize) -> Result<(Vec<MediaRow>, u64)> {
    let fail = sqlite_failure(path, "sample");
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
    let total: i64 = db
        .query_row(CONTENT_COUNT, [], |row| row.get(0))
        .map_err(fail)?;
    let mut rows = Rows::default();
    rows.sqlite_content(&db, &content_sample_sql(n))
        .map_err(fail)?;
    if !rows.found.is_empty() {
        let sql = thumbnails_of_sql(&rows.found);
        rows.sqlite_thumbnails(&db, &sql).map_err(fail)?;
    }
    Ok((rows.found, total.max(0) as u64))
}

/// The same of a PostgreSQL database, read with `psql`.
pub fn postgres_media_sample(postgres: &Postgres, n: usize) -> Result<(Vec<MediaRow>, u64)> {
    let total = postgres.rows(CONTENT_COUNT)?;
    let total: u64 = total.trim().parse().map_err(|_| {
        Error::database(
            DatabaseTool::Psql,
            format!("unexpected media row count {total:?}"),
        )
    })?;
    let mut rows = Rows::default();
    rows.psql_content(&postgres.rows(&content_sample_sql(n))?);
    if !rows.found.is_empty() {
        let sql = thumbnails_of_sql(&rows.found);
        rows.psql_thumbnails(&postgres.rows(&sql)?);
    }
    Ok((rows.found, total))
}

fn sqlite_failure<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl Fn(rusqlite::Error) -> Error + Copy + 'a {
    move |e| {
        Error::database(
            DatabaseTool::Sqlite,
            format!("cannot {what} the media rows of {}: {e}", path.display()),
        )
    }
}

#[derive(Default)]
struct Rows {
    found: Vec<MediaRow>,
    unusable: usize,
}

impl Rows {
    fn sqlite_content(&mut self, db: &Connection, sql: &str) -> rusqlite::Result<()> {
        let mut statement = db.prepare(sql)?;
        let mut found = statement.query([])?;
        while let Some(row) = found.next()? {
            self.content(row.get(0)?);
        }
        Ok(())
    }

    fn sqlite_thumbnails(&mut self, db: &Connection, sql: &str) -> rusqlite::Result<()> {
        let mut statement = db.prepare(sql)?;
        let mut found = statement.query([])?;
        while let Some(row) = found.next()? {
            self.thumbnail(
                row.get(0)?,
                row.get::<_, i64>(1)?.to_string(),
                row.get::<_, i64>(2)?.to_string(),
                &row.get::<_, String>(3)?,
                &row.get::<_, String>(4)?,
            );
        }
        Ok(())
    }

    /// `psql`'s unaligned output of the content query: one media id a line.
    fn psql_content(&mut self, text: &str) {
        for line in text.lines() {
            self.content(line.to_string());
        }
    }

    /// `psql`'s output of a thumbnail query, fields separated by tabs.
    fn psql_thumbnails(&mut self, text: &str) {
        for line in text.lines() {
            match line.split('\t').collect::<Vec<_>>().as_slice() {
                [id, width, height, kind, method] => self.thumbnail(
                    id.to_string(),
                    width.to_string(),
                    height.to_string(),
                    kind,
                    method,
                ),
                _ => self.unusable += 1,
            }
        }
    }

    fn content(&mut self, media_id: String) {
        match content_path(&media_id) {
            Some(path) => self.found.push(MediaRow { media_id, path }),
            None => self.unusable += 1,
        }
    }

    fn thumbnail(
        &mut self,
        media_id: String,
        width: String,
        height: String,
        kind: &str,
        method: &str,
    ) {
        let Some(folder) = media_folder("local_thumbnails", &media_id) else {
            self.unusable += 1;
            return;
        };
        // Synapse's `local_media_thumbnail_rel`: "{width}-{height}-{top}-{sub}-{method}".
        let Some((top, sub)) = kind.split_once('/') else {
            self.unusable += 1;
            return;
        };
        let name = format!("{width}-{height}-{top}-{sub}-{method}");
        if !safe_component(&name) {
            self.unusable += 1;
            return;
        }
        self.found.push(MediaRow {
            path: format!("{folder}/{name}"),
            media_id,
        });
    }
}

/// `local_content/ab/cd/rest` for media id `abcdrest`.
pub fn content_path(media_id: &str) -> Option<String> {
    media_folder("local_content", media_id)
}

fn media_folder(top: &str, media_id: &str) -> Option<String> {
    if media_id.len() < 5 || !media_id.is_ascii() || !safe_component(media_id) {
        return None;
    }
    Some(format!(
        "{top}/{}/{}/{}",
        &media_id[0..2],
        &media_id[2..4],
        &media_id[4..]
    ))
}

/// What Synapse's `_validate_path_component` accepts, and nothing that could leave the folder.
fn safe_component(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_map_to_synapse_paths_and_odd_ids_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hs.db");
        let db = Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE local_media_repository (media_id TEXT, media_length INTEGER, url_cache TEXT);
             CREATE TABLE local_media_repository_thumbnails (media_id TEXT, thumbnail_width INTEGER, thumbnail_height INTEGER, thumbnail_type TEXT, thumbnail_method TEXT, thumbnail_length INTEGER);
             INSERT INTO local_media_repository VALUES ('abcdEFGH', 10, NULL), ('pending1', NULL, NULL), ('urlcache', 5, 'https://x'), ('../..x', 1, NULL);
             INSERT INTO local_media_repository_thumbnails VALUES ('abcdEFGH', 32, 24, 'image/jpeg', 'scale', 3), ('urlcache', 1, 1, 'image/png', 'crop', 1);",
        )
        .unwrap();
        drop(db);
        let (rows, unusable) = sqlite_media_rows(&path).unwrap();
        let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "local_content/ab/cd/EFGH",
                "local_thumbnails/ab/cd/EFGH/32-24-image-jpeg-scale"
            ]
        );
        assert_eq!(rows[1].media_id, "abcdEFGH");
        assert_eq!(unusable, 1);

        // A sample of one: the one usable content row, its thumbnail, of two content rows.
        let (sample, total) = sqlite_media_sample(&path, 5).unwrap();
        assert_eq!(total, 2);
        let paths: Vec<&str> = sample.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "local_content/ab/cd/EFGH",
                "local_thumbnails/ab/cd/EFGH/32-24-image-jpeg-scale"
            ]
        );
    }
}
