//! Login throttling: exponential backoff after failed logins, per account
//! and peer address, per peer address, and per account.
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

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
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

/// Peers that logged in to an account, remembered per account (at most this many).
const TRUSTED_PEERS_PER_ACCOUNT: usize = 8;

#[derive(Debug)]
struct State {
    pair: Counters<(String, IpAddr)>,
    peer: Counters<IpAddr>,
    account: Counters<String>,
    trusted: HashMap<String, Vec<IpAddr>>,
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
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the counters stay usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `peer` must wait before trying `account` again, if it must.
    pub(crate) fn wait(&self, account: &str, peer: IpAddr, now: Instant) -> Option<Duration> {
        let state = self.lock();
        let trusted = state
            .trusted
            .get(account)
            .is_some_and(|peers| peers.contains(&peer));
        let account_wait = if trusted {
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
