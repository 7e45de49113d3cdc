//! The frame codec: length-delimited frames carrying bincode-encoded messages.
//!
//! [`FrameCodec`] wraps tokio-util's `LengthDelimitedCodec` (4-byte big-endian
//! length prefix) with an explicit maximum frame length, and encodes and
//! decodes typed messages with bincode 2 under an explicit allocation limit,
//! so an untrusted length can never drive allocation.

use crate::message::{ClientFrame, ServerFrame};
use bytes::{BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

/// Upper bound bincode may allocate while decoding one message from a
/// frame of at most 1 MiB (every request frame). Frames are already bounded
/// by the frame length; this bounds what a length field inside a frame can
/// claim.
const DECODE_LIMIT: usize = 1 << 20;

/// The decode limit for a small frame: a valid message never claims more
/// than the bytes of its strings, which are in the frame, so 16 times the
/// frame's length is ample; a lying length inside a tiny frame is refused
/// before anything is allocated for it.
const SMALL_FRAME: usize = 1024;
/// The decode limit for frames of at most [`SMALL_FRAME`] bytes.
const SMALL_DECODE_LIMIT: usize = 16 * SMALL_FRAME;
/// Frames up to this size get [`MEDIUM_DECODE_LIMIT`].
const MEDIUM_FRAME: usize = 16 * 1024;
/// The decode limit for frames of at most [`MEDIUM_FRAME`] bytes.
const MEDIUM_DECODE_LIMIT: usize = 16 * MEDIUM_FRAME;

/// The same bound for codecs that accept larger frames (a client reading a
/// long product list): the largest reply frame plus room for allocation.
const LARGE_DECODE_LIMIT: usize = 2 * crate::DEFAULT_MAX_REPLY_FRAME_LEN;

type Config<const LIMIT: usize> = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<LIMIT>,
>;

fn config() -> Config<DECODE_LIMIT> {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

fn decode_limited<D: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<D, CodecError> {
    let config: Config<LIMIT> = bincode::config::standard().with_limit::<LIMIT>();
    finish(bytes, bincode::serde::decode_from_slice(bytes, config))
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The underlying stream failed, or ended in the middle of a frame.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame's length prefix exceeds the limit.
    #[error("frame exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The limit in force.
        max: usize,
    },
    /// A complete frame arrived but is not a valid message.
    #[error("undecodable frame: {0}")]
    Malformed(String),
    /// A message could not be encoded (or its encoding exceeds the frame limit).
    #[error("message could not be encoded: {0}")]
    Encode(String),
}

/// Encodes messages of type `E` and decodes messages of type `D`, one per frame.
#[derive(Debug)]
pub struct FrameCodec<E, D> {
    /// Splits the byte stream into frames and enforces the length limit.
    frames: LengthDelimitedCodec,
    /// The incoming frame length limit, kept to report it.
    max_frame_len: usize,
    /// The outgoing frame length limit.
    max_encode_len: usize,
    _types: PhantomData<fn(E) -> D>,
}

/// The server's side: writes [`ServerFrame`]s, reads [`ClientFrame`]s.
pub type ServerCodec = FrameCodec<ServerFrame, ClientFrame>;

/// The client's side: writes [`ClientFrame`]s, reads [`ServerFrame`]s.
pub type ClientCodec = FrameCodec<ClientFrame, ServerFrame>;

impl<E, D> FrameCodec<E, D> {
    /// A codec with the default frame limit ([`crate::DEFAULT_MAX_FRAME_LEN`]).
    pub fn new() -> Self {
        Self::with_max_frame_len(crate::DEFAULT_MAX_FRAME_LEN)
    }

    /// A codec that refuses frames longer than `max_frame_len` bytes, both ways.
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        let frames = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(max_frame_len)
            .new_codec();
        Self {
            frames,
            max_frame_len,
            max_encode_len: max_frame_len,
            _types: PhantomData,
        }
    }

    /// Sets a different limit for outgoing frames. A server may answer with
    /// frames larger than it accepts (a long product list), as long as its
    /// clients accept them.
    pub fn with_max_encode_len(mut self, max_encode_len: usize) -> Self {
        self.max_encode_len = max_encode_len;
        self
    }

    /// The frame length limit in force.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl<E, D> Default for FrameCodec<E, D> {
    fn default() -> Self {
        Self::new()
    }
}

/// Decodes one message from the whole of `bytes` (a frame's payload). What
/// length fields inside may claim is bounded by the payload's own size:
/// 16 KiB for payloads up to 1 KiB, 256 KiB up to 16 KiB, else 1 MiB.
///
/// # Errors
/// [`CodecError::Malformed`] when the bytes are not exactly one valid message.
pub fn decode_message<D: DeserializeOwned>(bytes: &[u8]) -> Result<D, CodecError> {
    match bytes.len() {
        len if len <= SMALL_FRAME => decode_limited::<D, SMALL_DECODE_LIMIT>(bytes),
        len if len <= MEDIUM_FRAME => decode_limited::<D, MEDIUM_DECODE_LIMIT>(bytes),
        _ => decode_limited::<D, DECODE_LIMIT>(bytes),
    }
}

/// As [`decode_message`], for codecs that accept frames above 1 MiB (a
/// client reading long lists): small frames keep their tight limits, larger
/// ones get [`LARGE_DECODE_LIMIT`], since a decoded list takes several times
/// its encoded size (a varint `u64` counts 8 bytes).
fn decode_large_message<D: DeserializeOwned>(bytes: &[u8]) -> Result<D, CodecError> {
    if bytes.len() <= MEDIUM_FRAME {
        return decode_message(bytes);
    }
    decode_limited::<D, LARGE_DECODE_LIMIT>(bytes)
}

fn finish<D>(
    bytes: &[u8],
    decoded: Result<(D, usize), bincode::error::DecodeError>,
) -> Result<D, CodecError> {
    let (message, used) = decoded.map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(message)
}

impl<E, D: DeserializeOwned> Decoder for FrameCodec<E, D> {
    type Item = D;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, CodecError> {
        let frame = match self.frames.decode(src) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.map_frame_error(e)),
        };
        if self.max_frame_len <= DECODE_LIMIT {
            decode_message(&frame).map(Some)
        } else {
            decode_large_message(&frame).map(Some)
        }
    }
}

impl<E, D> FrameCodec<E, D> {
    fn map_frame_error(&self, e: std::io::Error) -> CodecError {
        let too_large = e
            .get_ref()
            .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>());
        if too_large {
            CodecError::FrameTooLarge {
                max: self.max_frame_len,
            }
        } else {
            CodecError::Io(e)
        }
    }
}

impl<E: Serialize, D> Encoder<E> for FrameCodec<E, D> {
    type Error = CodecError;

    fn encode(&mut self, item: E, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u32(0); // length prefix, patched below once the length is known
        let encoded =
            bincode::serde::encode_into_std_write(&item, &mut (&mut *dst).writer(), config());
        let len = dst.len() - start - 4;
        if let Err(e) = encoded {
            dst.truncate(start);
            return Err(CodecError::Encode(e.to_string()));
        }
        if len > self.max_encode_len {
            dst.truncate(start);
            return Err(CodecError::Encode(format!(
                "encoded message of {len} bytes exceeds the frame limit of {} bytes",
                self.max_encode_len
            )));
        }
        let prefix = u32::try_from(len)
            .map_err(|_| CodecError::Encode("frame length does not fit 32 bits".into()))?;
        dst[start..start + 4].copy_from_slice(&prefix.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
