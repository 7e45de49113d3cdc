//! An accepted order whose final outcome can be awaited, and the stream of
//! pushes.

use super::Client;
use crate::error::{ClientError, Result};
use flashsale_protocol::{OrderInfo, Push};
use std::time::Duration;
use tokio::sync::broadcast;

/// How long [`PlacedOrder::outcome`] waits for a push before asking with `GetOrder`.
const OUTCOME_POLL: Duration = Duration::from_millis(500);

/// An order the server accepted (it is on disk).
#[derive(Debug, Clone)]
pub struct PlacedOrder {
    /// The order as accepted; its status is final when it was decided in
    /// the same durable batch (the usual case).
    pub order: OrderInfo,
    /// The client to follow the order with, kept only while it is pending
    /// (a clone per answer costs contended reference counting).
    pub(super) client: Option<Client>,
}

impl PlacedOrder {
    /// The order's final state: at once when already decided (the usual
    /// case), else by asking with `GetOrder` and waiting for a push, again
    /// every 500 ms, until `request_timeout`.
    ///
    /// # Errors
    /// The connection failed, or no outcome within the request timeout.
    pub async fn outcome(&self) -> Result<OrderInfo> {
        let client = match &self.client {
            Some(client) if !self.order.status.is_final() => client,
            _ => return Ok(self.order.clone()),
        };
        let timeout = client.inner.config.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pushes = client.pushes();
        loop {
            // Ask after subscribing, so an outcome pushed in between is not missed.
            let current = client.order(self.order.id).await?;
            if current.status.is_final() {
                return Ok(current);
            }
            let wait =
                OUTCOME_POLL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if wait.is_zero() {
                return Err(ClientError::Timeout(timeout));
            }
            let pushed = tokio::time::timeout(wait, async {
                while let Some(Push::OrderUpdate(order)) = pushes.next().await {
                    if order.id == self.order.id && order.status.is_final() {
                        return Some(order);
                    }
                }
                None
            })
            .await;
            if let Ok(Some(order)) = pushed {
                return Ok(order);
            }
        }
    }
}

/// The pushes of every connection of a [`Client`] (see [`Client::pushes`]).
#[derive(Debug)]
pub struct Pushes {
    pub(super) rx: broadcast::Receiver<Push>,
}

impl Pushes {
    /// The next push; waits while any clone of the client lives (`None`
    /// only once the client and its connections are gone). A subscriber that
    /// fell behind skips the pushes it missed, with a WARN log line (see
    /// [`crate::ClientConfig::push_buffer`]); outcomes stay available with
    /// [`Client::order`].
    pub async fn next(&mut self) -> Option<Push> {
        loop {
            match self.rx.recv().await {
                Ok(push) => return Some(push),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "push subscriber fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
