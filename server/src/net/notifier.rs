//! The notifier: which connections belong to which buyer's sessions, and
//! pushing order outcomes to them.
//!
//! A decision goes once to every session of the buyer (to one of the
//! session's live connections: a client pooling several connections under
//! one session hears it once) except the session that placed the order,
//! which hears it in the answer: one frame per order on the placing
//! session. A partner's buyers have no sessions: the partner learns a new
//! order's outcome from its `Accepted` answer, and a later change (a
//! cancellation) is pushed to the partner's sessions.

use crate::accounts::auth::SessionKey;
use flashsale_protocol::{OrderInfo, Push, ServerFrame, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A live connection of a session.
#[derive(Debug)]
struct Entry {
    /// The connection's number, to unregister it.
    conn: u64,
    /// The session's key (the SHA-256 of its token), to end it on every
    /// connection.
    session: SessionKey,
    /// The session's number, to push once per session.
    session_no: u64,
    /// The connection's push queue.
    pushes: mpsc::Sender<ServerFrame>,
    /// The API key that opened the session, if any.
    api_key: Option<Arc<str>>,
    /// Cancelled when the session ends elsewhere (logout on another
    /// connection, its API key revoked, its account disabled or its
    /// sessions ended): the connection then closes.
    ended: CancellationToken,
}

/// Live connections, by buyer. Bound: one entry per live connection with a
/// session (connections are capped by `Config::max_connections`); an entry
/// leaves when its connection unregisters, an account when it has none left.
type ConnectionsByUser = HashMap<UserId, Vec<Entry>>;

/// A connection's place in the notifier; give it back with [`Notifier::unregister`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration {
    user: UserId,
    conn: u64,
    session_no: u64,
}

impl Registration {
    /// The number of the registered connection's session, the same on
    /// every connection of the session: the answers of that session carry
    /// it, so what they already tell is not pushed to it again.
    pub(crate) fn session_no(&self) -> u64 {
        self.session_no
    }
}

/// Live connections by buyer.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    conns: Mutex<ConnectionsByUser>,
    next_conn: AtomicU64,
    next_session: AtomicU64,
}

impl Notifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionsByUser> {
        // A poisoned lock only means a panic elsewhere; the map stays consistent.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the order updates of `user` to `pushes` from now on, as one
    /// connection of the session `session` (opened with `api_key`, if any).
    /// The token returned is cancelled when the session ends elsewhere.
    pub(crate) fn register(
        &self,
        user: UserId,
        session: SessionKey,
        api_key: Option<Arc<str>>,
        pushes: mpsc::Sender<ServerFrame>,
    ) -> (Registration, CancellationToken) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let ended = CancellationToken::new();
        let mut conns = self.lock();
        let entries = conns.entry(user).or_default();
        let session_no = entries.iter().find(|e| e.session == session).map_or_else(
            || self.next_session.fetch_add(1, Ordering::Relaxed),
            |e| e.session_no,
        );
        entries.push(Entry {
            conn,
            session,
            session_no,
            pushes,
            api_key,
            ended: ended.clone(),
        });
        let registration = Registration {
            user,
            conn,
            session_no,
        };
        (registration, ended)
    }

    /// Ends the session `session` of `user` on every connection that uses it.
    pub(crate) fn end_session(&self, user: UserId, session: &SessionKey) {
        if let Some(entries) = self.lock().get(&user) {
            for entry in entries.iter().filter(|e| &e.session == session) {
                entry.ended.cancel();
            }
        }
    }

    /// Ends every session of `user` on every connection (account disabled,
    /// new password, `EndSessions`).
    pub(crate) fn end_user(&self, user: UserId) {
        if let Some(entries) = self.lock().get(&user) {
            for entry in entries {
                entry.ended.cancel();
            }
        }
    }

    /// Ends every session opened with the API key `key_id`, on every connection.
    pub(crate) fn end_api_key(&self, key_id: &str) {
        for entries in self.lock().values() {
            for entry in entries
                .iter()
                .filter(|e| e.api_key.as_deref() == Some(key_id))
            {
                entry.ended.cancel();
            }
        }
    }

    /// Stops pushing to a connection.
    pub(crate) fn unregister(&self, registration: Registration) {
        let mut conns = self.lock();
        if let Some(list) = conns.get_mut(&registration.user) {
            list.retain(|entry| entry.conn != registration.conn);
            if list.is_empty() {
                conns.remove(&registration.user);
            }
        }
    }

    /// Pushes each new order once to every session of its buyer except the
    /// session that placed it (`Some(session_no)`: it hears the order in its
    /// answer). A connection whose push buffer is full misses the push
    /// (counted) and the next connection of the session is tried; the
    /// outcome stays available through `GetOrder`.
    pub(crate) fn push_new_orders<'a>(
        &self,
        orders: impl IntoIterator<Item = (&'a OrderInfo, Option<u64>)>,
    ) {
        let conns = self.lock();
        for (order, placed_by) in orders {
            self.push_to_sessions(&conns, order.user_id, order, placed_by);
        }
    }

    /// Pushes a change of an order once to every session of `user` (the
    /// buyer, or the partner acting for it).
    pub(crate) fn push_order_to(&self, user: UserId, order: &OrderInfo) {
        let conns = self.lock();
        self.push_to_sessions(&conns, user, order, None);
    }

    fn push_to_sessions(
        &self,
        conns: &ConnectionsByUser,
        user: UserId,
        order: &OrderInfo,
        except: Option<u64>,
    ) {
        let Some(entries) = conns.get(&user) else {
            return;
        };
        let mut served: Vec<u64> = Vec::new();
        for entry in entries {
            if Some(entry.session_no) == except || served.contains(&entry.session_no) {
                continue;
            }
            let frame = ServerFrame::Push(Push::OrderUpdate(order.clone()));
            if self.push(&entry.pushes, frame) {
                served.push(entry.session_no);
            }
        }
    }

    /// Pushes one frame to one connection; false if its buffer was full or it is gone.
    fn push(&self, pushes: &mpsc::Sender<ServerFrame>, frame: ServerFrame) -> bool {
        match pushes.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::telemetry::push_dropped();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
