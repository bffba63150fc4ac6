//! One budget of remote-store time per request.
//!
//! A request crosses several layers, and each may ask a remote store (Redis) something: the
//! cache looks the request up, dedupe claims it, the rate limiter admits it, and they write
//! back afterwards. With one timeout per command, an outage cost a request the timeout once per
//! command (710–770 ms with a 250 ms timeout). Instead, the first layer that sees a request
//! gives it a [`StoreBudget`] (kept in its extensions, so every layer and every request made on
//! its behalf, such as a revalidation, shares it) and runs its work inside the budget's scope;
//! a Redis command then waits at most the store's operation timeout *less what the request has
//! already spent waiting on stores*, and one whose budget is spent fails at once without being
//! sent. Work done outside a request (background writes, cleanup) has no budget and gets the
//! whole timeout per command.

// Only the Redis backend spends the budget; without it the layers still carry it.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

tokio::task_local! {
    static CURRENT: StoreBudget;
}

/// The time a request has spent waiting on remote stores, shared by every layer it crosses.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoreBudget {
    spent: Arc<Mutex<Duration>>,
}

impl StoreBudget {
    /// The request's budget: the one in its extensions, else the one of the request this one is
    /// made for (the current scope), else a new one; stored in the extensions either way.
    pub(crate) fn of(extensions: &mut http::Extensions) -> StoreBudget {
        if let Some(budget) = extensions.get::<StoreBudget>() {
            return budget.clone();
        }
        let budget = Self::current().unwrap_or_default();
        extensions.insert(budget.clone());
        budget
    }

    /// Runs `work` with this budget as the current one.
    pub(crate) fn scope<F: Future>(self, work: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, work)
    }

    /// The budget of the request being worked on, if any.
    pub(crate) fn current() -> Option<StoreBudget> {
        CURRENT.try_with(StoreBudget::clone).ok()
    }

    /// What is left of `total` after what was spent.
    pub(crate) fn left(&self, total: Duration) -> Duration {
        total.saturating_sub(*self.spent.lock())
    }

    /// Adds `time` to what was spent.
    pub(crate) fn charge(&self, time: Duration) {
        let mut spent = self.spent.lock();
        *spent = spent.saturating_add(time);
    }
}

/// Charges the time from its creation to its drop (an operation that completes, fails or is
/// cancelled) to a budget.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Option<StoreBudget>,
    started: tokio::time::Instant,
}

impl Charge {
    pub(crate) fn start(budget: Option<StoreBudget>) -> Self {
        Charge {
            budget,
            started: tokio::time::Instant::now(),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.charge(self.started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_and_the_requests_made_for_it_share_one_budget() {
        let mut outer = http::Extensions::new();
        let budget = StoreBudget::of(&mut outer);
        assert_eq!(
            budget.left(Duration::from_millis(250)),
            Duration::from_millis(250)
        );
        budget
            .clone()
            .scope(async {
                {
                    let _charge = Charge::start(StoreBudget::current());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // A request made inside (a revalidation) gets the same budget.
                let mut inner = http::Extensions::new();
                let same = StoreBudget::of(&mut inner);
                assert_eq!(
                    same.left(Duration::from_millis(250)),
                    Duration::from_millis(150)
                );
                // Cancelled work is charged too.
                let work = async {
                    let _charge = Charge::start(StoreBudget::current());
                    tokio::time::sleep(Duration::from_secs(10)).await;
                };
                let _ = tokio::time::timeout(Duration::from_millis(200), work).await;
            })
            .await;
        assert_eq!(budget.left(Duration::from_millis(250)), Duration::ZERO);
        // The same extensions give the same budget; outside any scope there is none.
        assert_eq!(
            StoreBudget::of(&mut outer).left(Duration::from_secs(1)),
            Duration::from_millis(700)
        );
        assert!(StoreBudget::current().is_none());
    }
}
