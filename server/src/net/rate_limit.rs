//! Rate limits and caps per client: token buckets per buyer, per partner
//! and per connection for pays (GCRA, from the `governor` crate), and the
//! cap on open connections per peer address ([`PeerConnections`]).
//!
//! A pay request over its limit is answered `Overloaded` at once with the
//! time to wait; it makes no order and takes no queue slot, so one flooding
//! client cannot crowd out others.

use crate::net::login_throttle::peer_key;
use flashsale_protocol::{Role, UserId};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A token bucket: `per_second` requests a second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second (at least 1).
    pub per_second: u32,
    /// Requests allowed at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl RateLimit {
    pub(crate) fn quota(self) -> Quota {
        let per_second = NonZeroU32::new(self.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(per_second).allow_burst(burst)
    }
}

type KeyedLimiter = RateLimiter<UserId, DefaultKeyedStateStore<UserId>, DefaultClock>;

/// The per-account pay limits, shared by all connections.
pub(crate) struct PayLimits {
    /// Buckets by buyer account. Bound: the accounts that paid within the
    /// last upkeep interval (a bucket is an account id, which clients do not
    /// choose); eviction: [`PayLimits::forget_idle`] drops full buckets
    /// every minute.
    buyers: Option<KeyedLimiter>,
    /// Buckets by partner account; bound and eviction as for `buyers`.
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

/// One open connection, as the per-peer cap sees it.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    /// The connection has a session now (set by its read loop).
    has_session: AtomicBool,
    /// The connection was closed to make room for a newer one of its peer.
    evicted: AtomicBool,
    /// Cancelled to close the connection.
    close: CancellationToken,
}

impl PeerSlot {
    /// Records whether the connection has a session (only one without a
    /// session can be evicted).
    pub(crate) fn set_session(&self, has_session: bool) {
        self.has_session.store(has_session, Ordering::Relaxed);
    }

    /// True once the connection was closed to make room.
    pub(crate) fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// Open connections of one peer group, oldest first, with a number each.
type PeerQueue = VecDeque<(u64, Arc<PeerSlot>)>;

/// The cap on open connections per peer address ([`peer_key`]: IPv6 by
/// its /64), counted
/// from accept: at the cap, the group's oldest connection without a
/// session is closed to make room, and when every one has a session the new
/// connection is refused. One address cannot take every slot of
/// `max_connections`, and anonymous connections go first.
#[derive(Debug)]
pub(crate) struct PeerConnections {
    /// Most open connections per peer group (at least 1).
    cap: usize,
    /// Open connections by peer group. Bound: one entry per open connection
    /// (at most `max_connections` of them, `cap` per group); eviction: an
    /// entry leaves when its connection closes, a group when its last one does.
    open: Mutex<(u64, HashMap<IpAddr, PeerQueue>)>,
}

/// A connection admitted by [`PeerConnections::admit`]: counted until dropped.
#[derive(Debug)]
pub(crate) struct PeerTicket {
    peers: Arc<PeerConnections>,
    group: IpAddr,
    number: u64,
    /// What the connection reports and learns through.
    pub(crate) slot: Arc<PeerSlot>,
}

impl PeerConnections {
    /// A cap of `cap` open connections per peer group.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            open: Mutex::new((0, HashMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<IpAddr, PeerQueue>)> {
        // A poisoned lock only means a panic elsewhere; the map stays consistent.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `ip`, closed through `close`: `None`
    /// when its group is at the cap and every connection of it has a
    /// session. At the cap, the group's oldest connection without a session
    /// is told to close (its token is cancelled) and stops counting at once.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        close: CancellationToken,
    ) -> Option<PeerTicket> {
        let group = peer_key(ip);
        let mut open = self.lock();
        let (next, groups) = &mut *open;
        let queue = groups.entry(group).or_default();
        if queue.len() >= self.cap {
            let oldest_anonymous = queue
                .iter()
                .position(|(_, slot)| !slot.has_session.load(Ordering::Relaxed));
            // Every connection of the address has a session: refuse the new one.
            if let Some((_, slot)) = queue.remove(oldest_anonymous?) {
                slot.evicted.store(true, Ordering::Relaxed);
                slot.close.cancel();
            }
        }
        *next += 1;
        let slot = Arc::new(PeerSlot {
            has_session: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            close,
        });
        queue.push_back((*next, Arc::clone(&slot)));
        Some(PeerTicket {
            peers: Arc::clone(self),
            group,
            number: *next,
            slot,
        })
    }

    /// Peer groups with open connections now (for tests of the bound).
    #[cfg(test)]
    fn groups(&self) -> usize {
        self.lock().1.len()
    }
}

impl Drop for PeerTicket {
    fn drop(&mut self) {
        let mut open = self.peers.lock();
        let groups = &mut open.1;
        if let Some(queue) = groups.get_mut(&self.group) {
            // Absent when it was evicted: it stopped counting then.
            queue.retain(|(number, _)| *number != self.number);
            if queue.is_empty() {
                groups.remove(&self.group);
            }
        }
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
    fn the_peer_map_evicts_the_oldest_anonymous_and_forgets_an_empty_group() {
        let peers = Arc::new(PeerConnections::new(2));
        let ip: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let first = peers.admit(ip, CancellationToken::new()).expect("room");
        let second = peers
            .admit(same_64, CancellationToken::new())
            .expect("room");
        second.slot.set_session(true);
        let third = peers.admit(ip, CancellationToken::new()).expect("evicts");
        assert!(first.slot.evicted() && first.slot.close.is_cancelled());
        third.slot.set_session(true);
        assert!(peers.admit(ip, CancellationToken::new()).is_none());
        drop((first, second, third));
        assert_eq!(peers.groups(), 0);
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
