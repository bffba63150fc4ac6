//! The query and summary contract, run on every backend.

use std::time::Duration;

use courteous::journal::{GroupBy, Journal, JournalQuery, MemoryJournalStore};
use courteous::time::Timestamp;
use courteous::{Priority, Resource};

use crate::row;

/// Writes rows at known times and checks what queries and summaries answer. `journal` must be
/// empty; its clock must be the wall clock.
pub async fn contract(journal: &Journal) {
    let now = journal.now();
    let hours_ago = |h: u64| now - Duration::from_secs(h * 3600);
    let mut rows = vec![
        row(hours_ago(3), "issues", 200, 40),
        row(hours_ago(2), "search", 429, 5),
        row(now - Duration::from_secs(60), "issues", 200, 10),
        row(now - Duration::from_secs(30), "issues", 200, 30),
        row(now - Duration::from_secs(10), "search", 200, 20),
    ];
    rows[0].bytes = Some(1_000);
    rows[2].bytes = Some(100);
    rows[3].limiter_wait = Duration::from_millis(250);
    rows[3].revalidation = true;
    rows[4].limiter_wait = Duration::from_millis(50);
    rows[4].followers = 3;
    for row in &rows {
        journal.record(row.clone());
    }
    journal.flush().await.unwrap();

    let all = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(all, rows, "every row, oldest first, as written");

    let last_hour = JournalQuery::since(Duration::from_secs(3600));
    let recent = journal.query(&last_hour).await.unwrap();
    assert_eq!(recent, rows[2..]);

    let issues = Resource::new("issues").unwrap();
    let found = journal
        .query(&last_hour.clone().resource(issues.clone()))
        .await
        .unwrap();
    assert_eq!(found, rows[2..4]);

    let background = journal
        .query(&JournalQuery::all().priority(Priority::Background))
        .await
        .unwrap();
    assert_eq!(background, rows[1..2]);

    let newest = journal.query(&JournalQuery::all().limit(2)).await.unwrap();
    assert_eq!(newest, rows[3..], "a limit keeps the newest");

    let window = JournalQuery::between(hours_ago(3), hours_ago(1));
    assert_eq!(journal.query(&window).await.unwrap(), rows[..2]);

    let by_resource = journal
        .summary(&JournalQuery::all(), GroupBy::Resource)
        .await
        .unwrap();
    assert_eq!(by_resource.by, GroupBy::Resource);
    let issues_group = &by_resource.groups[0];
    assert_eq!(issues_group.key, "issues");
    assert_eq!((issues_group.calls, issues_group.quota_spent), (3, 3));
    assert_eq!(issues_group.bytes, 1_100);
    assert_eq!(issues_group.latency_p50, Duration::from_millis(30));
    assert_eq!(issues_group.latency_max, Duration::from_millis(40));
    assert_eq!(issues_group.limiter_wait, Duration::from_millis(250));
    assert_eq!(issues_group.revalidations, 1);
    let search_group = &by_resource.groups[1];
    assert_eq!(
        (search_group.key.as_str(), search_group.calls),
        ("search", 2)
    );
    assert_eq!(
        search_group.latency_p50,
        Duration::from_millis(5),
        "the lower median"
    );
    assert_eq!(search_group.followers, 3);
    let total = &by_resource.total;
    assert_eq!(
        (total.key.as_str(), total.calls, total.bytes),
        ("total", 5, 1_100)
    );
    assert_eq!(total.latency_p50, Duration::from_millis(20));
    assert_eq!(total.limiter_wait, Duration::from_millis(300));

    let by_status = journal.summary(&last_hour, GroupBy::Status).await.unwrap();
    let counts: Vec<_> = by_status
        .groups
        .iter()
        .map(|g| (g.key.as_str(), g.calls))
        .collect();
    assert_eq!(counts, [("200", 3)]);

    let by_priority = journal
        .summary(&JournalQuery::all().resource(issues), GroupBy::Priority)
        .await
        .unwrap();
    assert_eq!(by_priority.groups.len(), 1);
    assert_eq!(
        (by_priority.groups[0].key.as_str(), by_priority.total.calls),
        ("user", 3)
    );

    let nothing = journal
        .summary(
            &JournalQuery::between(Timestamp::from_millis(0), Timestamp::from_millis(1)),
            GroupBy::Status,
        )
        .await
        .unwrap();
    assert!(nothing.groups.is_empty());
    assert_eq!(
        (nothing.total.calls, nothing.total.latency_max),
        (0, Duration::ZERO)
    );

    edges(journal, &rows).await;
}

/// Windows of nothing, everything or the wrong way round, limits of 0 and `usize::MAX`, one
/// row's summary, and a row of extreme values: answers, never a panic.
async fn edges(journal: &Journal, rows: &[courteous::journal::JournalEntry]) {
    let now = journal.now();
    let far = now + Duration::from_secs(365 * 24 * 3600);
    for (query, expected) in [
        (JournalQuery::since(Duration::ZERO), 0),
        (JournalQuery::since(Duration::MAX), rows.len()),
        (
            JournalQuery::between(now, now - Duration::from_secs(3600)),
            0,
        ),
        (
            JournalQuery::between(far, Timestamp::from_millis(u64::MAX)),
            0,
        ),
        (
            JournalQuery::between(Timestamp::from_millis(0), Timestamp::from_millis(0)),
            0,
        ),
        (JournalQuery::all().limit(0), 0),
        (JournalQuery::all().limit(usize::MAX), rows.len()),
    ] {
        let found = journal.query(&query).await.unwrap();
        assert_eq!(found.len(), expected, "{query:?}");
        // A summary ignores the limit.
        let summed = if query.row_limit().is_some() {
            rows.len()
        } else {
            expected
        };
        let summary = journal.summary(&query, GroupBy::Status).await.unwrap();
        assert_eq!(summary.total.calls, summed as u64, "{query:?}");
    }

    // One row: its latency is the median and the max.
    let one = JournalQuery::between(rows[4].time, rows[4].time + Duration::from_millis(1));
    let summary = journal.summary(&one, GroupBy::Resource).await.unwrap();
    assert_eq!(summary.total.calls, 1);
    assert_eq!(summary.total.latency_p50, rows[4].latency);
    assert_eq!(summary.total.latency_max, rows[4].latency);

    // Within the five minutes Redis allows between its clock and the rows' times.
    let soon = now + Duration::from_secs(60);
    let mut extreme = row(soon, "extreme", 599, 0);
    extreme.method = http::Method::from_bytes(b"M-SEARCH").unwrap();
    extreme.bytes = Some(u64::MAX);
    extreme.latency = Duration::MAX;
    extreme.limiter_wait = Duration::MAX;
    extreme.followers = u32::MAX;
    journal.record(extreme.clone());
    journal.record(extreme.clone());
    journal.flush().await.unwrap();
    let window = JournalQuery::between(soon, soon + Duration::from_millis(1));
    let found = journal.query(&window).await.unwrap();
    assert_eq!(found.len(), 2);
    let back = &found[0];
    assert_eq!(
        (back.method.as_str(), back.status.as_u16(), back.followers),
        ("M-SEARCH", 599, u32::MAX)
    );
    // Saturated where a backend keeps signed 64-bit integers.
    assert!(back.bytes >= Some(i64::MAX as u64), "{back:?}");
    assert!(back.latency >= Duration::from_secs(1 << 40), "{back:?}");
    assert!(
        back.limiter_wait >= Duration::from_secs(1 << 40),
        "{back:?}"
    );
    let summary = journal.summary(&window, GroupBy::Resource).await.unwrap();
    let total = &summary.total;
    assert_eq!((total.calls, total.followers), (2, 2 * u64::from(u32::MAX)));
    assert!(total.bytes >= i64::MAX as u64, "{total:?}");
    assert!(
        total.latency_max >= Duration::from_secs(1 << 40),
        "{total:?}"
    );
    assert!(
        total.limiter_wait >= Duration::from_secs(1 << 40),
        "{total:?}"
    );
}

#[tokio::test]
async fn memory_keeps_the_contract() {
    contract(&Journal::new(MemoryJournalStore::new())).await;
}

#[tokio::test]
async fn memory_keeps_the_newest_rows_up_to_its_capacity() {
    let store = MemoryJournalStore::with_capacity(3);
    let journal = Journal::new(store.clone());
    let now = journal.now();
    for n in 0..5 {
        journal.record(row(now + Duration::from_millis(n), "a", 200, n));
    }
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    let latencies: Vec<_> = rows.iter().map(|r| r.latency.as_millis()).collect();
    assert_eq!(latencies, [2, 3, 4]);
    assert_eq!(store.len(), 3);
    let stats = journal.stats();
    assert_eq!((stats.recorded, stats.dropped), (5, 2));
}

#[tokio::test]
async fn memory_reads_a_ring_larger_than_a_scan_chunk() {
    let journal = Journal::new(MemoryJournalStore::with_capacity(3_000));
    let now = journal.now();
    for n in 0..5_000 {
        journal.record(row(now + Duration::from_millis(n), "a", 200, n));
    }
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len(), 3_000);
    assert!(rows.windows(2).all(|w| w[0].time < w[1].time));
    assert_eq!(rows[0].latency, Duration::from_millis(2_000));
    let newest = journal.query(&JournalQuery::all().limit(5)).await.unwrap();
    assert_eq!(newest[0].latency, Duration::from_millis(4_995));
    assert!(
        journal
            .query(&JournalQuery::all().limit(0))
            .await
            .unwrap()
            .is_empty()
    );
    let summary = journal
        .summary(&JournalQuery::all(), GroupBy::Resource)
        .await
        .unwrap();
    assert_eq!(summary.total.calls, 3_000);
}
