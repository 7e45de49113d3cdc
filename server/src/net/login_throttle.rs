//! Login throttling: a rate limit on every login attempt (token buckets
//! per account and per peer, successful logins included), and exponential
//! backoff after failed logins, per account and peer address, per peer
//! address, and per account.
//!
//! * Every `Login` / `LoginApiKey` takes a token from its account's and its
//!   peer's bucket *before* it queues for a password-hashing slot
//!   ([`LoginThrottle::admit`]), so a few hundred connections logging one
//!   valid account in a loop cannot hold the slots another user needs. A
//!   peer that has logged in to the account before does not share the
//!   account's bucket: it has a bucket of its own for that account, at the
//!   same rate (and still its peer bucket). Otherwise anyone could keep a
//!   chosen account's bucket empty with wrong passwords and lock its owner out.
//! * Peers are keyed by [`peer_key`]: an IPv4 address, or an IPv6 /64 (one
//!   host usually holds a whole /64).
//!
//! * A peer that keeps guessing one account's password waits longer and
//!   longer (`pair`), and so does a peer that guesses many accounts
//!   (`peer`, credential stuffing).
//! * Many peers guessing one account (`account`) slow that account down, but
//!   never lock its owner out: a peer that has logged in to the account
//!   before is exempt from the account-wide backoff, and the account-wide
//!   delay is capped low, so an attacker cannot keep a user out for good.
//!
//! Memory is bounded: the maps never grow beyond
//! [`LoginPolicy::max_entries`]; when one is full, entries idle for
//! [`LoginPolicy::forget_after`] and not blocked are swept. A successful
//! login clears only its own account-and-address count: the per-address and
//! per-account counts keep what others tried.

use crate::net::rate_limit::RateLimit;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How hard failed logins are throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginPolicy {
    /// Failures of one peer on one account before backoff starts.
    pub free_per_account_and_peer: u32,
    /// Failures of one peer on any accounts before backoff starts.
    pub free_per_peer: u32,
    /// Failures on one account from any peers before backoff starts.
    pub free_per_account: u32,
    /// The first delay; each further failure doubles it.
    pub base_delay: Duration,
    /// Longest delay for a peer (on one account or on all).
    pub max_delay: Duration,
    /// Longest account-wide delay (kept short: it also delays the owner on a
    /// new device).
    pub max_account_delay: Duration,
    /// An entry idle this long (and not blocked) is forgotten.
    pub forget_after: Duration,
    /// Most entries per map.
    pub max_entries: usize,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            free_per_account_and_peer: 5,
            free_per_peer: 20,
            free_per_account: 50,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_account_delay: Duration::from_secs(30),
            forget_after: Duration::from_secs(900),
            max_entries: 100_000,
        }
    }
}

/// Failures of one key.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Instant,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Self {
            count: 0,
            last: now,
            blocked_until: now,
        }
    }

    fn fail(&mut self, now: Instant, free: u32, base: Duration, max: Duration) {
        self.count = self.count.saturating_add(1);
        self.last = now;
        if self.count > free {
            let doublings = (self.count - free - 1).min(20);
            let delay = base.saturating_mul(1 << doublings).min(max);
            self.blocked_until = now + delay;
        }
    }

    fn wait(&self, now: Instant) -> Option<Duration> {
        (self.blocked_until > now).then(|| self.blocked_until - now)
    }
}

/// A bounded map of failure counters.
#[derive(Debug)]
struct Counters<K> {
    map: HashMap<K, Failures>,
}

impl<K: Eq + Hash> Counters<K> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
        }
    }

    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        self.map.get(key).and_then(|f| f.wait(now))
    }

    fn fail(&mut self, key: K, now: Instant, free: u32, policy: &LoginPolicy, max: Duration) {
        if self.map.len() >= policy.max_entries && !self.map.contains_key(&key) {
            self.sweep(now, policy);
        }
        self.map
            .entry(key)
            .or_insert_with(|| Failures::new(now))
            .fail(now, free, policy.base_delay, max);
    }

    /// Forgets idle, unblocked entries; if still full, keeps only blocked ones.
    fn sweep(&mut self, now: Instant, policy: &LoginPolicy) {
        self.map.retain(|_, f| {
            f.blocked_until > now || now.duration_since(f.last) < policy.forget_after
        });
        if self.map.len() >= policy.max_entries {
            self.map.retain(|_, f| f.blocked_until > now);
        }
        if self.map.len() >= policy.max_entries {
            tracing::warn!(
                entries = self.map.len(),
                "login throttle full; forgetting every entry"
            );
            self.map.clear();
        }
    }

    fn forget(&mut self, key: &K) {
        self.map.remove(key);
    }
}

/// The address a peer is throttled and rate-limited by: an IPv4 address
/// (also one mapped into IPv6) as it is, an IPv6 address cut to its /64
/// prefix, so a host cannot dodge its limits by cycling through its
/// subnet's 2^64 addresses.
pub(crate) fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// A token bucket's state: `tokens` as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Tokens at `now` (refilled since `at`, at most `burst`).
    fn level(&self, now: Instant, limit: RateLimit) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64()
            * f64::from(limit.per_second.max(1));
        (self.tokens + refill).min(f64::from(limit.burst.max(1)))
    }
}

/// Token buckets of login attempts, by key.
///
/// Bound: at most [`LoginPolicy::max_entries`] keys. Eviction: when full, a
/// new key first sweeps the buckets that have refilled to their burst
/// (a full bucket is the same as no bucket); if every bucket is still
/// draining, the new key is admitted untracked (logged), so a flood of
/// fresh keys can neither grow the map nor lock anyone out. Filling it
/// takes `max_entries` keys each drained within the last `burst / rate`
/// seconds, which the per-peer bucket itself slows.
#[derive(Debug)]
struct Buckets<K> {
    map: HashMap<K, Bucket>,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
        }
    }

    /// The wait before `key` has a token, or `None` when it has one now
    /// (also for a new key the full map cannot track).
    fn wait(&mut self, key: &K, now: Instant, limit: RateLimit, max: usize) -> Option<Duration> {
        if !self.map.contains_key(key) && self.map.len() >= max {
            self.map
                .retain(|_, b| b.level(now, limit) < f64::from(limit.burst.max(1)));
        }
        let level = self
            .map
            .get(key)
            .map_or(f64::from(limit.burst.max(1)), |b| b.level(now, limit));
        (level < 1.0).then(|| {
            Duration::from_secs_f64((1.0 - level) / f64::from(limit.per_second.max(1)))
                .max(Duration::from_millis(1))
        })
    }

    /// Takes one token of `key` (which [`Buckets::wait`] found one for).
    fn take(&mut self, key: K, now: Instant, limit: RateLimit, max: usize) {
        if let Some(bucket) = self.map.get_mut(&key) {
            bucket.tokens = bucket.level(now, limit) - 1.0;
            bucket.at = now;
        } else if self.map.len() < max {
            let tokens = f64::from(limit.burst.max(1)) - 1.0;
            self.map.insert(key, Bucket { tokens, at: now });
        } else {
            tracing::warn!(
                entries = self.map.len(),
                "login rate buckets full; admitting a login untracked"
            );
        }
    }
}

/// Peers that logged in to an account, remembered per account (at most this many).
const TRUSTED_PEERS_PER_ACCOUNT: usize = 8;

#[derive(Debug)]
struct State {
    pair: Counters<(String, IpAddr)>,
    peer: Counters<IpAddr>,
    account: Counters<String>,
    /// Bound: `max_entries` accounts, emptied when full and a new account
    /// comes (only accounts that logged in successfully get here).
    trusted: HashMap<String, Vec<IpAddr>>,
    /// Login attempts per account ([`Buckets`]): `(account, None)` for
    /// every peer but the account's trusted ones, `(account, Some(peer))`
    /// for each trusted peer.
    account_rate: Buckets<(String, Option<IpAddr>)>,
    /// Login attempts per peer ([`peer_key`], [`Buckets`]).
    peer_rate: Buckets<IpAddr>,
}

impl State {
    /// True if `peer` has logged in to `account` (and is still remembered).
    fn trusts(&self, account: &str, peer: IpAddr) -> bool {
        self.trusted
            .get(account)
            .is_some_and(|peers| peers.contains(&peer))
    }
}

/// The login rate limits in force (`Config::login_rate_per_account`,
/// `Config::login_rate_per_peer`); `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoginRates {
    /// Attempts per account.
    pub(crate) per_account: Option<RateLimit>,
    /// Attempts per peer (IPv4 address or IPv6 /64).
    pub(crate) per_peer: Option<RateLimit>,
}

/// The login throttle, shared by all connections.
#[derive(Debug)]
pub(crate) struct LoginThrottle {
    policy: LoginPolicy,
    state: Mutex<State>,
}

impl LoginThrottle {
    /// A throttle with `policy`.
    pub(crate) fn new(policy: LoginPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(State {
                pair: Counters::new(),
                peer: Counters::new(),
                account: Counters::new(),
                trusted: HashMap::new(),
                account_rate: Buckets::new(),
                peer_rate: Buckets::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the counters stay usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a login attempt's token from the account's and the peer's
    /// buckets (`peer` already cut by [`peer_key`]), or the wait until both
    /// have one (then neither is taken). Successful attempts count too. A
    /// peer that has logged in to `account` before takes its token from a
    /// bucket of its own for the account (same rate), not the account's.
    ///
    /// # Errors
    /// The time until the attempt may be made.
    pub(crate) fn admit(
        &self,
        account: &str,
        peer: IpAddr,
        now: Instant,
        rates: LoginRates,
    ) -> Result<(), Duration> {
        let max = self.policy.max_entries;
        let mut state = self.lock();
        let known = state.trusts(account, peer).then_some(peer);
        let account = (account.to_owned(), known);
        let account_wait = rates
            .per_account
            .and_then(|limit| state.account_rate.wait(&account, now, limit, max));
        let peer_wait = rates
            .per_peer
            .and_then(|limit| state.peer_rate.wait(&peer, now, limit, max));
        if let Some(wait) = account_wait.max(peer_wait) {
            return Err(wait);
        }
        if let Some(limit) = rates.per_account {
            state.account_rate.take(account, now, limit, max);
        }
        if let Some(limit) = rates.per_peer {
            state.peer_rate.take(peer, now, limit, max);
        }
        Ok(())
    }

    /// How long `peer` must wait before trying `account` again, if it must.
    pub(crate) fn wait(&self, account: &str, peer: IpAddr, now: Instant) -> Option<Duration> {
        let state = self.lock();
        let account_wait = if state.trusts(account, peer) {
            None
        } else {
            state.account.wait(&account.to_owned(), now)
        };
        [
            state.pair.wait(&(account.to_owned(), peer), now),
            state.peer.wait(&peer, now),
            account_wait,
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Records a failed login.
    pub(crate) fn failed(&self, account: &str, peer: IpAddr, now: Instant) {
        let policy = self.policy;
        let mut state = self.lock();
        state.pair.fail(
            (account.to_owned(), peer),
            now,
            policy.free_per_account_and_peer,
            &policy,
            policy.max_delay,
        );
        state
            .peer
            .fail(peer, now, policy.free_per_peer, &policy, policy.max_delay);
        state.account.fail(
            account.to_owned(),
            now,
            policy.free_per_account,
            &policy,
            policy.max_account_delay,
        );
    }

    /// Records a successful login: the peer's record on the account is
    /// cleared and the peer is trusted for the account from now on.
    pub(crate) fn succeeded(&self, account: &str, peer: IpAddr) {
        let mut state = self.lock();
        state.pair.forget(&(account.to_owned(), peer));
        if state.trusted.len() >= self.policy.max_entries && !state.trusted.contains_key(account) {
            state.trusted.clear();
        }
        let peers = state.trusted.entry(account.to_owned()).or_default();
        if !peers.contains(&peer) {
            if peers.len() >= TRUSTED_PEERS_PER_ACCOUNT {
                peers.remove(0);
            }
            peers.push(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(LoginPolicy {
            free_per_account_and_peer: 2,
            free_per_peer: 4,
            free_per_account: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_account_delay: Duration::from_secs(5),
            forget_after: Duration::from_secs(600),
            max_entries: 1000,
        })
    }

    #[test]
    fn a_peer_guessing_one_account_waits_twice_as_long_after_each_failure() {
        let throttle = throttle();
        let now = Instant::now();
        for _ in 0..2 {
            assert_eq!(throttle.wait("alice", ip(1), now), None);
            throttle.failed("alice", ip(1), now);
        }
        assert_eq!(throttle.wait("alice", ip(1), now), None, "free failures");
        throttle.failed("alice", ip(1), now);
        assert_eq!(
            throttle.wait("alice", ip(1), now),
            Some(Duration::from_secs(1))
        );
        throttle.failed("alice", ip(1), now);
        assert_eq!(
            throttle.wait("alice", ip(1), now),
            Some(Duration::from_secs(2))
        );
        let later = now + Duration::from_secs(2);
        assert_eq!(throttle.wait("alice", ip(1), later), None, "the wait ends");
        // Another peer is not slowed by this one's failures on alice.
        assert_eq!(throttle.wait("alice", ip(2), now), None);
    }

    #[test]
    fn the_delay_is_capped() {
        let throttle = throttle();
        let now = Instant::now();
        for _ in 0..40 {
            throttle.failed("bob", ip(1), now);
        }
        let wait = throttle.wait("bob", ip(1), now).expect("blocked");
        assert_eq!(wait, Duration::from_secs(60));
    }

    #[test]
    fn a_peer_guessing_many_accounts_is_slowed_on_all_of_them() {
        let throttle = throttle();
        let now = Instant::now();
        for user in ["a", "b", "c", "d", "e"] {
            throttle.failed(user, ip(9), now);
        }
        assert!(throttle.wait("fresh-account", ip(9), now).is_some());
        assert_eq!(throttle.wait("fresh-account", ip(8), now), None);
    }

    #[test]
    fn many_peers_on_one_account_never_lock_out_a_peer_that_logged_in_before() {
        let throttle = throttle();
        let now = Instant::now();
        throttle.succeeded("carol", ip(200));
        for attacker in 1..=20 {
            throttle.failed("carol", ip(attacker), now);
        }
        let stranger = throttle
            .wait("carol", ip(100), now)
            .expect("account-wide backoff");
        assert!(
            stranger <= Duration::from_secs(5),
            "capped low: {stranger:?}"
        );
        assert_eq!(
            throttle.wait("carol", ip(200), now),
            None,
            "the owner's peer"
        );
    }

    #[test]
    fn a_success_clears_the_peers_record_on_that_account() {
        let throttle = throttle();
        let now = Instant::now();
        for _ in 0..3 {
            throttle.failed("dave", ip(1), now);
        }
        assert!(throttle.wait("dave", ip(1), now).is_some());
        throttle.succeeded("dave", ip(1));
        assert_eq!(throttle.wait("dave", ip(1), now), None);
    }

    #[test]
    fn ipv6_peers_are_keyed_by_their_64_prefix_and_ipv4_by_the_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(peer_key(a), peer_key(b));
        assert_eq!(peer_key(a), "2001:db8:1:2::".parse::<IpAddr>().expect("ip"));
        assert_ne!(peer_key(a), peer_key(other));
        assert_eq!(peer_key(ip(7)), ip(7));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("ip");
        assert_eq!(
            peer_key(mapped),
            ip(7),
            "an IPv4-mapped address is its IPv4 address"
        );
    }

    /// 10 logins a second per account (bursts of 3) and per peer (bursts of 5).
    fn account_burst_3_peer_burst_5() -> LoginRates {
        let rate = |burst| {
            Some(RateLimit {
                per_second: 10,
                burst,
            })
        };
        LoginRates {
            per_account: rate(3),
            per_peer: rate(5),
        }
    }

    #[test]
    fn logins_beyond_the_account_or_peer_rate_wait_and_others_do_not() {
        let throttle = throttle();
        let rates = account_burst_3_peer_burst_5();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(throttle.admit("alice", ip(1), now, rates), Ok(()));
        }
        let wait = throttle
            .admit("alice", ip(1), now, rates)
            .expect_err("account burst used");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another account from the same peer: its own bucket, the peer's has 2 left.
        assert_eq!(throttle.admit("bob", ip(1), now, rates), Ok(()));
        assert_eq!(throttle.admit("carol", ip(1), now, rates), Ok(()));
        assert!(
            throttle.admit("dave", ip(1), now, rates).is_err(),
            "peer burst used"
        );
        // Another peer is not slowed.
        assert_eq!(throttle.admit("bob", ip(2), now, rates), Ok(()));
        // Refilled after a while.
        let later = now + Duration::from_millis(100);
        assert_eq!(throttle.admit("alice", ip(3), later, rates), Ok(()));
    }

    #[test]
    fn a_peer_that_logged_in_before_has_its_own_account_bucket_and_keeps_its_peer_bucket() {
        let throttle = throttle();
        let rates = account_burst_3_peer_burst_5();
        let now = Instant::now();
        throttle.succeeded("alice", ip(2));
        // An attacker empties alice's account bucket.
        for _ in 0..3 {
            assert_eq!(throttle.admit("alice", ip(1), now, rates), Ok(()));
        }
        assert!(throttle.admit("alice", ip(1), now, rates).is_err());
        assert!(
            throttle.admit("alice", ip(3), now, rates).is_err(),
            "a stranger is held to the account rate"
        );
        // Alice's known peer still gets in, up to its own account burst.
        for _ in 0..3 {
            assert_eq!(throttle.admit("alice", ip(2), now, rates), Ok(()));
        }
        assert!(
            throttle.admit("alice", ip(2), now, rates).is_err(),
            "a known peer's own loop is held to the account rate"
        );
        // Its peer bucket (2 of 5 left) still holds for other accounts.
        assert_eq!(throttle.admit("bob", ip(2), now, rates), Ok(()));
        assert_eq!(throttle.admit("carol", ip(2), now, rates), Ok(()));
        assert!(
            throttle.admit("dave", ip(2), now, rates).is_err(),
            "the peer rate still holds"
        );
    }

    #[test]
    fn the_rate_buckets_stay_bounded_under_a_flood_of_fresh_keys() {
        let throttle = LoginThrottle::new(LoginPolicy {
            max_entries: 64,
            ..LoginPolicy::default()
        });
        let rates = LoginRates {
            per_account: Some(RateLimit {
                per_second: 1,
                burst: 2,
            }),
            per_peer: Some(RateLimit {
                per_second: 1,
                burst: 1_000_000,
            }),
        };
        let now = Instant::now();
        for i in 0..10_000u32 {
            let _ = throttle.admit(
                &format!("user{i}"),
                IpAddr::from(i.to_be_bytes()),
                now,
                rates,
            );
        }
        let state = throttle.lock();
        assert!(state.account_rate.map.len() <= 64);
        assert!(state.peer_rate.map.len() <= 64);
    }

    #[test]
    fn the_maps_stay_bounded_under_a_flood_of_fresh_keys() {
        let throttle = LoginThrottle::new(LoginPolicy {
            max_entries: 64,
            ..LoginPolicy::default()
        });
        let now = Instant::now();
        for i in 0..10_000u32 {
            let peer = IpAddr::from(i.to_be_bytes());
            throttle.failed(&format!("user{i}"), peer, now);
        }
        let state = throttle.lock();
        assert!(state.pair.map.len() <= 64);
        assert!(state.peer.map.len() <= 64);
        assert!(state.account.map.len() <= 64);
    }
}
