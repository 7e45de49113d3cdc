//! The start and the end of a connection: the TLS handshake (when TLS is
//! on), `Hello` → `Welcome`, and the `Closing` frame that tells a client why
//! the server closes its connection.

use super::{ReadHalf, WriteHalf};
use crate::error::ApiError;
use crate::net::reply::Outgoing;
use crate::state::Shared;
use crate::telemetry;
use flashsale_protocol::{
    ClientFrame, CodecError, ErrorCode, ServerCodec, ServerFrame, Welcome, MAX_TEXT_LEN,
    PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};
use uuid::Uuid;

/// Splits an accepted stream, after the TLS handshake when TLS is on
/// (bounded by the handshake timeout). `None` when the handshake failed.
pub(super) async fn split(stream: TcpStream, shared: &Shared) -> Option<(ReadHalf, WriteHalf)> {
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

/// Reads `Hello` and answers `Welcome`; false when the connection must close
/// (after a `Closing` frame saying why, when there is a why).
pub(super) async fn hello(
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
        Ok(Some(Ok(ClientFrame::Hello(hello)))) => match check_hello(&hello).and_then(|()| {
            // A standby serves nothing: the client goes to the leader.
            match &shared.cluster {
                Some(cluster) if !cluster.is_leader() => Err(cluster.not_leader()),
                _ => Ok(()),
            }
        }) {
            Ok(()) => {
                tracing::debug!(client = ?hello.client_name, "handshake");
                let welcome = ServerFrame::Welcome(Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    server_version: env!("CARGO_PKG_VERSION").to_owned(),
                });
                return writer.send(welcome).await.is_ok();
            }
            Err(refusal) => refusal,
        },
        Ok(Some(Ok(ClientFrame::Request(_)))) => {
            ApiError::bad_request("the first frame must be Hello")
        }
    };
    let _ = writer.send(closing(refusal, peer).frame).await;
    false
}

/// A `Hello` the server accepts: a printable client name of bounded
/// length, and this server's protocol version.
fn check_hello(hello: &flashsale_protocol::Hello) -> Result<(), ApiError> {
    if hello.client_name.len() > MAX_TEXT_LEN || hello.client_name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a client name has at most {MAX_TEXT_LEN} bytes and no control characters"
        )));
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(ApiError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "this server speaks protocol version {PROTOCOL_VERSION}, the client sent {}",
                hello.protocol_version
            ),
        ));
    }
    Ok(())
}

/// The `Closing` frame for `error`, logged: at WARN for a protocol
/// violation, at INFO for an ended session, at DEBUG when the server is
/// shutting down.
pub(super) fn closing(error: ApiError, peer: SocketAddr) -> Outgoing {
    let trace_id = Uuid::new_v4();
    if error.code == ErrorCode::ShuttingDown {
        tracing::debug!(%trace_id, %peer, "closing the connection: shutting down");
    } else if error.code == ErrorCode::NotLeader {
        tracing::debug!(%trace_id, %peer, "closing the connection: this node is a standby");
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
        bytes: 0,
    }
}

/// Why a connection closes after a frame that could not be read. The
/// codec's own message says what was wrong ("frame exceeds the limit of …",
/// "undecodable frame: …"), without a second prefix.
pub(super) fn frame_error(e: &CodecError) -> ApiError {
    ApiError::bad_request(e.to_string())
}
