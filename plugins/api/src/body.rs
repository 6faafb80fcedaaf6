//! The request body phase: what a chain of plugins needs of the body ([`BodyPlan`]), the buffer
//! that collects it ([`BodyBuffer`]), and the functions that run the plugins over it. The gateway
//! calls them as the body arrives from the client; a test calls [`run_request_body`] with a body
//! in pieces and gets what the gateway would do, without a gateway.

use bytes::{Bytes, BytesMut};
use http::{header, StatusCode};

use crate::{Flow, Plugin, PluginError, RequestContext, RequestHeader};

/// What a plugin needs of the request body; see [`Plugin::body_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyAccess {
    /// Only the pieces as they stream by ([`Plugin::on_request_body`]). The default.
    #[default]
    Streamed,
    /// The whole body before the handler runs ([`Plugin::on_request_body_buffered`]), up to
    /// `max_bytes`; the gateway refuses a larger body with 413 `body_too_large`.
    Buffer {
        /// The largest body the plugin reads whole.
        max_bytes: u64,
    },
}

/// What the gateway does with the request body of one chain (a route's plugins), decided once
/// per config snapshot from the plugins' [`BodyAccess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// No plugin asked for the body: it streams to the handler as it arrives.
    Stream,
    /// Read the whole body before the handler, refusing one over `max_bytes`.
    Buffer {
        /// The smallest `max_bytes` of the plugins that asked.
        max_bytes: u64,
        /// The plugin that set `max_bytes`, named in the 413's message.
        plugin: &'static str,
    },
}

impl BodyPlan {
    /// The plan of a chain: [`BodyPlan::Buffer`] as soon as one plugin asks for the body.
    pub fn of_chain<'a>(chain: impl IntoIterator<Item = &'a dyn Plugin>) -> Self {
        let mut plan = BodyPlan::Stream;
        for plugin in chain {
            let BodyAccess::Buffer { max_bytes } = plugin.body_access() else {
                continue;
            };
            // The smallest limit governs: a plugin is never handed more than it asked for (it
            // may size its parsing on it), and skipping it for a larger body would let that
            // body past its check.
            match plan {
                BodyPlan::Buffer { max_bytes: m, .. } if m <= max_bytes => {}
                _ => {
                    plan = BodyPlan::Buffer {
                        max_bytes,
                        plugin: plugin.name(),
                    }
                }
            }
        }
        plan
    }

    /// Whether the body is read whole before the handler.
    pub fn buffers(&self) -> bool {
        matches!(self, BodyPlan::Buffer { .. })
    }

    /// Refuses, before any of the body is read, a request whose `Content-Length` is over the
    /// limit. An unreadable `Content-Length` is left to the HTTP layer, which refuses it.
    pub fn check_declared(&self, req: &RequestHeader) -> Result<(), PluginError> {
        let BodyPlan::Buffer { max_bytes, plugin } = *self else {
            return Ok(());
        };
        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(n) if n > max_bytes => Err(too_large(max_bytes, plugin, n)),
            _ => Ok(()),
        }
    }

    /// An empty buffer for this plan's body; `None` when the body streams.
    pub fn buffer(&self) -> Option<BodyBuffer> {
        match *self {
            BodyPlan::Stream => None,
            BodyPlan::Buffer { max_bytes, plugin } => Some(BodyBuffer::new(max_bytes, plugin)),
        }
    }
}

fn too_large(max_bytes: u64, plugin: &'static str, received: u64) -> PluginError {
    PluginError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "request body of {received} bytes or more exceeds the limit of {max_bytes} bytes \
             (`max_bytes` of plugin `{plugin}`, which reads the body whole)"
        ),
    )
}

/// The request body collected up to a limit, piece by piece as it arrives.
#[derive(Debug)]
pub struct BodyBuffer {
    max_bytes: u64,
    plugin: &'static str,
    pieces: Vec<Bytes>,
    len: u64,
}

impl BodyBuffer {
    /// An empty buffer that refuses to grow past `max_bytes`; `plugin` is named in the 413.
    pub fn new(max_bytes: u64, plugin: &'static str) -> Self {
        Self {
            max_bytes,
            plugin,
            pieces: Vec::new(),
            len: 0,
        }
    }

    /// Adds a piece; 413 `body_too_large` when the body grows past the limit (the piece is
    /// dropped: nothing more of the body is needed to answer).
    pub fn push(&mut self, piece: Bytes) -> Result<(), PluginError> {
        let len = self.len.saturating_add(piece.len() as u64);
        if len > self.max_bytes {
            return Err(too_large(self.max_bytes, self.plugin, len));
        }
        self.len = len;
        if !piece.is_empty() {
            self.pieces.push(piece);
        }
        Ok(())
    }

    /// Bytes collected so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole body; a body that came in one piece is not copied.
    pub fn into_bytes(mut self) -> Bytes {
        match self.pieces.len() {
            0 => Bytes::new(),
            1 => self.pieces.pop().unwrap_or_default(),
            _ => {
                let mut whole = BytesMut::with_capacity(usize::try_from(self.len).unwrap_or(0));
                for piece in &self.pieces {
                    whole.extend_from_slice(piece);
                }
                whole.freeze()
            }
        }
    }
}

/// The streaming body phase on one piece: every plugin's [`Plugin::on_request_body`], in chain
/// order. The first error stops it.
pub fn stream_piece<'a>(
    chain: impl IntoIterator<Item = &'a dyn Plugin>,
    piece: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestContext,
) -> Result<(), PluginError> {
    for plugin in chain {
        plugin.on_request_body(piece, end_of_stream, ctx)?;
    }
    Ok(())
}

/// The buffered body phase: [`Plugin::on_request_body_buffered`] of every plugin of `chain` that
/// asked for the body, in chain order, until one answers (`Flow::Respond` or `Err`). When the
/// plugins changed the body's length, `Content-Length` is set to the new length and
/// `Transfer-Encoding` removed, so the handler forwards the body the plugins left.
pub async fn run_buffered<'a, I>(
    chain: I,
    req: &mut RequestHeader,
    body: &mut Bytes,
    ctx: &mut RequestContext,
) -> Result<Flow, PluginError>
where
    I: IntoIterator<Item = &'a dyn Plugin>,
{
    let before = body.len();
    for plugin in chain {
        if !matches!(plugin.body_access(), BodyAccess::Buffer { .. }) {
            continue;
        }
        match plugin.on_request_body_buffered(req, body, ctx).await? {
            Flow::Continue => {}
            answer @ Flow::Respond(_) => return Ok(answer),
        }
    }
    if body.len() != before {
        req.remove_header(&header::TRANSFER_ENCODING);
        // A decimal number is always a valid header value, so this cannot fail.
        let _ = req.insert_header(header::CONTENT_LENGTH, body.len().to_string());
    }
    Ok(Flow::Continue)
}

/// The whole request body phase of `chain` for a body that arrives in `pieces`, as the gateway
/// runs it between the last `on_request` and the handler: the declared length checked, every
/// piece through [`stream_piece`] (and into the buffer when the chain buffers), then
/// [`run_buffered`]. Returns the flow and the body the handler gets. An empty `pieces` is a
/// request without a body (one `on_request_body` call with `None` at the end of the stream).
pub async fn run_request_body<'a, C>(
    chain: C,
    req: &mut RequestHeader,
    pieces: impl IntoIterator<Item = Bytes>,
    ctx: &mut RequestContext,
) -> Result<(Flow, Bytes), PluginError>
where
    C: IntoIterator<Item = &'a dyn Plugin> + Clone,
{
    let plan = BodyPlan::of_chain(chain.clone());
    plan.check_declared(req)?;
    // A streamed body is collected here too, without a limit, to show what reached the handler.
    let mut buffer = plan
        .buffer()
        .unwrap_or_else(|| BodyBuffer::new(u64::MAX, ""));
    let mut pieces = pieces.into_iter().peekable();
    if pieces.peek().is_none() {
        stream_piece(chain.clone(), &mut None, true, ctx)?;
    }
    while let Some(piece) = pieces.next() {
        let end_of_stream = pieces.peek().is_none();
        let mut piece = Some(piece);
        stream_piece(chain.clone(), &mut piece, end_of_stream, ctx)?;
        if let Some(piece) = piece {
            buffer.push(piece)?;
        }
    }
    let mut body = buffer.into_bytes();
    if !plan.buffers() {
        return Ok((Flow::Continue, body));
    }
    let flow = run_buffered(chain, req, &mut body, ctx).await?;
    Ok((flow, body))
}

#[cfg(test)]
mod tests;
