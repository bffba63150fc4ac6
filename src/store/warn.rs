//! Rate-limited warnings of store failures.
//!
//! A store that is down fails every request; a warning per request would flood the logs (and
//! cost each request the logging). [`store_warn!`] logs at most one warning per store per
//! [`INTERVAL`], with the number of failures whose warnings were left out since the previous
//! one (`suppressed`); those are logged at `debug`.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// At most one warning per store in this interval.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// Per store (by address): when its last warning was logged, and how many were left out since.
static LAST: LazyLock<Mutex<HashMap<usize, (Instant, u64)>>> = LazyLock::new(Mutex::default);

/// Whether a failure of `store` is warned about now: `Some(n)` with the number of warnings left
/// out since the last one, or `None` to leave this one out (it is counted).
///
/// Every failure is also counted in the `courteous_store_errors_total` metric, labelled with the
/// layer whose store failed ([`layer_of`]).
pub(crate) fn admit<T: ?Sized>(store: &T) -> Option<u64> {
    crate::observe::store_error(layer_of(std::any::type_name::<T>()));
    let key = std::ptr::from_ref(store).cast::<()>() as usize;
    let now = Instant::now();
    let mut last = LAST.lock();
    if last.len() > 1024 {
        last.retain(|_, (at, _)| now.saturating_duration_since(*at) < INTERVAL);
    }
    match last.get_mut(&key) {
        Some((at, suppressed)) if now.saturating_duration_since(*at) < INTERVAL => {
            *suppressed += 1;
            None
        }
        Some((at, suppressed)) => {
            *at = now;
            Some(std::mem::take(suppressed))
        }
        None => {
            last.insert(key, (now, 0));
            Some(0)
        }
    }
}

/// The layer a store type belongs to, from the module path in its type name (the stores are
/// passed as `dyn CacheStore`, `dyn DedupeStore`, `dyn RateLimitStore` or the layer's state).
fn layer_of(type_name: &str) -> &'static str {
    [
        ("::rate_limit::", "rate_limit"),
        ("::dedupe::", "dedupe"),
        ("::cache::", "cache"),
    ]
    .into_iter()
    .find(|(path, _)| type_name.contains(path))
    .map_or("store", |(_, layer)| layer)
}

/// `tracing::warn!` for a failure of the store `$store` (any reference that identifies it),
/// rate limited by [`admit`]: the warning carries `suppressed`, the count of those left out
/// since the previous one, which go to `debug` instead.
macro_rules! store_warn {
    ($store:expr, $($arg:tt)+) => {
        match $crate::store::warn::admit($store) {
            Some(suppressed) => ::tracing::warn!(suppressed, $($arg)+),
            None => ::tracing::debug!($($arg)+),
        }
    };
}
pub(crate) use store_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_labelled_with_their_layer() {
        use std::any::type_name;
        assert_eq!(
            layer_of(type_name::<dyn crate::cache::CacheStore>()),
            "cache"
        );
        assert_eq!(
            layer_of(type_name::<dyn crate::dedupe::store::DedupeStore>()),
            "dedupe"
        );
        assert_eq!(
            layer_of(type_name::<dyn crate::rate_limit::store::RateLimitStore>()),
            "rate_limit"
        );
        assert_eq!(layer_of(type_name::<u8>()), "store");
    }

    #[tokio::test(start_paused = true)]
    async fn one_warning_per_store_per_interval_with_the_count_left_out() {
        // Never freed, so no other test's store can have had these addresses.
        let (one, two): (&u8, &u8) = (Box::leak(Box::new(1)), Box::leak(Box::new(2)));
        assert_eq!(admit(one), Some(0));
        assert_eq!(admit(two), Some(0), "another store warns on its own");
        for _ in 0..41 {
            assert_eq!(admit(one), None);
        }
        tokio::time::advance(INTERVAL - Duration::from_millis(1)).await;
        assert_eq!(admit(one), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(admit(one), Some(42));
        assert_eq!(admit(one), None);
        tokio::time::advance(INTERVAL).await;
        assert_eq!(admit(one), Some(1));
        assert_eq!(admit(two), Some(0));
    }
}
