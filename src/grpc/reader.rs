//! Reading an upstream gRPC response body: messages one by one as they arrive, then the
//! trailers, within the call's deadline.

use super::client::UpstreamBody;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::framing::{FrameDecoder, FrameError, COMPRESSED};

/// Why the response stream could not be read to its end.
#[derive(Debug)]
pub enum ReadError {
    /// Not valid gRPC framing, or a message over the limit.
    Frame(FrameError),
    /// A compressed message, which was never asked for.
    Compressed,
    /// The HTTP/2 stream broke.
    Stream(String),
    /// The deadline passed.
    Deadline,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frame(e) => write!(f, "upstream response: {e}"),
            Self::Compressed => f.write_str("upstream sent a compressed message unasked"),
            Self::Stream(e) => write!(f, "upstream response broke off: {e}"),
            Self::Deadline => f.write_str("deadline exceeded while reading the upstream response"),
        }
    }
}

/// The body of one upstream response.
pub struct MessageReader {
    body: UpstreamBody,
    decoder: FrameDecoder,
    trailers: Option<HeaderMap>,
    done: bool,
    deadline: Option<Instant>,
}

impl MessageReader {
    /// Reads `body`, refusing messages over `max` bytes.
    pub fn new(body: UpstreamBody, max: usize, deadline: Option<Instant>) -> Self {
        Self {
            body,
            decoder: FrameDecoder::new(max),
            trailers: None,
            done: false,
            deadline,
        }
    }

    /// The next message; `None` once the stream has ended cleanly.
    pub async fn next_message(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.next_frame().map_err(ReadError::Frame)? {
                if frame.flags & COMPRESSED != 0 {
                    return Err(ReadError::Compressed);
                }
                return Ok(Some(frame.data));
            }
            if self.done {
                self.decoder.finish().map_err(ReadError::Frame)?;
                return Ok(None);
            }
            let next = self.body.frame();
            let frame = match self.deadline {
                Some(at) => tokio::time::timeout_at(at, next)
                    .await
                    .map_err(|_| ReadError::Deadline)?,
                None => next.await,
            };
            match frame {
                None => self.done = true,
                Some(Err(e)) => return Err(ReadError::Stream(e.to_string())),
                Some(Ok(f)) => match f.into_data() {
                    Ok(data) => self.decoder.push(&data),
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            self.trailers = Some(t);
                        }
                    }
                },
            }
        }
    }

    /// The trailers, once [`Self::next_message`] has returned `None`.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// Takes the trailers out, once [`Self::next_message`] has returned `None`.
    pub fn take_trailers(&mut self) -> Option<HeaderMap> {
        self.trailers.take()
    }
}
