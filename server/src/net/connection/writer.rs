//! The writer task of a connection: writes answers and pushes as they
//! come, many frames per write, flushing when no more are ready, and gives
//! the in-flight permits of the answers back once per batch.

use super::WriteHalf;
use crate::error::ApiError;
use crate::net::reply::{Outgoing, ReplyBytes};
use flashsale_protocol::{CodecError, ErrorCode, Response, ServerCodec, ServerFrame};
use futures::SinkExt;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedWrite;
use uuid::Uuid;

/// Frames written before the writer flushes even if more are ready, so one
/// busy connection still sends its answers promptly.
const MAX_FRAMES_PER_FLUSH: usize = 512;

/// Writes frames as they come, flushing when no more are ready. The
/// in-flight permits of the responses are given back once per batch (each
/// `add_permits` takes the semaphore's lock); the queued bytes of a listing
/// answer as soon as it is encoded into the write buffer.
pub(super) async fn write_loop(
    mut sink: FramedWrite<WriteHalf, ServerCodec>,
    mut frames: mpsc::Receiver<Outgoing>,
    mut pushes: mpsc::Receiver<ServerFrame>,
    in_flight: Arc<Semaphore>,
    queued: Arc<ReplyBytes>,
) {
    let push = |frame| Outgoing {
        frame,
        trace_id: Uuid::nil(),
        bytes: 0,
    };
    loop {
        let first = tokio::select! {
            biased;
            Some(outgoing) = frames.recv() => outgoing,
            Some(frame) = pushes.recv() => push(frame),
            else => break,
        };
        let mut answered = 0;
        let mut written = write_frame(&mut sink, first, &mut answered, &queued).await;
        if written.is_ok() {
            // Let the tasks producing frames (this connection's reader, the
            // journal) add what they have, so one write carries many frames.
            tokio::task::yield_now().await;
            for _ in 1..MAX_FRAMES_PER_FLUSH {
                let Ok(next) = frames.try_recv().or_else(|_| pushes.try_recv().map(push)) else {
                    break;
                };
                written = write_frame(&mut sink, next, &mut answered, &queued).await;
                if written.is_err() {
                    break;
                }
            }
        }
        in_flight.add_permits(answered);
        if written.is_err() {
            queued.writer_stopped();
            return;
        }
        if let Err(e) = sink.flush().await {
            tracing::debug!(error = %e, "write failed");
            break;
        }
    }
    queued.writer_stopped();
    let _ = sink.close().await;
}

/// Buffers one frame; counts a response in `answered`, gives its bytes back
/// to `queued`.
async fn write_frame(
    sink: &mut FramedWrite<WriteHalf, ServerCodec>,
    Outgoing {
        frame,
        trace_id,
        bytes,
    }: Outgoing,
    answered: &mut usize,
    queued: &ReplyBytes,
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
    // The frame is encoded (or dropped): the reply it held is freed.
    queued.written(bytes);
    if response_id.is_some() {
        *answered += 1;
    }
    written
}
