//! The connection driver: one writer task and one reader task per
//! connection, matching answers to requests by id and fanning out pushes.
//!
//! Request timeouts are kept by one clock task per connection, not one
//! timer per request: each waiting request remembers when it was sent, the
//! clock ticks [`TICKS_PER_TIMEOUT`] times per `request_timeout` (within
//! [`MIN_TICK`]..[`MAX_TICK`]), and on every tick the requests that have
//! waited the timeout fail with `Timeout`. A request thus times out never
//! before `request_timeout` and at most a tick later; per request, the path
//! takes one lock and arms no timer.

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use flashsale_protocol::{
    BuyerRef, ClientCodec, ClientFrame, CodecError, ErrorCode, Hello, Push, Reply, Request,
    RequestBody, ServerFrame, WireError, PROTOCOL_VERSION,
};
use futures::task::AtomicWaker;
use futures::{SinkExt, StreamExt};
use hashbrown::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Bytes buffered before a write is forced, even while more frames are ready.
const WRITE_BUFFER: usize = 64 * 1024;

/// Frames written before a flush even if more are ready.
const MAX_FRAMES_PER_FLUSH: usize = 512;

/// Ticks of the timeout clock per request timeout.
const TICKS_PER_TIMEOUT: u32 = 16;

/// Shortest tick of the timeout clock, so an idle connection with a short
/// timeout does not wake every millisecond.
const MIN_TICK: Duration = Duration::from_millis(10);

/// Longest tick of the timeout clock, so long timeouts are still kept to
/// within a second.
const MAX_TICK: Duration = Duration::from_secs(1);

/// What a waiting request gets: the server's answer, or why there is none.
type Answer = Result<Reply>;

/// The reading half of a connection, plain TCP or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection, plain TCP or TLS.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Splits a connected stream, after a TLS handshake when configured.
async fn split(stream: TcpStream, config: &ClientConfig) -> Result<(ReadHalf, WriteHalf)> {
    match &config.tls {
        None => {
            let (read, write) = stream.into_split();
            Ok((Box::new(read), Box::new(write)))
        }
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.server_name.clone(), stream)
                .await
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            let (read, write) = tokio::io::split(stream);
            Ok((Box::new(read), Box::new(write)))
        }
    }
}

/// Where a request's answer goes.
pub(crate) enum AnswerTo {
    /// A caller awaiting this one answer.
    Caller(oneshot::Sender<Answer>),
    /// An order stream, with the caller's tag for the request.
    Stream {
        /// The caller's tag, handed back with the answer.
        tag: u64,
        /// The stream's answers.
        to: mpsc::UnboundedSender<(u64, Answer)>,
    },
}

impl AnswerTo {
    fn send(self, answer: Answer) {
        match self {
            Self::Caller(tx) => {
                let _ = tx.send(answer);
            }
            Self::Stream { tag, to } => {
                let _ = to.send((tag, answer));
            }
        }
    }
}

/// A request waiting for its answer.
struct Waiter {
    answer: AnswerTo,
    /// When the request was sent.
    sent_at: Instant,
}

/// Requests waiting for answers, and whether the connection is gone.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, Waiter>,
    /// Set once the reader stops; later requests fail at once.
    closed: Option<Option<WireError>>,
}

/// What the connection's tasks and its callers share.
#[derive(Default)]
struct State {
    pending: Mutex<Pending>,
    /// Mirrors `Pending::closed.is_some()`, read without the lock.
    closed: AtomicBool,
    /// Wakes the writer once the connection is gone, so it closes its side
    /// at once: a server that closed waits for the client to close too.
    /// (Lock-free: the writer registers its waker every time it goes idle.)
    gone: AtomicWaker,
}

impl State {
    /// Completes once the connection is gone ([`State::close`]).
    fn gone(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.gone.register(cx.waker());
            if self.closed.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned lock only means a panic elsewhere; the map stays usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection gone and fails every waiting request.
    fn close(&self, reason: Option<WireError>) {
        let mut pending = self.lock();
        if pending.closed.is_none() {
            pending.closed = Some(reason);
        }
        self.closed.store(true, Ordering::Release);
        self.gone.wake();
        let reason = pending.closed.clone().flatten();
        for (_, waiter) in pending.waiting.drain() {
            waiter
                .answer
                .send(Err(ClientError::Disconnected(reason.clone())));
        }
    }

    /// Hands `id` its answer, if it is still waited for.
    fn answer(&self, id: u64, answer: Answer) {
        if let Some(waiter) = self.lock().waiting.remove(&id) {
            waiter.answer.send(answer);
        }
    }
}

/// One multiplexed connection, shared by every clone of a `Client`.
pub(crate) struct Connection {
    frames: mpsc::Sender<ClientFrame>,
    state: Arc<State>,
    next_id: AtomicU64,
    in_flight: Semaphore,
}

impl Connection {
    /// Connects, handshakes and starts the driver tasks; pushes go to `pushes`.
    pub(crate) async fn open(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        pushes: broadcast::Sender<Push>,
    ) -> Result<Self> {
        let connect = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(ClientError::Connect)?;
            stream.set_nodelay(true).map_err(ClientError::Connect)?;
            let (read_half, write_half) = split(stream, &config).await?;
            let codec = || ClientCodec::with_max_frame_len(config.max_frame_len);
            let mut reader = FramedRead::new(read_half, codec());
            let mut writer = FramedWrite::new(write_half, codec());
            writer
                .send(ClientFrame::Hello(Hello {
                    protocol_version: PROTOCOL_VERSION,
                    client_name: config.client_name.clone(),
                }))
                .await?;
            match reader.next().await {
                Some(Ok(ServerFrame::Welcome(_))) => Ok((reader, writer)),
                Some(Ok(ServerFrame::Closing(e))) => Err(ClientError::Server(e)),
                Some(Ok(other)) => Err(ClientError::Unexpected(format!(
                    "{other:?} instead of Welcome"
                ))),
                // Not a flashsale frame at all: most likely a TLS server
                // answering a plain-TCP hello (or another service).
                Some(Err(CodecError::FrameTooLarge { .. } | CodecError::Malformed(_))) => {
                    Err(ClientError::Unexpected(
                        "the server's first answer is not a flashsale frame; \
                         if it serves TLS, connect with TLS (ClientConfig::tls, --tls)"
                            .into(),
                    ))
                }
                Some(Err(e)) => Err(e.into()),
                None => Err(ClientError::Disconnected(None)),
            }
        };
        let (reader, writer) = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout(config.connect_timeout))??;
        let (frames, frames_rx) = mpsc::channel(config.max_in_flight.max(1));
        let state = Arc::new(State::default());
        tokio::spawn(write_loop(writer, frames_rx, Arc::clone(&state)));
        tokio::spawn(read_loop(reader, Arc::clone(&state), pushes.clone()));
        tokio::spawn(timeout_clock(
            Arc::downgrade(&state),
            config.request_timeout,
        ));
        Ok(Self {
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            frames,
            state,
            next_id: AtomicU64::new(1),
        })
    }

    /// Sends a request and waits for its answer.
    pub(crate) async fn request(
        &self,
        body: RequestBody,
        on_behalf_of: Option<BuyerRef>,
    ) -> Result<Reply> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| ClientError::Disconnected(None))?;
        let (tx, rx) = oneshot::channel();
        self.send(body, on_behalf_of, AnswerTo::Caller(tx)).await?;
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Disconnected(
                self.state.lock().closed.clone().flatten(),
            )),
        }
    }

    /// Registers where the answer goes and queues the request. Waits only
    /// while the writer's queue is full (the server is not reading).
    ///
    /// Cancel-safe: the only wait comes before anything is registered, so a
    /// caller that gives up while waiting leaves nothing behind; once this
    /// returns `Ok`, the answer is sure to come (an answer, `Timeout`, or
    /// `Disconnected`).
    pub(crate) async fn send(
        &self,
        body: RequestBody,
        on_behalf_of: Option<BuyerRef>,
        answer: AnswerTo,
    ) -> Result<()> {
        let slot =
            self.frames.reserve().await.map_err(|_| {
                ClientError::Disconnected(self.state.lock().closed.clone().flatten())
            })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.state.lock();
        if let Some(reason) = &pending.closed {
            return Err(ClientError::Disconnected(reason.clone()));
        }
        pending.waiting.insert(
            id,
            Waiter {
                answer,
                sent_at: Instant::now(),
            },
        );
        drop(pending);
        slot.send(ClientFrame::Request(Request {
            id,
            on_behalf_of,
            body,
        }));
        Ok(())
    }

    /// True once the connection is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }
}

/// The tick of the timeout clock for `timeout`.
fn tick_for(timeout: Duration) -> Duration {
    (timeout / TICKS_PER_TIMEOUT).clamp(MIN_TICK, MAX_TICK)
}

/// Fails the requests that waited `timeout`, until the connection is
/// closed or dropped.
async fn timeout_clock(state: Weak<State>, timeout: Duration) {
    let tick = tick_for(timeout);
    let mut clock = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        clock.tick().await;
        let Some(state) = state.upgrade() else { return };
        let expired: Vec<Waiter> = {
            let mut pending = state.lock();
            if pending.closed.is_some() {
                return;
            }
            let now = Instant::now();
            pending
                .waiting
                .extract_if(|_, waiter| now.saturating_duration_since(waiter.sent_at) >= timeout)
                .map(|(_, waiter)| waiter)
                .collect()
        };
        for waiter in expired {
            waiter.answer.send(Err(ClientError::Timeout(timeout)));
        }
    }
}

async fn write_loop(
    mut sink: FramedWrite<WriteHalf, ClientCodec>,
    mut frames: mpsc::Receiver<ClientFrame>,
    state: Arc<State>,
) {
    sink.set_backpressure_boundary(WRITE_BUFFER);
    loop {
        let first = tokio::select! {
            biased;
            first = frames.recv() => first,
            () = state.gone() => None,
        };
        let Some(first) = first else { break };
        if !feed(&mut sink, first, &state).await {
            return state.close(None);
        }
        // Let the callers add what they have, so one write carries many requests.
        tokio::task::yield_now().await;
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            let Ok(next) = frames.try_recv() else { break };
            if !feed(&mut sink, next, &state).await {
                return state.close(None);
            }
        }
        if let Err(e) = sink.flush().await {
            tracing::debug!(error = %e, "connection write failed");
            return state.close(None);
        }
    }
    let _ = sink.close().await;
}

/// Buffers one frame; false when the connection is broken. A request that
/// cannot be encoded (too large) fails alone.
async fn feed(
    sink: &mut FramedWrite<WriteHalf, ClientCodec>,
    frame: ClientFrame,
    state: &State,
) -> bool {
    let id = match &frame {
        ClientFrame::Request(request) => Some(request.id),
        ClientFrame::Hello(_) => None,
    };
    match sink.feed(frame).await {
        Ok(()) => true,
        Err(CodecError::Encode(reason)) => {
            if let Some(id) = id {
                state.answer(
                    id,
                    Err(ClientError::Server(WireError {
                        code: ErrorCode::BadRequest,
                        message: format!("the request could not be sent: {reason}"),
                        trace_id: uuid::Uuid::nil(),
                        retry_after_ms: None,
                    })),
                );
            }
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "connection write failed");
            false
        }
    }
}

async fn read_loop(
    mut stream: FramedRead<ReadHalf, ClientCodec>,
    state: Arc<State>,
    pushes: broadcast::Sender<Push>,
) {
    let mut reason = None;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(ServerFrame::Response(response)) => {
                state.answer(response.id, response.result.map_err(ClientError::Server));
            }
            Ok(ServerFrame::Push(push)) => {
                // No subscriber is fine: nobody asked for pushes.
                let _ = pushes.send(push);
            }
            Ok(ServerFrame::Closing(error)) => {
                tracing::debug!(%error, "server is closing the connection");
                reason = Some(error);
                break;
            }
            Ok(ServerFrame::Welcome(_)) => {
                tracing::warn!("unexpected second Welcome");
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection read failed");
                break;
            }
        }
    }
    state.close(reason);
}
