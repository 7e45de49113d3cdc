//! The publisher: sends the outbox's entries to the stream, in order, with
//! fencing, and moves the outbox's acknowledged mark.
//!
//! Every message carries `Nats-Expected-Last-Sequence`: the stream sequence
//! this leader believes is the stream's last. Messages are pipelined (up to
//! [`MAX_IN_FLIGHT`]), each expecting the one before it; JetStream handles
//! them in order, so if another node has appended anything since this
//! leader took over, the first of ours is refused (error 10071, "wrong last
//! sequence") and so is every later one. A refusal fences the outbox:
//! whatever waits on it is told the change is not replicated, and the node
//! steps down.
//!
//! Every message after a leadership's first also expects the previous one's
//! id (`Nats-Expected-Last-Msg-Id`): pipelined messages chain on ids, so a
//! later message cannot be stored after another leader's by matching the
//! new end's sequence by coincidence (found by the SIGSTOP test).
//!
//! Every message also carries a `Nats-Msg-Id` unique to this leadership,
//! so when NATS does not answer (its stream leader died, the connection
//! moved), the unanswered messages are sent again, unchanged, for up to
//! [`RESEND_FOR`]: one the stream stored already is answered as a
//! duplicate with its sequence (JetStream checks the id before the
//! expected sequence); one it never stored is stored now, or refused if
//! another leader took its place.

use crate::cluster::outbox::Outbox;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, message::PublishMessage};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
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
    /// The outbox number of this leadership's first message (its `Leader`
    /// entry), once sent.
    pub(crate) first_number: Option<u64>,
    /// How long handing one message to the NATS client may take.
    pub(crate) send_timeout: Duration,
}

/// What the stream said of one message.
#[derive(Debug)]
enum Ack {
    /// Stored at this sequence (a resend the stream already held is
    /// answered with the sequence it was stored at).
    Stored(u64),
    /// Refused for good: another leader's message is in its place.
    Refused(String),
    /// No answer (timeout, no stream leader, connection lost): maybe
    /// stored, maybe not; sent again.
    NoAnswer(String),
}

type AckFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Ack> + Send>>;

/// A message sent and not yet acknowledged.
struct InFlight {
    number: u64,
    expected: u64,
    payload: bytes::Bytes,
    ack: AckFuture,
}

/// How long unanswered messages are sent again before the leader gives up
/// (and steps down): longer than a NATS stream leader election.
const RESEND_FOR: Duration = Duration::from_secs(20);

/// Pause before sending unanswered messages again.
const RESEND_PAUSE: Duration = Duration::from_millis(250);

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
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut acked_seq = self.last_seq;
        // Set while NATS does not answer: resends stop being tried then.
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            if in_flight.len() < MAX_IN_FLIGHT {
                for (number, entry) in outbox.take() {
                    let payload: bytes::Bytes = entry
                        .encode()
                        .map_err(|e| PublishFailed::Encode(e.to_string()))?
                        .into();
                    let expected = self.last_seq + 1;
                    let ack = self.send(number, expected, payload.clone()).await;
                    self.last_seq = expected;
                    in_flight.push_back(InFlight {
                        number,
                        expected,
                        payload,
                        ack,
                    });
                }
            }
            let room = in_flight.len() < MAX_IN_FLIGHT;
            let Some(front) = in_flight.front_mut() else {
                tokio::select! {
                    () = outbox.wait_for_entries() => continue,
                    () = stop.cancelled() => {
                        if outbox.is_empty() {
                            return Ok(acked_seq);
                        }
                        continue;
                    }
                }
            };
            let acked = tokio::select! {
                biased;
                acked = &mut front.ack => acked,
                () = outbox.wait_for_entries(), if room => continue,
            };
            let number = front.number;
            match acked {
                Ack::Stored(seq) if seq == front.expected => {
                    acked_seq = seq;
                    outbox.acked(number);
                    in_flight.pop_front();
                    failing_since = None;
                }
                Ack::Stored(seq) => {
                    return Err(PublishFailed::Refused {
                        number,
                        reason: format!("stored at sequence {seq}, expected {}", front.expected),
                    })
                }
                Ack::Refused(reason) => return Err(PublishFailed::Refused { number, reason }),
                Ack::NoAnswer(reason) => {
                    // NATS is electing a new stream leader, or the
                    // connection is moving to another server: send the same
                    // messages again (same ids, same expected sequences).
                    // One the stream stored already is answered as a
                    // duplicate of itself; one another leader's message
                    // took the place of is refused.
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > RESEND_FOR {
                        return Err(PublishFailed::Refused { number, reason });
                    }
                    tracing::warn!(%reason, entries = in_flight.len(), "the stream did not answer; sending again");
                    tokio::time::sleep(RESEND_PAUSE).await;
                    for pending in &mut in_flight {
                        let (number, expected, payload) =
                            (pending.number, pending.expected, pending.payload.clone());
                        pending.ack = self.send(number, expected, payload).await;
                    }
                }
            }
        }
    }

    /// Sends one entry expecting the stream to end just before `expected`,
    /// with this leadership's previous entry (all but its first).
    async fn send(&mut self, number: u64, expected: u64, payload: bytes::Bytes) -> AckFuture {
        let first = *self.first_number.get_or_insert(number);
        let mut message = PublishMessage::build()
            .payload(payload)
            .message_id(format!("{}{number}", self.id_prefix))
            .expected_last_sequence(expected - 1);
        if number > first {
            // Pipelined messages chain on ids, not only on sequences: were
            // an earlier one of ours refused because another leader's
            // message took its place, a later one could otherwise match
            // the stream's new end by coincidence and be stored after it.
            message = message.expected_last_message_id(format!("{}{}", self.id_prefix, number - 1));
        }
        // Bounded too: a client whose connection is moving may hold the
        // send itself (its buffer full), and a hung send would stop the
        // publisher without a word.
        let sent = tokio::time::timeout(
            self.send_timeout,
            self.js.send_publish(self.subject.clone(), message),
        )
        .await;
        Box::pin(async move {
            let ack = match sent {
                Ok(Ok(ack)) => ack.await,
                Ok(Err(e)) => return Ack::NoAnswer(e.to_string()),
                Err(_) => return Ack::NoAnswer("the send itself timed out".into()),
            };
            match ack {
                Ok(ack) => Ack::Stored(ack.sequence),
                Err(e) => match e.kind() {
                    PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId => {
                        Ack::Refused(e.to_string())
                    }
                    // Includes "no stream found": what a stream without a
                    // leader (an election in progress) answers.
                    _ => Ack::NoAnswer(e.to_string()),
                },
            }
        })
    }
}
