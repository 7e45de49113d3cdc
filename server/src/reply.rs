//! Where the answer to a queued command goes: a connection's outgoing frames,
//! or a oneshot channel for callers inside the server (demo data, tests).

use crate::error::ApiError;
use flashsale_protocol::{Reply, Response, ServerFrame};
use tokio::sync::{mpsc, oneshot};

/// The destination of one answer.
#[derive(Debug)]
pub enum ReplyTo {
    /// A request on a client connection.
    Connection {
        /// The connection's response queue. It always has room: the
        /// connection holds an in-flight permit for this request.
        frames: mpsc::Sender<ServerFrame>,
        /// The request's id.
        request_id: u64,
        /// The connection's push queue, for outcomes of orders a partner places.
        pushes: mpsc::Sender<ServerFrame>,
    },
    /// A caller inside the server.
    Internal(oneshot::Sender<Result<Reply, ApiError>>),
}

impl ReplyTo {
    /// Delivers the answer; a peer that went away is ignored.
    pub fn send(self, result: Result<Reply, ApiError>) {
        match self {
            Self::Connection {
                frames, request_id, ..
            } => {
                let frame = ServerFrame::Response(Response {
                    id: request_id,
                    result: result.map_err(ApiError::into_wire),
                });
                if let Err(mpsc::error::TrySendError::Full(_)) = frames.try_send(frame) {
                    tracing::error!(
                        request_id,
                        "response queue full: in-flight accounting is broken"
                    );
                }
            }
            Self::Internal(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}
