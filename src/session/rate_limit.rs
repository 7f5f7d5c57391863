//! Rate limits: publishes per connection, publishes per client address over
//! HTTP, and invalid frames per connection. All are GCRA token buckets from
//! the `governor` crate (lock-free, well kept, and it tells when the next
//! request would pass, which becomes `retry_after_ms`).

use std::net::IpAddr;
use std::num::NonZeroU32;
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
}

/// Publishes per second per client address, for the HTTP endpoint.
pub struct AddressRateLimiter(DefaultKeyedRateLimiter<IpAddr>);

impl AddressRateLimiter {
    /// A limiter of `per_second` publishes per second per address.
    #[must_use]
    pub fn new(per_second: u32) -> Self {
        Self(RateLimiter::keyed(burst_quota(per_second)))
    }

    /// Takes one publish for `address`.
    ///
    /// # Errors
    /// The wait when the limit is reached.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        self.0
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets addresses whose bucket is full again (bounds memory).
    pub fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
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
    fn invalid_frame_budget_is_exhausted_after_the_limit() {
        let budget = InvalidFrameBudget::new(3);
        assert!(budget.spend() && budget.spend() && budget.spend());
        assert!(!budget.spend());
    }
}
