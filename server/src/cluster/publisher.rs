//! The publisher: sends the outbox's entries to the stream, in order, with
//! fencing, and moves the outbox's acknowledged mark.
//!
//! Every message carries `Nats-Expected-Last-Sequence`: the stream sequence
//! this leader believes is the stream's last. Messages are pipelined (up to
//! [`MAX_IN_FLIGHT`]), each expecting the one before it; JetStream handles
//! them in order, so if another node has appended anything since this
//! leader took over, the first of ours is refused (error 10071, "wrong last
//! sequence") and so is every later one. Any refusal or failure fences the
//! outbox: whatever waits on it is told the change is not replicated, and
//! the node steps down. There is no retry of a failed publish: a retry
//! that found its first attempt already stored would be refused too.

use crate::cluster::outbox::Outbox;
use async_nats::jetstream::{self, message::PublishMessage};
use futures::stream::{FuturesOrdered, StreamExt};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Messages sent and not yet acknowledged.
const MAX_IN_FLIGHT: usize = 64;

/// Why the publisher stopped publishing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishFailed {
    /// The stream refused or did not acknowledge a message.
    #[error("publish of entry {number} failed: {reason}")]
    Refused {
        /// The outbox number of the entry.
        number: u64,
        /// What NATS said.
        reason: String,
    },
    /// An entry could not be encoded.
    #[error("entry could not be encoded: {0}")]
    Encode(String),
}

/// Where the stream is, as the publisher knows it.
pub(crate) struct Publisher {
    /// The JetStream context (with its ack timeout).
    pub(crate) js: jetstream::Context,
    /// The stream's subject.
    pub(crate) subject: String,
    /// Prefix of every message id (`node-term-`), so a message is never
    /// stored twice by a resend.
    pub(crate) id_prefix: String,
    /// The stream's last sequence when this leadership began.
    pub(crate) last_seq: u64,
}

type AckFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, u64, Result<u64, String>)> + Send>>;

impl Publisher {
    /// Publishes until `stop` is cancelled and the outbox is empty and
    /// acknowledged. Returns the stream sequence of the last acknowledged
    /// entry.
    ///
    /// # Errors
    /// [`PublishFailed`]; the outbox is fenced before this returns.
    pub(crate) async fn run(
        mut self,
        outbox: Arc<Outbox>,
        stop: CancellationToken,
    ) -> Result<u64, PublishFailed> {
        let result = self.publish_all(&outbox, &stop).await;
        if result.is_err() {
            outbox.fence();
        }
        result
    }

    async fn publish_all(
        &mut self,
        outbox: &Outbox,
        stop: &CancellationToken,
    ) -> Result<u64, PublishFailed> {
        let mut in_flight: FuturesOrdered<AckFuture> = FuturesOrdered::new();
        let mut acked_seq = self.last_seq;
        loop {
            let entries = if in_flight.len() < MAX_IN_FLIGHT {
                outbox.take()
            } else {
                Vec::new()
            };
            for (number, entry) in entries {
                let payload = entry
                    .encode()
                    .map_err(|e| PublishFailed::Encode(e.to_string()))?;
                in_flight.push_back(self.send(number, payload).await?);
            }
            if in_flight.is_empty() {
                tokio::select! {
                    () = outbox.wait_for_entries() => continue,
                    () = stop.cancelled() => {
                        if outbox.is_empty() {
                            return Ok(acked_seq);
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                biased;
                acked = in_flight.next() => {
                    let Some((number, expected, result)) = acked else { continue };
                    match result {
                        Ok(seq) if seq == expected => {
                            acked_seq = seq;
                            outbox.acked(number);
                        }
                        Ok(seq) => {
                            return Err(PublishFailed::Refused {
                                number,
                                reason: format!("stored at sequence {seq}, expected {expected}"),
                            })
                        }
                        Err(reason) => return Err(PublishFailed::Refused { number, reason }),
                    }
                }
                () = outbox.wait_for_entries(), if in_flight.len() < MAX_IN_FLIGHT => {}
            }
        }
    }

    /// Sends one entry expecting the stream to end at `last_seq`.
    async fn send(&mut self, number: u64, payload: Vec<u8>) -> Result<AckFuture, PublishFailed> {
        let expected = self.last_seq + 1;
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("{}{number}", self.id_prefix))
            .expected_last_sequence(self.last_seq);
        let ack = self
            .js
            .send_publish(self.subject.clone(), message)
            .await
            .map_err(|e| PublishFailed::Refused {
                number,
                reason: e.to_string(),
            })?;
        self.last_seq = expected;
        Ok(Box::pin(async move {
            let result = match ack.await {
                Ok(ack) if ack.duplicate => Err("the stream already held this message".into()),
                Ok(ack) => Ok(ack.sequence),
                Err(e) => Err(e.to_string()),
            };
            (number, expected, result)
        }))
    }
}
