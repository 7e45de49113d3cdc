//! The connection driver: one writer task and one reader task per
//! connection, matching answers to requests by id and fanning out pushes.

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use flashsale_protocol::{
    BuyerRef, ClientCodec, ClientFrame, CodecError, ErrorCode, Hello, Push, Reply, Request,
    RequestBody, ServerFrame, WireError, PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Bytes buffered before a write is forced, even while more frames are ready.
const WRITE_BUFFER: usize = 64 * 1024;

/// Frames written before a flush even if more are ready.
const MAX_FRAMES_PER_FLUSH: usize = 512;

type Answer = std::result::Result<Reply, WireError>;

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

/// Requests waiting for answers, and whether the connection is gone.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    /// Set once the reader stops; later requests fail at once.
    closed: Option<Option<WireError>>,
}

/// One multiplexed connection, shared by every clone of a `Client`.
pub(crate) struct Connection {
    config: ClientConfig,
    frames: mpsc::Sender<ClientFrame>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    in_flight: Semaphore,
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A poisoned lock only means a panic elsewhere; the map stays usable.
    pending.lock().unwrap_or_else(|e| e.into_inner())
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
        let pending = Arc::new(Mutex::new(Pending::default()));
        tokio::spawn(write_loop(writer, frames_rx, Arc::clone(&pending)));
        tokio::spawn(read_loop(reader, Arc::clone(&pending), pushes.clone()));
        Ok(Self {
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            config,
            frames,
            pending,
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.closed {
                return Err(ClientError::Disconnected(reason.clone()));
            }
            pending.waiting.insert(id, tx);
        }
        let request = ClientFrame::Request(Request {
            id,
            on_behalf_of,
            body,
        });
        if self.frames.send(request).await.is_err() {
            lock(&self.pending).waiting.remove(&id);
            return Err(ClientError::Disconnected(None));
        }
        match tokio::time::timeout(self.config.request_timeout, rx).await {
            Err(_) => {
                lock(&self.pending).waiting.remove(&id);
                Err(ClientError::Timeout(self.config.request_timeout))
            }
            Ok(Err(_)) => Err(ClientError::Disconnected(
                lock(&self.pending).closed.clone().flatten(),
            )),
            Ok(Ok(answer)) => answer.map_err(ClientError::Server),
        }
    }

    /// True once the connection is gone.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.pending).closed.is_some()
    }
}

async fn write_loop(
    mut sink: FramedWrite<WriteHalf, ClientCodec>,
    mut frames: mpsc::Receiver<ClientFrame>,
    pending: Arc<Mutex<Pending>>,
) {
    sink.set_backpressure_boundary(WRITE_BUFFER);
    while let Some(first) = frames.recv().await {
        if !feed(&mut sink, first, &pending).await {
            break;
        }
        // Let the callers add what they have, so one write carries many requests.
        tokio::task::yield_now().await;
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            let Ok(next) = frames.try_recv() else { break };
            if !feed(&mut sink, next, &pending).await {
                return close(&pending, None);
            }
        }
        if let Err(e) = sink.flush().await {
            tracing::debug!(error = %e, "connection write failed");
            return close(&pending, None);
        }
    }
    let _ = sink.close().await;
}

/// Buffers one frame; false when the connection is broken. A request that
/// cannot be encoded (too large) fails alone.
async fn feed(
    sink: &mut FramedWrite<WriteHalf, ClientCodec>,
    frame: ClientFrame,
    pending: &Mutex<Pending>,
) -> bool {
    let id = match &frame {
        ClientFrame::Request(request) => Some(request.id),
        ClientFrame::Hello(_) => None,
    };
    match sink.feed(frame).await {
        Ok(()) => true,
        Err(CodecError::Encode(reason)) => {
            if let Some(tx) = id.and_then(|id| lock(pending).waiting.remove(&id)) {
                let _ = tx.send(Err(WireError {
                    code: ErrorCode::BadRequest,
                    message: format!("the request could not be sent: {reason}"),
                    trace_id: uuid::Uuid::nil(),
                    retry_after_ms: None,
                }));
            }
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "connection write failed");
            false
        }
    }
}

/// Marks the connection gone and fails every waiting request.
fn close(pending: &Mutex<Pending>, reason: Option<WireError>) {
    let mut pending = lock(pending);
    if pending.closed.is_none() {
        pending.closed = Some(reason);
    }
    // Dropping the senders wakes every waiter with "disconnected".
    pending.waiting.clear();
}

async fn read_loop(
    mut stream: FramedRead<ReadHalf, ClientCodec>,
    pending: Arc<Mutex<Pending>>,
    pushes: broadcast::Sender<Push>,
) {
    let mut reason = None;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(ServerFrame::Response(response)) => {
                if let Some(tx) = lock(&pending).waiting.remove(&response.id) {
                    let _ = tx.send(response.result);
                }
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
    close(&pending, reason);
}
