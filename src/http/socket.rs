//! The WebSocket beneath every protocol: the HTTP upgrade, the client's
//! frames in, and the node's frames out.
//!
//! The node owns the TCP socket. tungstenite parses what the client sends
//! (masking, fragments, size limits, UTF-8, close frames); everything the
//! node sends is framed here and written by [`FrameWriter`], which hands a
//! batch of frames to the kernel in one vectored write without copying
//! them. Server frames are unmasked, so a message fanned out to many
//! subscribers is framed once ([`text_frame`]) and the same bytes go to
//! every socket; a connection whose socket is idle gets them written
//! straight from the fan-out ([`DirectText`]), without a wake-up of its
//! task.
//!
//! tungstenite's own replies (the pong to a ping, the echo of a close) are
//! discarded: the driver answers pings and closes itself, between whole
//! frames, so nothing can land in the middle of a frame half written.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::listener::GuardedTcp;
use crate::session::{ConnectionSlot, Direct, DirectWrite, Encoding, LiveMessage};

/// Frames handed to the kernel in one write at most.
const WRITE_SLICES: usize = 128;

/// A WebSocket upgrade request, checked (RFC 6455 section 4.2.1).
pub(crate) struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    offered: Vec<HeaderValue>,
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug)]
pub(crate) struct UpgradeRefused(pub(crate) &'static str);

impl axum::response::IntoResponse for UpgradeRefused {
    fn into_response(self) -> Response {
        super::ApiError::bad_request(format!("{}; connect with a WebSocket client", self.0)).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = UpgradeRefused;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(UpgradeRefused("a WebSocket upgrade is a GET request"));
        }
        if !has_token(&parts.headers, &header::CONNECTION, "upgrade") {
            return Err(UpgradeRefused("the Connection header must include upgrade"));
        }
        if !has_token(&parts.headers, &header::UPGRADE, "websocket") {
            return Err(UpgradeRefused("the Upgrade header must be websocket"));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(UpgradeRefused("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(UpgradeRefused("the Sec-WebSocket-Key header is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(UpgradeRefused(
                "this connection cannot be upgraded (HTTP/1.1 is needed)",
            ))?;
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
            .filter_map(|name| HeaderValue::from_bytes(name.trim_ascii()).ok())
            .collect();
        Ok(Self {
            key,
            on_upgrade,
            offered,
        })
    }
}

/// Whether the comma-separated header `name` holds `token` (any case).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&byte| byte == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Limits on what the client may send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits {
    /// Bytes the reader buffers (grows for a larger frame).
    pub(crate) buffer: usize,
    /// Largest frame and message.
    pub(crate) max_frame: usize,
}

impl WsUpgrade {
    /// The first of `supported` that the client offered.
    pub(crate) fn select_protocol(&self, supported: &[&'static str]) -> Option<&'static str> {
        supported
            .iter()
            .copied()
            .find(|name| self.offered.iter().any(|offered| offered.as_bytes() == name.as_bytes()))
    }

    /// Answers 101 and runs `serve` on the socket once the upgrade is done.
    pub(crate) fn on_upgrade<F, Fut>(self, protocol: Option<&'static str>, limits: ReadLimits, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        #[expect(clippy::disallowed_methods, reason = "the connection's task, tracked by `serve`")]
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "a WebSocket upgrade did not complete");
                    return;
                }
            };
            let Some(socket) = Socket::from_upgraded(upgraded, limits).await else {
                tracing::error!("a WebSocket upgrade came over a connection that is not TCP; closing it");
                return;
            };
            serve(socket).await;
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept);
        if let Some(protocol) = protocol {
            response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
            .body(axum::body::Body::empty())
            .unwrap_or_else(|_| Response::new(axum::body::Body::empty()))
    }
}

/// The client's frames, parsed by tungstenite.
pub(crate) type FrameReader = WebSocketStream<ReadSide>;

/// An upgraded connection: the TCP socket, the reader on it, and its place
/// among the node's sockets (held until the connection ends).
pub(crate) struct Socket {
    pub(crate) tcp: Arc<TcpStream>,
    pub(crate) reader: FrameReader,
    pub(crate) place: ConnectionSlot,
}

impl Socket {
    async fn from_upgraded(upgraded: hyper::upgrade::Upgraded, limits: ReadLimits) -> Option<Self> {
        // The listener serves through hyper-util's auto connection, which
        // wraps the socket in a type of its own; this is its way back to
        // the socket (whose timers the WebSocket driver replaces).
        let parts = hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<GuardedTcp>>(upgraded).ok()?;
        let (tcp, place) = parts.io.into_inner().into_parts();
        let tcp = Arc::new(tcp);
        let config = WebSocketConfig::default()
            .read_buffer_size(limits.buffer)
            .max_message_size(Some(limits.max_frame))
            .max_frame_size(Some(limits.max_frame));
        let reader = WebSocketStream::from_partially_read(
            ReadSide { tcp: tcp.clone() },
            parts.read_buf.to_vec(),
            Role::Server,
            Some(config),
        )
        .await;
        Some(Self { tcp, reader, place })
    }
}

/// The reading side of the socket as tungstenite sees it. What tungstenite
/// writes (its automatic pong and close echo) is dropped here: the driver
/// sends those itself, in order with its other frames.
pub(crate) struct ReadSide {
    tcp: Arc<TcpStream>,
}

impl ReadSide {
    /// Reads and discards what the client still sends, until it closes
    /// (or its socket fails): after a frame tungstenite refused, its parser
    /// cannot read on, but unread bytes left in the socket would make the
    /// kernel answer the close with a reset that destroys the close frame.
    pub(crate) async fn discard_until_closed(&self) {
        let mut sink = vec![0u8; 16 * 1024];
        loop {
            if self.tcp.readable().await.is_err() {
                return;
            }
            match self.tcp.try_read(&mut sink) {
                // The client closed, or its socket failed.
                Ok(0) => return,
                Err(error) if error.kind() != io::ErrorKind::WouldBlock => return,
                // Discarded, or nothing yet.
                Ok(_) | Err(_) => {}
            }
        }
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(context))?;
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(self: Pin<&mut Self>, _context: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// WebSocket opcodes the node sends.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Opcode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// A server frame's header (final, unmasked): at most 10 bytes.
#[derive(Debug, Clone, Copy)]
struct Head {
    bytes: [u8; 10],
    len: u8,
}

impl Head {
    const EMPTY: Head = Head { bytes: [0; 10], len: 0 };

    fn new(opcode: Opcode, payload_len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode as u8;
        let len = if let Ok(short @ 0..=125) = u8::try_from(payload_len) {
            bytes[1] = short;
            2
        } else if let Ok(medium) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&medium.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Self { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// `payload` as one complete text frame, header included.
#[must_use]
pub fn text_frame(payload: &[u8]) -> Bytes {
    let head = Head::new(Opcode::Text, payload.len());
    let mut frame = BytesMut::with_capacity(head.as_slice().len() + payload.len());
    frame.put_slice(head.as_slice());
    frame.put_slice(payload);
    frame.freeze()
}

/// A live message as a text frame, framed once for all its subscribers.
#[must_use]
pub fn message_frame(message: &LiveMessage) -> Bytes {
    message.encoded(Encoding::WebSocketText, |message| text_frame(message.frame()))
}

/// Writes live messages straight to an idle JSON-protocol socket from the
/// fan-out (see `session::DirectWrite`).
#[derive(Debug)]
pub struct DirectText {
    tcp: Arc<TcpStream>,
}

impl DirectText {
    /// Direct writes to `tcp`.
    #[must_use]
    pub fn new(tcp: Arc<TcpStream>) -> Self {
        Self { tcp }
    }
}

impl DirectWrite for DirectText {
    fn try_write(&self, message: &LiveMessage) -> Direct {
        let frame = message_frame(message);
        match self.tcp.try_write(&frame) {
            Ok(written) if written == frame.len() => Direct::Written,
            Ok(written) => Direct::Partly(frame.slice(written..)),
            // Would block, or broken: the writer finds out which.
            Err(_) => Direct::NotNow,
        }
    }
}

/// One frame waiting to be written: a header (empty when `body` is a
/// whole frame already) and its payload.
struct Chunk {
    head: Head,
    body: Bytes,
}

impl Chunk {
    fn len(&self) -> usize {
        usize::from(self.head.len) + self.body.len()
    }
}

/// The node's frames to one socket: queued without copying their payloads,
/// then written in vectored writes.
pub struct FrameWriter {
    tcp: Arc<TcpStream>,
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    written: usize,
}

impl FrameWriter {
    /// A writer to `tcp`, with nothing queued.
    #[must_use]
    pub fn new(tcp: Arc<TcpStream>) -> Self {
        Self {
            tcp,
            chunks: VecDeque::new(),
            written: 0,
        }
    }

    /// Queues a complete frame (or the rest of one), as it is.
    pub fn push_framed(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.chunks.push_back(Chunk {
                head: Head::EMPTY,
                body: frame,
            });
        }
    }

    /// Queues `message` as one frame (tungstenite's message type is only
    /// the vocabulary here; it frames nothing).
    pub(crate) fn push_message(&mut self, message: Message) {
        let (opcode, body) = match message {
            Message::Text(text) => (Opcode::Text, Bytes::from(text)),
            Message::Binary(data) => (Opcode::Binary, data),
            Message::Ping(data) => (Opcode::Ping, data),
            Message::Pong(data) => (Opcode::Pong, data),
            Message::Close(frame) => {
                let body = frame.map_or_else(Bytes::new, |frame| {
                    let mut body = BytesMut::with_capacity(2 + frame.reason.len());
                    body.put_u16(frame.code.into());
                    body.put_slice(frame.reason.as_bytes());
                    body.freeze()
                });
                (Opcode::Close, body)
            }
            Message::Frame(_) => return,
        };
        self.chunks.push_back(Chunk {
            head: Head::new(opcode, body.len()),
            body,
        });
    }

    /// Writes until everything queued is written.
    ///
    /// # Errors
    /// The socket's, when a write fails.
    pub fn poll_flush(&mut self, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            let mut skip = self.written;
            'fill: for chunk in &self.chunks {
                for part in [chunk.head.as_slice(), &chunk.body[..]] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[count] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    count += 1;
                    if count == WRITE_SLICES {
                        break 'fill;
                    }
                }
            }
            ready!(self.tcp.poll_write_ready(context))?;
            match self.tcp.try_write_vectored(&slices[..count]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => self.advance(written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes until everything queued is written.
    ///
    /// # Errors
    /// The socket's, when a write fails.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|context| self.poll_flush(context)).await
    }

    fn advance(&mut self, mut written: usize) {
        while let Some(front) = self.chunks.front() {
            let left = front.len() - self.written;
            if written < left {
                self.written += written;
                return;
            }
            written -= left;
            self.written = 0;
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        assert_eq!(Head::new(Opcode::Text, 0).as_slice(), [0x81, 0]);
        assert_eq!(Head::new(Opcode::Text, 125).as_slice(), [0x81, 125]);
        assert_eq!(Head::new(Opcode::Binary, 126).as_slice(), [0x82, 126, 0, 126]);
        assert_eq!(Head::new(Opcode::Ping, 65_535).as_slice(), [0x89, 126, 0xFF, 0xFF]);
        assert_eq!(
            Head::new(Opcode::Close, 65_536).as_slice(),
            [0x88, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn a_text_frame_is_what_tungstenite_reads_back() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let frame = text_frame(payload.as_bytes());
            let mut cursor = std::io::Cursor::new(&frame[..]);
            let (header, length) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
                .expect("a valid header")
                .expect("a whole header");
            assert!(header.is_final);
            assert!(header.mask.is_none(), "server frames are unmasked");
            assert_eq!(length, payload.len() as u64);
            let start = usize::try_from(cursor.position()).expect("a short header");
            assert_eq!(&frame[start..], payload.as_bytes());
        }
    }
}
