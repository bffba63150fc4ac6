//! Random and extreme response headers through the whole stack on memory and SQLite stores:
//! no panic anywhere (spawned tasks and store threads included), no hang, and every answer a
//! well-formed response or a typed error (issue 12, item 5).
//!
//! One proptest case is a batch of scripts, each for its own path and rate-limit resource. A
//! script's first request (sometimes two at once, so that dedupe has a follower) stores what it
//! may; after a pause longer than dedupe keeps a completed result (1 s at least) and a jump of the
//! cache layer's clock, its second request, with hostile request directives of its own, runs
//! the stored-entry paths: hits, stale serving, stale-if-error, background refresh and `304`
//! revalidation.
//!
//! The seed is fixed so CI runs the same cases every time; `PROPTEST_CASES` runs more batches,
//! and `COURTEOUS_HOSTILE_SEED=random` draws new ones.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courteous::CacheLayer;
use courteous::cache::{CacheMode, CacheStatus};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRng, TestRunner};

use crate::server::{Length, Reply, ScriptedServer};
use crate::{AheadClock, BACKENDS, Backend, Client, Got, panics, stack_with};

/// Batches run by default; each is `SCRIPTS` scripts on both backends.
const BATCHES: u32 = 10;
const SCRIPTS: std::ops::RangeInclusive<usize> = 12..=20;
/// No request may take longer than this (a hang is a failure, not a slow test).
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// The header names hostile values go under (their spelling is shuffled by [`any_case`]).
const NAMES: &[&str] = &[
    "cache-control",
    "age",
    "expires",
    "date",
    "last-modified",
    "etag",
    "vary",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "pragma",
    "set-cookie",
    "content-type",
];

const DIRECTIVES: &[&str] = &[
    "max-age",
    "s-maxage",
    "stale-if-error",
    "stale-while-revalidate",
    "no-cache",
    "no-store",
    "must-revalidate",
    "proxy-revalidate",
    "private",
    "public",
    "immutable",
    "no-transform",
    "max-stale",
    "min-fresh",
    "only-if-cached",
];

/// `s` with each ASCII letter's case drawn at random.
fn any_case(s: &'static str) -> impl Strategy<Value = String> {
    any::<u64>().prop_map(move |bits| {
        s.chars()
            .enumerate()
            .map(|(i, c)| {
                if bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    })
}

/// Numbers of every size and shape, as text.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..120).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "2147483647",
            "2147483648",
            "4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "-1",
            "-0",
            "+5",
            "1.5",
            "1e308",
            "inf",
            "-inf",
            "NaN",
            "0x10",
            " 60 ",
            "\"60\"",
            "",
        ])
        .prop_map(str::to_owned),
        "[0-9]{19,40}",
    ]
}

/// HTTP dates anywhere from 1900 to the end of 9999, and dates that are not.
fn date() -> impl Strategy<Value = String> {
    prop_oneof![
        // 1970-01-01 .. 9999-12-31, as IMF-fixdate (what `httpdate` formats; 1900 is below).
        (0u64..=253_402_300_799)
            .prop_map(|secs| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))),
        // Around now.
        (-100_000i64..100_000).prop_map(|d| {
            let t = SystemTime::now();
            let t = if d >= 0 {
                t + Duration::from_secs(d.unsigned_abs())
            } else {
                t - Duration::from_secs(d.unsigned_abs())
            };
            httpdate::fmt_http_date(t)
        }),
        prop::sample::select(vec![
            "Mon, 01 Jan 1900 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Sat, 01 Jan 0000 00:00:00 GMT",
            "Sun, 32 Foo 99999 25:61:61 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "0",
            "-1",
            "yesterday",
        ])
        .prop_map(str::to_owned),
    ]
}

/// One `Cache-Control`-like list: directives in any case, with or without (hostile) values,
/// duplicates and empty members included.
fn directive_list() -> impl Strategy<Value = String> {
    let directive = (
        prop::sample::select(DIRECTIVES).prop_flat_map(any_case),
        prop::option::of(prop_oneof![
            number(),
            number().prop_map(|n| format!("\"{n}\""))
        ]),
    )
        .prop_map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => name,
        });
    (
        prop::collection::vec(directive, 0..5),
        prop::sample::select(vec![",", ", ", " , ", ",,"]),
    )
        .prop_map(|(parts, sep)| parts.join(sep))
}

/// Bytes a header value may carry on the wire, obs-text (non-UTF-8) and DEL included.
fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x7fu8..=0xff],
        0..24,
    )
}

/// A value for header `name`: mostly of the kind that header takes, sometimes anything.
fn value_for(name: &'static str) -> BoxedStrategy<Vec<u8>> {
    let typed: BoxedStrategy<String> = match name {
        "cache-control" | "pragma" => directive_list().boxed(),
        "expires" | "date" | "last-modified" => date().boxed(),
        "etag" => prop_oneof![
            "\"[a-z0-9]{0,6}\"",
            "W/\"[a-z0-9]{0,6}\"",
            Just(String::new()),
            Just("*".to_owned()),
        ]
        .boxed(),
        "vary" => prop::sample::select(vec![
            "*",
            "accept",
            "Accept-Encoding, X-Foo",
            "authorization",
            "a b",
            ",,,",
            "",
            "accept, *",
        ])
        .prop_map(str::to_owned)
        .boxed(),
        "retry-after" => prop_oneof![number(), date()].boxed(),
        "ratelimit" | "ratelimit-policy" => (number(), number(), number())
            .prop_map(|(a, b, c)| format!("limit={a}, remaining={b}, reset={c}"))
            .boxed(),
        "set-cookie" => Just("session=secret; Path=/".to_owned()).boxed(),
        "content-type" => Just("application/json".to_owned()).boxed(),
        _ => number().boxed(),
    };
    prop_oneof![
        4 => typed.prop_map(String::into_bytes),
        1 => raw_bytes(),
    ]
    .boxed()
}

/// Header lines: names in any case, duplicates allowed.
fn headers() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    let one = prop::sample::select(NAMES)
        .prop_flat_map(|name| (any_case(name), value_for(name)))
        .prop_map(|(name, value)| (name.into_bytes(), value));
    prop::collection::vec(one, 0..6)
}

/// Usually a storable, revalidatable base (a lifetime and a validator, hostile or not) that the
/// random lines then add to or contradict, so that the stored-entry paths run often.
fn base_headers() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    let lifetime = prop_oneof![
        3 => (0u64..120).prop_map(|n| n.to_string()),
        1 => number(),
    ];
    prop_oneof![
        1 => Just(Vec::new()),
        3 => (
            prop::sample::select(vec!["max-age", "MAX-AGE", "s-maxage", "max-age"]),
            lifetime,
            prop::option::of(prop_oneof![
                Just("stale-while-revalidate"),
                Just("stale-if-error"),
                Just("must-revalidate"),
            ]),
            number(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(name, secs, extra, extra_secs, etag, modified)| {
                let mut cc = format!("{name}={secs}");
                if let Some(extra) = extra {
                    cc = format!("{cc}, {extra}={extra_secs}");
                }
                let mut lines = vec![(b"Cache-Control".to_vec(), cc.into_bytes())];
                if etag {
                    lines.push((b"ETag".to_vec(), b"\"v1\"".to_vec()));
                }
                if modified {
                    lines.push((
                        b"Last-Modified".to_vec(),
                        b"Mon, 01 Jan 2024 00:00:00 GMT".to_vec(),
                    ));
                }
                lines
            }),
    ]
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        8 => Just(Length::True),
        1 => Just(Length::Absent),
        1 => prop_oneof![
            number().prop_map(String::into_bytes),
            Just(b"5, 6".to_vec()),
            Just(b"0".to_vec()),
        ]
        .prop_map(Length::Says),
    ]
}

fn reply(statuses: &'static [u16]) -> impl Strategy<Value = Reply> {
    (
        prop::sample::select(statuses),
        base_headers(),
        headers(),
        prop::collection::vec(any::<u8>(), 0..300),
        length(),
    )
        .prop_map(|(status, mut headers, more, body, length)| {
            headers.extend(more);
            Reply {
                status,
                headers,
                body,
                length,
            }
        })
}

const FIRST_STATUSES: &[u16] = &[
    200, 200, 200, 200, 200, 200, 203, 204, 301, 404, 410, 429, 500, 503,
];
const SECOND_STATUSES: &[u16] = &[200, 304, 304, 304, 429, 500, 502, 503, 504];

/// One path's story: its answers, whether the first request is sent twice at once, and the
/// second request's own directives and mode.
#[derive(Debug, Clone)]
struct Script {
    first: Reply,
    second: Reply,
    concurrent: bool,
    request_headers: Vec<(String, Vec<u8>)>,
    mode: Option<CacheMode>,
}

fn script() -> impl Strategy<Value = Script> {
    let request_header = prop_oneof![
        directive_list().prop_map(|v| ("cache-control".to_owned(), v.into_bytes())),
        raw_bytes().prop_map(|v| ("cache-control".to_owned(), v)),
        Just(("pragma".to_owned(), b"no-cache".to_vec())),
    ];
    let mode = prop::option::of(prop::sample::select(vec![
        CacheMode::Default,
        CacheMode::NoStore,
        CacheMode::Reload,
        CacheMode::NoCache,
        CacheMode::ForceCache,
        CacheMode::OnlyIfCached,
    ]));
    (
        reply(FIRST_STATUSES),
        reply(SECOND_STATUSES),
        any::<bool>(),
        prop::collection::vec(request_header, 0..2),
        mode,
    )
        .prop_map(
            |(first, second, concurrent, request_headers, mode)| Script {
                first,
                second,
                concurrent,
                request_headers,
                mode,
            },
        )
}

/// A batch: its scripts, how far the cache layer's clock jumps between the two rounds, and
/// whether the cache is shared.
fn batch() -> impl Strategy<Value = (Vec<Script>, u64, bool)> {
    (
        prop::collection::vec(script(), SCRIPTS),
        prop_oneof![
            3 => Just(0u64),
            2 => Just(2),
            2 => prop::sample::select(vec![61u64, 3_600, 86_400 * 365, 1 << 31, 1 << 40]),
        ],
        any::<bool>(),
    )
}

/// What one request ended in.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    errors: u64,
    served: u64,
    revalidated: u64,
}

async fn request(
    client: &Client,
    url: String,
    headers: &[(String, Vec<u8>)],
    mode: Option<CacheMode>,
) -> Result<Result<Got, courteous::BoxError>, String> {
    let mut builder = http::Request::get(&url);
    for (name, value) in headers {
        let Ok(value) = http::HeaderValue::from_bytes(value) else {
            continue;
        };
        builder = builder.header(name.as_str(), value);
    }
    if let Some(mode) = mode {
        builder = builder.extension(mode);
    }
    let request = builder.body(reqwest::Body::from("")).unwrap();
    let sent = async {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let response = client.clone().oneshot(request).await?;
        let cache = courteous::Report::of(&response).and_then(|r| r.cache);
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Got {
            status: parts.status,
            headers: parts.headers,
            body,
            cache,
        })
    };
    tokio::time::timeout(REQUEST_LIMIT, sent)
        .await
        .map_err(|_| format!("{url}: no answer within {REQUEST_LIMIT:?}"))
}

/// Checks one outcome: a well-formed response or a typed error.
fn check(outcome: Result<Got, courteous::BoxError>, tally: &mut Tally) -> Result<(), String> {
    match outcome {
        Ok(got) => {
            tally.ok += 1;
            if matches!(
                got.cache,
                Some(CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Revalidated)
            ) {
                tally.served += 1;
                if got.cache == Some(CacheStatus::Revalidated) {
                    tally.revalidated += 1;
                }
                // What the cache serves carries its own `Age`, a number.
                let age = got.headers.get(http::header::AGE);
                let age = age.and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if age.is_none() {
                    return Err(format!(
                        "served from the cache without a numeric Age: {got:?}"
                    ));
                }
            }
            Ok(())
        }
        Err(error) => {
            tally.errors += 1;
            // Typed: it says what failed (a panic would not have come back as an error at all).
            if error.to_string().is_empty() {
                return Err(format!("an error without a message: {error:?}"));
            }
            Ok(())
        }
    }
}

/// Runs one batch on `backend` against `server`; paths are `/api/{tag}{i}/item`.
async fn run_batch(
    backend: Backend,
    server: &ScriptedServer,
    tag: &str,
    scripts: &[Script],
    jump: u64,
    shared: bool,
    tally: &mut Tally,
) -> Result<(), String> {
    let offset = AheadClock::default();
    let clock = offset.clone();
    let stack = stack_with(
        backend,
        move |c: CacheLayer| {
            let stored =
                [200, 203, 204, 301, 404, 410].map(|s| http::StatusCode::from_u16(s).unwrap());
            c.shared(shared).statuses(stored).clock(clock)
        },
        |d| d.result_ttl(Duration::ZERO),
    )
    .await;
    let paths: Vec<String> = (0..scripts.len())
        .map(|i| format!("/api/{tag}{i}/item"))
        .collect();
    for (path, script) in paths.iter().zip(scripts) {
        server.script(path, vec![script.first.clone(), script.second.clone()]);
    }
    // Round one: every path at once, some twice at once.
    let round = paths.iter().zip(scripts).flat_map(|(path, script)| {
        let n = if script.concurrent { 2 } else { 1 };
        (0..n).map(|_| request(&stack.client, server.url(path), &[], None))
    });
    for outcome in futures_util::future::join_all(round).await {
        check(outcome?, tally)?;
    }
    // Longer than dedupe keeps a completed result, so that round two reaches the cache's
    // stored-entry paths and the server again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    offset.set_ahead(jump);
    let round = paths.iter().zip(scripts).map(|(path, script)| {
        request(
            &stack.client,
            server.url(path),
            &script.request_headers,
            script.mode,
        )
    });
    for outcome in futures_util::future::join_all(round).await {
        check(outcome?, tally)?;
    }
    // Let background refreshes finish (and, if they would, panic) before the stack goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

#[test]
fn hostile_headers_never_crash_the_stack() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(ScriptedServer::start());
    let started = Instant::now();
    let before = panics();
    let mut config = Config::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(BATCHES),
    );
    // Shrinking reruns whole batches: keep it bounded. The seed is fixed, so a failure recurs
    // without a regressions file.
    config.max_shrink_iters = 64;
    config.failure_persistence = None;
    let rng = if std::env::var("COURTEOUS_HOSTILE_SEED").is_ok_and(|v| v == "random") {
        TestRng::from_seed(config.rng_algorithm, &rand_seed())
    } else {
        TestRng::deterministic_rng(config.rng_algorithm)
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let batch_no = std::cell::Cell::new(0u64);
    let tally = std::sync::Mutex::new(Tally::default());
    runner
        .run(&batch(), |(scripts, jump, shared)| {
            let n = batch_no.get();
            batch_no.set(n + 1);
            let mut local = Tally::default();
            runtime
                .block_on(async {
                    let (m, s) = (format!("m{n}x"), format!("s{n}x"));
                    let (mut memory, mut sqlite) = (Tally::default(), Tally::default());
                    let (a, b) = tokio::join!(
                        run_batch(
                            BACKENDS[0],
                            &server,
                            &m,
                            &scripts,
                            jump,
                            shared,
                            &mut memory
                        ),
                        run_batch(
                            BACKENDS[1],
                            &server,
                            &s,
                            &scripts,
                            jump,
                            shared,
                            &mut sqlite
                        ),
                    );
                    for t in [memory, sqlite] {
                        local.ok += t.ok;
                        local.errors += t.errors;
                        local.served += t.served;
                        local.revalidated += t.revalidated;
                    }
                    a.and(b)
                })
                .map_err(TestCaseError::fail)?;
            let now = panics();
            if now != before {
                return Err(TestCaseError::fail(format!(
                    "{} panic(s) in spawned tasks or store threads",
                    now - before
                )));
            }
            let mut all = tally.lock().unwrap();
            all.ok += local.ok;
            all.errors += local.errors;
            all.served += local.served;
            all.revalidated += local.revalidated;
            Ok(())
        })
        .unwrap();
    let tally = tally.into_inner().unwrap();
    eprintln!(
        "hostile: {} batches, {tally:?}, {} upstream requests, {:.1} s",
        batch_no.get(),
        server.hits(),
        started.elapsed().as_secs_f64()
    );
    // The cases reached every outcome: responses, typed errors, stored entries served and
    // revalidated (a generator that stopped producing any of them would test much less).
    assert!(tally.ok > 0 && tally.errors > 0, "{tally:?}");
    assert!(tally.served > 0 && tally.revalidated > 0, "{tally:?}");
}

fn rand_seed() -> [u8; 32] {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(&nanos.to_le_bytes());
    eprintln!("hostile: seed {seed:?}");
    seed
}
