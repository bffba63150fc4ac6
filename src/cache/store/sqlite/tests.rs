use super::read::{BLOB_READ_MIN, REUSE_MAX};
use super::*;
use bytes::Bytes;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_size_read_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    for page_size in [4096, 65536] {
        let store = SqliteStore::builder(dir.path().join(format!("{page_size}.db")))
            .page_size(page_size)
            .open()
            .await
            .unwrap();
        let cache = store.cache();
        let now = SystemTime::now();
        let sizes = [
            0,
            1,
            1024,
            BLOB_READ_MIN,
            BLOB_READ_MIN + 1,
            100 * 1024,
            REUSE_MAX,
            REUSE_MAX + 1,
        ];
        for (i, &size) in sizes.iter().enumerate() {
            let key = RequestKey::from_parts([i as u8; 32], format!("GET http://h/{i}"));
            let body: Vec<u8> = (0..size).map(|b| (b % 251) as u8).collect();
            let entry = CacheEntry::new(
                format!("http://h/{i}"),
                StatusCode::OK,
                Bytes::from(body),
                now,
            )
            .fresh_for(Duration::from_secs(60), Duration::ZERO);
            cache.put(&key, Arc::new(entry)).await.unwrap();
        }
        // Read from the file, not from the entries pending in memory.
        store.flush().await.unwrap();
        cache.pending().clear();
        for _ in 0..2 {
            for (i, &size) in sizes.iter().enumerate() {
                let key = RequestKey::from_parts([i as u8; 32], format!("GET http://h/{i}"));
                let entry = cache.get(&key).await.unwrap().expect("stored");
                assert_eq!(entry.body.len(), size, "size {size}, page {page_size}");
                assert!(
                    entry
                        .body
                        .iter()
                        .enumerate()
                        .all(|(b, &v)| v == (b % 251) as u8),
                    "size {size}, page {page_size}"
                );
                assert_eq!(entry.url, format!("http://h/{i}"));
            }
        }
        store.close().await.unwrap();
    }
}
