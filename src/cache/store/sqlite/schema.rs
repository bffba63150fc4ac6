//! The cache's tables in the shared file, and their migrations.

use http::{HeaderMap, HeaderName, HeaderValue};
use rusqlite::{Connection, params};

use crate::store::codec;
use crate::store::sqlite::schema::Component;

/// The cache's tables in the shared file.
pub(crate) const CACHE: Component = Component {
    name: "cache",
    migrations: &[
        // 1: one row per entry (or `Vary` index); the body last, so the other columns are read
        // without walking its overflow pages.
        "CREATE TABLE cache_entries (
             key         BLOB PRIMARY KEY NOT NULL,
             url         TEXT NOT NULL,
             status      INTEGER NOT NULL,
             version     INTEGER NOT NULL,
             headers     BLOB NOT NULL,
             vary        TEXT NOT NULL,
             stored_at   INTEGER NOT NULL,
             age_ms      INTEGER NOT NULL,
             fresh_until INTEGER NOT NULL,
             expires_at  INTEGER NOT NULL,
             sliding_ms  INTEGER,
             size        INTEGER NOT NULL,
             body        BLOB NOT NULL
         ) STRICT;
         CREATE INDEX cache_entries_by_expiry ON cache_entries (expires_at);
         CREATE INDEX cache_entries_by_url ON cache_entries (url);",
        // 2: `headers` in the byte form every store shares (`crate::store::codec`) instead of
        // the cache's own; the rows are re-encoded by `reencode_headers`, a Rust step.
        "-- headers re-encoded in Rust",
    ],
};

/// Rows [`reencode_headers`] reads at a time: the step's memory stays bounded by one batch
/// of headers however large the cache is.
const BATCH: i64 = 512;

/// Migration step 2: re-encodes the `headers` of every row from the version 1 form
/// ([`decode_v1_headers`]) into the shared one ([`codec::encode_headers`]). A row whose headers
/// do not decode is deleted: it was a miss already. Runs in the migration's transaction, so the
/// file moves to version 2 with every row converted, or not at all. Reads the rows in batches
/// of [`BATCH`] by `rowid`, so a large cache is not held in memory at once.
pub(crate) fn reencode_headers(conn: &Connection) -> rusqlite::Result<()> {
    let mut select = conn.prepare(
        "SELECT rowid, headers FROM cache_entries WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
    )?;
    let mut update = conn.prepare("UPDATE cache_entries SET headers = ?2 WHERE rowid = ?1")?;
    let mut delete = conn.prepare("DELETE FROM cache_entries WHERE rowid = ?1")?;
    let mut dropped = 0u64;
    let mut after = i64::MIN;
    loop {
        let rows = select
            .query_map(params![after, BATCH], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let Some(&(last, _)) = rows.last() else {
            break;
        };
        after = last;
        for (rowid, old) in rows {
            match decode_v1_headers(&old) {
                Some(headers) => {
                    update.execute(params![rowid, codec::encode_headers(&headers)])?;
                }
                None => {
                    delete.execute([rowid])?;
                    dropped += 1;
                }
            }
        }
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "cache entries with undecodable headers dropped by the migration"
        );
    }
    Ok(())
}

/// The headers as schema version 1 wrote them: `count u32, (name len u16, name, value len u32,
/// value)*`, little-endian; `None` for damaged bytes.
pub(super) fn decode_v1_headers(mut bytes: &[u8]) -> Option<HeaderMap> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let part = bytes.get(..n)?;
        *bytes = bytes.get(n..)?;
        Some(part)
    }
    fn number<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
        take(bytes, N)?.try_into().ok()
    }
    let count = u32::from_le_bytes(number(&mut bytes)?);
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let n = u16::from_le_bytes(number(&mut bytes)?);
        let name = HeaderName::from_bytes(take(&mut bytes, usize::from(n))?).ok()?;
        let n = usize::try_from(u32::from_le_bytes(number(&mut bytes)?)).ok()?;
        let value = HeaderValue::from_bytes(take(&mut bytes, n)?).ok()?;
        headers.try_append(name, value).ok()?;
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 1's encoder, as it was.
    fn encode_v1(headers: &HeaderMap) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
        for (name, value) in headers {
            out.extend_from_slice(&(name.as_str().len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    fn headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert("x-empty", HeaderValue::from_static(""));
        headers
    }

    #[test]
    fn version_1_headers_decode_and_damaged_ones_do_not() {
        let encoded = encode_v1(&headers());
        assert_eq!(decode_v1_headers(&encoded), Some(headers()));
        assert_eq!(
            decode_v1_headers(&encode_v1(&HeaderMap::new())),
            Some(HeaderMap::new())
        );
        for cut in 0..encoded.len() {
            assert_eq!(decode_v1_headers(&encoded[..cut]), None, "cut at {cut}");
        }
        // A count far past the bytes, and one past what a map holds.
        assert_eq!(decode_v1_headers(&u32::MAX.to_le_bytes()), None);
        let mut many = 40_000u32.to_le_bytes().to_vec();
        for i in 0..40_000 {
            let name = format!("x-{i}");
            many.extend_from_slice(&(name.len() as u16).to_le_bytes());
            many.extend_from_slice(name.as_bytes());
            many.extend_from_slice(&0u32.to_le_bytes());
        }
        assert!(decode_v1_headers(&many).is_none());
    }

    #[test]
    fn the_step_converts_every_row_and_drops_the_damaged() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CACHE.migrations[0]).unwrap();
        let insert = |key: u8, headers: Vec<u8>| {
            conn.execute(
                "INSERT INTO cache_entries VALUES (?1, 'u', 200, 11, ?2, '', 0, 0, 0, 0, NULL, 0, x'')",
                params![vec![key], headers],
            )
            .unwrap();
        };
        insert(1, encode_v1(&headers()));
        insert(2, encode_v1(&HeaderMap::new()));
        insert(3, b"damaged".to_vec());
        conn.execute_batch(CACHE.migrations[1]).unwrap();
        reencode_headers(&conn).unwrap();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = conn
            .prepare("SELECT key, headers FROM cache_entries ORDER BY key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(codec::decode_headers(&rows[0].1), Some(headers()));
        assert_eq!(codec::decode_headers(&rows[1].1), Some(HeaderMap::new()));
    }

    #[test]
    fn the_step_converts_rows_past_one_batch() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CACHE.migrations[0]).unwrap();
        let rows = 3 * BATCH + 7;
        for n in 0..rows {
            // Every tenth row damaged, spread over the batches.
            let headers = if n % 10 == 3 {
                b"damaged".to_vec()
            } else {
                encode_v1(&headers())
            };
            conn.execute(
                "INSERT INTO cache_entries VALUES (?1, 'u', 200, 11, ?2, '', 0, 0, 0, 0, NULL, 0, x'')",
                params![n.to_be_bytes().to_vec(), headers],
            )
            .unwrap();
        }
        reencode_headers(&conn).unwrap();
        let kept: Vec<Vec<u8>> = conn
            .prepare("SELECT headers FROM cache_entries")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let damaged = (0..rows).filter(|n| n % 10 == 3).count();
        assert_eq!(kept.len(), rows as usize - damaged);
        for row in kept {
            assert_eq!(codec::decode_headers(&row), Some(headers()));
        }
    }

    /// An old process still running on a migrated file writes version 1 headers; the shared
    /// decoder must never read them as some other headers. Version 1 starts with the field
    /// count, little-endian, where the shared form has a big-endian name length: any count of
    /// 1 to 32,768 reads as a name of 65,536 bytes or more, longer than a header name can be,
    /// and a count of 0 as an empty name. So every version 1 form is `None`, however large.
    #[test]
    fn version_1_headers_never_decode_as_the_shared_form() {
        for count in [0usize, 1, 2, 255, 256, 257, 512, 1000, 4096] {
            let mut headers = HeaderMap::new();
            for i in 0..count {
                // Long values, so that a misread length could land inside the bytes.
                headers.append(
                    HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_str(&"v".repeat(300)).unwrap(),
                );
            }
            assert_eq!(
                codec::decode_headers(&encode_v1(&headers)),
                None,
                "{count} fields"
            );
        }
    }
}
