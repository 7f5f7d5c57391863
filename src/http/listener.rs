//! The listener: accepts TCP connections and serves HTTP/1.1 and HTTP/2 on
//! them (hyper-util's auto connection, as `axum::serve` does), with every
//! socket counted and timed from its first byte, so that sockets that
//! never finish a request cannot take the node's descriptors.
//!
//! - **Counted**: each socket takes a place ([`SocketCaps`]) when it is
//!   accepted, released when it closes (an upgraded WebSocket carries its
//!   place along). The node holds at most `RELAY_MAX_CONNECTIONS` plus a
//!   headroom for plain requests, kept under the descriptor limit, and at
//!   most `RELAY_MAX_SOCKETS_PER_ADDRESS` from one address. A socket past
//!   a cap gets a short 503 or 429 and is closed.
//! - **Timed** ([`GuardedTcp`]): the first bytes of a connection (until
//!   hyper has what it needs to pick HTTP/1.1 or HTTP/2) must come within
//!   `RELAY_HEADER_TIMEOUT_SECS`, and hyper's own timer then bounds each
//!   request's headers; a connection that reads and writes nothing for
//!   `RELAY_IDLE_TIMEOUT_SECS` (an idle keep-alive, a reader that stopped
//!   reading its response) is closed.
//! - **Small**: a request's headers may take 64 KiB of buffer; an HTTP/2
//!   connection at most 64 streams. HTTP/2 sends no keep-alive pings of its
//!   own, so an idle HTTP/2 connection is closed like an idle HTTP/1.1 one
//!   (an SSE stream is never idle: it sends a comment every 15 s).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::{Service as _, ServiceExt as _};

use crate::session::{Admission, AdmissionRefusal, ConnectionSlot};

/// Bytes a connection must send before hyper's own header timer takes over:
/// the HTTP/2 preface, which hyper-util reads whole to pick the protocol.
const DETECTION_BYTES: usize = 24;
/// Largest read buffer of an HTTP/1.1 connection (its headers must fit).
const MAX_HTTP1_BUFFER: usize = 64 * 1024;
/// Most concurrent streams of one HTTP/2 connection.
const MAX_HTTP2_STREAMS: u32 = 64;
/// Largest header list of an HTTP/2 request.
const MAX_HTTP2_HEADERS: u32 = 64 * 1024;
/// Descriptors kept free for everything else a node opens (Redis, the
/// telemetry exporter, files).
const RESERVED_DESCRIPTORS: usize = 128;
/// Refused sockets being answered at once; past it they are closed
/// without an answer.
const MAX_REFUSALS_UNDER_WAY: usize = 64;

/// The socket caps of a node: in all, and per address.
pub struct SocketCaps {
    places: Arc<Admission>,
    /// The cap in all, as it was settled (logged at start).
    pub total: usize,
}

impl SocketCaps {
    /// Caps for `max_connections` streaming connections plus a headroom
    /// for plain requests (a sixteenth, at least 64), at most what the
    /// descriptor limit `descriptors` leaves after a reserve, and
    /// `per_address` (0: none) sockets from one address.
    #[must_use]
    pub fn new(max_connections: usize, per_address: usize, descriptors: Option<u64>) -> Self {
        let wanted = max_connections.saturating_add((max_connections / 16).max(64));
        let total = match descriptors.and_then(|limit| usize::try_from(limit).ok()) {
            Some(limit) => wanted.min(limit.saturating_sub(RESERVED_DESCRIPTORS).max(16)),
            None => wanted,
        };
        Self {
            places: Admission::new(total, per_address),
            total,
        }
    }

    /// Takes a place for a socket from `address`.
    ///
    /// # Errors
    /// Which cap is reached.
    pub fn admit(&self, address: &SocketAddr) -> Result<ConnectionSlot, AdmissionRefusal> {
        self.places.admit(&format!("ip:{}", address.ip()))
    }
}

/// How the listener serves: the node's router and its timing settings.
pub struct Serving {
    /// The node's router.
    pub router: Router,
    /// `RELAY_HEADER_TIMEOUT_SECS`.
    pub header_timeout: Duration,
    /// `RELAY_IDLE_TIMEOUT_SECS`.
    pub idle_timeout: Duration,
    /// The caps.
    pub caps: SocketCaps,
}

/// Accepts and serves until `stop`, then asks every connection to finish
/// gracefully and waits for them (the caller bounds the wait).
pub async fn serve(listener: TcpListener, serving: Serving, stop: CancellationToken) {
    let Serving {
        router,
        header_timeout,
        idle_timeout,
        caps,
    } = serving;
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HTTP1_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_HTTP2_STREAMS)
        .max_header_list_size(MAX_HTTP2_HEADERS);
    let builder = Arc::new(builder);
    let connections = tokio_util::task::TaskTracker::new();
    let refusals = Arc::new(AtomicUsize::new(0));
    let mut accept_errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, address) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_errors.note(&error).await;
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on a client connection");
        }
        let slot = match caps.admit(&address) {
            Ok(slot) => slot,
            Err(refusal) => {
                refuse_socket(tcp, refusal, &refusals, &connections);
                continue;
            }
        };
        let service = make_service
            .call(address)
            .await
            .unwrap_or_else(|never| match never {})
            .map_request(|request: hyper::Request<Incoming>| request.map(Body::new));
        let service = TowerToHyperService::new(service);
        let io = TokioIo::new(GuardedTcp::new(tcp, slot, header_timeout, idle_timeout));
        let builder = builder.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let connection = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::trace!(%error, "a connection ended with an error");
                    }
                    return;
                }
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// Says "not now" to a socket past a cap, briefly, on a task of its own
/// (at most [`MAX_REFUSALS_UNDER_WAY`] at once; past that it is closed at
/// once), then closes it.
fn refuse_socket(
    mut tcp: TcpStream,
    refusal: AdmissionRefusal,
    under_way: &Arc<AtomicUsize>,
    connections: &tokio_util::task::TaskTracker,
) {
    if under_way.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS_UNDER_WAY {
        under_way.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let (status, code, message) = match refusal {
        AdmissionRefusal::NodeFull => (
            "503 Service Unavailable",
            "overloaded",
            "this node is at its connection limit; connect again to reach another node",
        ),
        AdmissionRefusal::ClientFull => (
            "429 Too Many Requests",
            "rate_limited",
            "too many open sockets from this address (RELAY_MAX_SOCKETS_PER_ADDRESS); close some first",
        ),
    };
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let under_way = under_way.clone();
    connections.spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            tcp.write_all(response.as_bytes()).await?;
            tcp.shutdown().await?;
            // Read what the client sends until it closes, so that the
            // answer is not destroyed by a reset.
            let mut sink = [0u8; 1024];
            while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
        under_way.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Accept failures: a full descriptor table is told (once in ten seconds)
/// and waited out a moment; others pass.
#[derive(Default)]
struct AcceptErrors {
    last_told: Option<Instant>,
}

impl AcceptErrors {
    async fn note(&mut self, error: &io::Error) {
        // EMFILE and ENFILE: the process or the system is out of descriptors.
        let out_of_descriptors = matches!(error.raw_os_error(), Some(23 | 24));
        if self
            .last_told
            .is_none_or(|told| told.elapsed() >= Duration::from_secs(10))
        {
            self.last_told = Some(Instant::now());
            if out_of_descriptors {
                tracing::warn!(%error, "cannot accept connections: out of file descriptors; raise the nofile limit or lower RELAY_MAX_CONNECTIONS");
            } else {
                tracing::debug!(%error, "accept failed");
            }
        }
        if out_of_descriptors {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A client's TCP socket as the HTTP server sees it: its place among the
/// node's sockets, and the two timers of the module docs.
pub struct GuardedTcp {
    tcp: TcpStream,
    slot: ConnectionSlot,
    /// Until this many bytes have come, `first_bytes_by` holds.
    detection_left: usize,
    first_bytes_by: Instant,
    idle_timeout: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl GuardedTcp {
    fn new(tcp: TcpStream, slot: ConnectionSlot, header_timeout: Duration, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        let first_bytes_by = now + header_timeout;
        Self {
            tcp,
            slot,
            detection_left: DETECTION_BYTES,
            first_bytes_by,
            idle_timeout,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(first_bytes_by.min(now + idle_timeout))),
        }
    }

    /// The socket and its place, for a connection upgraded to a WebSocket
    /// (whose driver has timers of its own).
    #[must_use]
    pub fn into_parts(self) -> (TcpStream, ConnectionSlot) {
        (self.tcp, self.slot)
    }

    /// The deadline in force now.
    fn deadline(&self) -> Instant {
        let idle = self.last_activity + self.idle_timeout;
        if self.detection_left > 0 {
            idle.min(self.first_bytes_by)
        } else {
            idle
        }
    }

    /// `Err` once the deadline in force has passed; else the timer is set
    /// to it (and registered with the task).
    fn check_deadline(&mut self, context: &mut Context<'_>) -> io::Result<()> {
        loop {
            let deadline = self.deadline();
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(context).is_pending() {
                return Ok(());
            }
            if Instant::now() >= self.deadline() {
                let why = if self.detection_left > 0 && Instant::now() >= self.first_bytes_by {
                    "no request within RELAY_HEADER_TIMEOUT_SECS"
                } else {
                    "nothing sent or received within RELAY_IDLE_TIMEOUT_SECS"
                };
                return Err(io::Error::new(io::ErrorKind::TimedOut, why));
            }
        }
    }
}

impl AsyncRead for GuardedTcp {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(context, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    this.last_activity = Instant::now();
                    this.detection_left = this.detection_left.saturating_sub(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                this.check_deadline(context)?;
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for GuardedTcp {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write(context, data) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                this.check_deadline(context)?;
                Poll::Pending
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write_vectored(context, buffers) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                this.check_deadline(context)?;
                Poll::Pending
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_cap_leaves_headroom_and_stays_under_the_descriptor_limit() {
        assert_eq!(SocketCaps::new(10_000, 0, None).total, 10_625);
        assert_eq!(SocketCaps::new(20, 0, None).total, 84);
        assert_eq!(SocketCaps::new(10_000, 0, Some(1024)).total, 896);
        assert_eq!(SocketCaps::new(10_000, 0, Some(100)).total, 16, "never nothing");
    }
}
