//! Reading an entry: one row decoded where SQLite holds it, the body copied once into a buffer
//! the store thread reuses.

use std::cell::RefCell;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::cache::CacheEntry;
use crate::store::codec::{decode_headers, decode_vary, version_of};
use crate::store::sqlite::SqliteError;
use crate::time::from_epoch_ms as time;

/// Bodies up to this size are copied into a buffer this thread reuses (see [`body_buffer`]).
pub(super) const REUSE_MAX: usize = 1 << 20;

/// Bodies larger than this are read with SQLite's incremental blob I/O, straight from the
/// database pages into the body's buffer. Reading the column instead makes SQLite first gather
/// a body that spills onto overflow pages into a buffer of its own, then we copy it again;
/// opening the blob costs about a microsecond, which pays off from about 32 KiB
/// (measured with 64 KiB pages; with smaller pages bodies spill sooner).
pub(super) const BLOB_READ_MIN: usize = 32 * 1024;

thread_local! {
    /// The allocation the last body read on this store thread was copied into, and its size.
    static BODY_BUFFER: RefCell<(BytesMut, usize)> = RefCell::new((BytesMut::new(), 0));
}

/// A body of `n` bytes, written by `fill` into an empty buffer of at least that capacity.
///
/// Bodies up to [`REUSE_MAX`] go into the allocation that held the previous body read on this
/// thread when nothing holds that one any more (the caller dropped the response) and it is not
/// more than twice the size needed; otherwise into a new allocation, which is kept for the next
/// read. Handing out a fresh allocation per hit and freeing it on another thread made the
/// allocator return the pages to the kernel and fault them in again on the next hit: a 100 KiB
/// hit cost 18 page faults, more than the read itself. At most one allocation of up to twice
/// [`REUSE_MAX`] stays with each store thread.
fn body_buffer(
    n: usize,
    fill: impl FnOnce(&mut BytesMut) -> rusqlite::Result<()>,
) -> rusqlite::Result<Bytes> {
    if n == 0 {
        return Ok(Bytes::new());
    }
    if n > REUSE_MAX {
        let mut buf = BytesMut::with_capacity(n);
        fill(&mut buf)?;
        return Ok(buf.freeze());
    }
    BODY_BUFFER.with_borrow_mut(|(buf, capacity)| {
        // `try_reclaim` of the whole allocation succeeds only when no earlier body shares it.
        let reusable = *capacity >= n && *capacity <= 2 * n && buf.try_reclaim(*capacity);
        if !reusable {
            *buf = BytesMut::with_capacity(n);
            *capacity = buf.capacity();
        }
        let filled = fill(buf);
        let body = buf.split().freeze();
        filled.map(|()| body)
    })
}

/// The body as [`Bytes`], copied once from the row's column.
fn body_bytes(body: &[u8]) -> Bytes {
    body_buffer(body.len(), |buf| {
        buf.extend_from_slice(body);
        Ok(())
    })
    .unwrap_or_else(|_| Bytes::copy_from_slice(body))
}

/// The body of row `rowid`, read straight from the pages (see [`BLOB_READ_MIN`]). Called while
/// the row's statement is active, so it reads the same snapshot.
fn blob_body(conn: &Connection, rowid: i64) -> rusqlite::Result<Bytes> {
    let blob = conn.blob_open(rusqlite::MAIN_DB, "cache_entries", "body", rowid, true)?;
    let n = blob.len();
    body_buffer(n, |buf| {
        buf.resize(n, 0);
        blob.read_at_exact(buf, 0)
    })
}

fn column_blob<'a>(row: &'a Row<'_>, index: usize) -> rusqlite::Result<&'a [u8]> {
    let value = row.get_ref(index)?;
    value
        .as_blob()
        .map_err(|_| rusqlite::Error::InvalidColumnType(index, String::new(), value.data_type()))
}

fn column_text<'a>(row: &'a Row<'_>, index: usize) -> rusqlite::Result<&'a str> {
    let value = row.get_ref(index)?;
    value
        .as_str()
        .map_err(|_| rusqlite::Error::InvalidColumnType(index, String::new(), value.data_type()))
}

/// Decodes the row where SQLite holds it: the headers, URL and `Vary` names are read without
/// intermediate copies, the body is copied once (see [`body_buffer`] and [`BLOB_READ_MIN`]).
fn decode_row(conn: &Connection, row: &Row<'_>) -> rusqlite::Result<Option<CacheEntry>> {
    let url = column_text(row, 0)?;
    // A row we cannot decode (damaged, or written in another format by an older process still
    // running on the migrated file) is treated as absent, and replaced by the next write.
    let Some(headers) = decode_headers(column_blob(row, 3)?) else {
        tracing::warn!(url, "undecodable cache entry headers; ignoring the entry");
        return Ok(None);
    };
    let Ok(status) = StatusCode::from_u16(u16::try_from(row.get::<_, i64>(1)?).unwrap_or(0)) else {
        return Ok(None);
    };
    // A `Vary` name that does not parse is damage too: leaving it out would serve the entry to
    // requests it does not match.
    let Some(vary) = decode_vary(column_text(row, 4)?) else {
        tracing::warn!(
            url,
            "undecodable cache entry vary names; ignoring the entry"
        );
        return Ok(None);
    };
    // Column 10 holds the body when it is small; a large one is read from the pages.
    let body = match row.get_ref(10)? {
        ValueRef::Blob(body) => body_bytes(body),
        ValueRef::Null => blob_body(conn, row.get(11)?)?,
        other => {
            return Err(rusqlite::Error::InvalidColumnType(
                10,
                String::new(),
                other.data_type(),
            ));
        }
    };
    Ok(Some(CacheEntry {
        url: url.to_owned(),
        status,
        version: version_of(u8::try_from(row.get::<_, i64>(2)?).unwrap_or(0)),
        headers,
        body,
        vary,
        stored_at: time(row.get(5)?),
        age_at_store: Duration::from_millis(row.get::<_, i64>(6)?.max(0).unsigned_abs()),
        fresh_until: time(row.get(7)?),
        expires_at: time(row.get(8)?),
        sliding: row
            .get::<_, Option<i64>>(9)?
            .map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
    }))
}

pub(super) fn read_entry(
    conn: &Connection,
    key: &[u8; 32],
    now: i64,
) -> Result<Option<CacheEntry>, SqliteError> {
    // `length(body)` reads the length from the record header, without touching the body.
    let entry = conn
        .prepare_cached(
            "SELECT url, status, version, headers, vary, stored_at, age_ms, fresh_until,
                    expires_at, sliding_ms, CASE WHEN length(body) <= ?3 THEN body END, rowid
             FROM cache_entries WHERE key = ?1 AND expires_at > ?2",
        )?
        .query_row(params![&key[..], now, BLOB_READ_MIN as i64], |row| {
            decode_row(conn, row)
        })
        .optional()?;
    Ok(entry.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_still_held_is_never_overwritten_by_the_next_read() {
        let first = body_bytes(&[1; 1000]);
        let second = body_bytes(&[2; 1000]);
        assert!(first.iter().all(|&b| b == 1));
        assert!(second.iter().all(|&b| b == 2));
        assert_ne!(first.as_ptr(), second.as_ptr());
    }

    #[test]
    fn a_dropped_body_lends_its_allocation_to_the_next_read() {
        let first = body_bytes(&[1; 4000]);
        let at = first.as_ptr();
        drop(first);
        // Were the allocation freed, this one would likely take its place.
        let occupier = vec![0u8; 4000];
        let second = body_bytes(&[2; 3000]);
        assert_eq!(second.as_ptr(), at);
        assert_ne!(occupier.as_ptr(), at);
        assert_eq!(&second[..], &[2; 3000][..]);
        // Far smaller than the allocation: a new, fitting one instead of pinning the large one.
        drop(second);
        let small = body_bytes(&[3; 100]);
        assert_ne!(small.as_ptr(), at);
        assert_eq!(&small[..], &[3; 100][..]);
    }

    #[test]
    fn empty_and_oversized_bodies_are_plain_copies() {
        assert!(body_bytes(&[]).is_empty());
        let at = body_bytes(&[1; 5000]).as_ptr();
        let big = vec![7; REUSE_MAX + 1];
        assert_eq!(&body_bytes(&big)[..], &big[..]);
        let occupier = vec![0u8; 5000];
        // The oversized body did not replace the buffer kept for reuse.
        assert_eq!(body_bytes(&[2; 5000]).as_ptr(), at);
        assert_ne!(occupier.as_ptr(), at);
    }
}
