//! Fuzz target `frame_decoder`: arbitrary bytes, in arbitrary chunkings, fed
//! to the server's codec (`ServerCodec`, reading `ClientFrame`s) and to the
//! client's codec (`ClientCodec`, reading `ServerFrame`s).
//!
//! Properties checked on every input:
//! * decoding never panics;
//! * no single allocation made while decoding exceeds the bound the codec
//!   promises: the frame limit (plus the buffered input) for the frame
//!   buffer, bincode's decode limit for lengths claimed inside a frame
//!   (a tracking global allocator measures it);
//! * chunking does not matter: the bytes fed in pieces decode to the same
//!   frames and stop at the same error as the bytes fed at once;
//! * at end of stream a partial frame is an I/O error, nothing left is `None`;
//! * every decoded message encodes and decodes back to itself.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use flashsale_protocol::{
    decode_message, ClientFrame, CodecError, FrameCodec, ServerFrame, DEFAULT_MAX_FRAME_LEN,
    DEFAULT_MAX_REPLY_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_util::codec::{Decoder, Encoder};

/// Mirrors `DECODE_LIMIT` in `protocol/src/codec.rs`: what lengths inside a
/// frame of at most 1 MiB may claim.
const DECODE_LIMIT: usize = 1 << 20;

/// Mirrors `LARGE_DECODE_LIMIT`: the same for codecs accepting larger frames.
const LARGE_DECODE_LIMIT: usize = 2 * DEFAULT_MAX_REPLY_FRAME_LEN;

/// The system allocator, recording the largest single allocation it served.
struct Tracking;

/// Largest allocation (or reallocation target) since the last reset, in bytes.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the wrapper only
// records sizes in an atomic.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Which codec an input exercises.
#[derive(Debug, Arbitrary)]
enum Side {
    /// The server's codec as the server builds it (64 KiB frames).
    Server,
    /// A server codec with a tiny limit, so oversize frames are common.
    ServerTiny,
    /// The client's codec as the client builds it (16 MiB reply frames).
    Client,
    /// A client codec with the request-sized default limit.
    ClientSmall,
}

/// How a decode run ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The codec wants more bytes; this many are buffered.
    NeedMore(usize),
    /// The frame length prefix exceeds the limit.
    TooLarge,
    /// A whole frame is not exactly one message.
    Malformed,
    /// Any other error (never expected from `decode`).
    Other(String),
}

fn end_of(error: &CodecError) -> End {
    match error {
        CodecError::FrameTooLarge { .. } => End::TooLarge,
        CodecError::Malformed(_) => End::Malformed,
        other => End::Other(other.to_string()),
    }
}

/// Decodes `data` fed in `chunks` (the rest at once), stopping at the first error.
fn decode_stream<E, D: DeserializeOwned>(
    codec: &mut FrameCodec<E, D>,
    data: &[u8],
    chunks: &[usize],
) -> (Vec<D>, End, BytesMut) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = data;
    let mut pieces = chunks.iter().copied().chain(std::iter::once(usize::MAX));
    while !rest.is_empty() {
        let size = pieces.next().unwrap_or(usize::MAX).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(size);
        rest = tail;
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, end_of(&e), buf),
            }
        }
    }
    let buffered = buf.len();
    (frames, End::NeedMore(buffered), buf)
}

fn check<E, D>(
    make: impl Fn() -> FrameCodec<E, D>,
    decode_limit: usize,
    data: &[u8],
    chunks: &[usize],
) where
    D: DeserializeOwned + Serialize + PartialEq + Debug + Clone,
{
    let max_frame_len = make().max_frame_len();
    // The frame buffer may grow to the frame limit (tokio-util reserves the
    // announced length, capped by the limit) plus what was fed, doubled by
    // `BytesMut`'s growth policy; bincode may allocate what a length inside
    // the frame claims, capped by the decode limit.
    let bound = decode_limit.max(2 * (max_frame_len + 4 + data.len()));

    LARGEST.store(0, Ordering::Relaxed);
    let mut whole_codec = make();
    let (whole, whole_end, mut rest) = decode_stream(&mut whole_codec, data, &[]);
    let (pieces, pieces_end, _) = decode_stream(&mut make(), data, chunks);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= bound,
        "decoding {} bytes allocated {largest} bytes at once (bound {bound})",
        data.len()
    );
    assert_eq!(whole, pieces, "chunking changed the decoded frames");
    assert_eq!(whole_end, pieces_end, "chunking changed how decoding ended");
    assert!(
        !matches!(whole_end, End::Other(_)),
        "decode reported an unexpected error: {whole_end:?}"
    );

    if let End::NeedMore(buffered) = whole_end {
        // The same codec: it may have consumed a frame's length prefix already.
        let eof = whole_codec.decode_eof(&mut rest);
        if buffered == 0 {
            assert!(matches!(eof, Ok(None)), "nothing buffered, yet {eof:?}");
        } else {
            // The buffered bytes are an incomplete frame: nothing decodes from them.
            assert!(
                matches!(eof, Err(CodecError::Io(_))),
                "{buffered} bytes of a partial frame at EOF gave {eof:?}"
            );
        }
    }

    // Whatever decoded is a message the protocol can carry: it round-trips.
    let mut codec =
        FrameCodec::<D, D>::with_max_frame_len(max_frame_len.max(DEFAULT_MAX_FRAME_LEN))
            .with_max_encode_len(usize::MAX);
    for frame in whole {
        let mut buf = BytesMut::new();
        codec
            .encode(frame.clone(), &mut buf)
            .expect("a decoded message encodes");
        let again = codec.decode(&mut buf).expect("its encoding decodes");
        assert_eq!(
            again.as_ref(),
            Some(&frame),
            "the message did not round-trip"
        );
        assert!(buf.is_empty(), "encoding left bytes behind");
    }
}

fuzz_target!(|input: &[u8]| {
    let mut u = Unstructured::new(input);
    let Ok(side) = Side::arbitrary(&mut u) else {
        return;
    };
    // Up to 16 chunk sizes of 1..=64 bytes, then the rest of the input is the stream.
    let chunk_count = u.int_in_range(0..=16u8).unwrap_or(0);
    let chunks: Vec<usize> = (0..chunk_count)
        .map(|_| usize::from(u.int_in_range(1..=64u8).unwrap_or(1)))
        .collect();
    let data = u.take_rest();

    LARGEST.store(0, Ordering::Relaxed);
    let _ = decode_message::<ClientFrame>(data);
    let _ = decode_message::<ServerFrame>(data);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= DECODE_LIMIT,
        "decode_message allocated {largest} bytes at once"
    );

    match side {
        Side::Server => check(
            FrameCodec::<ServerFrame, ClientFrame>::new,
            DECODE_LIMIT,
            data,
            &chunks,
        ),
        Side::ServerTiny => check(
            || FrameCodec::<ServerFrame, ClientFrame>::with_max_frame_len(64),
            DECODE_LIMIT,
            data,
            &chunks,
        ),
        Side::Client => check(
            || {
                FrameCodec::<ClientFrame, ServerFrame>::with_max_frame_len(
                    DEFAULT_MAX_REPLY_FRAME_LEN,
                )
            },
            LARGE_DECODE_LIMIT,
            data,
            &chunks,
        ),
        Side::ClientSmall => check(
            FrameCodec::<ClientFrame, ServerFrame>::new,
            DECODE_LIMIT,
            data,
            &chunks,
        ),
    }
});
