//! Where the answer to a request goes: a connection's outgoing frames, or a
//! oneshot channel for callers inside the server (demo data, tests).
//!
//! A client request carries its [`Trace`] with it wherever it is answered
//! from (its connection task, or the journal thread for a queued pay), so
//! the answer is logged and counted under the request's id, and an error
//! answer's `trace_id` is that same id.

use crate::error::ApiError;
use crate::telemetry;
use flashsale_protocol::{
    ErrorCode, OrderInfo, OrderLine, ProductInfo, ProductStats, Reply, Response, ServerFrame,
    UserId, UserInfo,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

/// A frame for a connection's writer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The frame.
    pub(crate) frame: ServerFrame,
    /// The id the frame is logged under: its request's trace id for a
    /// response (so an answer too large to send is refused under the same
    /// id), the closing event's for a `Closing`.
    pub(crate) trace_id: Uuid,
    /// The bytes this frame counts in its connection's [`ReplyBytes`]; the
    /// writer gives them back once it has written the frame.
    pub(crate) bytes: usize,
}

/// The answer bytes one connection has queued for its writer and not yet
/// written ([`reply_cost`] of each listing answer; other answers count 0:
/// the in-flight cap bounds them). The reader stops reading requests while
/// this is over `Config::max_reply_bytes_per_connection`.
#[derive(Debug, Default)]
pub(crate) struct ReplyBytes {
    queued: AtomicUsize,
    /// Woken when the writer gives bytes back, or stops.
    drained: Notify,
    /// Set when the writer stopped.
    writer_gone: std::sync::atomic::AtomicBool,
}

impl ReplyBytes {
    /// Bytes queued now.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The writer wrote a frame of `bytes`.
    pub(crate) fn written(&self, bytes: usize) {
        if bytes > 0 {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            // Stores a wake-up when the reader is not waiting yet: none is lost.
            self.drained.notify_one();
        }
    }

    /// Waits until the writer gives bytes back (or has stopped).
    pub(crate) async fn drained(&self) {
        self.drained.notified().await;
    }

    /// The writer stopped (the peer is gone): nothing will drain any more.
    pub(crate) fn writer_stopped(&self) {
        self.writer_gone.store(true, Ordering::Relaxed);
        self.drained.notify_one();
    }

    /// True once the writer has stopped.
    pub(crate) fn is_writer_gone(&self) -> bool {
        self.writer_gone.load(Ordering::Relaxed)
    }
}

/// An estimate of the memory an answer holds until written: the listing
/// answers (products, orders, users) by their items, 0 for every other
/// answer (a pay's answer counts 0: no work per pay is added).
pub(crate) fn reply_cost(result: &Result<Reply, ApiError>) -> usize {
    fn product(p: &ProductInfo) -> usize {
        std::mem::size_of::<ProductInfo>() + p.name.len()
    }
    fn order(o: &OrderInfo) -> usize {
        std::mem::size_of::<OrderInfo>()
            + o.items.len() * std::mem::size_of::<OrderLine>()
            + o.partner.as_ref().map_or(0, |p| p.buyer_ref.0.len())
    }
    fn user(u: &UserInfo) -> usize {
        std::mem::size_of::<UserInfo>() + u.username.len()
    }
    match result {
        Ok(Reply::Products(products) | Reply::ProductPage { products, .. }) => {
            products.iter().map(product).sum()
        }
        Ok(Reply::Orders(orders) | Reply::OrderPage { orders, .. }) => {
            orders.iter().map(order).sum()
        }
        Ok(Reply::Users(users)) => users.iter().map(user).sum(),
        Ok(Reply::Stats(stats)) => stats.products.len() * std::mem::size_of::<ProductStats>(),
        Ok(Reply::BackupChunk { data, .. }) => data.len(),
        _ => 0,
    }
}

/// One client request on its way to an answer: what its log lines and
/// metrics say. Never holds the request's body: bodies and replies carry
/// passwords, API keys and tokens, and must never be logged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trace {
    /// The request id: in every log line about the request and in its
    /// error answer (`WireError::trace_id`).
    pub(crate) id: Uuid,
    /// The client's id of the request on its connection.
    pub(crate) request_id: u64,
    /// `RequestBody::kind()`.
    pub(crate) kind: &'static str,
    /// The session's user, if the connection has one.
    pub(crate) user: Option<UserId>,
    /// The session's number in the notifier, if the connection has one: a
    /// new order answered to this session is not also pushed to it.
    pub(crate) session_no: Option<u64>,
    /// When the request was read, for the latency.
    pub(crate) started: Instant,
}

impl Trace {
    /// A fresh request id for the client's request `request_id`, started now.
    #[cfg(test)]
    pub(crate) fn new(request_id: u64, kind: &'static str, user: Option<UserId>) -> Self {
        Self::started_at(request_id, kind, user, Instant::now())
    }

    /// A fresh request id for the client's request `request_id`, read at
    /// `started` (the connection already took the time for its idle timer).
    pub(crate) fn started_at(
        request_id: u64,
        kind: &'static str,
        user: Option<UserId>,
        started: Instant,
    ) -> Self {
        Self {
            id: Uuid::new_v4(),
            request_id,
            kind,
            user,
            session_no: None,
            started,
        }
    }

    /// The same trace, for a request of the session `session_no`.
    pub(crate) fn in_session(self, session_no: Option<u64>) -> Self {
        Self { session_no, ..self }
    }

    /// Logs the request (DEBUG).
    pub(crate) fn log_request(&self) {
        tracing::debug!(
            trace_id = %self.id,
            request_id = self.request_id,
            kind = self.kind,
            user = self.user.map(|u| u.0),
            "request"
        );
    }

    /// Logs and counts the answer and turns it into the response frame.
    ///
    /// Levels: success and the expected business refusals (sold out,
    /// limits, sale windows, empty cart, overloaded, not found, …) at
    /// DEBUG, since a sold-out storm answers hundreds of thousands of them a
    /// second; `Internal` (the server failed) at ERROR. `BadRequest`,
    /// `Unauthenticated` and `Forbidden` at INFO: they mean a client that is
    /// broken or probing, which an operator wants to see at the default
    /// level, but not a fault of the server (WARN is kept for what may need
    /// action: protocol violations that close a connection, failing I/O).
    pub(crate) fn answer(&self, result: Result<Reply, ApiError>) -> ServerFrame {
        let code = result.as_ref().err().map(|e| e.code);
        telemetry::request_done(self.kind, code);
        if let Ok(Reply::Accepted(_)) = &result {
            telemetry::order_answered(self.started.elapsed());
        }
        let outcome = code.map_or("ok", telemetry::code_name);
        macro_rules! log {
            ($level:ident, $($rest:tt)+) => {
                tracing::$level!(
                    trace_id = %self.id,
                    request_id = self.request_id,
                    kind = self.kind,
                    user = self.user.map(|u| u.0),
                    outcome,
                    latency_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    $($rest)+
                )
            };
        }
        match &result {
            Ok(_) => log!(debug, "response"),
            Err(e) => match e.code {
                ErrorCode::Internal => log!(error, error = %e.log_text(), "request failed"),
                ErrorCode::BadRequest | ErrorCode::Unauthenticated | ErrorCode::Forbidden => {
                    log!(info, reason = %e.message, "request refused");
                }
                _ => log!(debug, reason = %e.message, "response"),
            },
        }
        ServerFrame::Response(Response {
            id: self.request_id,
            result: result.map_err(|e| e.into_wire(self.id)),
        })
    }
}

/// The destination of one answer.
#[derive(Debug)]
pub(crate) enum ReplyTo {
    /// A request on a client connection.
    Connection {
        /// The connection's response queue. It always has room: the
        /// connection holds an in-flight permit for this request.
        frames: mpsc::Sender<Outgoing>,
        /// The request's id, kind and start, for the answer's log line.
        trace: Trace,
        /// The connection's queued answer bytes, for a request whose answer
        /// may be large (a listing); `None` for the rest (pays).
        budget: Option<Arc<ReplyBytes>>,
    },
    /// A caller inside the server.
    Internal(oneshot::Sender<Result<Reply, ApiError>>),
}

impl ReplyTo {
    /// The number of the session the request came from, if any.
    pub(crate) fn session_no(&self) -> Option<u64> {
        match self {
            Self::Connection { trace, .. } => trace.session_no,
            Self::Internal(_) => None,
        }
    }

    /// Delivers the answer; a peer that went away is ignored.
    pub(crate) fn send(self, result: Result<Reply, ApiError>) {
        match self {
            Self::Connection {
                frames,
                trace,
                budget,
            } => {
                let bytes = budget.as_ref().map_or(0, |budget| {
                    let bytes = reply_cost(&result);
                    budget.add(bytes);
                    bytes
                });
                let frame = trace.answer(result);
                let outgoing = Outgoing {
                    frame,
                    trace_id: trace.id,
                    bytes,
                };
                if let Err(unsent) = frames.try_send(outgoing) {
                    // Never written: its bytes go back, or the reader would
                    // wait for a drain that never comes.
                    if let Some(budget) = budget {
                        budget.written(bytes);
                    }
                    if let mpsc::error::TrySendError::Full(_) = unsent {
                        tracing::error!(
                            trace_id = %trace.id,
                            request_id = trace.request_id,
                            "response queue full: in-flight accounting is broken"
                        );
                    }
                }
            }
            Self::Internal(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_protocol::{RequestBody, Role};
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Collects formatted log lines.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(work: impl FnOnce()) -> String {
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, work);
        let bytes = lines.0.lock().expect("lines").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn secrets_of_requests_and_replies_are_never_logged() {
        let body = RequestBody::Login {
            username: "alice".into(),
            password: "hunter2-very-secret".into(),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let trace = Trace::new(7, body.kind(), None);
        let output = logged(|| {
            trace.log_request();
            let reply_to = ReplyTo::Connection {
                frames: tx,
                trace,
                budget: None,
            };
            reply_to.send(Ok(Reply::LoggedIn {
                user_id: UserId(3),
                username: "alice".into(),
                role: Role::Buyer,
                token: "tok-very-secret-token".into(),
            }));
        });
        assert!(output.contains(&trace.id.to_string()), "{output}");
        assert!(output.contains("kind=\"login\""), "{output}");
        assert!(!output.contains("hunter2"), "{output}");
        assert!(!output.contains("tok-very-secret"), "{output}");
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn an_error_answer_carries_the_request_id_and_is_logged_under_it() {
        let (tx, mut rx) = mpsc::channel(4);
        let trace = Trace::new(9, "stats", Some(UserId(5)));
        let output = logged(|| {
            ReplyTo::Connection {
                frames: tx,
                trace,
                budget: None,
            }
            .send(Err(ApiError::admin_only()));
        });
        let Ok(Outgoing {
            frame: ServerFrame::Response(response),
            trace_id,
            ..
        }) = rx.try_recv()
        else {
            panic!("no response");
        };
        assert_eq!(trace_id, trace.id);
        assert_eq!(response.id, 9);
        let error = response.result.expect_err("refused");
        assert_eq!(error.trace_id, trace.id);
        assert!(output.contains(" INFO "), "{output}");
        assert!(output.contains(&trace.id.to_string()), "{output}");
        assert!(output.contains("outcome=\"Forbidden\""), "{output}");
    }
}
