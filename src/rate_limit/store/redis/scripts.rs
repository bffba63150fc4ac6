//! The Lua scripts of the rate-limit store, one `.lua` file each next to this one, and the
//! bounds of the numbers they are given.
//!
//! Every script is `prelude.lua` (the checked reading of arguments, the clock, the constants)
//! followed by its own file; the KEYS and ARGV each one takes are documented on its static
//! below. Redis knows a script by the SHA1 of its text, so the text is assembled exactly as it
//! was when the scripts were inline: editing a file (even its blank lines) changes the hash, and
//! Redis then loads the new script on its first use.

use std::sync::LazyLock;

use redis::Script;

/// The shortest life of a resource's state hash after its last admission.
pub(super) const STATE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// The longest delay or duration (in ms) a script is given or writes: about ten years.
///
/// Longer ones are clamped to it in Rust before they reach a script, and the scripts clamp what
/// they compute from stored times to it. Numbers stay far below 2^53 (exact in Lua) and 1e17
/// (above which Lua hands Redis `PEXPIRE 1e+17`, which it rejects), and a refusal's `retry_at`
/// far below 2^63 (which Lua returns as `i64::MIN`).
pub(super) const MAX_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
// Sums the scripts make (a time since the epoch plus a few of them) stay exact in Lua.
const _: () = assert!(4_000_000_000_000 + 3 * MAX_MS < 1 << 53);

/// The script whose body is the file `$file`, after the prelude.
macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                "\n",
                include_str!("prelude.lua"),
                "\n",
                include_str!($file)
            ))
        })
    };
}

/// Shared by every script (`prelude.lua`): `MAX_MS` (the same value as the Rust constant, which
/// a test checks), the checked reading of numeric arguments, and the time (`ARGV[1]`: empty for
/// the server's `TIME`, else the caller's milliseconds).
#[cfg(test)]
const PRELUDE: &str = include_str!("prelude.lua");

/// The decision of `decide()` (src/rate_limit/store/mod.rs), with the record of an admission.
///
/// KEYS: all, bg, state, act, actidx.
/// ARGV: now, in-flight bound ms ('' for an admission stamped final), 'u' or 'b', longest window
/// ms, state ttl ms, monitoring ms, key ttl slack ms, paused retry ms, number of limits, then per
/// limit: window ms, max, user reserved, background max, paused (1 or 0); then the identity the
/// caller proposes for the admission (decimal digits; another is taken when it is in use).
/// Returns {'admitted', now, remaining (-1: unlimited), id, stamp} or {'refused', now, retry_at,
/// reason}.
pub(super) static ACQUIRE: LazyLock<Script> = script!("acquire.lua");

/// KEYS: state, act. ARGV: now, monitoring ms.
/// Returns {now, any request (1/0), last user admission (-1: none), second, count, ...}.
pub(super) static ACTIVITY: LazyLock<Script> = script!("activity.lua");

/// KEYS: all, bg, state. ARGV: now, number of windows, window ms...
/// Returns {{now, blocked_until, budget remaining, budget observed, budget reset, budget used,
/// in flight, of which background}, {total, background, oldest} per window}, -1 for what is
/// missing.
pub(super) static STATUS: LazyLock<Script> = script!("status.lua");

/// KEYS: state. ARGV: now, 'block' or 'budget', delay ms from now (until or reset), remaining,
/// state ttl ms. Returns the server's now.
pub(super) static FEEDBACK: LazyLock<Script> = script!("feedback.lua");

/// Re-stamps an in-flight admission (see [`RateLimitStore::settle`](crate::rate_limit::RateLimitStore::settle)).
///
/// KEYS: all, bg, state. ARGV: now, id, in-flight bound ms (expiry − decision), 'u' or 'b', key
/// ttl slack ms. Returns 1 if it was in flight, else 0 (settled before, or trimmed).
pub(super) static SETTLE: LazyLock<Script> = script!("settle.lua");

/// What the store holds of one resource (see [`RateLimitStore::stats`](crate::rate_limit::RateLimitStore::stats)).
///
/// KEYS: all, state. ARGV: now. Returns {admissions, of which in flight, blocked (1/0)}.
pub(super) static STATS: LazyLock<Script> = script!("stats.lua");

/// `ms` clamped to [`MAX_MS`], as the scripts take a delay or a duration (with
/// [`duration_ms`](crate::time::duration_ms) for a [`Duration`](std::time::Duration)).
pub(super) fn capped(ms: u64) -> u64 {
    ms.min(MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::duration_ms;
    use std::time::Duration;

    #[test]
    fn the_scripts_clamp_to_the_same_maximum_as_rust() {
        let lua = format!("local MAX_MS = {MAX_MS}\n");
        assert!(PRELUDE.contains(&lua));
        let lua = format!(
            "local SETTLE_ROUNDING_MS = {}\n",
            crate::rate_limit::store::SETTLE_ROUNDING_MS
        );
        assert!(PRELUDE.contains(&lua));
        assert_eq!(capped(duration_ms(Duration::MAX)), MAX_MS);
        assert_eq!(capped(u64::MAX), MAX_MS);
    }
}
