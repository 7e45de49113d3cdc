//! The notifier: which connections belong to which buyer's sessions, and
//! pushing order outcomes to them.
//!
//! Each outcome goes once to every session of the buyer (to one of the
//! session's live connections: a client pooling several connections under
//! one session hears it once). A partner's buyers have no sessions: the
//! partner learns a new order's outcome from its `Accepted` answer, and a
//! later change (a cancellation) is pushed to the partner's sessions.

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
    /// The session's token, to push once per session.
    session: Arc<str>,
    /// The connection's push queue.
    pushes: mpsc::Sender<ServerFrame>,
    /// The API key that opened the session, if any.
    api_key: Option<Arc<str>>,
    /// Cancelled when the session ends elsewhere (logout on another
    /// connection, its API key revoked): the connection then closes.
    ended: CancellationToken,
}

/// Live connections, by buyer.
type ConnectionsByUser = HashMap<UserId, Vec<Entry>>;

/// A connection's place in the notifier; give it back with [`Notifier::unregister`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration {
    user: UserId,
    conn: u64,
}

/// Live connections by buyer.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    conns: Mutex<ConnectionsByUser>,
    next_conn: AtomicU64,
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
        session: Arc<str>,
        api_key: Option<Arc<str>>,
        pushes: mpsc::Sender<ServerFrame>,
    ) -> (Registration, CancellationToken) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let ended = CancellationToken::new();
        self.lock().entry(user).or_default().push(Entry {
            conn,
            session,
            pushes,
            api_key,
            ended: ended.clone(),
        });
        (Registration { user, conn }, ended)
    }

    /// Ends the session `token` of `user` on every connection that uses it.
    pub(crate) fn end_session(&self, user: UserId, token: &str) {
        if let Some(entries) = self.lock().get(&user) {
            for entry in entries.iter().filter(|e| &*e.session == token) {
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

    /// Pushes each order once to every session of its buyer. A connection
    /// whose push buffer is full misses the push (counted) and the next
    /// connection of the session is tried; the outcome stays available
    /// through `GetOrder`.
    pub(crate) fn push_orders<'a>(&self, orders: impl IntoIterator<Item = &'a OrderInfo>) {
        let conns = self.lock();
        for order in orders {
            self.push_to_sessions(&conns, order.user_id, order);
        }
    }

    /// Pushes one order once to every session of `user` (the buyer, or the
    /// partner acting for it).
    pub(crate) fn push_order_to(&self, user: UserId, order: &OrderInfo) {
        let conns = self.lock();
        self.push_to_sessions(&conns, user, order);
    }

    fn push_to_sessions(&self, conns: &ConnectionsByUser, user: UserId, order: &OrderInfo) {
        let Some(entries) = conns.get(&user) else {
            return;
        };
        let mut served: Vec<&str> = Vec::new();
        for entry in entries {
            if served.contains(&&*entry.session) {
                continue;
            }
            let frame = ServerFrame::Push(Push::OrderUpdate(order.clone()));
            if self.push(&entry.pushes, frame) {
                served.push(&entry.session);
            }
        }
    }

    /// Pushes one frame to one connection; false if its buffer was full or it is gone.
    pub(crate) fn push(&self, pushes: &mpsc::Sender<ServerFrame>, frame: ServerFrame) -> bool {
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
