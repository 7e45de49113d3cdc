//! The notifier: which connections belong to which buyer, and pushing order
//! outcomes to all of them.

use flashsale_protocol::{OrderInfo, Push, ServerFrame, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Push queues of live connections, by buyer; each tagged with its connection number.
type ConnectionsByUser = HashMap<UserId, Vec<(u64, mpsc::Sender<ServerFrame>)>>;

/// A connection's place in the notifier; give it back with [`Notifier::unregister`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    user: UserId,
    conn: u64,
}

/// Live connections by buyer.
#[derive(Debug, Default)]
pub struct Notifier {
    conns: Mutex<ConnectionsByUser>,
    next_conn: AtomicU64,
    dropped: AtomicU64,
}

impl Notifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionsByUser> {
        // A poisoned lock only means a panic elsewhere; the map stays consistent.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `user`'s order updates to `pushes` from now on.
    pub fn register(&self, user: UserId, pushes: mpsc::Sender<ServerFrame>) -> Registration {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(user).or_default().push((conn, pushes));
        Registration { user, conn }
    }

    /// Stops pushing to a connection.
    pub fn unregister(&self, registration: Registration) {
        let mut conns = self.lock();
        if let Some(list) = conns.get_mut(&registration.user) {
            list.retain(|(conn, _)| *conn != registration.conn);
            if list.is_empty() {
                conns.remove(&registration.user);
            }
        }
    }

    /// Pushes each order to every live connection of its buyer, and of the
    /// partner acting for the buyer. A connection whose push buffer is full
    /// misses the push (counted); the outcome stays available through
    /// `GetOrder`.
    pub fn push_orders<'a>(&self, orders: impl IntoIterator<Item = &'a OrderInfo>) {
        let conns = self.lock();
        for order in orders {
            let buyer = conns.get(&order.user_id).into_iter().flatten();
            let partner = order
                .partner
                .as_ref()
                .and_then(|p| conns.get(&p.partner_id))
                .into_iter()
                .flatten();
            for (_, tx) in buyer.chain(partner) {
                let frame = ServerFrame::Push(Push::OrderUpdate(order.clone()));
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(frame) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Pushes dropped because a connection's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
