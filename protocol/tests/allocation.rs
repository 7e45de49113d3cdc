//! A tiny hostile frame cannot make the decoder reserve much memory: a
//! length field inside it that claims a huge string or sequence is refused
//! (or capped) before memory is reserved for it. One test in its own binary,
//! so no other test's allocations are counted.

use bytes::{BufMut, BytesMut};
use flashsale_protocol::{ClientFrame, ServerCodec};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use tokio_util::codec::Decoder;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Most bytes decoding one of these frames may allocate.
const BUDGET: usize = 64 * 1024;

fn frame(payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(payload.len()).expect("small"));
    buf.put_slice(payload);
    buf
}

/// Bytes allocated while decoding `payload` as one client frame, and whether it decoded.
fn allocated_decoding(payload: &[u8]) -> (usize, bool) {
    let mut codec = ServerCodec::new();
    let mut buf = frame(payload);
    let region = Region::new(GLOBAL);
    let decoded: Result<Option<ClientFrame>, _> = codec.decode(&mut buf);
    let bytes = region.change().bytes_allocated;
    (bytes, matches!(decoded, Ok(Some(_))))
}

#[test]
fn tiny_frames_claiming_huge_lengths_allocate_little_and_are_refused() {
    // A Hello whose client name claims 1 000 000 bytes (7 bytes of payload).
    let huge_string = [0x00, 0x01, 0xfc, 0x40, 0x42, 0x0f, 0x00];
    // A Buy whose items claim 2^40 lines (13 bytes of payload).
    let huge_sequence = [
        0x01, 0x00, 0x00, 0x0b, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
    ];
    for payload in [&huge_string[..], &huge_sequence[..]] {
        let (bytes, decoded) = allocated_decoding(payload);
        assert!(!decoded, "{payload:02x?} is not a valid message");
        assert!(
            bytes < BUDGET,
            "decoding {payload:02x?} allocated {bytes} bytes"
        );
    }
}
