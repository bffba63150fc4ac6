//! The harness itself: the origin answers as scripted, counts per path and method, dates its
//! responses by the case's clock, and every layer of a case shares one store.

use std::time::Duration;

use courteous::cache::CacheStatus;

use super::{Case, Reply};

async fn harness_scripts_count_and_share_the_store(case: Case) {
    case.origin.reply(
        "/fixed",
        Reply::ok()
            .header("cache-control", "max-age=60")
            .header("x-a", "1")
            .header("x-a", "2"),
    );
    case.origin.script("/dynamic", |asked| {
        Reply::status(if asked.n == 1 { 201 } else { 202 })
            .body(format!("{} {}", asked.method, asked.n))
    });

    let client = case.client();
    let first = case.get(&client, "/fixed").await;
    assert_eq!(first.text(), "/fixed 1", "{}", case.label());
    assert_eq!(first.cache, Some(CacheStatus::Miss));
    let values: Vec<_> = first.headers.get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"]);
    let date = httpdate::parse_http_date(first.header("date").unwrap()).unwrap();
    let now = case.clock.now();
    assert!(date <= now && now.duration_since(date).unwrap() < Duration::from_secs(2));
    case.flush().await;

    // Another layer over the same store sees the entry.
    let other = case.client();
    let again = case.get(&other, "/fixed").await;
    assert_eq!(again.text(), "/fixed 1", "{}", case.label());
    assert_eq!(again.cache, Some(CacheStatus::Hit));
    assert_eq!(case.origin.hits("/fixed"), 1);

    // The clock moves the cache's freshness and the origin's dates together.
    case.advance(Duration::from_secs(61));
    let later = case.get(&client, "/fixed").await;
    assert_eq!(later.text(), "/fixed 2", "{}", case.label());
    let date = httpdate::parse_http_date(later.header("date").unwrap()).unwrap();
    assert!(date + Duration::from_secs(60) > case.clock.now());

    let a = case
        .send(&client, http::Request::post(case.url("/dynamic")))
        .await;
    let b = case.get(&client, "/dynamic").await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (201, "POST 1"));
    assert_eq!((b.status.as_u16(), b.text().as_str()), (202, "GET 2"));
    assert_eq!(case.origin.hits("/dynamic"), 2);
    assert_eq!(case.origin.hits_by("POST", "/dynamic"), 1);
    assert_eq!(case.origin.hits_by("GET", "/dynamic"), 1);
    // Unscripted paths answer 200 with no cache headers.
    let plain = case.get(&client, "/unscripted").await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.text(), "/unscripted 1");
}

rfc9111!(harness_scripts_count_and_share_the_store);

async fn harness_one_mode_runs_in_that_mode(case: Case) {
    assert!(case.shared, "{}", case.label());
}

rfc9111_mode!(shared: harness_one_mode_runs_in_that_mode);
