//! The Redis store: admissions shared by every process on every machine that uses the server.
//!
//! # How a decision is made
//!
//! Each [`acquire`](RateLimitStore::acquire) is one Lua script, which Redis runs atomically: it
//! reads the server's feedback for the resource, counts the admissions in each limit's window,
//! applies the adaptive split, and records the admission, with nothing from another caller in
//! between. The script is a line-by-line mirror of the decision the memory and SQLite stores make
//! (same refusals, same `retry_at`), and the test suite checks it against them on random
//! schedules.
//!
//! # Keys
//!
//! For a resource `r` under the store's prefix `p` (`{r}` is a hash tag, so one resource's keys
//! live in one cluster slot):
//!
//! | key | holds | lives |
//! |---|---|---|
//! | `p:rl:{r}:all` | sorted set of every admission (member `s<id>` stamped, `i<id>` in flight; score its stamp in ms) | the longest window after the last admission, and after the expiry of the last one in flight |
//! | `p:rl:{r}:bg` | the same for background admissions only | the same |
//! | `p:rl:{r}:state` | hash: `first_at`, `last_user_at`, `blocked_until`, `budget_remaining`, `budget_observed`, `budget_reset`, `keep` and `keep_until` (the retention high-water mark), `seq` (the last counter id, used when a proposed id is taken) | 7 days (or twice the sustained inactivity, if longer) after the last admission, at least as long as the sets, and at least until the server's block or reset |
//! | `p:rl:{r}:act` | hash: user admissions per second (`second -> count`) | the monitoring window after the last user admission |
//! | `p:rl:{r}:actidx` | sorted set of the seconds in `act`, to trim it | the same |
//!
//! Window counts are `ZCOUNT`s and the `k`-th oldest admission one `ZRANGEBYSCORE ... LIMIT`, so a
//! decision costs a few `O(log n)` steps whatever the window holds. Users' usage is the total
//! less the background's, so a user admission is written once. Each admission trims what no
//! window needs any more (`ZREMRANGEBYSCORE`), and every key carries a `PEXPIRE`: an idle
//! resource leaves nothing behind. What "no window" means is the longest window any caller
//! asked for within that window's own length (`keep`), not only the caller's: while processes
//! with different limits share the keys (a rolling deploy shortening a limit), the ones with
//! the longer window still count every admission they need. While the server's
//! `RateLimit-Remaining` budget applies, admissions are kept back to when it was observed, so
//! that the budget is counted in full.
//!
//! Delays and durations are clamped to about ten years before they reach a script (a
//! `Retry-After` of centuries, a [`Duration::MAX`] window), and the scripts check their
//! arguments before they write anything (Redis does not roll back a script that fails half-way).
//!
//! # In flight
//!
//! An admission asked for [in flight](AdmissionRequest::in_flight) (the layer's default,
//! upstream-exact accounting) is recorded as every store records it (see [`InFlight`]): with its
//! expiry (decision + bound) as its score, as member `i<id>`. Every window is counted from
//! `now − window` with no upper bound, so every process counts it in every window while it is in
//! flight; a refusal whose freeing slot is held by one says [`Refusal::InFlight`] and asks again
//! one window from now, the earliest that slot can free. [`settle`](RateLimitStore::settle) is
//! one script that re-stamps it atomically: `i<id>` becomes `s<id>` with the settlement's time as
//! its score, in `all` and (for background work) `bg`, visible to every process at once; a
//! second settlement (a retried write) finds no `i<id>` and does nothing. An admission whose
//! process died is never settled: it counts as if sent at its expiry until that leaves the
//! windows, and is trimmed like any other, so a crash holds a slot for its bound and one
//! window, not forever. The sets are kept (`PEXPIRE`, only ever extended) until the latest
//! expiry has left the longest window. The id is proposed by the caller (random, below 2^53),
//! so that an admission whose reply was lost (a timeout, a dropped future) is settled at its
//! decision in the background rather than holding its slot for its bound; should it be taken,
//! the id comes from `HINCRBY` on the state hash, which outlives the sets, and an id found taken
//! there too (the hash evicted under memory pressure) is skipped.
//!
//! Settlements are written one script each, not batched: the store's connection pipelines
//! concurrent commands, so a burst of settlements costs one round trip each in parallel, and a
//! settlement is visible as soon as it is written. What upstream-exact accounting costs on
//! Redis is that second script per request.
//!
//! # Clocks
//!
//! Admissions are stamped with the Redis server's clock (`TIME`, read inside the script, at the
//! moment Redis decides: however long the request waited before, in the layer, in the
//! connection's queue, or for a stalled server), so machines whose clocks disagree still count on
//! one time line.
//!
//! The times of a decision are mapped back to the caller's clock, the caller's now read as the
//! reply arrives standing for Redis's time of the decision: a decision's
//! [`at`](Decision::Admitted::at) is that now, its [`InFlight`] expiry as far after it as on
//! Redis, and the `retry_at` of a refusal `caller now + (retry_at − server now)`, so the layer
//! waits the right time whatever its own clock says. Settlements are stamped with `TIME` as they
//! are written, never before the decision (the script finds the decision's time on Redis's clock
//! as the admission's expiry less its bound, the same on either time line). Feedback
//! (`Retry-After`, a budget's reset) is mapped the other way, as a delay from the caller's
//! `now`.
//!
//! [`RedisClock::Caller`] stamps with the caller's clock instead ([`AdmissionRequest::clock`],
//! read after the activity read, right before the script is sent; a settlement's own time): for
//! tests with injected or paused time. It cannot see the time a command then waits in the
//! connection or in a stalled server, which `TIME` does; that is why the server's clock is the
//! default. Scripts that read `TIME` and then write need Redis 5 or later (effects
//! replication).
//!
//! # User activity
//!
//! The adaptive split is computed in Rust ([`allocate`]) from user activity that every machine
//! writes to `p:rl:{r}:act` in the admission script. Each process reads it (one script) at most
//! once per [recalculation interval](crate::rate_limit::AdaptiveConfig::recalculation_interval)
//! per resource, like the SQLite store, and passes the split's numbers to the admission script:
//! the activity behind a background decision may be up to one interval old; the counts of the
//! windows never are.
//!
//! # When Redis fails
//!
//! Every call (a decision with its activity read included) is bounded by the [operation
//! timeout](crate::store::redis::RedisStoreBuilder::operation_timeout) and fails with a
//! [`StoreError`] whose source is a [`RedisError`]; the layer then fails closed (the request is
//! not sent) or open, as [`RateLimitLayer::on_store_error`](crate::rate_limit::RateLimitLayer::on_store_error)
//! says. After a restart the store reconnects by itself: a command that fails on the broken
//! connection is sent once more on a new one, within the same timeout.
//!
//! # Note on cancellation
//!
//! A request dropped before its script reaches Redis records nothing. One dropped while the
//! script runs (or whose connection broke after Redis ran it, and was retried) may be recorded
//! without being sent: it over-counts by one, which never lets the API see more than the limit.
//! Recorded in flight, such an admission is never settled and holds its slot until its expiry
//! (and counts one window after it), like the admission of a process that died.
//!
//! # Example
//!
//! ```no_run
//! use courteous::rate_limit::{Limit, Limits, RateLimitLayer};
//! use courteous::store::redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisStore::builder("redis://127.0.0.1:6379/").prefix("myapp").connect()?;
//! let limits = Limits::new().default_limit(Limit::per_hour(200));
//! let layer = RateLimitLayer::new(redis.rate_limits(), limits)?;
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::{ErrorKind, Script, Value};

use super::{
    AdmissionLog, AdmissionRequest, Decision, InFlight, RateLimitStats, RateLimitStatus,
    RateLimitStore, Refusal, ResourceStats, ServerFeedback, ServerState, retention, status_of,
};
use crate::context::Priority;
use crate::rate_limit::adaptive::{
    Activity, AdaptiveConfig, WindowUsage, activity_from_buckets, allocate,
};
use crate::rate_limit::limit::Limit;
use crate::resource::Resource;
use crate::store::StoreError;
use crate::store::redis::{RedisError, RedisStore};
use crate::time::Timestamp;

/// The shortest life of a resource's state hash after its last admission.
const STATE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// How much longer keys live with [`RedisClock::Caller`], whose times Redis's expiry cannot
/// follow.
const CALLER_CLOCK_SLACK_MS: u64 = 3600 * 1000;

/// The longest delay or duration (in ms) a script is given or writes: about ten years.
///
/// Longer ones are clamped to it in Rust before they reach a script, and the scripts clamp what
/// they compute from stored times to it. Numbers stay far below 2^53 (exact in Lua) and 1e17
/// (above which Lua hands Redis `PEXPIRE 1e+17`, which it rejects), and a refusal's `retry_at`
/// far below 2^63 (which Lua returns as `i64::MIN`).
const MAX_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
// Sums the scripts make (a time since the epoch plus a few of them) stay exact in Lua.
const _: () = assert!(4_000_000_000_000 + 3 * MAX_MS < 1 << 53);

/// Shared by every script: `MAX_MS` (the same value as the Rust constant, which a test checks),
/// the checked reading of numeric arguments, and the time (`ARGV[1]`: empty for the server's
/// `TIME`, else the caller's milliseconds).
macro_rules! prelude {
    () => {
        r#"
local MAX_MS = 315360000000
-- A settled admission may be stamped this far ahead of the clock (a settlement's time is rounded
-- up to the next millisecond); a stamp further ahead is an in-flight admission's expiry.
local SETTLE_ROUNDING_MS = 1
-- ARGV[i] as a number in [low, high]; else the script fails before it writes anything (Redis
-- does not roll a script back).
local function num(i, low, high)
  local n = tonumber(ARGV[i])
  if not n or n ~= n or n < low or n > high then
    return error('courteous rate-limit script: argument ' .. i .. ' out of range: ' .. tostring(ARGV[i]))
  end
  return n
end
local function now_ms()
  if ARGV[1] ~= '' then
    return num(1, 0, 1e15)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#
    };
}

/// The decision of `decide()` (src/rate_limit/store/mod.rs), with the record of an admission.
///
/// KEYS: all, bg, state, act, actidx.
/// ARGV: now, in-flight bound ms ('' for an admission stamped final), 'u' or 'b', longest window
/// ms, state ttl ms, monitoring ms, key ttl slack ms, paused retry ms, number of limits, then per
/// limit: window ms, max, user reserved, background max, paused (1 or 0); then the identity the
/// caller proposes for the admission (decimal digits; another is taken when it is in use).
/// Returns {'admitted', now, remaining (-1: unlimited), id, stamp} or {'refused', now, retry_at,
/// reason}.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
-- Every argument is checked before the first write.
local bound = -1
if ARGV[2] ~= '' then
  bound = math.max(num(2, 0, MAX_MS), 1)
end
local own_keep = num(4, 0, MAX_MS)
local state_ttl = num(5, 0, MAX_MS)
local monitoring = num(6, 0, MAX_MS)
local slack = num(7, 0, MAX_MS)
local paused_retry = num(8, 0, MAX_MS)
local count = num(9, 0, 100000)
for i = 0, count - 1 do
  local a = 10 + i * 5
  num(a, 0, MAX_MS)
  num(a + 1, 0, 4294967295)
  num(a + 2, 0, 4294967295)
  num(a + 3, 0, 4294967295)
end
local proposed = ARGV[10 + count * 5]
if proposed and not string.match(proposed, '^%d+$') then
  return error('courteous rate-limit script: argument ' .. (10 + count * 5) .. ' out of range: ' .. proposed)
end
-- Stored times are clamped too (a hash written by an older version may hold anything).
local function cap(t)
  return math.min(t, now + MAX_MS)
end
local state = redis.call('HMGET', KEYS[3], 'blocked_until', 'budget_remaining',
  'budget_observed', 'budget_reset', 'keep', 'keep_until')
-- The retention high-water mark: the longest window any caller counted in recently, so that
-- callers with shorter windows (a rolling deploy shortening a limit) do not trim admissions
-- that callers with the longer one still count. It lapses its own length after it was last
-- asked for.
local high, high_until = tonumber(state[5]) or 0, tonumber(state[6]) or 0
if own_keep >= high or high_until <= now then
  redis.call('HSET', KEYS[3], 'keep', own_keep, 'keep_until', now + own_keep)
  if redis.call('PTTL', KEYS[3]) < state_ttl then
    redis.call('PEXPIRE', KEYS[3], state_ttl)
  end
  high = own_keep
end
local blocked = cap(tonumber(state[1]) or 0)
if blocked > now then
  return {'refused', now, blocked, 'server_blocked'}
end
local remaining = -1
local keep = math.min(math.max(own_keep, high), MAX_MS)
local ttl = keep
local reset = tonumber(state[4])
if state[2] and state[3] and reset and reset > now then
  reset = cap(reset)
  local left, observed = tonumber(state[2]), tonumber(state[3])
  local used = redis.call('ZCOUNT', KEYS[1], '(' .. observed, '+inf')
  if used >= left then
    return {'refused', now, reset, 'server_budget'}
  end
  remaining = left - used - 1
  keep = math.min(math.max(keep, now - observed), MAX_MS)
  ttl = math.min(math.max(keep, reset - now), MAX_MS)
end
local user = ARGV[3] == 'u'
local refused_at, reason = nil, nil
for i = 0, count - 1 do
  local a = 10 + i * 5
  local window, max = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local since = math.max(now - window, 0)
  local total = redis.call('ZCOUNT', KEYS[1], '(' .. since, '+inf')
  local k
  if user then
    k = math.max(total - max + 1, 0)
  elseif ARGV[a + 4] == '1' then
    k = -1
  else
    local background = redis.call('ZCOUNT', KEYS[2], '(' .. since, '+inf')
    local unused = math.max(tonumber(ARGV[a + 2]) - math.max(total - background, 0), 0)
    k = math.max(background + 1 - tonumber(ARGV[a + 3]), total + unused + 1 - max, 0)
  end
  if k == 0 then
    if remaining < 0 or max - total - 1 < remaining then
      remaining = max - total - 1
    end
  else
    local at, why
    if k < 0 then
      at, why = now + paused_retry, 'background_paused'
    else
      local kth = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. since, '+inf', 'WITHSCORES',
        'LIMIT', k - 1, 1)
      local oldest = tonumber(kth[2]) or now
      if oldest > now + SETTLE_ROUNDING_MS then
        -- Stamped with its expiry: in flight. It settles no earlier than now, so its slot
        -- frees one window from now at the earliest.
        oldest, why = now, 'in_flight'
      elseif user or total >= max then
        why = 'limit'
      else
        why = 'background_share'
      end
      at = cap(math.max(oldest + window + 1, now + 1))
    end
    if not refused_at or at > refused_at then
      refused_at, reason = at, why
    end
  end
end
if refused_at then
  return {'refused', now, refused_at, reason}
end
-- The admission's identity: unique among the resource's admissions, whatever process made
-- them ('i' in flight, 's' stamped). The caller's proposal (random, so that it can settle the
-- admission should the reply be lost) unless it is taken; else a counter. The state hash that
-- counts them outlives the sets that hold them (below); should it have been lost all the same
-- (evicted), a taken identity is skipped.
local function free(id)
  return not redis.call('ZSCORE', KEYS[1], 'i' .. id) and not redis.call('ZSCORE', KEYS[1], 's' .. id)
end
local id, member = proposed, nil
if not id or not free(id) then
  repeat
    id = string.format('%d', redis.call('HINCRBY', KEYS[3], 'seq', 1))
  until free(id)
end
local stamp = now
member = 's' .. id
if bound >= 0 then
  -- In flight: stamped with its expiry, so that it counts in every window until it settles
  -- (or, never settled, from then on as if sent then), and kept until that stamp leaves the
  -- longest window.
  stamp, member = now + bound, 'i' .. id
  ttl = math.min(math.max(ttl, bound + keep), MAX_MS)
end
ttl = ttl + slack
local function record(key)
  redis.call('ZADD', key, stamp, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - keep)
  -- Only ever extended: an in-flight admission may need the set longer than this one does.
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
record(KEYS[1])
if not user then
  record(KEYS[2])
end
redis.call('HSETNX', KEYS[3], 'first_at', now)
if user then
  local last = tonumber(redis.call('HGET', KEYS[3], 'last_user_at'))
  if not last or now > last then
    redis.call('HSET', KEYS[3], 'last_user_at', now)
  end
  local second = math.floor(now / 1000)
  if redis.call('HINCRBY', KEYS[4], second, 1) == 1 then
    redis.call('ZADD', KEYS[5], second, second)
    local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', math.floor((now - monitoring) / 1000) - 2,
      'LIMIT', 0, 100)
    if #old > 0 then
      redis.call('HDEL', KEYS[4], unpack(old))
      redis.call('ZREM', KEYS[5], unpack(old))
    end
  end
  redis.call('PEXPIRE', KEYS[4], monitoring + 1000 + slack)
  redis.call('PEXPIRE', KEYS[5], monitoring + 1000 + slack)
end
state_ttl = math.max(state_ttl, ttl)
if redis.call('PTTL', KEYS[3]) < state_ttl then
  redis.call('PEXPIRE', KEYS[3], state_ttl)
end
return {'admitted', now, remaining, tonumber(id), stamp}
"#
    ))
});

/// KEYS: state, act. ARGV: now, monitoring ms.
/// Returns {now, any request (1/0), last user admission (-1: none), second, count, ...}.
static ACTIVITY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
local state = redis.call('HMGET', KEYS[1], 'first_at', 'last_user_at')
local out = {now, state[1] and 1 or 0, tonumber(state[2]) or -1}
local from = math.floor((now - num(2, 0, MAX_MS)) / 1000)
local buckets = redis.call('HGETALL', KEYS[2])
for i = 1, #buckets, 2 do
  local second = tonumber(buckets[i])
  if second >= from then
    out[#out + 1] = second
    out[#out + 1] = tonumber(buckets[i + 1])
  end
end
return out
"#
    ))
});

/// KEYS: all, bg, state. ARGV: now, number of windows, window ms...
/// Returns {{now, blocked_until, budget remaining, budget observed, budget reset, budget used,
/// in flight, of which background}, {total, background, oldest} per window}, -1 for what is
/// missing.
static STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
local windows = num(2, 0, 100000)
for i = 1, windows do
  num(2 + i, 0, MAX_MS)
end
local state = redis.call('HMGET', KEYS[3], 'blocked_until', 'budget_remaining',
  'budget_observed', 'budget_reset')
local function cap(t)
  if t then
    return math.min(t, now + MAX_MS)
  end
end
state[1] = cap(tonumber(state[1]))
state[4] = cap(tonumber(state[4]))
local used = -1
if state[3] then
  used = redis.call('ZCOUNT', KEYS[1], '(' .. state[3], '+inf')
end
-- In flight: stamped after now and a settlement's rounding (with their expiry).
local live = '(' .. (now + SETTLE_ROUNDING_MS)
local out = {{now, tonumber(state[1]) or 0, tonumber(state[2]) or -1, tonumber(state[3]) or -1,
  tonumber(state[4]) or -1, used, redis.call('ZCOUNT', KEYS[1], live, '+inf'),
  redis.call('ZCOUNT', KEYS[2], live, '+inf')}}
for i = 1, windows do
  local since = math.max(now - tonumber(ARGV[2 + i]), 0)
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. since, '+inf', 'WITHSCORES',
    'LIMIT', 0, 1)
  out[#out + 1] = {redis.call('ZCOUNT', KEYS[1], '(' .. since, '+inf'),
    redis.call('ZCOUNT', KEYS[2], '(' .. since, '+inf'), tonumber(oldest[2]) or -1}
end
return out
"#
    ))
});

/// KEYS: state. ARGV: now, 'block' or 'budget', delay ms from now (until or reset), remaining,
/// state ttl ms. Returns the server's now.
static FEEDBACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
-- Checked before the first write.
local delay = num(3, -MAX_MS, MAX_MS)
num(4, 0, 4294967295)
local state_ttl = num(5, 0, MAX_MS)
if ARGV[2] == 'block' then
  local current = math.min(tonumber(redis.call('HGET', KEYS[1], 'blocked_until')) or 0,
    now + MAX_MS)
  if now + delay > current then
    redis.call('HSET', KEYS[1], 'blocked_until', now + delay)
  end
else
  -- The server's count includes the response's own request, whose settlement (just before,
  -- on `TIME` too) is stamped `TIME` rounded up: with `TIME`, the budget is observed no earlier
  -- than that (with the caller's clock, the layer's `now` already is).
  local observed = now
  if ARGV[1] == '' then
    observed = now + SETTLE_ROUNDING_MS
  end
  redis.call('HSET', KEYS[1], 'budget_remaining', ARGV[4], 'budget_observed', observed,
    'budget_reset', now + delay)
end
local ttl = math.max(delay, 0) + state_ttl
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return now
"#
    ))
});

/// Re-stamps an in-flight admission (see [`RateLimitStore::settle`]).
///
/// KEYS: all, bg, state. ARGV: now, id, in-flight bound ms (expiry − decision), 'u' or 'b', key
/// ttl slack ms. Returns 1 if it was in flight, else 0 (settled before, or trimmed).
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
-- Checked before the first write.
if not string.match(ARGV[2], '^%d+$') then
  return error('courteous rate-limit script: argument 2 out of range: ' .. tostring(ARGV[2]))
end
local bound = num(3, 0, MAX_MS)
local slack = num(5, 0, MAX_MS)
local live = 'i' .. ARGV[2]
local expiry = tonumber(redis.call('ZSCORE', KEYS[1], live))
if not expiry then
  return 0
end
if ARGV[1] == '' then
  -- `TIME` rounded up to the next millisecond, as the layer rounds its clock: never before the
  -- response head arrived.
  now = now + SETTLE_ROUNDING_MS
end
-- Never before the decision (a clock that stepped back), which is its expiry less its bound.
local stamp = math.max(now, expiry - bound)
local settled = 's' .. ARGV[2]
local keep = math.min(tonumber(redis.call('HGET', KEYS[3], 'keep')) or 0, MAX_MS)
local ttl = math.min(stamp - now + keep, MAX_MS) + slack
local function restamp(key)
  redis.call('ZREM', key, live)
  redis.call('ZADD', key, stamp, settled)
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
restamp(KEYS[1])
if ARGV[4] == 'b' then
  restamp(KEYS[2])
end
return 1
"#
    ))
});

/// Whose clock stamps the admissions of a [`RedisRateLimitStore`].
///
/// # Example
///
/// ```no_run
/// use courteous::rate_limit::RedisClock;
/// use courteous::store::redis::RedisStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::redis::RedisError> {
/// let redis = RedisStore::connect("redis://127.0.0.1:6379/")?;
/// // For tests that run the layer on tokio's paused clock.
/// let store = redis.rate_limits().clock(RedisClock::Caller);
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RedisClock {
    /// The Redis server's clock (`TIME`, read when Redis runs the script), which every machine
    /// shares, whatever its own clock says (default).
    #[default]
    Server,
    /// The caller's clock ([`AdmissionRequest::clock`], the layer's
    /// [`Clock`](crate::rate_limit::Clock), read right before the script is sent; the time a
    /// settlement is given): for tests with injected or paused time, or machines whose clocks
    /// are synchronised. Machines whose clocks disagree miscount, a command's wait in the
    /// connection or a stalled server is not seen, and keys live an hour longer than their
    /// windows need (Redis expires them by its own clock).
    Caller,
}

impl RedisStore {
    /// A [`RateLimitStore`] on this Redis server, shared with every process (on any machine)
    /// that uses the same server and prefix. See [`RedisRateLimitStore`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// use courteous::rate_limit::{Limit, Limits, RateLimitLayer};
    /// use courteous::store::redis::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = RedisStore::builder("redis://127.0.0.1:6379/").prefix("myapp").connect()?;
    /// let limits = Limits::new().default_limit(Limit::per_second(5));
    /// let layer = RateLimitLayer::new(redis.rate_limits(), limits)?;
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn rate_limits(&self) -> RedisRateLimitStore {
        RedisRateLimitStore {
            redis: self.clone(),
            clock: RedisClock::Server,
            inner: Arc::new(Inner {
                offset: AtomicI64::new(UNKNOWN),
                activity: Mutex::default(),
                stats: Mutex::default(),
            }),
        }
    }
}

const UNKNOWN: i64 = i64::MIN;

/// Admissions counted on a Redis server, across machines. Made by [`RedisStore::rate_limits`];
/// see the [module docs](self) for the keys, the clocks and the failure behaviour.
///
/// Clones share the activity cache and the counters.
///
/// # Example
///
/// ```no_run
/// use courteous::rate_limit::{AdmissionRequest, Decision, Limit, RateLimitStore, AdaptiveConfig, Timestamp};
/// use courteous::store::redis::RedisStore;
/// use courteous::{Priority, Resource};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379/")?.rate_limits();
/// let request = AdmissionRequest::new(
///     Resource::new("search").unwrap(),
///     Priority::User,
///     Arc::new([Limit::per_second(1)]),
///     Arc::new(AdaptiveConfig::default()),
///     Timestamp::from_system_time(std::time::SystemTime::now()),
/// );
/// assert!(matches!(store.acquire(request.clone()).await?, Decision::Admitted { remaining: 0, .. }));
/// assert!(matches!(store.acquire(request).await?, Decision::Refused { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRateLimitStore {
    redis: RedisStore,
    clock: RedisClock,
    inner: Arc<Inner>,
}

struct Inner {
    /// The store's time minus the caller's, as of the last reply (`UNKNOWN` before one).
    offset: AtomicI64,
    /// Activity read from Redis, with the store's time of the read, reused for the
    /// recalculation interval.
    activity: Mutex<HashMap<Resource, (u64, Activity)>>,
    stats: Mutex<HashMap<Resource, ResourceStats>>,
}

impl fmt::Debug for RedisRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitStore")
            .field("redis", &self.redis)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A duration in ms as the scripts take it (at most [`MAX_MS`]).
fn ms(d: Duration) -> u64 {
    capped(crate::time::duration_ms(d))
}

/// `ms` clamped to [`MAX_MS`].
fn capped(ms: u64) -> u64 {
    ms.min(MAX_MS)
}

/// A resource's Redis keys.
struct Keys {
    all: String,
    bg: String,
    state: String,
    act: String,
    actidx: String,
}

fn unexpected(operation: &'static str, what: String) -> RedisError {
    RedisError::Command {
        operation,
        source: redis::RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unexpected reply from a rate-limit script",
            what,
        )),
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A time from a script (never negative).
fn time(n: i64) -> u64 {
    n.max(0) as u64
}

/// `t` in the store's frame moved to the caller's (`offset` = store − caller).
fn to_caller(t: u64, offset: i64) -> u64 {
    (i128::from(t) - i128::from(offset)).clamp(0, i128::from(u64::MAX)) as u64
}

/// What the admission script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Admitted { remaining: u32, id: u64, stamp: u64 },
    Refused { retry_at: u64, reason: Refusal },
}

fn decode_acquire(reply: &[Value]) -> Result<(u64, Answer), RedisError> {
    const OP: &str = "rate-limit acquire";
    let bad = |what: &str| unexpected(OP, format!("{what} in {reply:?}"));
    let tag = reply.first().and_then(text).ok_or_else(|| bad("no tag"))?;
    let num = |i: usize| reply.get(i).and_then(int).ok_or_else(|| bad("no number"));
    let now = time(num(1)?);
    let answer = match tag {
        "admitted" => Answer::Admitted {
            remaining: u32::try_from(num(2)?).unwrap_or(u32::MAX),
            id: time(num(3)?),
            stamp: time(num(4)?),
        },
        "refused" => Answer::Refused {
            retry_at: time(num(2)?),
            reason: match reply.get(3).and_then(text) {
                Some("server_blocked") => Refusal::ServerBlocked,
                Some("server_budget") => Refusal::ServerBudget,
                Some("limit") => Refusal::Limit,
                Some("background_share") => Refusal::BackgroundShare,
                Some("background_paused") => Refusal::BackgroundPaused,
                Some("in_flight") => Refusal::InFlight,
                _ => return Err(bad("no reason")),
            },
        },
        _ => return Err(bad("unknown tag")),
    };
    Ok((now, answer))
}

/// The counts the status script read, answered as an [`AdmissionLog`] (in the caller's frame).
struct Prefetched {
    /// (since, usage, oldest admission after since)
    windows: Vec<(u64, WindowUsage, Option<u64>)>,
}

impl AdmissionLog for Prefetched {
    type Error = Infallible;

    fn usage(&mut self, since: u64) -> Result<WindowUsage, Infallible> {
        Ok(self
            .windows
            .iter()
            .find(|(s, _, _)| *s == since)
            .map(|(_, u, _)| *u)
            .unwrap_or_default())
    }

    /// The oldest only: all that `status_of` asks for.
    fn kth_oldest(&mut self, since: u64, k: u32) -> Result<Option<u64>, Infallible> {
        debug_assert_eq!(k, 1, "the status script reads only the oldest admission");
        Ok(self
            .windows
            .iter()
            .find(|(s, _, _)| *s == since)
            .and_then(|(_, _, t)| *t))
    }
}

impl RedisRateLimitStore {
    /// Whose clock stamps admissions (default [`RedisClock::Server`]).
    #[must_use]
    pub fn clock(mut self, clock: RedisClock) -> Self {
        self.clock = clock;
        self
    }

    fn keys(&self, resource: &Resource) -> Keys {
        let r = resource.as_str();
        Keys {
            all: self.redis.key(format_args!("rl:{{{r}}}:all")),
            bg: self.redis.key(format_args!("rl:{{{r}}}:bg")),
            state: self.redis.key(format_args!("rl:{{{r}}}:state")),
            act: self.redis.key(format_args!("rl:{{{r}}}:act")),
            actidx: self.redis.key(format_args!("rl:{{{r}}}:actidx")),
        }
    }

    /// `ARGV[1]` of every script.
    fn now_arg(&self, caller_now: Timestamp) -> String {
        match self.clock {
            RedisClock::Server => String::new(),
            RedisClock::Caller => caller_now.as_millis().to_string(),
        }
    }

    fn slack(&self) -> u64 {
        match self.clock {
            RedisClock::Server => 0,
            RedisClock::Caller => CALLER_CLOCK_SLACK_MS,
        }
    }

    /// Notes the store's time against the caller's.
    fn observe_offset(&self, store_now: u64, caller_now: Timestamp) {
        let offset = i128::from(store_now) - i128::from(caller_now.as_millis());
        let offset = offset.clamp(i128::from(i64::MIN + 1), i128::from(i64::MAX)) as i64;
        self.inner.offset.store(offset, Ordering::Relaxed);
    }

    /// The user activity of `resource` and the store's time it holds for: cached for the
    /// recalculation interval, else read from Redis.
    async fn activity(
        &self,
        resource: &Resource,
        keys: &Keys,
        config: &AdaptiveConfig,
        caller_now: Timestamp,
    ) -> Result<(Activity, u64), RedisError> {
        let offset = self.inner.offset.load(Ordering::Relaxed);
        if offset != UNKNOWN {
            let now = (i128::from(caller_now.as_millis()) + i128::from(offset)).max(0) as u64;
            let every = ms(config.recalculation_interval);
            if let Some((at, activity)) = lock(&self.inner.activity).get(resource)
                && now.saturating_sub(*at) < every
                && *at <= now
                && activity.any_request
            {
                return Ok((*activity, now));
            }
        }
        let mut invocation = ACTIVITY.prepare_invoke();
        invocation
            .key(&keys.state)
            .key(&keys.act)
            .arg(self.now_arg(caller_now))
            .arg(capped(config.monitoring_ms()));
        let reply: Vec<i64> = self.redis.script("rate-limit activity", invocation).await?;
        let [now, any, last, buckets @ ..] = &reply[..] else {
            return Err(unexpected("rate-limit activity", format!("{reply:?}")));
        };
        let now = time(*now);
        self.observe_offset(now, caller_now);
        let activity = activity_from_buckets(
            buckets
                .chunks_exact(2)
                .map(|b| (time(b[0]), u32::try_from(b[1]).unwrap_or(0))),
            config,
            now,
            (*last >= 0).then_some(time(*last)),
            *any == 1,
        );
        let mut cache = lock(&self.inner.activity);
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(resource.clone(), (now, activity));
        Ok((activity, now))
    }

    fn count(&self, resource: &Resource, f: impl FnOnce(&mut ResourceStats)) {
        let mut stats = lock(&self.inner.stats);
        if let Some(entry) = stats.get_mut(resource) {
            return f(entry);
        }
        f(stats.entry(resource.clone()).or_default());
    }

    async fn decide(&self, request: &AdmissionRequest) -> Result<Decision, RedisError> {
        let keys = self.keys(&request.resource);
        let user = request.priority == Priority::User;
        let config = &request.adaptive;
        let activity = if user {
            None
        } else {
            Some(
                self.activity(&request.resource, &keys, config, request.clock.now())
                    .await?,
            )
        };
        // With `RedisClock::Caller`, the time of the decision: read after every other wait, right
        // before the script is sent (with `RedisClock::Server` the script reads `TIME` instead,
        // when Redis runs it).
        let sent_at = request.clock.now();
        let state_ttl = STATE_TTL_MS
            .max(ms(config.sustained_inactivity).saturating_mul(2))
            .max(config.monitoring_ms())
            .saturating_add(self.slack())
            .min(MAX_MS);
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(&keys.all)
            .key(&keys.bg)
            .key(&keys.state)
            .key(&keys.act)
            .key(&keys.actidx)
            .arg(self.now_arg(sent_at))
            .arg(
                request
                    .in_flight
                    .map(|bound| ms(bound).to_string())
                    .unwrap_or_default(),
            )
            .arg(if user { "u" } else { "b" })
            .arg(ms(retention(&request.limits)))
            .arg(state_ttl)
            .arg(capped(config.monitoring_ms()))
            .arg(self.slack())
            .arg(super::PAUSED_RETRY_MS)
            .arg(request.limits.len());
        for limit in request.limits.iter() {
            invocation.arg(capped(limit.window_ms())).arg(limit.max());
            match &activity {
                None => invocation.arg(0).arg(0).arg(0),
                Some((activity, now)) => {
                    let split = allocate(limit.max(), activity, config, *now);
                    invocation
                        .arg(split.user_reserved)
                        .arg(split.background_max)
                        .arg(u8::from(split.background_paused))
                }
            };
        }
        // Should the reply be lost (a timeout, or this future dropped) after Redis ran the
        // script, the admission it may have recorded in flight is settled at the decision
        // rather than holding its slot until its bound: the guard knows its identity.
        let proposed = proposed_id();
        invocation.arg(proposed);
        let mut lost = LostReply {
            store: self.clone(),
            admission: request.in_flight.map(|bound| {
                InFlight::new(
                    request.resource.clone(),
                    request.priority,
                    proposed,
                    sent_at,
                    sent_at + bound.max(Duration::from_millis(1)),
                )
            }),
            at: sent_at,
        };
        let reply: Vec<Value> = self.redis.script("rate-limit acquire", invocation).await?;
        let (now, answer) = decode_acquire(&reply)?;
        lost.admission = None;
        // The caller's time that goes with the store's `now`: read as the reply arrives, so that
        // a refusal's delay counts from the moment the layer gets it.
        let caller_now = match self.clock {
            RedisClock::Server => request.clock.now(),
            RedisClock::Caller => sent_at,
        };
        self.observe_offset(now, caller_now);
        Ok(match answer {
            // On the caller's time line: the decision was at `now` on Redis's, which is the
            // caller's `caller_now` (as far as one reply tells); the expiry is as far after it
            // on either.
            Answer::Admitted {
                remaining,
                id,
                stamp,
            } => Decision::Admitted {
                remaining,
                at: caller_now,
                in_flight: request.in_flight.map(|_| {
                    InFlight::new(
                        request.resource.clone(),
                        request.priority,
                        id,
                        caller_now,
                        caller_now + Duration::from_millis(stamp.saturating_sub(now)),
                    )
                }),
            },
            Answer::Refused { retry_at, reason } => Decision::Refused {
                // The same delay from the caller's now.
                retry_at: caller_now + Duration::from_millis(retry_at.saturating_sub(now)),
                reason,
            },
        })
    }
}

/// A random admission identity below 2^53 (exact as a Lua number), far above the counter's.
fn proposed_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let random =
        std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos, n));
    (1 << 52) | (random & ((1 << 52) - 1))
}

/// Settles, in the background, an admission whose acquire reply never arrived (see
/// [`RedisRateLimitStore::decide`]); disarmed by taking `admission`.
struct LostReply {
    store: RedisRateLimitStore,
    admission: Option<InFlight>,
    at: Timestamp,
}

impl Drop for LostReply {
    fn drop(&mut self) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        let (store, at) = (self.store.clone(), self.at);
        match tokio::runtime::Handle::try_current() {
            // Sent after the acquire on the same connection, so Redis runs it after the
            // acquire, once it answers again; if the acquire recorded nothing, it finds
            // nothing to settle.
            Ok(handle) => drop(handle.spawn(async move {
                if let Err(error) = store.settle(&admission, at).await {
                    tracing::debug!(resource = %admission.resource, %error, "could not settle an admission whose reply was lost; it holds its slot until its expiry");
                }
            })),
            Err(_) => tracing::debug!(
                resource = %admission.resource,
                "no async runtime to settle an admission whose reply was lost on"
            ),
        }
    }
}

#[async_trait]
impl RateLimitStore for RedisRateLimitStore {
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError> {
        // The activity read and the decision together stay within one operation timeout.
        let after = self.redis.operation_timeout();
        let decision = tokio::time::timeout(after, self.decide(&request))
            .await
            .map_err(|_| RedisError::Timeout {
                operation: "rate-limit acquire",
                after,
            })??;
        self.count(&request.resource, |stats| {
            match (&decision, request.priority) {
                (Decision::Refused { .. }, _) => stats.refused += 1,
                (_, Priority::User) => stats.admitted_user += 1,
                (_, Priority::Background) => stats.admitted_background += 1,
            }
        });
        Ok(decision)
    }

    async fn settle(&self, admission: &InFlight, at: Timestamp) -> Result<(), StoreError> {
        let keys = self.keys(&admission.resource);
        let mut invocation = SETTLE.prepare_invoke();
        invocation
            .key(&keys.all)
            .key(&keys.bg)
            .key(&keys.state)
            .arg(self.now_arg(at))
            .arg(admission.id)
            // The same in every frame: the decision's time on Redis's clock is its expiry there
            // less this.
            .arg(capped(
                admission
                    .expires_at
                    .as_millis()
                    .saturating_sub(admission.admitted_at.as_millis()),
            ))
            .arg(match admission.priority {
                Priority::User => "u",
                Priority::Background => "b",
            })
            .arg(self.slack());
        let _settled: i64 = self.redis.script("rate-limit settle", invocation).await?;
        Ok(())
    }

    async fn feedback(
        &self,
        resource: &Resource,
        feedback: ServerFeedback,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let keys = self.keys(resource);
        // At most `MAX_MS` either way, whatever the server sent.
        let delay = |t: Timestamp| {
            let max = i128::from(MAX_MS);
            (i128::from(t.as_millis()) - i128::from(now.as_millis())).clamp(-max, max) as i64
        };
        let (kind, delay, remaining) = match feedback {
            ServerFeedback::Block { until } => ("block", delay(until), 0),
            ServerFeedback::Remaining { remaining, reset } => ("budget", delay(reset), remaining),
        };
        let mut invocation = FEEDBACK.prepare_invoke();
        invocation
            .key(&keys.state)
            .arg(self.now_arg(now))
            .arg(kind)
            .arg(delay)
            .arg(remaining)
            .arg(STATE_TTL_MS.saturating_add(self.slack()));
        let store_now: i64 = self.redis.script("rate-limit feedback", invocation).await?;
        self.observe_offset(time(store_now), now);
        if kind == "block" {
            self.count(resource, |stats| stats.server_blocks += 1);
        }
        Ok(())
    }

    async fn status(
        &self,
        resource: &Resource,
        limits: &[Limit],
        adaptive: &AdaptiveConfig,
        now: Timestamp,
    ) -> Result<RateLimitStatus, StoreError> {
        const OP: &str = "rate-limit status";
        let keys = self.keys(resource);
        let mut invocation = STATUS.prepare_invoke();
        invocation
            .key(&keys.all)
            .key(&keys.bg)
            .key(&keys.state)
            .arg(self.now_arg(now))
            .arg(limits.len());
        for limit in limits {
            invocation.arg(capped(limit.window_ms()));
        }
        let reply: Vec<Vec<i64>> = self.redis.script(OP, invocation).await?;
        let bad = || unexpected(OP, format!("{reply:?}"));
        let Some(
            [
                store_now,
                blocked,
                left,
                observed,
                reset,
                used,
                live,
                live_bg,
            ],
        ) = reply.first().map(|h| &h[..])
        else {
            return Err(bad().into());
        };
        if reply.len() != limits.len() + 1 || reply[1..].iter().any(|w| w.len() != 3) {
            return Err(bad().into());
        }
        let offset = *store_now - now.as_millis() as i64;
        let caller = |t: i64| to_caller(time(t), offset);
        // Everything in the caller's frame, so that `status_of` reports the caller's times.
        let server = ServerState {
            blocked_until: caller(*blocked),
            budget: (*left >= 0 && *observed >= 0 && *reset >= 0).then(|| {
                (
                    u32::try_from(*left).unwrap_or(u32::MAX),
                    caller(*observed),
                    caller(*reset),
                )
            }),
        };
        let now_ms = now.as_millis();
        let mut log = Prefetched {
            windows: limits
                .iter()
                .zip(&reply[1..])
                .map(|(limit, w)| {
                    (
                        now_ms.saturating_sub(limit.window_ms()),
                        WindowUsage {
                            total: u32::try_from(w[0]).unwrap_or(u32::MAX),
                            background: u32::try_from(w[1]).unwrap_or(u32::MAX),
                        },
                        (w[2] >= 0).then(|| caller(w[2])),
                    )
                })
                .collect(),
        };
        // Stamped after now and a settlement's rounding: in flight (what `status_of` reports as
        // such).
        log.windows.push((
            now_ms.saturating_add(super::SETTLE_ROUNDING_MS),
            WindowUsage {
                total: u32::try_from((*live).max(0)).unwrap_or(u32::MAX),
                background: u32::try_from((*live_bg).max(0)).unwrap_or(u32::MAX),
            },
            None,
        ));
        if let Some((_, observed, _)) = server.budget {
            log.windows.push((
                observed,
                WindowUsage {
                    total: u32::try_from((*used).max(0)).unwrap_or(u32::MAX),
                    background: 0,
                },
                None,
            ));
        }
        // Fresh activity, as the other stores report it.
        let mut invocation = ACTIVITY.prepare_invoke();
        invocation
            .key(&keys.state)
            .key(&keys.act)
            .arg(self.now_arg(now))
            .arg(capped(adaptive.monitoring_ms()));
        let reply: Vec<i64> = self.redis.script(OP, invocation).await?;
        let [act_now, any, last, buckets @ ..] = &reply[..] else {
            return Err(unexpected(OP, format!("{reply:?}")).into());
        };
        let act_offset = *act_now - now.as_millis() as i64;
        let activity = activity_from_buckets(
            buckets.chunks_exact(2).map(|b| {
                // Seconds move with the frame too.
                let at = to_caller(time(b[0]).saturating_mul(1000), act_offset);
                (at / 1000, u32::try_from(b[1]).unwrap_or(0))
            }),
            adaptive,
            now_ms,
            (*last >= 0).then(|| to_caller(time(*last), act_offset)),
            *any == 1,
        );
        let Ok(status) = status_of(
            &mut log, resource, limits, adaptive, &activity, &server, now,
        );
        Ok(status)
    }

    fn stats(&self) -> RateLimitStats {
        RateLimitStats {
            resources: lock(&self.inner.stats)
                .iter()
                .map(|(r, s)| (r.as_str().to_owned(), *s))
                .collect(),
        }
    }

    async fn unblock(&self, resource: &Resource) -> Result<(), StoreError> {
        // Every decision reads these fields in its script: the next one, on any machine, sees
        // the block and the budget gone. The hash's expiry stays as it is.
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.keys(resource).state).arg(&[
            "blocked_until",
            "budget_remaining",
            "budget_observed",
            "budget_reset",
        ]);
        let _: i64 = self.redis.query("rate-limit unblock", cmd).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decode_or_fail_with_a_typed_error() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            decode_acquire(&[
                bulk("admitted"),
                Value::Int(1000),
                Value::Int(-1),
                Value::Int(7),
                Value::Int(61_000)
            ])
            .unwrap(),
            (
                1000,
                Answer::Admitted {
                    remaining: u32::MAX,
                    id: 7,
                    stamp: 61_000
                }
            )
        );
        assert_eq!(
            decode_acquire(&[
                bulk("refused"),
                Value::Int(1000),
                Value::Int(2001),
                bulk("in_flight")
            ])
            .unwrap(),
            (
                1000,
                Answer::Refused {
                    retry_at: 2001,
                    reason: Refusal::InFlight
                }
            )
        );
        // A reply of an older script (no id): a typed error, not a panic.
        assert!(decode_acquire(&[bulk("admitted"), Value::Int(1000), Value::Int(-1)]).is_err());
        assert_eq!(
            decode_acquire(&[
                bulk("refused"),
                Value::Int(1000),
                Value::Int(2001),
                bulk("background_share")
            ])
            .unwrap(),
            (
                1000,
                Answer::Refused {
                    retry_at: 2001,
                    reason: Refusal::BackgroundShare
                }
            )
        );
        let err = decode_acquire(&[bulk("refused"), Value::Int(1), Value::Int(2), bulk("?")])
            .unwrap_err();
        assert_eq!(err.code(), "redis_command");
        assert!(decode_acquire(&[Value::Int(3)]).is_err());
    }

    #[test]
    fn the_scripts_clamp_to_the_same_maximum_as_rust() {
        let lua = format!("local MAX_MS = {MAX_MS}\n");
        assert!(prelude!().contains(&lua));
        let lua = format!(
            "local SETTLE_ROUNDING_MS = {}\n",
            super::super::SETTLE_ROUNDING_MS
        );
        assert!(prelude!().contains(&lua));
        assert_eq!(ms(Duration::MAX), MAX_MS);
        assert_eq!(capped(u64::MAX), MAX_MS);
    }

    #[test]
    fn times_move_between_frames_without_overflow() {
        assert_eq!(to_caller(5_000, 3_000), 2_000);
        assert_eq!(to_caller(5_000, -3_000), 8_000);
        assert_eq!(to_caller(1_000, 3_000), 0);
        assert_eq!(to_caller(u64::MAX, -5), u64::MAX);
    }
}
