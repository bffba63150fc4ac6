//! The commands on a store: each opens nothing itself, reads or writes through the
//! [`Stores`] it is given and returns a [`Report`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use courteous::cache::store::{CacheStore, Invalidation};
use courteous::dedupe::store::DedupeStore;
use courteous::journal::{Journal, JournalQuery};
use courteous::rate_limit::AdaptiveConfig;
use courteous::rate_limit::store::RateLimitStore;
use courteous::store::sqlite::{SqliteError, SqliteStore};
use courteous::time::{Clock, SystemClock};
use courteous::{Limit, Resource};
use serde_json::{Value, json};

use crate::args::By;
use crate::output::{Report, Table, bytes, utc};

/// A command's failure, printed on stderr.
pub type Failure = Box<dyn std::error::Error>;

/// The stores of one target (a SQLite file or a Redis prefix), through their traits.
pub struct Stores {
    /// The response cache.
    pub cache: Arc<dyn CacheStore>,
    /// The dedupe leases and results.
    pub dedupe: Arc<dyn DedupeStore>,
    /// The rate limiter's admissions and server feedback.
    pub rate_limits: Arc<dyn RateLimitStore>,
    /// The journal of upstream calls.
    pub journal: Journal,
    /// The SQLite file, for what only it has (the rate-limit tables, sizes, schema versions).
    pub sqlite: Option<SqliteStore>,
}

impl Stores {
    /// The stores of a SQLite file.
    pub fn sqlite(store: SqliteStore) -> Stores {
        Stores {
            cache: Arc::new(store.cache()),
            dedupe: Arc::new(store.dedupe()),
            rate_limits: Arc::new(store.rate_limits()),
            journal: Journal::new(store.journal()),
            sqlite: Some(store),
        }
    }

    /// The stores under a Redis prefix.
    #[cfg(feature = "redis")]
    pub fn redis(store: &courteous::store::redis::RedisStore) -> Stores {
        Stores {
            cache: Arc::new(store.cache()),
            dedupe: Arc::new(store.dedupe()),
            rate_limits: Arc::new(store.rate_limits()),
            journal: Journal::new(store.journal()),
            sqlite: None,
        }
    }
}

/// The windows `status` counts admissions in.
const WINDOWS: [(&str, u64); 3] = [("1s", 1_000), ("1m", 60_000), ("1h", 3_600_000)];

/// What the store holds for one resource.
#[derive(Debug, Default)]
struct Held {
    /// Per window: (user, background) admissions.
    windows: [(u64, u64); 3],
    in_flight: u64,
    blocked_until: Option<u64>,
    server_remaining: Option<i64>,
}

/// `status [RESOURCE] [--limit R=N/W]...`.
pub async fn status(
    stores: &Stores,
    only: Option<String>,
    limits: Vec<(String, Limit)>,
) -> Result<Report, Failure> {
    let now = SystemClock.now().as_millis();
    let held = match &stores.sqlite {
        Some(store) => held(store, now).await?,
        None if limits.is_empty() => {
            return Err("on Redis the resources are not listed: name them with \
                        --limit RESOURCE=N/WINDOW"
                .into());
        }
        None => BTreeMap::new(),
    };
    status_report(stores, held, now, only, limits).await
}

/// What the SQLite rate-limit tables hold per resource, read in one read transaction.
async fn held(store: &SqliteStore, now: u64) -> Result<BTreeMap<String, Held>, SqliteError> {
    store
        .call(move |conn| {
            let tx = conn.transaction()?;
            let mut held = BTreeMap::<String, Held>::new();
            let now_sql = i64::try_from(now).unwrap_or(i64::MAX);
            {
                let mut names = tx.prepare(
                    "SELECT resource FROM rate_limit_state
                     UNION SELECT DISTINCT resource FROM rate_limit_admissions",
                )?;
                let rows = names.query_map([], |r| r.get::<_, String>(0))?;
                for name in rows {
                    held.entry(name?).or_default();
                }
                let mut state = tx.prepare(
                    "SELECT resource, blocked_until, budget_remaining FROM rate_limit_state",
                )?;
                let rows = state.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })?;
                for row in rows {
                    let (name, blocked, remaining) = row?;
                    let entry = held.entry(name).or_default();
                    if blocked > now_sql {
                        entry.blocked_until = u64::try_from(blocked).ok();
                    }
                    entry.server_remaining = remaining;
                }
                // An admission in flight is stamped with its expiry, ahead of now.
                let mut counts = tx.prepare(
                    "SELECT resource,
                         coalesce(sum(at > ?1 - 1000 AND background = 0), 0),
                         coalesce(sum(at > ?1 - 1000 AND background != 0), 0),
                         coalesce(sum(at > ?1 - 60000 AND background = 0), 0),
                         coalesce(sum(at > ?1 - 60000 AND background != 0), 0),
                         coalesce(sum(at > ?1 - 3600000 AND background = 0), 0),
                         coalesce(sum(at > ?1 - 3600000 AND background != 0), 0),
                         coalesce(sum(at > ?1 + 1), 0)
                     FROM rate_limit_admissions GROUP BY resource",
                )?;
                let rows = counts.query_map([now_sql], |r| {
                    let mut n = [0i64; 7];
                    for (i, v) in n.iter_mut().enumerate() {
                        *v = r.get(i + 1)?;
                    }
                    Ok((r.get::<_, String>(0)?, n))
                })?;
                for row in rows {
                    let (name, n) = row?;
                    let n = n.map(|v| u64::try_from(v).unwrap_or(0));
                    let entry = held.entry(name).or_default();
                    entry.windows = [(n[0], n[1]), (n[2], n[3]), (n[4], n[5])];
                    entry.in_flight = n[6];
                }
            }
            tx.finish()?;
            Ok::<_, SqliteError>(held)
        })
        .await
}

/// `status`'s tables: what the store holds, and what remains under the limits given.
async fn status_report(
    stores: &Stores,
    held: BTreeMap<String, Held>,
    now: u64,
    only: Option<String>,
    limits: Vec<(String, Limit)>,
) -> Result<Report, Failure> {
    let filter = only.clone();
    let held: BTreeMap<String, Held> = held
        .into_iter()
        .filter(|(name, _)| filter.as_ref().is_none_or(|f| f == name))
        .collect();

    let mut table = Table::new(&[
        "resource",
        "user 1s",
        "bg 1s",
        "user 1m",
        "bg 1m",
        "user 1h",
        "bg 1h",
        "in flight",
        "blocked until",
    ]);
    let mut resources = Vec::new();
    for (name, h) in &held {
        let mut row = vec![name.clone()];
        let mut windows = serde_json::Map::new();
        for ((label, _), (user, background)) in WINDOWS.iter().zip(h.windows) {
            row.push(user.to_string());
            row.push(background.to_string());
            windows.insert(
                (*label).to_owned(),
                json!({ "user": user, "background": background }),
            );
        }
        row.push(h.in_flight.to_string());
        row.push(h.blocked_until.map_or_else(|| "-".to_owned(), utc));
        table.row(row);
        resources.push(json!({
            "resource": name,
            "admissions": windows,
            "in_flight": h.in_flight,
            "blocked_until": h.blocked_until.map(utc),
            "server_remaining": h.server_remaining,
        }));
    }
    let mut tables = Vec::new();
    if stores.sqlite.is_some() {
        tables.push((String::new(), table));
    }

    // The application's limits, given on the command line: what remains under them.
    let mut per_resource = BTreeMap::<String, Vec<Limit>>::new();
    for (name, limit) in limits {
        if only.as_ref().is_none_or(|o| *o == name) {
            per_resource.entry(name).or_default().push(limit);
        }
    }
    let mut remaining = Vec::new();
    if !per_resource.is_empty() {
        let mut table = Table::new(&[
            "resource",
            "limit",
            "used",
            "background",
            "remaining",
            "next free slot",
            "in flight",
            "blocked until",
        ]);
        for (name, limits) in per_resource {
            let resource = Resource::new(&name)?;
            let status = stores
                .rate_limits
                .status(
                    &resource,
                    &limits,
                    &AdaptiveConfig::default(),
                    SystemClock.now(),
                )
                .await?;
            let blocked = status.blocked_until.map(|t| utc(t.as_millis()));
            for limit in &status.limits {
                let window = format!("{}/{}s", limit.limit.max(), limit.limit.window().as_secs());
                let next = if limit.remaining > 0 {
                    "now".to_owned()
                } else {
                    limit
                        .reset
                        .map_or_else(|| "-".to_owned(), |t| utc(t.as_millis()))
                };
                table.row(vec![
                    name.clone(),
                    window.clone(),
                    limit.used.to_string(),
                    limit.background_used.to_string(),
                    limit.remaining.to_string(),
                    next.clone(),
                    status.in_flight.to_string(),
                    blocked.clone().unwrap_or_else(|| "-".to_owned()),
                ]);
                remaining.push(json!({
                    "resource": name,
                    "limit": window,
                    "used": limit.used,
                    "background_used": limit.background_used,
                    "remaining": limit.remaining,
                    "next_free_slot": next,
                    "in_flight": status.in_flight,
                    "blocked_until": blocked,
                    "reason": status.reason,
                }));
            }
        }
        tables.push(("Limits given with --limit".to_owned(), table));
    }
    Ok(Report {
        json: json!({ "now": utc(now), "resources": resources, "limits": remaining }),
        tables,
    })
}

/// `stats`.
pub async fn stats(stores: &Stores) -> Result<Report, Failure> {
    let cache = stores.cache.stats().await?;
    let dedupe = stores.dedupe.stats().await?;
    let limits = stores.rate_limits.stats().await?;
    let calls = stores.journal.query(&JournalQuery::all()).await?;
    let journal_rows = calls.len();
    let to_time = |t: Option<u64>| t.map(utc);
    let oldest = calls.iter().map(|c| c.time.as_millis()).min();
    let newest = calls.iter().map(|c| c.time.as_millis()).max();
    let (versions, (db, wal), path) = match &stores.sqlite {
        Some(store) => (
            crate::file::schema_versions(store).await?,
            crate::file::sizes(store.path()),
            Some(store.path().display().to_string()),
        ),
        None => (Vec::new(), (0, 0), None),
    };

    let mut table = Table::new(&["part", "count", "value"]);
    let mut add = |part: &str, what: &str, value: String| {
        table.row(vec![part.to_owned(), what.to_owned(), value]);
    };
    add("cache", "entries", cache.entries.to_string());
    add("cache", "bytes", bytes(cache.bytes));
    add("cache", "expired", cache.expired.to_string());
    add(
        "dedupe",
        "leaders (leases held)",
        dedupe.pending.to_string(),
    );
    add("dedupe", "results kept", dedupe.completed.to_string());
    add("dedupe", "expired", dedupe.expired.to_string());
    add("rate limit", "resources", limits.resources.to_string());
    add(
        "rate limit",
        "admissions kept",
        limits.admissions.to_string(),
    );
    add("rate limit", "in flight", limits.in_flight.to_string());
    add(
        "rate limit",
        "blocked by a server",
        limits.blocked.to_string(),
    );
    add("journal", "calls kept", journal_rows.to_string());
    add(
        "journal",
        "oldest",
        to_time(oldest).unwrap_or_else(|| "-".into()),
    );
    add(
        "journal",
        "newest",
        to_time(newest).unwrap_or_else(|| "-".into()),
    );
    if path.is_some() {
        add("file", "database", bytes(db));
        add("file", "WAL", bytes(wal));
    }
    for (component, version) in &versions {
        add("schema", component, version.to_string());
    }
    let versions_json: serde_json::Map<String, Value> = versions
        .iter()
        .map(|(c, v)| (c.clone(), json!(v)))
        .collect();
    Ok(Report {
        json: json!({
            "cache": { "entries": cache.entries, "bytes": cache.bytes, "expired": cache.expired },
            "dedupe": { "leaders": dedupe.pending, "results": dedupe.completed, "expired": dedupe.expired },
            "rate_limit": {
                "resources": limits.resources, "admissions": limits.admissions,
                "in_flight": limits.in_flight, "blocked": limits.blocked,
            },
            "journal": { "calls": journal_rows, "oldest": to_time(oldest), "newest": to_time(newest) },
            "file": path.map(|path| json!({ "path": path, "database_bytes": db, "wal_bytes": wal })),
            "schema": versions_json,
        }),
        tables: vec![(String::new(), table)],
    })
}

/// `journal [--since D] [--resource R] [--by B]`.
pub async fn journal(
    stores: &Stores,
    since: Option<Duration>,
    resource: Option<String>,
    by: By,
) -> Result<Report, Failure> {
    let mut query = since.map_or_else(JournalQuery::all, JournalQuery::since);
    if let Some(resource) = resource {
        query = query.resource(Resource::new(resource)?);
    }
    let summary = stores.journal.summary(&query, by.into()).await?;
    let by_name = courteous::journal::GroupBy::from(by).as_str();
    let mut table = Table::new(&[
        by_name,
        "calls",
        "quota spent",
        "bytes",
        "p50 ms",
        "max ms",
        "limiter wait ms",
        "revalidations",
        "followers",
    ]);
    let mut groups = Vec::new();
    for group in summary.groups.iter().chain([&summary.total]) {
        table.row(vec![
            group.key.clone(),
            group.calls.to_string(),
            group.quota_spent.to_string(),
            group.bytes.to_string(),
            group.latency_p50.as_millis().to_string(),
            group.latency_max.as_millis().to_string(),
            group.limiter_wait.as_millis().to_string(),
            group.revalidations.to_string(),
            group.followers.to_string(),
        ]);
        groups.push(json!({
            "key": group.key,
            "calls": group.calls,
            "quota_spent": group.quota_spent,
            "bytes": group.bytes,
            "latency_p50_ms": group.latency_p50.as_millis() as u64,
            "latency_max_ms": group.latency_max.as_millis() as u64,
            "limiter_wait_ms": group.limiter_wait.as_millis() as u64,
            "revalidations": group.revalidations,
            "followers": group.followers,
        }));
    }
    let total = groups.pop();
    Ok(Report {
        json: json!({ "by": by_name, "groups": groups, "total": total }),
        tables: vec![(String::new(), table)],
    })
}

/// `unblock RESOURCE`.
pub async fn unblock(stores: &Stores, resource: &str) -> Result<Report, Failure> {
    let resource = Resource::new(resource)?;
    stores.rate_limits.unblock(&resource).await?;
    Ok(done(
        json!({ "unblocked": resource.as_str() }),
        format!("unblocked {resource}"),
    ))
}

/// `invalidate URL-PREFIX`.
pub async fn invalidate(stores: &Stores, prefix: &str) -> Result<Report, Failure> {
    let dropped = stores
        .cache
        .invalidate(&Invalidation::Prefix(prefix.to_owned()))
        .await?;
    Ok(done(
        json!({ "prefix": prefix, "cache_entries_dropped": dropped }),
        format!("dropped {dropped} cached responses under {prefix}"),
    ))
}

/// `purge [--expired]`.
pub async fn purge(stores: &Stores, expired: bool) -> Result<Report, Failure> {
    let cache = &stores.cache;
    let dropped = if expired {
        cache.purge_expired().await?
    } else {
        let entries = cache.stats().await?.entries;
        cache.clear().await?;
        entries
    };
    let dedupe = stores.dedupe.cleanup().await?;
    Ok(done(
        json!({ "expired_only": expired, "cache_entries_dropped": dropped, "dedupe_rows_dropped": dedupe }),
        format!("dropped {dropped} cached responses and {dedupe} expired dedupe rows"),
    ))
}

/// `clear`.
pub async fn clear(stores: &Stores) -> Result<Report, Failure> {
    let cache = &stores.cache;
    let entries = cache.stats().await?.entries;
    cache.clear().await?;
    Ok(done(
        json!({ "cache_entries_dropped": entries }),
        format!("dropped {entries} cached responses"),
    ))
}

/// The report of a command that changed something: one line, or its JSON.
fn done(json: Value, line: String) -> Report {
    let mut table = Table::new(&[]);
    table.row(vec![line]);
    Report {
        json,
        tables: vec![(String::new(), table)],
    }
}
