//! gRPC-Web request bodies: base64 text (`application/grpc-web-text`) decoding and the
//! length-prefixed frame decoder, fed in chunks as a body arrives; also `grpc-message` escaping
//! and `grpc-timeout`.
//!
//! Input: byte 0 chooses the chunk sizes, byte 1 the frame size limit, the rest is the body.
//!
//! Properties:
//! - text: whatever decodes is the same bytes encoded back, and decoding is indifferent to
//!   whitespace and to the body being sent as separately padded base64 chunks;
//! - frames: the frames cut from a body, framed again, are exactly the bytes they were cut from,
//!   however the body is split into chunks; a frame over the limit is refused, never buffered;
//! - `grpc-message` decodes back to the text it encoded; `grpc-timeout` reads back what it wrote.
#![no_main]

use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tollgate::grpc::fuzzing::{
    decode_message, decode_text, encode, encode_message, Frame, FrameDecoder, FrameError,
    HEADER_LEN,
};
use tollgate::grpc::{format_timeout, parse_timeout};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fuzz_target!(|data: &[u8]| {
    let [chunking, limit, body @ ..] = data else {
        return;
    };
    check_text(body, *chunking);
    let max = usize::from(*limit) * 4;
    let whole = decode_frames(body, usize::MAX, max);
    let chunked = decode_frames(body, usize::from(*chunking % 16) + 1, max);
    assert_eq!(whole, chunked, "chunking changed the frames");
    check_reframing(body, max, &whole);
    if let Ok(text) = std::str::from_utf8(body) {
        assert_eq!(decode_message(encode_message(text).as_bytes()), text);
        if let Some(d) = parse_timeout(text) {
            check_timeout(d);
        }
    }
});

/// What is sent upstream is the client's deadline rounded down to the unit that fits in 8
/// digits (never longer, so the upstream gives up first), and never 0.
fn check_timeout(d: Duration) {
    let text = format_timeout(d);
    let back = parse_timeout(&text).unwrap_or_else(|| panic!("{d:?} -> unreadable {text:?}"));
    let tick = Duration::from_micros(1);
    assert!(back <= d.max(tick), "{d:?} -> {text:?} is longer");
    assert!(
        d.saturating_sub(back) <= d / 10 + tick,
        "{d:?} -> {text:?} is much shorter"
    );
}

fn check_text(body: &[u8], chunking: u8) {
    if let Ok(decoded) = decode_text(body) {
        assert_eq!(
            decode_text(B64.encode(&decoded).as_bytes()).as_ref(),
            Ok(&decoded)
        );
    }
    // The raw body as binary: encoded in separately padded chunks, with line breaks between.
    let step = usize::from(chunking % 7) + 1;
    let mut text = String::new();
    for piece in body.chunks(step) {
        text.push_str(&B64.encode(piece));
        text.push_str("\r\n");
    }
    assert_eq!(
        decode_text(text.as_bytes()).as_deref(),
        Ok(body),
        "{text:?}"
    );
}

/// The frames of `body` pushed `step` bytes at a time, and how the stream ended.
fn decode_frames(body: &[u8], step: usize, max: usize) -> (Vec<Frame>, Result<(), FrameError>) {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    for chunk in body.chunks(step.min(body.len().max(1))) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.data.len() <= max);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
    }
    let end = decoder.finish();
    (frames, end)
}

fn check_reframing(body: &[u8], max: usize, (frames, end): &(Vec<Frame>, Result<(), FrameError>)) {
    let mut again = BytesMut::new();
    for f in frames {
        encode(f.flags, &f.data, &mut again);
    }
    assert_eq!(
        &body[..again.len()],
        &again[..],
        "frames are not the bytes they came from"
    );
    let rest = &body[again.len()..];
    match end {
        Ok(()) => assert!(rest.is_empty()),
        Err(FrameError::Truncated) => {
            assert!(!rest.is_empty());
            if rest.len() >= HEADER_LEN {
                let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                assert!(len <= max && rest.len() < HEADER_LEN + len);
            }
        }
        Err(FrameError::TooLarge { len, max: m }) => {
            assert_eq!(*m, max);
            assert!(*len > max);
            assert_eq!(
                u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize,
                *len
            );
        }
    }
}
