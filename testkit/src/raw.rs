//! A raw framed connection to a server, past the `Hello`/`Welcome`
//! handshake, for sending what the client library never would: arbitrary
//! bytes, pipelined nonsense, repeated ids.
//!
//! Every wait is bounded by [`HANG`]; reaching it panics (a hung server).
//! Nothing here sleeps.

use flashsale_protocol::{
    ClientCodec, ClientFrame, CodecError, Hello, Request, RequestBody, Response, ServerFrame,
    DEFAULT_MAX_REPLY_FRAME_LEN, PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{Framed, FramedRead};

/// Longest a healthy server takes to answer (even a debug build on a busy
/// machine); only a hung server reaches it.
pub const HANG: Duration = Duration::from_secs(20);

/// A framed connection speaking the client's side of the protocol. Its codec
/// accepts replies up to the clients' default limit and encodes frames up to
/// that size too, so a test can send frames larger than the server accepts.
pub type Conn = Framed<TcpStream, ClientCodec>;

/// A connection to `addr` past the handshake (client name `client_name`).
pub async fn connect(addr: SocketAddr, client_name: &str) -> Conn {
    let stream = TcpStream::connect(addr).await.expect("connect");
    handshake(stream, client_name).await
}

/// A connection to `addr` from the local address `from` (any port), past
/// the handshake. On Linux every 127.0.0.0/8 address is the loopback, so
/// tests can appear to the server as distinct peers (the login throttle
/// and the rate limits are per peer address).
///
/// Mind the port budget: binding chooses the local port before the
/// destination is known, so it cannot reuse a port still in TIME_WAIT as
/// [`connect`] does (on loopback). Each address has the ephemeral range
/// (about 28 000 ports), and a connection this side closes first (as
/// [`exchange`] does) holds its port for 60 s: stay well below ~450 new
/// connections a second per address.
pub async fn connect_from(addr: SocketAddr, from: IpAddr, client_name: &str) -> Conn {
    let socket = if from.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the client side");
    let stream = socket.connect(addr).await.expect("connect");
    handshake(stream, client_name).await
}

async fn handshake(stream: TcpStream, client_name: &str) -> Conn {
    let mut conn = Framed::new(
        stream,
        ClientCodec::with_max_frame_len(DEFAULT_MAX_REPLY_FRAME_LEN),
    );
    conn.send(ClientFrame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: client_name.into(),
    }))
    .await
    .expect("send Hello");
    match next_frame(&mut conn).await {
        Some(ServerFrame::Welcome(_)) => conn,
        other => panic!("Hello answered with {other:?}"),
    }
}

/// Waits for the next frame; `None` when the server closed (or reset) the
/// connection.
///
/// # Panics
/// After [`HANG`] without a frame, or on a frame that does not decode.
pub async fn next_frame(conn: &mut Conn) -> Option<ServerFrame> {
    match tokio::time::timeout(HANG, conn.next()).await {
        Err(_) => panic!("the server hung: nothing within {HANG:?}"),
        Ok(None) | Ok(Some(Err(CodecError::Io(_)))) => None,
        Ok(Some(Ok(frame))) => Some(frame),
        Ok(Some(Err(e))) => panic!("the server sent an undecodable frame: {e}"),
    }
}

/// Sends one request (id `u64::MAX`, on no one's behalf) and waits for its
/// response, skipping pushes.
///
/// # Panics
/// When anything but a response arrives, or nothing.
pub async fn call(conn: &mut Conn, body: RequestBody) -> Response {
    conn.send(ClientFrame::Request(Request {
        id: u64::MAX,
        on_behalf_of: None,
        body,
    }))
    .await
    .expect("send request");
    loop {
        match next_frame(conn).await {
            Some(ServerFrame::Response(response)) => return response,
            Some(ServerFrame::Push(_)) => {}
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// Writes `bytes` and half-closes while reading every frame until the
/// server closes, so that neither side can stall the other; returns the
/// frames. Frames the handshake read ahead are kept.
///
/// Send only what the server will read (see [`crate::oracle::Expected::len`]):
/// closing a socket with unread bytes resets the connection, which may
/// destroy the last frames in flight.
pub async fn exchange(conn: Conn, bytes: &[u8]) -> Vec<ServerFrame> {
    let parts = conn.into_parts();
    let (read, mut writer) = parts.io.into_split();
    let mut reader = FramedRead::new(read, parts.codec);
    reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
    let write = async move {
        // A failed write shows in the answers, which the caller checks.
        let _ = writer.write_all(bytes).await;
        let _ = writer.shutdown().await;
        writer
    };
    let read = async {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(HANG, reader.next()).await {
                Err(_) => panic!("no answer or close within {HANG:?}; got {frames:?}"),
                Ok(None) => return frames,
                Ok(Some(Ok(frame))) => frames.push(frame),
                // A reset after `Closing` is an end too.
                Ok(Some(Err(CodecError::Io(_)))) => return frames,
                Ok(Some(Err(e))) => panic!("the server sent an undecodable frame: {e}"),
            }
        }
    };
    // The write half lives until the reading is done.
    let (_writer, frames) = tokio::join!(write, read);
    frames
}
