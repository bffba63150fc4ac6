use super::*;
use std::time::UNIX_EPOCH;

fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    headers.append(http::header::SET_COOKIE, HeaderValue::from_static("a=1"));
    headers.append(http::header::SET_COOKIE, HeaderValue::from_static("b=2"));
    headers.insert("x-empty", HeaderValue::from_static(""));
    headers
}

fn sample() -> CacheEntry {
    let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let mut entry = CacheEntry::new(
        "http://h/a?b=c",
        StatusCode::NOT_FOUND,
        Bytes::from_static(b"body \0 bytes"),
        now,
    )
    .fresh_for(Duration::from_secs(60), Duration::from_secs(5));
    entry.version = Version::HTTP_2;
    entry.headers.insert("etag", "\"x\"".parse().unwrap());
    entry.headers.append("set-thing", "1".parse().unwrap());
    entry.headers.append("set-thing", "2".parse().unwrap());
    entry.vary = vec![http::header::ACCEPT, http::header::AUTHORIZATION];
    entry.age_at_store = Duration::from_millis(1500);
    entry.sliding = Some(Duration::from_secs(30));
    entry
}

#[test]
fn headers_survive_encoding() {
    let headers = headers();
    let encoded = encode_headers(&headers);
    assert_eq!(decode_headers(&encoded), Some(headers.clone()));
    assert_eq!(
        decode_shared_headers(Bytes::from(encoded)),
        Some(headers.clone())
    );
    assert_eq!(encode_headers(&HeaderMap::new()), Vec::<u8>::new());
    assert_eq!(decode_headers(&[]), Some(HeaderMap::new()));
}

#[test]
fn the_header_layout_is_the_documented_one() {
    let mut headers = HeaderMap::new();
    headers.insert("etag", HeaderValue::from_static("x"));
    headers.append("vary", HeaderValue::from_static("a"));
    headers.append("vary", HeaderValue::from_static(""));
    let mut expected = Vec::new();
    expected.extend_from_slice(b"\0\0\0\x04etag\0\0\0\x01x");
    expected.extend_from_slice(b"\0\0\0\x04vary\0\0\0\x01a");
    expected.extend_from_slice(b"\0\0\0\x04vary\0\0\0\0");
    assert_eq!(encode_headers(&headers), expected);
}

#[test]
fn decoded_values_share_one_copy() {
    let encoded = Bytes::from(encode_headers(&headers()));
    let decoded = decode_shared_headers(encoded.clone()).unwrap();
    let value = decoded.get(http::header::CONTENT_TYPE).unwrap();
    let range = encoded.as_ptr_range();
    assert!(range.contains(&value.as_bytes().as_ptr()));
}

#[test]
fn damaged_headers_decode_to_none() {
    let headers = headers();
    let encoded = encode_headers(&headers);
    // Where a record ends, a cut leaves the records before it; anywhere else it is damage.
    let mut ends = vec![0];
    for (name, value) in &headers {
        let last = *ends.last().unwrap();
        ends.push(last + 8 + name.as_str().len() + value.len());
    }
    for cut in 0..encoded.len() {
        let decoded = decode_headers(&encoded[..cut]);
        match ends.iter().position(|&end| end == cut) {
            Some(records) => assert_eq!(decoded.map(|h| h.len()), Some(records), "cut at {cut}"),
            None => assert_eq!(decoded, None, "cut at {cut}"),
        }
    }
    // A value with a byte no header value may hold.
    let mut bad_value = encoded.clone();
    let at = bad_value.windows(4).position(|w| w == b"text").unwrap();
    bad_value[at] = b'\n';
    assert_eq!(decode_headers(&bad_value), None);
    // An empty name, a length past the end, a length past `usize` on 32-bit platforms.
    assert_eq!(decode_headers(&[0, 0, 0, 0, 0, 0, 0, 0]), None);
    assert_eq!(decode_headers(&[0, 0, 0, 9, b'x']), None);
    assert_eq!(decode_headers(&[0xff; 8]), None);
}

#[test]
fn more_fields_than_a_map_holds_decode_to_none_without_panicking() {
    let mut encoded = Vec::new();
    for i in 0..40_000 {
        put_part(&mut encoded, format!("x-{i}").as_bytes());
        put_part(&mut encoded, b"");
    }
    assert!(decode_headers(&encoded).is_none());
}

#[test]
fn an_entry_survives_the_round_trip() {
    let entry = sample();
    let bytes = Bytes::from(encode_entry(&entry));
    let back = decode_entry(bytes.clone()).unwrap();
    assert_eq!(back.url, entry.url);
    assert_eq!(back.status, entry.status);
    assert_eq!(back.version, entry.version);
    assert_eq!(back.headers, entry.headers);
    assert_eq!(back.body, entry.body);
    assert_eq!(back.vary, entry.vary);
    assert_eq!(back.stored_at, entry.stored_at);
    assert_eq!(back.age_at_store, entry.age_at_store);
    assert_eq!(back.fresh_until, entry.fresh_until);
    assert_eq!(back.expires_at, entry.expires_at);
    assert_eq!(back.sliding, entry.sliding);
    // The body is a view of the value, not a copy.
    assert_eq!(
        back.body.as_ptr(),
        bytes[bytes.len() - entry.body.len()..].as_ptr()
    );
    let mut plain = CacheEntry::new("u", StatusCode::OK, Bytes::new(), UNIX_EPOCH);
    plain.sliding = None;
    let back = decode_entry(Bytes::from(encode_entry(&plain))).unwrap();
    assert_eq!((back.sliding, back.vary.len()), (None, 0));
}

#[test]
fn the_entry_layout_is_the_documented_one() {
    let mut entry = CacheEntry::new(
        "u",
        StatusCode::OK,
        Bytes::from_static(b"B"),
        UNIX_EPOCH + Duration::from_millis(2),
    );
    entry.version = Version::HTTP_11;
    entry.fresh_until = UNIX_EPOCH + Duration::from_millis(3);
    entry.expires_at = UNIX_EPOCH + Duration::from_millis(4);
    entry.age_at_store = Duration::from_millis(1);
    entry.sliding = None;
    entry.vary = vec![http::header::ACCEPT];
    entry.headers.insert("etag", HeaderValue::from_static("x"));
    let mut expected = vec![1, 0, 200, 11];
    for int in [2i64, 1, 3, 4, -1] {
        expected.extend_from_slice(&int.to_be_bytes());
    }
    expected.extend_from_slice(b"\0\0\0\x01u\0\0\0\x06accept");
    expected.extend_from_slice(b"\0\0\0\x0d\0\0\0\x04etag\0\0\0\x01x");
    expected.push(b'B');
    assert_eq!(encode_entry(&entry), expected);
}

#[test]
fn times_at_the_ends_of_the_range_decode_without_panicking() {
    let mut bytes = encode_entry(&sample());
    // stored_at, age_at_store, fresh_until, expires_at, sliding: bytes 4..44.
    for (at, value) in [
        (4, i64::MIN),
        (12, i64::MAX),
        (20, i64::MAX),
        (28, i64::MAX),
    ] {
        bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
    }
    let back = decode_entry(Bytes::from(bytes)).unwrap();
    let end = crate::time::end_of_time();
    assert_eq!((back.fresh_until, back.expires_at), (end, end));
    assert!(back.stored_at < UNIX_EPOCH);
    assert_eq!(back.age_at_store, Duration::from_millis(i64::MAX as u64));
}

#[test]
fn damaged_entries_decode_to_none() {
    let bytes = encode_entry(&sample());
    // Every cut before the body is damage.
    let body = sample().body.len();
    for cut in 0..bytes.len() - body {
        assert!(
            decode_entry(Bytes::copy_from_slice(&bytes[..cut])).is_none(),
            "{cut}"
        );
    }
    let mut other = bytes.clone();
    other[0] = 9;
    assert!(decode_entry(Bytes::from(other)).is_none());
    let mut bad_status = bytes;
    bad_status[1..3].copy_from_slice(&1000u16.to_be_bytes());
    assert!(decode_entry(Bytes::from(bad_status)).is_none());
}

#[test]
fn version_codes_round_trip() {
    for v in [
        Version::HTTP_09,
        Version::HTTP_10,
        Version::HTTP_11,
        Version::HTTP_2,
        Version::HTTP_3,
    ] {
        assert_eq!(version_of(version_code(v)), v);
    }
    assert_eq!(version_of(0), Version::HTTP_11);
}

#[test]
fn vary_names_round_trip_and_a_damaged_one_is_none() {
    let names = vec![http::header::ACCEPT, http::header::ACCEPT_LANGUAGE];
    assert_eq!(encode_vary(&names), "accept,accept-language");
    assert_eq!(decode_vary("accept,accept-language"), Some(names));
    assert_eq!(encode_vary(&[]), "");
    assert_eq!(decode_vary(""), Some(Vec::new()));
    assert_eq!(decode_vary("accept,bad name"), None);
}
