//! Pay rate limits: token buckets per buyer, per partner and per connection
//! (GCRA, from the `governor` crate). A pay request over its limit is
//! answered `Overloaded` at once with the time to wait; it makes no order
//! and takes no queue slot, so one flooding client cannot crowd out others.

use flashsale_protocol::{Role, UserId};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// A token bucket: `per_second` requests a second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second (at least 1).
    pub per_second: u32,
    /// Requests allowed at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl RateLimit {
    fn quota(self) -> Quota {
        let per_second = NonZeroU32::new(self.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(per_second).allow_burst(burst)
    }
}

type KeyedLimiter = RateLimiter<UserId, DefaultKeyedStateStore<UserId>, DefaultClock>;

/// The per-account pay limits, shared by all connections.
pub(crate) struct PayLimits {
    buyers: Option<KeyedLimiter>,
    partners: Option<KeyedLimiter>,
}

impl std::fmt::Debug for PayLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayLimits").finish_non_exhaustive()
    }
}

impl PayLimits {
    /// Limits for buyer accounts and partner accounts; `None` is unlimited.
    pub(crate) fn new(buyers: Option<RateLimit>, partners: Option<RateLimit>) -> Self {
        Self {
            buyers: buyers.map(|limit| RateLimiter::keyed(limit.quota())),
            partners: partners.map(|limit| RateLimiter::keyed(limit.quota())),
        }
    }

    /// Takes one pay token of the session's account (a partner's buyers
    /// share their partner's bucket); `Err` with the wait when it has none.
    ///
    /// # Errors
    /// The time until the account may pay again.
    pub(crate) fn check(&self, account: UserId, role: Role) -> Result<(), Duration> {
        let limiter = match role {
            Role::Buyer => self.buyers.as_ref(),
            Role::Partner => self.partners.as_ref(),
            Role::Admin => None,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter
            .check_key(&account)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Forgets accounts whose buckets are full again, so memory follows the
    /// accounts paying now, not every account that ever paid.
    pub(crate) fn forget_idle(&self) {
        for limiter in [&self.buyers, &self.partners].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// One connection's pay limit.
pub(crate) struct ConnectionLimit(Option<DefaultDirectRateLimiter>);

impl std::fmt::Debug for ConnectionLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimit").finish_non_exhaustive()
    }
}

impl ConnectionLimit {
    /// A connection's bucket; `None` is unlimited.
    pub(crate) fn new(limit: Option<RateLimit>) -> Self {
        Self(limit.map(|limit| RateLimiter::direct(limit.quota())))
    }

    /// Takes one pay token; `Err` with the wait when there is none.
    ///
    /// # Errors
    /// The time until the connection may pay again.
    pub(crate) fn check(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buyer_gets_its_burst_then_waits_and_others_are_unaffected() {
        let limits = PayLimits::new(
            Some(RateLimit {
                per_second: 1,
                burst: 3,
            }),
            None,
        );
        for _ in 0..3 {
            assert_eq!(limits.check(UserId(1), Role::Buyer), Ok(()));
        }
        let wait = limits
            .check(UserId(1), Role::Buyer)
            .expect_err("burst used up");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(limits.check(UserId(2), Role::Buyer), Ok(()));
        // Partners and admins are not limited by the buyer bucket.
        for _ in 0..10 {
            assert_eq!(limits.check(UserId(1), Role::Partner), Ok(()));
            assert_eq!(limits.check(UserId(1), Role::Admin), Ok(()));
        }
    }

    #[test]
    fn a_connection_bucket_refuses_beyond_its_burst() {
        let limit = ConnectionLimit::new(Some(RateLimit {
            per_second: 1,
            burst: 2,
        }));
        assert!(limit.check().is_ok());
        assert!(limit.check().is_ok());
        assert!(limit.check().is_err());
        assert!(ConnectionLimit::new(None).check().is_ok());
    }
}
