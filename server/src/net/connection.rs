//! One client connection: handshake, reading requests, dispatching them,
//! and a writer task that batches outgoing frames.
//!
//! Flow control: the reader takes an in-flight permit before reading each
//! request and the writer gives it back when the response is written, so a
//! connection never has more than `max_in_flight_per_connection` requests
//! unanswered, and the response queue (sized to that) always has room.
//! Pushes have their own bounded queue and are dropped when it is full.
//!
//! Logging: every request gets a fresh request id (a [`Trace`]) at dispatch;
//! the request and its answer are logged under it (DEBUG; see
//! [`Trace::answer`] for the levels of refusals), and an error answer's
//! `trace_id` is that id. A protocol violation that closes the connection is
//! logged at WARN under the id its `Closing` frame carries. Request bodies
//! and replies are never logged: they carry passwords, API keys and tokens.

use crate::accounts::auth::{Acting, Session};
use crate::api;
use crate::error::{ApiError, ApiResult};
use crate::net::notifier::Registration;
use crate::net::rate_limit::ConnectionLimit;
use crate::net::reply::{Outgoing, ReplyTo, Trace};
use crate::state::Shared;
use crate::telemetry;
use flashsale_protocol::{
    BuyerRef, ClientFrame, CodecError, ErrorCode, PartnerRef, Request, RequestBody, Response, Role,
    ServerCodec, ServerFrame, Welcome, DEFAULT_MAX_REPLY_FRAME_LEN, MAX_TEXT_LEN, PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore, TryAcquireError};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;
use uuid::Uuid;

/// Frames written before the writer flushes even if more are ready, so one
/// busy connection still sends its answers promptly.
const MAX_FRAMES_PER_FLUSH: usize = 512;

/// Bytes buffered before a write is forced, even while more frames are ready.
const WRITE_BUFFER: usize = 64 * 1024;

/// Longest login-throttle key: longer than any valid user name or key id.
const MAX_THROTTLE_KEY_CHARS: usize = 80;

/// Time the writer gets to deliver the last frames after the reader is done.
const WRITER_LINGER: Duration = Duration::from_secs(5);

/// The reading half of a connection, plain TCP or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection, plain TCP or TLS.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Splits an accepted stream, after the TLS handshake when TLS is on
/// (bounded by the handshake timeout). `None` when the handshake failed.
async fn split(stream: TcpStream, shared: &Shared) -> Option<(ReadHalf, WriteHalf)> {
    let Some(tls) = &shared.config.tls else {
        let (read, write) = stream.into_split();
        return Some((Box::new(read), Box::new(write)));
    };
    let handshake = tls.acceptor().accept(stream);
    match tokio::time::timeout(shared.config.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => {
            let (read, write) = tokio::io::split(stream);
            Some((Box::new(read), Box::new(write)))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("no TLS handshake within the handshake timeout");
            None
        }
    }
}

/// Serves one accepted connection until the peer leaves, breaks the
/// protocol, or `shutdown` is cancelled.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    // The span costs a little on every poll; only pay for it when it is logged.
    if tracing::enabled!(tracing::Level::DEBUG) {
        let span = tracing::debug_span!("conn", %peer);
        serve_inner(stream, peer, shared, shutdown)
            .instrument(span)
            .await;
    } else {
        serve_inner(stream, peer, shared, shutdown).await;
    }
}

async fn serve_inner(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    telemetry::connection(true);
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not disable Nagle");
    }
    let codec = || {
        ServerCodec::with_max_frame_len(shared.config.max_frame_len)
            .with_max_encode_len(DEFAULT_MAX_REPLY_FRAME_LEN)
    };
    if let Some((read_half, write_half)) = split(stream, &shared).await {
        let mut reader = FramedRead::new(read_half, codec());
        let mut writer = FramedWrite::new(write_half, codec());
        writer.set_backpressure_boundary(WRITE_BUFFER);
        if handshake(&mut reader, &mut writer, &shared, peer).await {
            // The connection's own token: its polls lock only its own node,
            // not the server-wide token every connection watches.
            let shutdown = shutdown.child_token();
            Connection::new(Arc::clone(&shared), peer)
                .run(reader, writer, shutdown)
                .await;
        }
    }
    shared.connections.fetch_sub(1, Ordering::Relaxed);
    telemetry::connection(false);
    tracing::debug!("connection closed");
}

/// Reads `Hello` and answers `Welcome`; false when the connection must close.
async fn handshake(
    reader: &mut FramedRead<ReadHalf, ServerCodec>,
    writer: &mut FramedWrite<WriteHalf, ServerCodec>,
    shared: &Shared,
    peer: SocketAddr,
) -> bool {
    let first = tokio::time::timeout(shared.config.handshake_timeout, reader.next()).await;
    let refusal = match first {
        Err(_) => ApiError::bad_request("no Hello within the handshake timeout"),
        Ok(None) => return false,
        Ok(Some(Err(e))) => frame_error(&e),
        Ok(Some(Ok(ClientFrame::Hello(hello))))
            if hello.client_name.len() > MAX_TEXT_LEN
                || hello.client_name.chars().any(char::is_control) =>
        {
            ApiError::bad_request(format!(
                "a client name has at most {MAX_TEXT_LEN} bytes and no control characters"
            ))
        }
        Ok(Some(Ok(ClientFrame::Hello(hello)))) if hello.protocol_version == PROTOCOL_VERSION => {
            tracing::debug!(client = ?hello.client_name, "handshake");
            let welcome = ServerFrame::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                server_version: env!("CARGO_PKG_VERSION").to_owned(),
            });
            return writer.send(welcome).await.is_ok();
        }
        Ok(Some(Ok(ClientFrame::Hello(hello)))) => ApiError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "this server speaks protocol version {PROTOCOL_VERSION}, the client sent {}",
                hello.protocol_version
            ),
        ),
        Ok(Some(Ok(ClientFrame::Request(_)))) => {
            ApiError::bad_request("the first frame must be Hello")
        }
    };
    let closing = closing(refusal, peer);
    let _ = writer.send(closing.frame).await;
    false
}

/// The `Closing` frame for `error`, logged: at WARN for a protocol
/// violation, at DEBUG when the server is shutting down.
fn closing(error: ApiError, peer: SocketAddr) -> Outgoing {
    let trace_id = Uuid::new_v4();
    if error.code == ErrorCode::ShuttingDown {
        tracing::debug!(%trace_id, %peer, "closing the connection: shutting down");
    } else if error.code == ErrorCode::Unauthenticated {
        tracing::info!(%trace_id, %peer, reason = %error.message, "closing the connection");
    } else {
        tracing::warn!(
            %trace_id,
            %peer,
            code = telemetry::code_name(error.code),
            reason = %error.message,
            "closing the connection: protocol violation"
        );
    }
    Outgoing {
        frame: ServerFrame::Closing(error.into_wire(trace_id)),
        trace_id,
    }
}

/// Why a connection closes when its session ended elsewhere.
fn session_over() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "the session ended (logged out elsewhere, or its API key was revoked)",
    )
}

fn frame_error(e: &CodecError) -> ApiError {
    match e {
        CodecError::FrameTooLarge { max } => {
            ApiError::bad_request(format!("frame exceeds the limit of {max} bytes"))
        }
        other => ApiError::bad_request(format!("undecodable frame: {other}")),
    }
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
}

impl Connection {
    fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
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
        let mut writer_task = tokio::spawn(write_loop(
            writer,
            frames_rx,
            pushes_rx,
            Arc::clone(&self.in_flight),
        ));
        let closing = self.read_loop(&mut reader, &shutdown).await;
        if let Some((_, registration)) = self.session.take() {
            self.shared.notifier.unregister(registration);
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
        if let Some(error) = closing {
            let _ = self.frames.try_send(self::closing(error, self.peer));
        }
        drop(self);
        if tokio::time::timeout(WRITER_LINGER, &mut writer_task)
            .await
            .is_err()
        {
            writer_task.abort();
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
        let idle = self.shared.config.idle_timeout;
        let login_timeout = self.shared.config.login_timeout;
        let opened = Instant::now();
        // Without a session, a connection must log in by a deadline; `Ping`
        // does not extend it, so anonymous connections cannot hog slots.
        let login_by = later(opened, login_timeout);
        let no_login = || {
            ApiError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "no login within {} s of connecting",
                    login_timeout.as_secs()
                ),
            )
        };
        // When the wait for the next frame began: the idle timeout counts from here.
        let mut waiting_since = opened;
        let deadline = tokio::time::sleep_until(self.read_deadline(waiting_since, login_by).into());
        tokio::pin!(deadline);
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        loop {
            if self.session.is_none() {
                if Instant::now() >= login_by {
                    return Some(no_login());
                }
                let due = self.read_deadline(waiting_since, login_by);
                deadline.as_mut().reset(due.into());
            }
            let permit = match Arc::clone(&self.in_flight).try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => return None,
                // A client that never reads its answers stalls the writer, so
                // permits never come back: that too ends after the idle timeout.
                Err(TryAcquireError::NoPermits) => {
                    let permit = tokio::select! {
                        biased;
                        () = &mut shutting_down => return Some(ApiError::shutting_down()),
                        () = session_end(&mut self.session_ended) => return Some(session_over()),
                        permit = tokio::time::timeout(idle, Arc::clone(&self.in_flight).acquire_owned()) => match permit {
                            Ok(permit) => permit.ok()?,
                            Err(_) => return Some(ApiError::bad_request(format!(
                                "{} answers unread for {} s",
                                self.shared.config.max_in_flight_per_connection,
                                idle.as_secs()
                            ))),
                        },
                    };
                    // Waiting for our own answers to drain is not the client's idle time.
                    waiting_since = Instant::now();
                    permit
                }
            };
            let frame = tokio::select! {
                biased;
                frame = reader.next() => frame,
                () = &mut shutting_down => return Some(ApiError::shutting_down()),
                () = session_end(&mut self.session_ended) => return Some(session_over()),
                () = &mut deadline => {
                    let now = Instant::now();
                    if self.session.is_none() && now >= login_by {
                        return Some(no_login());
                    }
                    let due = self.read_deadline(waiting_since, login_by);
                    if due > now {
                        deadline.as_mut().reset(due.into());
                        continue;
                    }
                    return Some(ApiError::bad_request(format!(
                        "no complete frame for {} s; send Ping to keep an idle connection",
                        idle.as_secs()
                    )));
                }
            };
            let read_at = Instant::now();
            waiting_since = read_at;
            match frame {
                None => return None,
                Some(Err(CodecError::Io(e))) => {
                    tracing::debug!(error = %e, "read failed");
                    return None;
                }
                Some(Err(e)) => return Some(frame_error(&e)),
                Some(Ok(ClientFrame::Hello(_))) => {
                    return Some(ApiError::bad_request("Hello was already received"))
                }
                Some(Ok(ClientFrame::Request(request))) => {
                    if self.session_ended.as_ref().is_some_and(SessionEnd::is_over) {
                        return Some(session_over());
                    }
                    let slow = may_wait(&request.body);
                    // The writer gives the permit back when it writes the response.
                    permit.forget();
                    self.dispatch(request, read_at).await;
                    if slow {
                        waiting_since = Instant::now();
                    }
                }
            }
        }
    }

    /// When the read loop gives up waiting for the next frame: the idle
    /// timeout after the last frame, or the login deadline without a session.
    fn read_deadline(&self, waiting_since: Instant, login_by: Instant) -> Instant {
        let idle_by = later(waiting_since, self.shared.config.idle_timeout);
        if self.session.is_none() {
            idle_by.min(login_by)
        } else {
            idle_by
        }
    }

    /// Handles one request; exactly one response results, now or later.
    async fn dispatch(&mut self, request: Request, read_at: Instant) {
        let Request {
            id,
            on_behalf_of,
            body,
        } = request;
        let user = self.session.as_ref().map(|(session, _)| session.user_id);
        let trace = Trace::started_at(id, body.kind(), user, read_at);
        trace.log_request();
        let reply_to = ReplyTo::Connection {
            frames: self.frames.clone(),
            trace,
        };
        let session_request = matches!(
            body,
            RequestBody::Login { .. }
                | RequestBody::LoginApiKey { .. }
                | RequestBody::Resume { .. }
                | RequestBody::Logout
        );
        if session_request && on_behalf_of.is_some() {
            let refusal =
                ApiError::bad_request("login, resume and logout cannot act on behalf of a buyer");
            return reply_to.send(Err(refusal));
        }
        let result = match body {
            RequestBody::Ping => Ok(flashsale_protocol::Reply::Pong),
            RequestBody::Login { username, password } => {
                let account = username.clone();
                let outcome = self
                    .throttled_login(&account, move |shared| {
                        shared.auth.login(&username, &password)
                    })
                    .await;
                self.start_session(outcome)
            }
            RequestBody::LoginApiKey { key } => {
                // Throttled per key id, the key's public part.
                let account = format!("api-key:{}", api_key_id(&key));
                let outcome = self
                    .throttled_login(&account, move |shared| shared.auth.login_api_key(&key))
                    .await;
                self.start_session(outcome)
            }
            RequestBody::Resume { token } => {
                let outcome = self.shared.auth.resume(&token);
                self.start_session(outcome)
            }
            RequestBody::Logout => self.logout(),
            _ if self.expire_session() => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the session expired; log in again",
            )),
            body => match &self.session {
                None => Err(ApiError::no_session()),
                Some((session, _)) => match acting_for(&self.shared, session, on_behalf_of) {
                    Err(e) => Err(e),
                    Ok(acting) => {
                        let pay = matches!(body, RequestBody::Pay { .. } | RequestBody::Buy { .. });
                        if pay {
                            if let Err(wait) = self.pay_limit.check() {
                                telemetry::rate_limited();
                                return reply_to.send(Err(ApiError::rate_limited(wait)));
                            }
                        }
                        return api::handle(&self.shared, session, acting, body, reply_to).await;
                    }
                },
            },
        };
        reply_to.send(result);
    }

    /// Runs a password or key check unless this peer or account must wait
    /// after failed logins; records the outcome for the throttle.
    async fn throttled_login(
        &self,
        account: &str,
        check: impl FnOnce(&Shared) -> ApiResult<Session> + Send + 'static,
    ) -> ApiResult<Session> {
        let peer = self.peer.ip();
        // The throttle's key is bounded: no valid user name or key id is
        // longer, and an attacker's long names must not grow its maps.
        let account: String = account.chars().take(MAX_THROTTLE_KEY_CHARS).collect();
        let throttle = &self.shared.login_throttle;
        if let Some(wait) = throttle.wait(&account, peer, std::time::Instant::now()) {
            return Err(ApiError::login_throttled(wait));
        }
        // Asked again once a hashing slot is ours: logins from many
        // connections at once queue for the slots, and must not all pass on
        // the first check while the earlier ones' failures are still being computed.
        let key = account.clone();
        let outcome = self
            .shared
            .hash_blocking(move |shared| {
                if let Some(wait) =
                    shared
                        .login_throttle
                        .wait(&key, peer, std::time::Instant::now())
                {
                    return Err(ApiError::login_throttled(wait));
                }
                check(shared)
            })
            .await;
        match &outcome {
            Ok(_) => throttle.succeeded(&account, peer),
            Err(e) if e.code == ErrorCode::Unauthenticated => {
                throttle.failed(&account, peer, std::time::Instant::now());
            }
            Err(_) => {}
        }
        outcome
    }

    fn start_session(
        &mut self,
        outcome: ApiResult<Session>,
    ) -> ApiResult<flashsale_protocol::Reply> {
        let session = outcome?;
        if let Some((_, old)) = self.session.take() {
            self.shared.notifier.unregister(old);
        }
        let (registration, ended) = self.shared.notifier.register(
            session.user_id,
            Arc::from(session.token.as_str()),
            session.api_key_id.as_deref().map(Arc::from),
            self.pushes.clone(),
        );
        self.session_ended = Some(SessionEnd::new(ended));
        let reply = flashsale_protocol::Reply::LoggedIn {
            user_id: session.user_id,
            username: session.username.clone(),
            role: session.role,
            token: session.token.clone(),
        };
        tracing::debug!(user = %session.username, "session started");
        self.session = Some((session, registration));
        Ok(reply)
    }

    fn logout(&mut self) -> ApiResult<flashsale_protocol::Reply> {
        let (session, registration) = self.session.take().ok_or_else(ApiError::no_session)?;
        self.session_ended = None;
        self.shared.notifier.unregister(registration);
        self.shared.auth.logout(&session.token)?;
        // Its other connections close: logout ends the session everywhere.
        self.shared
            .notifier
            .end_session(session.user_id, &session.token);
        Ok(flashsale_protocol::Reply::LoggedOut)
    }

    /// Drops an expired session from this connection; true if it was expired.
    fn expire_session(&mut self) -> bool {
        let expired = self
            .session
            .as_ref()
            .is_some_and(|(session, _)| session.is_expired(crate::store::now_ms()));
        if expired {
            if let Some((_, registration)) = self.session.take() {
                self.shared.notifier.unregister(registration);
            }
            self.session_ended = None;
        }
        expired
    }
}

/// How a connection learns that its session ended elsewhere (logout,
/// revoked API key): a token checked before each request, and a future
/// that wakes the idle read loop.
struct SessionEnd {
    token: CancellationToken,
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl SessionEnd {
    fn new(token: CancellationToken) -> Self {
        let wait = Box::pin(token.clone().cancelled_owned());
        Self { token, wait }
    }

    /// True once the session has ended (takes this connection's own token
    /// lock, which nothing else contends for).
    fn is_over(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Completes when the connection's session ends elsewhere; never without a session.
async fn session_end(ended: &mut Option<SessionEnd>) {
    match ended {
        Some(ended) => ended.wait.as_mut().await,
        None => std::future::pending().await,
    }
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

/// The id part of an API key (`fsk_<id>_<secret>`), for throttling; never
/// the secret.
fn api_key_id(key: &str) -> &str {
    key.strip_prefix(crate::accounts::auth::API_KEY_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map_or("malformed", |(id, _secret)| id)
}

/// Who a request of `session` acts for: itself, or (partners only) the
/// buyer it names. `None` for a partner that names no buyer.
fn acting_for(
    shared: &Shared,
    session: &Session,
    on_behalf_of: Option<BuyerRef>,
) -> ApiResult<Option<Acting>> {
    match (session.role, on_behalf_of) {
        (Role::Partner, Some(buyer_ref)) => {
            let user_id = shared.partners.resolve(session.user_id, &buyer_ref)?;
            Ok(Some(Acting {
                user_id,
                partner: Some(PartnerRef {
                    partner_id: session.user_id,
                    buyer_ref,
                }),
            }))
        }
        (Role::Partner, None) => Ok(None),
        (_, Some(_)) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "only partner sessions may act on behalf of a buyer",
        )),
        (_, None) => Ok(Some(Acting {
            user_id: session.user_id,
            partner: None,
        })),
    }
}

/// Writes frames as they come, flushing when no more are ready. The
/// in-flight permits of the responses are given back once per batch (each
/// `add_permits` takes the semaphore's lock).
async fn write_loop(
    mut sink: FramedWrite<WriteHalf, ServerCodec>,
    mut frames: mpsc::Receiver<Outgoing>,
    mut pushes: mpsc::Receiver<ServerFrame>,
    in_flight: Arc<Semaphore>,
) {
    let push = |frame| Outgoing {
        frame,
        trace_id: Uuid::nil(),
    };
    loop {
        let first = tokio::select! {
            biased;
            Some(outgoing) = frames.recv() => outgoing,
            Some(frame) = pushes.recv() => push(frame),
            else => break,
        };
        let mut answered = 0;
        let mut written = write_frame(&mut sink, first, &mut answered).await;
        if written.is_ok() {
            // Let the tasks producing frames (this connection's reader, the
            // journal) add what they have, so one write carries many frames.
            tokio::task::yield_now().await;
            for _ in 1..MAX_FRAMES_PER_FLUSH {
                let Ok(next) = frames.try_recv().or_else(|_| pushes.try_recv().map(push)) else {
                    break;
                };
                written = write_frame(&mut sink, next, &mut answered).await;
                if written.is_err() {
                    break;
                }
            }
        }
        in_flight.add_permits(answered);
        if written.is_err() {
            return;
        }
        if let Err(e) = sink.flush().await {
            tracing::debug!(error = %e, "write failed");
            break;
        }
    }
    let _ = sink.close().await;
}

/// Buffers one frame; counts a response in `answered`.
async fn write_frame(
    sink: &mut FramedWrite<WriteHalf, ServerCodec>,
    Outgoing { frame, trace_id }: Outgoing,
    answered: &mut usize,
) -> Result<(), CodecError> {
    let response_id = match &frame {
        ServerFrame::Response(response) => Some(response.id),
        _ => None,
    };
    let written = match sink.feed(frame).await {
        Err(CodecError::Encode(reason)) => {
            // The answer is too large to send: tell the client instead of leaving it waiting.
            let Some(id) = response_id else {
                return Ok(());
            };
            let refusal = ApiError::new(
                ErrorCode::Internal,
                format!("the answer could not be sent: {reason}"),
            );
            tracing::error!(%trace_id, request_id = id, error = %refusal.message, "request failed");
            sink.feed(ServerFrame::Response(Response {
                id,
                result: Err(refusal.into_wire(trace_id)),
            }))
            .await
        }
        other => other,
    };
    if response_id.is_some() {
        *answered += 1;
    }
    written
}
