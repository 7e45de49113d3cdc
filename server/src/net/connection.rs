//! One client connection: the read loop, and dispatching each request to
//! the session handling ([`session`]) or the API ([`crate::api`]); the
//! handshake and the `Closing` frames are in [`handshake`], the writer task
//! that batches outgoing frames in [`writer`].
//!
//! Flow control: the reader takes an in-flight permit before reading each
//! request and the writer gives it back when the response is written, so a
//! connection never has more than `max_in_flight_per_connection` requests
//! unanswered, and the response queue (sized to that) always has room.
//! Pushes have their own bounded queue and are dropped when it is full.
//! Listing answers also count their size ([`ReplyBytes`]): the reader stops
//! reading while more than `max_reply_bytes_per_connection` of them wait
//! unwritten, so a client that pipelines large listings and never reads
//! holds about that much, not `max_in_flight_per_connection` listings.
//!
//! The per-peer cap ([`PeerSlot`]): the read loop tells the accept loop
//! whether the connection has a session; a connection closed to make room
//! for a newer one of its address says `Closing(Overloaded)`.
//!
//! Logging: every request gets a fresh request id (a [`Trace`]) at dispatch;
//! the request and its answer are logged under it (DEBUG; see
//! [`Trace::answer`] for the levels of refusals), and an error answer's
//! `trace_id` is that id. A protocol violation that closes the connection is
//! logged at WARN under the id its `Closing` frame carries. Request bodies
//! and replies are never logged: they carry passwords, API keys and tokens.

mod handshake;
mod session;
mod writer;

use crate::accounts::auth::Session;
use crate::api;
use crate::error::ApiError;
use crate::net::notifier::Registration;
use crate::net::rate_limit::{ConnectionLimit, PeerSlot};
use crate::net::reply::{Outgoing, ReplyBytes, ReplyTo, Trace};
use crate::state::Shared;
use flashsale_protocol::{
    ClientFrame, CodecError, ErrorCode, Reply, Request, RequestBody, ServerCodec, ServerFrame,
    DEFAULT_MAX_REPLY_FRAME_LEN,
};
use futures::StreamExt;
use session::{session_end, SessionEnd};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Bytes buffered before a write is forced, even while more frames are ready.
const WRITE_BUFFER: usize = 64 * 1024;

/// Time a closing connection gets to deliver its last frames and for the
/// client to read them and close.
const LINGER: Duration = Duration::from_secs(5);

/// The reading half of a connection, plain TCP or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection, plain TCP or TLS.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Serves one accepted connection until the peer leaves, breaks the
/// protocol, or `shutdown` is cancelled (the server stops, or `slot` was
/// evicted by the per-peer cap).
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    slot: Arc<PeerSlot>,
) {
    // The span costs a little on every poll; only pay for it when it is logged.
    if tracing::enabled!(tracing::Level::DEBUG) {
        let span = tracing::debug_span!("conn", %peer);
        serve_inner(stream, peer, shared, shutdown, slot)
            .instrument(span)
            .await;
    } else {
        serve_inner(stream, peer, shared, shutdown, slot).await;
    }
}

async fn serve_inner(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    slot: Arc<PeerSlot>,
) {
    shared.edge.count_connection(true);
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not disable Nagle");
    }
    let codec = || {
        ServerCodec::with_max_frame_len(shared.config.max_frame_len)
            .with_max_encode_len(DEFAULT_MAX_REPLY_FRAME_LEN)
    };
    // Evicted or shut down during the handshake: closed at once.
    let split = tokio::select! {
        split = handshake::split(stream, &shared) => split,
        () = shutdown.cancelled() => None,
    };
    if let Some((read_half, write_half)) = split {
        let mut reader = FramedRead::new(read_half, codec());
        let mut writer = FramedWrite::new(write_half, codec());
        writer.set_backpressure_boundary(WRITE_BUFFER);
        let greeted = tokio::select! {
            greeted = handshake::hello(&mut reader, &mut writer, &shared, peer) => greeted,
            () = shutdown.cancelled() => false,
        };
        if greeted {
            // The connection's own token: its polls lock only its own node,
            // not the server-wide token every connection watches.
            let shutdown = shutdown.child_token();
            Connection::new(Arc::clone(&shared), peer, slot)
                .run(reader, writer, shutdown)
                .await;
        }
    }
    shared.edge.count_connection(false);
    tracing::debug!("connection closed");
}

/// A connection after the handshake.
struct Connection {
    shared: Arc<Shared>,
    /// The client's address, for the log.
    peer: SocketAddr,
    /// The logged-in session, if any.
    session: Option<(Session, Registration)>,
    /// Tells when the session ends elsewhere (logout, revoked API key).
    session_ended: Option<SessionEnd>,
    /// Responses, consumed by the writer; room guaranteed by `in_flight`.
    frames: mpsc::Sender<Outgoing>,
    frames_rx: Option<mpsc::Receiver<Outgoing>>,
    /// Pushes, consumed by the writer; dropped when full.
    pushes: mpsc::Sender<ServerFrame>,
    pushes_rx: Option<mpsc::Receiver<ServerFrame>>,
    /// Unanswered request permits.
    in_flight: Arc<Semaphore>,
    /// This connection's pay rate limit (`Config::pay_rate_per_connection`),
    /// whoever is logged in on it.
    pay_limit: ConnectionLimit,
    /// Listing answers queued unwritten, in bytes
    /// (`Config::max_reply_bytes_per_connection`).
    queued: Arc<ReplyBytes>,
    /// This connection in the per-peer cap.
    slot: Arc<PeerSlot>,
    /// The online backup this connection streams, if any: it ends with
    /// the connection, or when the session on it changes.
    backup: api::backup::BackupSlot,
}

impl Connection {
    fn new(shared: Arc<Shared>, peer: SocketAddr, slot: Arc<PeerSlot>) -> Self {
        let max_in_flight = shared.config.max_in_flight_per_connection.max(1);
        // One slot more than the in-flight limit, for the final `Closing` frame.
        let (frames, frames_rx) = mpsc::channel(max_in_flight + 1);
        let (pushes, pushes_rx) = mpsc::channel(shared.config.push_buffer.max(1));
        let pay_limit = ConnectionLimit::new(shared.config.pay_rate_per_connection);
        Self {
            shared,
            peer,
            session: None,
            session_ended: None,
            frames,
            frames_rx: Some(frames_rx),
            pushes,
            pushes_rx: Some(pushes_rx),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            pay_limit,
            queued: Arc::new(ReplyBytes::default()),
            slot,
            backup: api::backup::BackupSlot::default(),
        }
    }

    async fn run(
        mut self,
        mut reader: FramedRead<ReadHalf, ServerCodec>,
        writer: FramedWrite<WriteHalf, ServerCodec>,
        shutdown: CancellationToken,
    ) {
        let (Some(frames_rx), Some(pushes_rx)) = (self.frames_rx.take(), self.pushes_rx.take())
        else {
            return;
        };
        let mut writer_task = tokio::spawn(writer::write_loop(
            writer,
            frames_rx,
            pushes_rx,
            Arc::clone(&self.in_flight),
            Arc::clone(&self.queued),
        ));
        let closing = self.read_loop(&mut reader, &shutdown).await;
        if let Some((_, registration)) = self.session.take() {
            self.shared.edge.notifier.unregister(registration);
        }
        let max_in_flight = self.shared.config.max_in_flight_per_connection.max(1);
        let all_permits = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
        // Let in-flight requests finish, unless the writer is gone (the
        // peer stopped reading): then their answers have nowhere to go.
        let writer_gone = tokio::select! {
            _ = tokio::time::timeout(self.shared.config.shutdown_grace, self.in_flight.acquire_many(all_permits)) => false,
            _ = &mut writer_task => true,
        };
        if writer_gone {
            return;
        }
        let server_closes = closing.is_some();
        if let Some(error) = closing {
            let _ = self.frames.try_send(handshake::closing(error, self.peer));
        }
        drop(self);
        let linger_until = tokio::time::Instant::now() + LINGER;
        if tokio::time::timeout_at(linger_until, &mut writer_task)
            .await
            .is_err()
        {
            writer_task.abort();
            return;
        }
        if server_closes {
            drain_until_closed(reader.into_inner(), linger_until).await;
        }
    }

    /// Reads and dispatches requests; returns the `Closing` error to send, if any.
    ///
    /// The per-request path takes no shared lock and arms no timer: the
    /// in-flight permit is tried first, the frame branch is polled first,
    /// and the connection's one deadline timer is moved only when it fires.
    /// The shutdown and session-end futures live as long as the connection
    /// and are polled only when no frame is ready (each poll takes a lock);
    /// tokio's cooperative budget makes even a flooding reader return
    /// `Pending` every so often, so shutdown is still seen promptly. A
    /// session that ended elsewhere is checked before every request (its
    /// token is this connection's own), so no request runs after it.
    async fn read_loop(
        &mut self,
        reader: &mut FramedRead<ReadHalf, ServerCodec>,
        shutdown: &CancellationToken,
    ) -> Option<ApiError> {
        let mut clock = ReadClock::new(&self.shared);
        let deadline = tokio::time::sleep_until(clock.deadline(false).into());
        tokio::pin!(deadline);
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        let mut reported_session = false;
        loop {
            if self.session.is_some() != reported_session {
                reported_session = self.session.is_some();
                self.slot.set_session(reported_session);
            }
            if self.session.is_none() {
                clock.session_gone(Instant::now());
                if let Err(closing) = clock.check_login(Instant::now()) {
                    return closing;
                }
                deadline.as_mut().reset(clock.deadline(false).into());
            }
            let permit = match Arc::clone(&self.in_flight).try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => return None,
                Err(TryAcquireError::NoPermits) => {
                    let permit = match self.wait_for_permit(&mut shutting_down).await {
                        Ok(permit) => permit,
                        Err(closing) => return closing,
                    };
                    // Waiting for our own answers to drain is not the client's idle time.
                    clock.waiting_since = Instant::now();
                    permit
                }
            };
            if self.queued.queued() > self.shared.config.max_reply_bytes_per_connection {
                if let Err(closing) = self.wait_for_drain(&mut shutting_down).await {
                    return closing;
                }
                clock.waiting_since = Instant::now();
            }
            clock.had_session |= self.session.is_some();
            let frame = tokio::select! {
                biased;
                frame = reader.next() => frame,
                () = &mut shutting_down => return Some(self.closed_why()),
                () = session_end(&mut self.session_ended) => return Some(session::over()),
                () = &mut deadline => {
                    let now = Instant::now();
                    let has_session = self.session.is_some();
                    match clock.expired(now, has_session) {
                        Ok(due) => deadline.as_mut().reset(due.into()),
                        Err(closing) => return closing,
                    }
                    continue;
                }
            };
            clock.waiting_since = Instant::now();
            let request = match frame? {
                Err(CodecError::Io(e)) => {
                    tracing::debug!(error = %e, "read failed");
                    return None;
                }
                Err(e) => return Some(handshake::frame_error(&e)),
                Ok(ClientFrame::Hello(_)) => {
                    return Some(ApiError::bad_request("Hello was already received"))
                }
                Ok(ClientFrame::Request(request)) => request,
            };
            if self.session_ended.as_ref().is_some_and(SessionEnd::is_over) {
                return Some(session::over());
            }
            let slow = may_wait(&request.body);
            // The writer gives the permit back when it writes the response.
            permit.forget();
            self.dispatch(request, clock.waiting_since).await;
            if slow {
                clock.waiting_since = Instant::now();
            }
        }
    }

    /// Waits for an in-flight permit when all are taken. A client that never
    /// reads its answers stalls the writer, so permits never come back: that
    /// too ends after the idle timeout. `Err` carries the `Closing` error to
    /// send, if any.
    async fn wait_for_permit(
        &mut self,
        shutting_down: &mut std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Result<OwnedSemaphorePermit, Option<ApiError>> {
        let idle = self.shared.config.idle_timeout;
        let acquire = tokio::time::timeout(idle, Arc::clone(&self.in_flight).acquire_owned());
        tokio::select! {
            biased;
            () = shutting_down => Err(Some(self.closed_why())),
            () = session_end(&mut self.session_ended) => Err(Some(session::over())),
            permit = acquire => match permit {
                Ok(permit) => permit.map_err(|_closed| None),
                Err(_) => Err(Some(ApiError::bad_request(format!(
                    "{} answers unread for {} s",
                    self.shared.config.max_in_flight_per_connection,
                    idle.as_secs()
                )))),
            },
        }
    }

    /// Waits while the listing answers queued unwritten exceed the budget
    /// (the client is not reading them); like [`Self::wait_for_permit`],
    /// that ends after the idle timeout. `Err` carries the `Closing` error.
    async fn wait_for_drain(
        &mut self,
        shutting_down: &mut std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Result<(), Option<ApiError>> {
        let budget = self.shared.config.max_reply_bytes_per_connection;
        let idle = self.shared.config.idle_timeout;
        let until = tokio::time::Instant::now() + idle;
        while self.queued.queued() > budget {
            if self.queued.is_writer_gone() {
                // The peer is gone: its answers will never drain.
                return Err(None);
            }
            let queued = Arc::clone(&self.queued);
            let drained = tokio::time::timeout_at(until, queued.drained());
            tokio::select! {
                biased;
                () = &mut *shutting_down => return Err(Some(self.closed_why())),
                () = session_end(&mut self.session_ended) => return Err(Some(session::over())),
                waited = drained => if waited.is_err() {
                    return Err(Some(ApiError::bad_request(format!(
                        "over {budget} bytes of answers unread for {} s",
                        idle.as_secs()
                    ))));
                },
            }
        }
        Ok(())
    }

    /// Why the connection's token was cancelled: the per-peer cap closed it
    /// to make room, or the server is shutting down.
    fn closed_why(&self) -> ApiError {
        if self.slot.evicted() {
            return ApiError::new(
                ErrorCode::Overloaded,
                "too many connections from your address; this one, without a session, was closed to make room",
            );
        }
        ApiError::shutting_down()
    }

    /// Handles one request; exactly one response results, now or later.
    async fn dispatch(&mut self, request: Request, read_at: Instant) {
        let Request {
            id,
            on_behalf_of,
            body,
        } = request;
        let (user, session_no) = match &self.session {
            Some((session, registration)) => {
                (Some(session.user_id), Some(registration.session_no()))
            }
            None => (None, None),
        };
        let trace = Trace::started_at(id, body.kind(), user, read_at).in_session(session_no);
        trace.log_request();
        let budget = may_be_large(&body).then(|| Arc::clone(&self.queued));
        let reply = ReplyTo::Connection {
            frames: self.frames.clone(),
            trace,
            budget,
        };
        if matches!(body, RequestBody::Ping) {
            return reply.send(Ok(Reply::Pong));
        }
        if is_session_request(&body) {
            if on_behalf_of.is_some() {
                let refusal = ApiError::bad_request(
                    "login, resume and logout cannot act on behalf of a buyer",
                );
                return reply.send(Err(refusal));
            }
            // A connection logging in is not anonymous for the per-peer
            // cap: hashing may take seconds, and a newer connection of its
            // address must not evict it meanwhile.
            self.slot.set_session(true);
            // A backup belongs to the session that began it.
            self.backup.stop();
            let result = self.session_request(body).await;
            self.slot.set_session(self.session.is_some());
            if let Some(result) = result {
                reply.send(result);
            }
            return;
        }
        if self.expire_session() {
            let expired = ApiError::new(
                ErrorCode::Unauthenticated,
                "the session expired; log in again",
            );
            return reply.send(Err(expired));
        }
        let Some((session, _)) = &self.session else {
            return reply.send(Err(ApiError::no_session()));
        };
        match session::acting_for(&self.shared, session, on_behalf_of) {
            Err(e) => reply.send(Err(e)),
            Ok((acting, new_buyer)) => {
                let caller = api::Caller {
                    session,
                    acting,
                    new_buyer,
                    connection_pay_limit: &self.pay_limit,
                    backup: &mut self.backup,
                };
                api::handle(&self.shared, caller, body, reply).await;
            }
        }
    }
}

/// The read loop's clocks: the idle timeout counts from when the wait for
/// the next frame began; without a session, a connection must log in by a
/// deadline (`Ping` does not extend it, so anonymous connections cannot hog
/// slots), counted from connecting or from when its session ended (a
/// logout, an expiry).
struct ReadClock {
    idle: Duration,
    login_timeout: Duration,
    login_by: Instant,
    waiting_since: Instant,
    /// The connection had a session when the loop last looked.
    had_session: bool,
}

impl ReadClock {
    fn new(shared: &Shared) -> Self {
        let opened = Instant::now();
        let login_timeout = shared.config.login_timeout;
        Self {
            idle: shared.config.idle_timeout,
            login_timeout,
            login_by: later(opened, login_timeout),
            waiting_since: opened,
            had_session: false,
        }
    }

    /// The session ended (if there was one): the login deadline starts again.
    fn session_gone(&mut self, now: Instant) {
        if self.had_session {
            self.had_session = false;
            self.login_by = later(now, self.login_timeout);
        }
    }

    /// When the read loop gives up waiting for the next frame: the idle
    /// timeout after the last frame, or the login deadline without a session.
    fn deadline(&self, has_session: bool) -> Instant {
        let idle_by = later(self.waiting_since, self.idle);
        if has_session {
            idle_by
        } else {
            idle_by.min(self.login_by)
        }
    }

    /// `Err` with the `Closing` error once a connection without a session is
    /// past its login deadline.
    fn check_login(&self, now: Instant) -> Result<(), Option<ApiError>> {
        if now < self.login_by {
            return Ok(());
        }
        Err(Some(ApiError::new(
            ErrorCode::Unauthenticated,
            format!("no login within {} s", self.login_timeout.as_secs()),
        )))
    }

    /// When the deadline timer fired: the next deadline when it has moved
    /// (a frame was read meanwhile), or the `Closing` error.
    fn expired(&self, now: Instant, has_session: bool) -> Result<Instant, Option<ApiError>> {
        if !has_session {
            self.check_login(now)?;
        }
        let due = self.deadline(has_session);
        if due > now {
            return Ok(due);
        }
        Err(Some(ApiError::bad_request(format!(
            "no complete frame for {} s; send Ping to keep an idle connection",
            self.idle.as_secs()
        ))))
    }
}

/// Requests whose answer may be large (a listing): counted in the
/// connection's [`ReplyBytes`]. Pays are not: their answers are small and
/// bounded by the in-flight cap.
fn may_be_large(body: &RequestBody) -> bool {
    matches!(
        body,
        RequestBody::ListProducts
            | RequestBody::ListProductsPage { .. }
            | RequestBody::ListOrders { .. }
            | RequestBody::QueryOrders { .. }
            | RequestBody::ListUsers { .. }
            | RequestBody::Stats
            | RequestBody::BackupNext { .. }
    )
}

/// Requests whose handling may wait (for a password-hashing slot): the idle
/// clock restarts after them.
fn may_wait(body: &RequestBody) -> bool {
    matches!(
        body,
        RequestBody::Login { .. }
            | RequestBody::LoginApiKey { .. }
            | RequestBody::CreateUser { .. }
            | RequestBody::CreateApiKey { .. }
    )
}

/// `at + by`, or about a century later when that overflows (a huge
/// configured timeout means "never").
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(at)
}

/// Requests that open, resume or end the connection's session.
fn is_session_request(body: &RequestBody) -> bool {
    matches!(
        body,
        RequestBody::Login { .. }
            | RequestBody::LoginApiKey { .. }
            | RequestBody::Resume { .. }
            | RequestBody::Logout
    )
}

/// After the server closed its side of a connection (every answer and the
/// `Closing` frame written, the write side shut down), reads and discards
/// what the client still sends until it closes, or until `until`. Closing a
/// socket with unread bytes in it makes the kernel reset the connection,
/// and a reset throws away the answers the client has not read yet.
async fn drain_until_closed(mut read: ReadHalf, until: tokio::time::Instant) {
    let mut discard = [0u8; 4096];
    let drain = async {
        while let Ok(read) = read.read(&mut discard).await {
            if read == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(until, drain).await;
}
