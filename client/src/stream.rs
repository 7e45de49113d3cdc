//! Order streams: many pay attempts in flight on one connection, answered
//! through one queue, for partners that sell to many buyers at once.
//!
//! A [`crate::Client`] request awaits its own answer: one task, one
//! channel and one timer-free wait per attempt. An [`OrderStream`] instead
//! sends attempts as fast as the caller submits them and hands the answers
//! back in the order they arrive, each with the caller's tag, so one task
//! can keep hundreds of attempts in flight. It does not retry: every
//! attempt gets exactly one answer (a final order, a refusal, `Timeout`
//! or `Disconnected`), and resubmitting with the same idempotency key is
//! safe ([`ClientError::is_retryable`] says when it may help).

use crate::connection::{AnswerTo, Connection};
use crate::error::{ClientError, Result};
use flashsale_protocol::{BuyerRef, OrderId, OrderInfo, OrderLine, Reply, RequestBody};
use std::sync::Arc;
use tokio::sync::mpsc;
use uuid::Uuid;

/// One answer of an [`OrderStream`].
#[derive(Debug)]
pub struct StreamAnswer {
    /// The tag the attempt was submitted with.
    pub tag: u64,
    /// The order as accepted (its status is final when it was decided in
    /// the same durable batch, the usual case), or why there is none.
    pub result: Result<OrderInfo>,
}

/// Pay attempts in flight on one connection of a client's pool, answered
/// in arrival order (see the module docs). Open one with
/// [`crate::Client::order_stream`].
///
/// At most [`crate::ClientConfig::max_in_flight`] attempts may be in
/// flight (submitted, and their answers not yet taken with
/// [`OrderStream::next`]); one more is refused with
/// [`ClientError::StreamFull`], so answers never pile up unread. The stream
/// shares its connection with the client's other requests.
///
/// `buy` and `pay` are cancel-safe: an attempt whose `buy`/`pay` future is
/// dropped before it returns was not sent and gets no answer; one that
/// returned `Ok` gets exactly one.
pub struct OrderStream {
    connection: Arc<Connection>,
    answers: mpsc::UnboundedReceiver<(u64, Result<Reply>)>,
    to_stream: mpsc::UnboundedSender<(u64, Result<Reply>)>,
    in_flight: usize,
    /// Most attempts in flight.
    window: usize,
}

impl std::fmt::Debug for OrderStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderStream")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl OrderStream {
    pub(crate) fn new(connection: Arc<Connection>, window: usize) -> Self {
        let (to_stream, answers) = mpsc::unbounded_channel();
        Self {
            connection,
            answers,
            to_stream,
            in_flight: 0,
            window: window.max(1),
        }
    }

    /// Submits an express checkout (`Buy`) of `items` under `key`, for the
    /// partner's buyer `buyer` (`None`: the session's own user). `tag`
    /// comes back with the answer.
    ///
    /// # Errors
    /// `Disconnected` when the connection is gone, `StreamFull` when the
    /// window is full; either way the attempt was not sent.
    pub async fn buy(
        &mut self,
        buyer: Option<BuyerRef>,
        items: Vec<OrderLine>,
        key: Uuid,
        tag: u64,
    ) -> Result<()> {
        let body = RequestBody::Buy {
            items,
            idempotency_key: key,
        };
        self.submit(buyer, body, tag).await
    }

    /// Submits an express hold (`HoldItems`) of `items` under `key`, held
    /// for `hold_ms` at most (`None`: the product's hold time), for the
    /// partner's buyer `buyer`. `tag` comes back with the answer.
    ///
    /// # Errors
    /// As [`OrderStream::buy`].
    pub async fn hold(
        &mut self,
        buyer: Option<BuyerRef>,
        items: Vec<OrderLine>,
        key: Uuid,
        hold_ms: Option<u64>,
        tag: u64,
    ) -> Result<()> {
        let body = RequestBody::HoldItems {
            items,
            idempotency_key: key,
            hold_ms,
        };
        self.submit(buyer, body, tag).await
    }

    /// Submits the payment (`PayHold`) of the held order `order_id` with
    /// the gateway's `payment_ref`, for the partner's buyer `buyer`; its
    /// answer is the order as it then stands. `tag` comes back with it.
    ///
    /// # Errors
    /// As [`OrderStream::buy`].
    pub async fn pay_hold(
        &mut self,
        buyer: Option<BuyerRef>,
        order_id: OrderId,
        payment_ref: String,
        tag: u64,
    ) -> Result<()> {
        let body = RequestBody::PayHold {
            order_id,
            payment_ref,
        };
        self.submit(buyer, body, tag).await
    }

    /// Submits a checkout of the buyer's cart (`Pay`) under `key`, for the
    /// partner's buyer `buyer` (`None`: the session's own user). `tag`
    /// comes back with the answer.
    ///
    /// # Errors
    /// `Disconnected` when the connection is gone, `StreamFull` when the
    /// window is full; either way the attempt was not sent.
    pub async fn pay(&mut self, buyer: Option<BuyerRef>, key: Uuid, tag: u64) -> Result<()> {
        let body = RequestBody::Pay {
            idempotency_key: key,
        };
        self.submit(buyer, body, tag).await
    }

    async fn submit(&mut self, buyer: Option<BuyerRef>, body: RequestBody, tag: u64) -> Result<()> {
        if self.in_flight >= self.window {
            return Err(ClientError::StreamFull(self.in_flight));
        }
        let to = AnswerTo::Stream {
            tag,
            to: self.to_stream.clone(),
        };
        self.connection.send(body, buyer, to).await?;
        self.in_flight += 1;
        Ok(())
    }

    /// The next answer, in arrival order; `None` when no attempt is in flight.
    pub async fn next(&mut self) -> Option<StreamAnswer> {
        if self.in_flight == 0 {
            return None;
        }
        // The stream holds a sender itself, so the queue never closes while
        // attempts are in flight; every attempt is answered exactly once.
        let (tag, answer) = self.answers.recv().await?;
        self.in_flight -= 1;
        let result = answer.and_then(|reply| match reply {
            Reply::Accepted(order) | Reply::Order(order) => Ok(order),
            other => Err(ClientError::Unexpected(format!(
                "{other:?} instead of Accepted or Order"
            ))),
        });
        Some(StreamAnswer { tag, result })
    }

    /// Attempts submitted and not yet answered by [`OrderStream::next`].
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}
