//! Rate limits: publishes per connection, publishes per client over HTTP,
//! what one client writes across all its connections (messages and bytes),
//! and invalid frames (and other budgets of refusals) per connection. All are GCRA token buckets from
//! the `governor` crate (lock-free, well kept, and it tells when the next
//! request would pass, which becomes `retry_after_ms`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

fn burst_quota(per_second: u32) -> Quota {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// Publishes per second for one connection, with a burst of twice the rate.
pub struct PublishRateLimiter(DefaultDirectRateLimiter);

impl PublishRateLimiter {
    /// A limiter of `per_second` publishes per second.
    #[must_use]
    pub fn new(per_second: u32) -> Self {
        Self(RateLimiter::direct(burst_quota(per_second)))
    }

    /// Takes one publish; `Err` holds how long until one would pass.
    ///
    /// # Errors
    /// The wait when the limit is reached.
    pub fn check(&self) -> Result<(), Duration> {
        self.0
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Takes `count` publishes at once, or none.
    ///
    /// # Errors
    /// The wait until they would pass (`Duration::MAX`: more than a burst,
    /// never).
    pub fn check_n(&self, count: NonZeroU32) -> Result<(), Duration> {
        match self.0.check_n(count) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            Err(_) => Err(Duration::MAX),
        }
    }
}

/// Publishes per second per client (token subject, or address), for the
/// HTTP endpoints: what a connection's [`PublishRateLimiter`] is to a
/// WebSocket.
pub struct KeyedPublishRateLimiter(DefaultKeyedRateLimiter<Arc<str>>);

impl KeyedPublishRateLimiter {
    /// A limiter of `per_second` publishes per second per client.
    #[must_use]
    pub fn new(per_second: u32) -> Self {
        Self(RateLimiter::keyed(burst_quota(per_second)))
    }

    /// Takes one publish for `client`.
    ///
    /// # Errors
    /// The wait when the limit is reached.
    pub fn check(&self, client: &Arc<str>) -> Result<(), Duration> {
        self.0
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets clients whose bucket is full again (bounds memory).
    pub fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }
}

/// What one client (token subject, or address) may write across all its
/// connections and HTTP: publishes and signals per second, and bytes of
/// bodies per second, each with a burst of twice the rate. Without it a
/// client holding many connections multiplies the per-connection rate.
pub struct ClientWriteLimiter {
    messages: DefaultKeyedRateLimiter<Arc<str>>,
    bytes: DefaultKeyedRateLimiter<Arc<str>>,
}

impl ClientWriteLimiter {
    /// A limiter of `messages` per second and `bytes` per second per client.
    #[must_use]
    pub fn new(messages: u32, bytes: u32) -> Self {
        Self {
            messages: RateLimiter::keyed(burst_quota(messages)),
            bytes: RateLimiter::keyed(burst_quota(bytes)),
        }
    }

    /// Takes `count` writes of `bytes` bytes in all for `client`, all or
    /// none of each budget (a STOMP transaction's COMMIT takes its SENDs at
    /// once, so it cannot be cut short half-way).
    ///
    /// # Errors
    /// How long until they would pass (`Duration::MAX` when they never
    /// can: more than a burst).
    pub fn check(&self, client: &Arc<str>, count: usize, bytes: usize) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        let take = |limiter: &DefaultKeyedRateLimiter<Arc<str>>, amount: usize| -> Result<(), Duration> {
            let Some(amount) = NonZeroU32::new(u32::try_from(amount).unwrap_or(u32::MAX)) else {
                return Ok(());
            };
            match limiter.check_key_n(client, amount) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(not_until)) => Err(not_until.wait_time_from(now)),
                Err(_) => Err(Duration::MAX),
            }
        };
        take(&self.messages, count)?;
        take(&self.bytes, bytes)
    }

    /// Forgets clients whose buckets are full again (bounds memory).
    pub fn forget_idle(&self) {
        self.messages.retain_recent();
        self.messages.shrink_to_fit();
        self.bytes.retain_recent();
        self.bytes.shrink_to_fit();
    }
}

/// How many invalid frames a connection may send per minute.
pub struct InvalidFrameBudget(DefaultDirectRateLimiter);

impl InvalidFrameBudget {
    /// A budget of `per_minute` invalid frames, all usable at once.
    #[must_use]
    pub fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self(RateLimiter::direct(
            Quota::per_minute(per_minute).allow_burst(per_minute),
        ))
    }

    /// Spends one; `false` once the budget is exhausted.
    #[must_use]
    pub fn spend(&self) -> bool {
        self.0.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_limiter_allows_a_burst_of_twice_the_rate_then_says_when() {
        let limiter = PublishRateLimiter::new(5);
        for _ in 0..10 {
            assert!(limiter.check().is_ok());
        }
        let wait = limiter.check().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
    }

    #[test]
    fn a_client_shares_one_budget_of_messages_and_bytes_across_connections() {
        let limiter = ClientWriteLimiter::new(5, 1000);
        let alice: Arc<str> = Arc::from("sub:alice");
        let bob: Arc<str> = Arc::from("sub:bob");
        assert!(limiter.check(&alice, 10, 100).is_ok(), "a burst of twice the rate");
        assert!(limiter.check(&alice, 1, 1).is_err(), "messages spent");
        assert!(limiter.check(&bob, 1, 1500).is_ok(), "bob has his own");
        assert!(limiter.check(&bob, 1, 600).is_err(), "bytes spent: 2000 burst");
        assert_eq!(
            limiter.check(&bob, 1, 5000).unwrap_err(),
            Duration::MAX,
            "more than a burst never passes"
        );
    }

    #[test]
    fn invalid_frame_budget_is_exhausted_after_the_limit() {
        let budget = InvalidFrameBudget::new(3);
        assert!(budget.spend() && budget.spend() && budget.spend());
        assert!(!budget.spend());
    }
}
