//! gRPC's length-prefixed message framing: a flags byte, a big-endian u32 length, the message.
//! gRPC-Web uses the same frames and marks its trailer frame with flag 0x80.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Flag of a compressed message; tollgate never asks for compression, so it never accepts one.
pub const COMPRESSED: u8 = 0x01;
/// Flag of gRPC-Web's trailer frame.
pub const TRAILERS: u8 = 0x80;
/// Bytes before each message.
pub const HEADER_LEN: usize = 5;

/// One frame: its flags and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The flags byte.
    pub flags: u8,
    /// The payload.
    pub data: Bytes,
}

/// Why a byte stream is not a sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame longer than the limit.
    TooLarge { len: usize, max: usize },
    /// The stream ended inside a frame.
    Truncated,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "a message of {len} bytes is over the limit of {max}")
            }
            Self::Truncated => f.write_str("the stream ended inside a message"),
        }
    }
}

/// Appends one uncompressed frame holding `msg`.
pub fn encode(flags: u8, msg: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER_LEN + msg.len());
    out.put_u8(flags);
    // Messages are bounded by the body limit, itself at most 4 GiB by config validation.
    out.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    out.put_slice(msg);
}

/// Cuts frames out of body chunks as they arrive, holding at most one partial frame.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Adds a chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let data = self.buf.split_to(len).freeze();
        Ok(Some(Frame { flags, data }))
    }

    /// The length the held partial frame declares, once its header has arrived: how much a
    /// stream that ends now fell short of.
    pub fn declared_len(&self) -> Option<usize> {
        match self.buf.get(..HEADER_LEN)? {
            &[_, a, b, c, d] => Some(u32::from_be_bytes([a, b, c, d]) as usize),
            _ => None,
        }
    }

    /// Bytes held that are not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Checks that the stream ended between frames.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_are_reassembled() {
        let mut out = BytesMut::new();
        encode(0, b"hello", &mut out);
        encode(TRAILERS, b"grpc-status: 0\r\n", &mut out);
        let mut d = FrameDecoder::new(100);
        let mut frames = Vec::new();
        for b in out.chunks(3) {
            d.push(b);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        d.finish().unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].data[..], b"hello");
        assert_eq!(frames[1].flags, TRAILERS);
    }

    #[test]
    fn oversized_frame_is_refused_before_it_is_buffered() {
        let mut d = FrameDecoder::new(4);
        d.push(&[0, 0, 0, 0, 5]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len: 5, max: 4 }));
    }

    #[test]
    fn stream_ending_inside_a_frame_is_truncated() {
        let mut d = FrameDecoder::new(10);
        d.push(&[0, 0, 0, 0, 3, b'a']);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated));
    }
}
