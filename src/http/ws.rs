//! `GET /v1/ws`, and the WebSocket driver every protocol over a WebSocket
//! shares (the JSON protocol here, STOMP in `stomp`).
//!
//! The driver runs one socket (`socket`) with two futures in one task: a
//! reader that hands the client's messages to the protocol's [`Inbound`]
//! side, and a writer that drains the connection's queues through the
//! protocol's [`Framing`], writing up to [`WRITE_BATCH`] frames per
//! vectored write, sends pings (and the protocol's heart-beats), answers
//! the client's pings and close, and closes slow consumers (4000) and
//! draining connections (`reconnect`, then 1012). While the writer has
//! nothing to do, the JSON protocol's live messages are written straight
//! from the fan-out instead ([`crate::session::DirectWrite`]). After any
//! close of its own the node keeps reading until the client's close
//! (bounded), so the close frame arrives instead of being destroyed by a
//! reset.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use super::socket::{self, DirectText, FrameReader, FrameWriter, ReadLimits, Socket, UpgradeRefused, WsUpgrade};
use super::{ApiError, AuthQuery, FAR_FUTURE, GaugeGuard, admit, bad_query, identify, until_expiry};
use crate::node::Node;
use crate::protocol::{ErrorCode, close_code};
use crate::session::{
    ClientSession, ConnectionHandle, ConnectionQueues, ConnectionSlot, Encoding, Event, HANDOVER_MARGIN,
    MAX_PUBLISHES_IN_FLIGHT, Outbound, ReplySender, SessionVerdict,
};
use crate::telemetry::TransportLabel;

/// Frames written per flush at most.
pub const WRITE_BATCH: usize = 64;
/// Bytes the reader buffers per connection (grows for a larger frame).
const READ_BUFFER_BYTES: usize = 512;
/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a closed connection keeps reading until the client's close.
const LINGER: Duration = Duration::from_secs(1);

/// Handles the upgrade: draining, origin and credentials are checked first.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    query: Result<Query<AuthQuery>, QueryRejection>,
    upgrade: Result<WsUpgrade, UpgradeRefused>,
) -> Response {
    if node.is_draining() {
        return ApiError::draining().into_response();
    }
    if let Err(error) = check_origin(&node, &headers) {
        return error.into_response();
    }
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return bad_query(&rejection).into_response(),
    };
    let identity = match identify(&node, &headers, &query) {
        Ok(identity) => identity,
        Err(error) => return error.into_response(),
    };
    let address = connect_info.map(|info| info.0.0);
    let client = identity.client_key(address.map(|address| address.ip()));
    let slot = match admit(&node, &client) {
        Ok(slot) => slot,
        Err(error) => return error.into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(UpgradeRefused(reason)) => {
            return ApiError::bad_request(format!("{reason}; connect with a WebSocket client")).into_response();
        }
    };
    let tracker = node.connections.clone();
    // Boxed: the upgrade's task keeps this closure's captures for the
    // connection's whole life; a pointer costs less than the identity.
    let parts = Box::new((node.clone(), identity, client, slot));
    upgrade.on_upgrade(None, read_limits(&node.settings), move |socket| {
        let (node, identity, client, slot) = *parts;
        let (connection, replies, queues) =
            ConnectionHandle::with_limits(node.settings.outbound_queue, node.settings.outbound_queue_bytes);
        let session = ClientSession::new(node.session.clone(), identity, client, connection, replies.clone());
        let welcome = session.welcome();
        let protocol = Protocol {
            inbound: JsonInbound { session },
            framing: JsonFraming,
            transport: "ws",
            first: Some(welcome),
            direct: true,
        };
        tracker.track_future(serve_connection(Connection::open(
            node,
            protocol,
            Some(slot),
            socket,
            replies,
            queues,
        )))
    })
}

/// Refuses a browser page of an origin `RELAY_ALLOWED_ORIGINS` does not list.
pub(crate) fn check_origin(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::ORIGIN).and_then(|value| value.to_str().ok()) {
        Some(origin) if !node.settings.allowed_origins.allows(origin) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("origin {origin} may not open WebSockets here (RELAY_ALLOWED_ORIGINS)"),
        )),
        _ => Ok(()),
    }
}

/// What a client of this node may send over a WebSocket.
pub(crate) fn read_limits(settings: &crate::config::Settings) -> ReadLimits {
    ReadLimits {
        buffer: READ_BUFFER_BYTES,
        max_frame: settings.max_frame_bytes,
    }
}

/// A message from the client, as the protocol gets it.
pub(crate) enum Incoming {
    /// A text message.
    Text(tungstenite::Utf8Bytes),
    /// A binary message.
    Binary(bytes::Bytes),
}

/// What a protocol does with the client's messages.
pub(crate) trait Inbound: Send {
    /// The client's session, once it has one (STOMP's comes with CONNECT).
    fn session(&mut self) -> Option<&mut ClientSession>;
    /// Handles one message from the client.
    fn receive(&mut self, message: Incoming) -> impl Future<Output = SessionVerdict> + Send;
    /// How long the client may stay silent before it is taken for dead
    /// (STOMP's heart-beats); `None`: the pings decide.
    fn silence_limit(&self) -> Option<Duration> {
        None
    }
    /// Whether the protocol still waits for the client to log in (STOMP's
    /// CONNECT), which it must within `RELAY_HEADER_TIMEOUT_SECS`.
    fn awaits_login(&self) -> bool {
        false
    }
    /// The client did not log in within `allowed`: what to say and do.
    fn login_timed_out(&mut self, _allowed: Duration) -> impl Future<Output = SessionVerdict> + Send {
        std::future::ready(SessionVerdict::Close {
            code: close_code::POLICY,
            reason: "no login in time",
        })
    }
}

/// What one queued item becomes on the socket.
pub(crate) enum Encoded {
    /// Nothing: this protocol does not say it.
    Nothing,
    /// One message.
    Send(Message),
    /// One complete frame, framed once and shared (the JSON protocol's
    /// messages and room events).
    Framed(Bytes),
    /// One message, then the connection closes with this code (STOMP's
    /// `ERROR`).
    SendAndClose(Message, u16, &'static str),
}

/// How a protocol frames what the session says.
pub(crate) trait Framing: Send {
    /// What goes first, before any queued item (SockJS's open frame).
    fn opening(&mut self) -> Option<Message> {
        None
    }
    /// A message, an event or a room event (barriers and closes are the
    /// driver's).
    fn encode(&mut self, item: Outbound) -> Encoded;
    /// A heart-beat to send after this long without writing.
    fn heartbeat(&self) -> Option<(Duration, Message)> {
        None
    }
    /// What goes just before the WebSocket close (SockJS's close frame).
    fn closing(&self, _code: u16, _reason: &str) -> Option<Message> {
        None
    }
}

/// One protocol's two sides and what it sends first.
pub(crate) struct Protocol<I, F> {
    pub(crate) inbound: I,
    pub(crate) framing: F,
    /// The `transport` label of the connections gauge.
    pub(crate) transport: &'static str,
    /// Queued before anything else (the JSON protocol's `welcome`).
    pub(crate) first: Option<Outbound>,
    /// Whether the fan-out may write live messages straight to the socket
    /// as text frames of their JSON (the JSON protocol's framing).
    pub(crate) direct: bool,
}

/// The JSON protocol's reading side: every text message is a frame for
/// the session.
struct JsonInbound {
    session: ClientSession,
}

impl Inbound for JsonInbound {
    fn session(&mut self) -> Option<&mut ClientSession> {
        Some(&mut self.session)
    }

    async fn receive(&mut self, message: Incoming) -> SessionVerdict {
        match message {
            // Boxed: the frame's work takes heap only while it runs, not a
            // slot in every idle connection's task.
            Incoming::Text(text) => Box::pin(self.session.handle_text(&text)).await,
            Incoming::Binary(_) => SessionVerdict::Close {
                code: close_code::UNSUPPORTED_DATA,
                reason: "binary frames are not supported; send JSON text frames",
            },
        }
    }
}

/// The JSON protocol's framing: one text message per frame.
struct JsonFraming;

impl Framing for JsonFraming {
    fn encode(&mut self, item: Outbound) -> Encoded {
        match item {
            Outbound::Message(message) => Encoded::Framed(socket::message_frame(&message)),
            Outbound::Room(event) => {
                Encoded::Framed(event.encoded(Encoding::WebSocketText, |event| socket::text_frame(event.json_bytes())))
            }
            Outbound::Event(event) => match event.to_json() {
                Some(json) => Encoded::Send(Message::Text(json.into())),
                None => Encoded::Nothing,
            },
            Outbound::Barrier(_) | Outbound::Rest(_) | Outbound::Close { .. } => Encoded::Nothing,
        }
    }
}

enum ReadEnd {
    /// The client sent a close frame (with this code, if any): echo it.
    PeerClosed(Option<u16>),
    /// The client is gone, or silent past its heart-beats.
    ClientClosed,
    Close {
        code: u16,
        reason: &'static str,
    },
    /// The node is draining: tell the client to reconnect elsewhere after
    /// `delay`.
    Draining {
        delay: Duration,
    },
}

/// Everything one WebSocket connection holds, built before its task starts.
///
/// An async fn keeps its arguments for its whole life, even once moved
/// out; so the parts are made here and the task only borrows them. That
/// keeps the socket and the identity from being stored twice in every
/// connection's task.
pub(crate) struct Connection<I, F> {
    node: Arc<Node>,
    inbound: I,
    framing: F,
    first: Option<Outbound>,
    replies: ReplySender,
    queues: ConnectionQueues,
    writer: FrameWriter,
    reader: FrameReader,
    /// The admission slot (a STOMP session holds its own), the socket's
    /// place and the open-connections gauge, released when the connection
    /// ends.
    held: (Option<ConnectionSlot>, ConnectionSlot, GaugeGuard),
}

impl<I: Inbound, F: Framing> Connection<I, F> {
    /// The parts of a connection serving `protocol` on `socket`, whose
    /// queues `replies` and `queues` are (the session holds their live end).
    pub(crate) fn open(
        node: Arc<Node>,
        protocol: Protocol<I, F>,
        slot: Option<ConnectionSlot>,
        socket: Socket,
        replies: ReplySender,
        queues: ConnectionQueues,
    ) -> Self {
        let open = GaugeGuard::inc(
            node.metrics
                .connections
                .get_or_create(&TransportLabel {
                    transport: protocol.transport,
                })
                .clone(),
        );
        if protocol.direct {
            queues.write_directly(Arc::new(DirectText::new(socket.tcp.clone())));
        }
        Self {
            node,
            inbound: protocol.inbound,
            framing: protocol.framing,
            first: protocol.first,
            replies,
            queues,
            writer: FrameWriter::new(socket.tcp),
            reader: socket.reader,
            held: (slot, socket.place, open),
        }
    }
}

/// What the reader tells the writer (both run in the connection's task).
#[derive(Default)]
struct Liveness {
    /// Pings sent since the client's last pong.
    missed_pongs: AtomicU32,
    /// The pong owed for the client's latest ping.
    pong: Mutex<Option<Bytes>>,
}

impl Liveness {
    fn owe_pong(&self, payload: Bytes) {
        *self.pong.lock().unwrap_or_else(PoisonError::into_inner) = Some(payload);
    }

    fn take_pong(&self) -> Option<Bytes> {
        self.pong.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Drives a connection to its end. Not an async fn: its body uses the
/// connection's fields in place instead of moving them into new locals.
#[expect(
    clippy::manual_async_fn,
    reason = "as an async fn, the task would store the connection twice (about 540 bytes more)"
)]
pub(crate) fn serve_connection<I: Inbound, F: Framing>(mut connection: Connection<I, F>) -> impl Future<Output = ()> {
    async move {
        if let Some(first) = connection.first.take()
            && connection.replies.send(first).await.is_err()
        {
            return;
        }
        let liveness = Liveness::default();
        let writer = write_socket(
            &connection.node,
            &mut connection.writer,
            &mut connection.queues,
            &mut connection.framing,
            &liveness,
        );
        tokio::pin!(writer);
        let end = tokio::select! {
            end = read_socket(&connection.node, &mut connection.reader, &mut connection.inbound, &liveness, &connection.replies) => Some(end),
            () = &mut writer => None,
        };
        // A drained client's presence is handed over until it had time to
        // join elsewhere (session::handover); then every room is left
        // before the socket goes.
        if let Some(ReadEnd::Draining { delay }) = &end
            && let Some(session) = connection.inbound.session()
        {
            session.hand_over_presence(std::time::Instant::now() + *delay + HANDOVER_MARGIN);
        }
        drop(connection.inbound);
        match end {
            // Boxed: this runs once, at the end; no idle task carries its state.
            Some(end) => Box::pin(close_after_reading(&connection.node, connection.replies, end, writer)).await,
            None => drop(connection.replies),
        }
        Box::pin(linger_until_the_peer_closes(&mut connection.reader)).await;
        // Named, so that the block captures it (it captures only the fields
        // it uses) and the slot is held to the end.
        drop(connection.held);
    }
}

/// Queues what the end of reading calls for (the echo of the client's
/// close, a close of the node's, or `reconnect` and 1012 when draining)
/// and lets the writer send it, bounded by [`CLOSE_GRACE`].
async fn close_after_reading(
    node: &Node,
    replies: ReplySender,
    end: ReadEnd,
    writer: Pin<&mut impl Future<Output = ()>>,
) {
    match end {
        ReadEnd::ClientClosed => {}
        // Answered ahead of the live messages still queued (RFC 6455
        // section 5.5.1), with the client's code.
        ReadEnd::PeerClosed(code) => {
            let _ = replies
                .send(Outbound::Close {
                    code: code.unwrap_or(NO_STATUS),
                    reason: "",
                })
                .await;
        }
        ReadEnd::Close { code, reason } => {
            node.metrics.count_close(code);
            let _ = replies.send(Outbound::Close { code, reason }).await;
        }
        // After the acks of the publishes that were in flight.
        ReadEnd::Draining { delay } => {
            node.metrics.count_close(close_code::RESTARTING);
            let _ = replies.send(drain_notice(delay)).await;
            let _ = replies
                .send(Outbound::Close {
                    code: close_code::RESTARTING,
                    reason: "node draining: reconnect and resume",
                })
                .await;
        }
    }
    drop(replies);
    let _ = tokio::time::timeout(CLOSE_GRACE, writer).await;
}

/// The close code that stands for none: its close frame has no body.
const NO_STATUS: u16 = 1005;

/// A close frame with `code` and `reason` (no body for [`NO_STATUS`]).
fn close_message(code: u16, reason: &str) -> Message {
    if code == NO_STATUS {
        return Message::Close(None);
    }
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

/// After the node's close frame, reads (and discards) what the client still
/// sends until its close, the end of the stream or [`LINGER`], for every
/// protocol and every close of the node's (after a frame tungstenite
/// refused, on the raw socket). Dropping a socket with unread data makes
/// the kernel answer with a reset, which can destroy the close frame still
/// in flight to the client (it would see no close code at all); reading
/// first lets the close arrive.
async fn linger_until_the_peer_closes(reader: &mut FrameReader) {
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            match reader.next().await {
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
                // tungstenite refused what the client sends (a frame over
                // the limit, a protocol error) and reads no more, or saw
                // the end: drain the socket itself until the client closes
                // (at once if it has).
                Some(Err(_)) | None => return reader.get_ref().discard_until_closed().await,
            }
        }
    })
    .await;
}

async fn read_socket(
    node: &Node,
    reader: &mut FrameReader,
    inbound: &mut impl Inbound,
    liveness: &Liveness,
    replies: &ReplySender,
) -> ReadEnd {
    // One timer per connection, moved when a refresh changes the expiry.
    let deadline = |session: Option<&mut ClientSession>| {
        let left = session.and_then(|session| until_expiry(node, session.identity()));
        tokio::time::Instant::now() + left.unwrap_or(FAR_FUTURE)
    };
    let expiry = tokio::time::sleep_until(deadline(inbound.session()));
    tokio::pin!(expiry);
    let mut expiry_version = None;
    // The protocol's own liveness check (STOMP heart-beats), if any.
    // Boxed, and made only once a protocol asks for it: a JSON connection's
    // task carries a pointer, not a timer.
    let mut silence: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // A protocol with a login of its own must see it soon; boxed, and only
    // for such a protocol.
    let login_allowed = node.settings.header_timeout;
    let mut login = inbound
        .awaits_login()
        .then(|| Box::pin(tokio::time::sleep(login_allowed)));
    let end = loop {
        let version = inbound.session().map(|session| session.identity_version());
        if version != expiry_version {
            expiry_version = version;
            expiry.as_mut().reset(deadline(inbound.session()));
        }
        let silence_limit = inbound.silence_limit();
        let in_flight = inbound.session().map_or(0, |session| session.publishes_in_flight());
        let received = tokio::select! {
            biased;
            () = &mut expiry => {
                let Some(session) = inbound.session() else { continue };
                let SessionVerdict::Close { code, reason } = Box::pin(session.token_expired()).await else { continue };
                break ReadEnd::Close { code, reason };
            }
            () = async {
                match silence.as_mut() {
                    Some(silence) => silence.await,
                    None => std::future::pending().await,
                }
            }, if silence_limit.is_some() => {
                tracing::debug!("closing a connection whose client went silent past its heart-beats");
                break ReadEnd::ClientClosed;
            }
            () = async {
                match login.as_mut() {
                    Some(login) => login.await,
                    None => std::future::pending().await,
                }
            }, if login.is_some() => {
                login = None;
                if !inbound.awaits_login() {
                    continue;
                }
                tracing::debug!("closing a connection that did not log in within the header timeout");
                if let SessionVerdict::Close { code, reason } = inbound.login_timed_out(login_allowed).await {
                    break ReadEnd::Close { code, reason };
                }
                continue;
            }
            () = node.draining.cancelled() => break ReadEnd::Draining { delay: node.reconnect_delay() },
            Some(reply) = async {
                match inbound.session() {
                    Some(session) => session.next_publish_reply().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(session) = inbound.session() else { continue };
                if !session.deliver_reply(reply).await {
                    return ReadEnd::ClientClosed;
                }
                continue;
            }
            received = reader.next(), if in_flight < MAX_PUBLISHES_IN_FLIGHT => received,
        };
        let incoming = match received {
            Some(Ok(Message::Text(text))) => Incoming::Text(text),
            Some(Ok(Message::Binary(data))) => Incoming::Binary(data),
            Some(Ok(Message::Pong(_))) => {
                liveness.missed_pongs.store(0, Ordering::Relaxed);
                continue;
            }
            // The writer answers, between whole frames.
            Some(Ok(Message::Ping(payload))) => {
                liveness.owe_pong(payload);
                replies.wake_writer();
                continue;
            }
            Some(Ok(Message::Close(frame))) => break ReadEnd::PeerClosed(frame.map(|frame| u16::from(frame.code))),
            Some(Ok(Message::Frame(_))) => continue,
            None => break ReadEnd::ClientClosed,
            Some(Err(error)) => break classify_read_error(&error),
        };
        if let SessionVerdict::Close { code, reason } = inbound.receive(incoming).await {
            break ReadEnd::Close { code, reason };
        }
        // Only the protocol's own data counts as life: a browser answers
        // pings even when its page is frozen.
        if let Some(limit) = inbound.silence_limit() {
            let deadline = tokio::time::Instant::now() + limit;
            match silence.as_mut() {
                Some(silence) => silence.as_mut().reset(deadline),
                None => silence = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
    };
    // Publishes received before the end are committed (and acknowledged if
    // the socket still takes it), bounded by the close grace. Boxed: it
    // runs once, at the end.
    if let Some(session) = inbound.session() {
        let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(reply) = session.next_publish_reply().await {
                if !session.deliver_reply(reply).await {
                    break;
                }
            }
        }))
        .await;
    }
    end
}

fn classify_read_error(error: &tungstenite::Error) -> ReadEnd {
    match error {
        tungstenite::Error::Capacity(_) => ReadEnd::Close {
            code: close_code::TOO_BIG,
            reason: "frame over the size limit; keep bodies under max_message_bytes",
        },
        tungstenite::Error::Utf8(_) => ReadEnd::Close {
            code: close_code::INVALID_PAYLOAD,
            reason: "text frame is not valid UTF-8",
        },
        tungstenite::Error::Protocol(_) => ReadEnd::Close {
            code: 1002,
            reason: "WebSocket protocol violation",
        },
        _ => ReadEnd::ClientClosed,
    }
}

enum WriteStop {
    Slow,
    Stalled,
    Broken,
}

/// Runs one write, ended early if the connection turns slow or the write
/// stalls. Most writes finish at their first poll; only one that has to
/// wait takes the (boxed) guard, so idle tasks carry no timer for it.
async fn guarded<F>(io: F, queues: &ConnectionQueues, stall: Duration) -> Result<(), WriteStop>
where
    F: Future<Output = std::io::Result<()>>,
{
    let mut io = std::pin::pin!(io);
    match std::future::poll_fn(|context| Poll::Ready(io.as_mut().poll(context))).await {
        Poll::Ready(result) => result.map_err(|_| WriteStop::Broken),
        Poll::Pending => Box::pin(wait_for_write(io, queues, stall)).await,
    }
}

async fn wait_for_write<F>(io: Pin<&mut F>, queues: &ConnectionQueues, stall: Duration) -> Result<(), WriteStop>
where
    F: Future<Output = std::io::Result<()>>,
{
    tokio::select! {
        biased;
        result = io => result.map_err(|_| WriteStop::Broken),
        () = queues.slow() => Err(WriteStop::Slow),
        () = tokio::time::sleep(stall) => Err(WriteStop::Stalled),
    }
}

/// What writing one item asks of the loop.
enum Step {
    Continue,
    Finish,
}

/// What the writer does next.
enum Next {
    /// Write a queued item.
    Item(Outbound),
    /// Answer the client's ping.
    Pong(Bytes),
    /// Every sender is gone and nothing is left.
    End,
}

/// The next thing to write: a pong owed, else the next queued item.
async fn next_for_writer(queues: &ConnectionQueues, liveness: &Liveness) -> Next {
    std::future::poll_fn(|context| {
        if let Some(payload) = liveness.take_pong() {
            return Poll::Ready(Next::Pong(payload));
        }
        match queues.poll_next(context) {
            Poll::Ready(Some(item)) => Poll::Ready(Next::Item(item)),
            Poll::Ready(None) => Poll::Ready(Next::End),
            // Owed while the queues were checked: the waker is registered.
            Poll::Pending => liveness
                .take_pong()
                .map_or(Poll::Pending, |payload| Poll::Ready(Next::Pong(payload))),
        }
    })
    .await
}

async fn write_socket(
    node: &Node,
    writer: &mut FrameWriter,
    queues: &mut ConnectionQueues,
    framing: &mut impl Framing,
    liveness: &Liveness,
) {
    let ping_interval = node.settings.ping_interval;
    let stall = ping_interval * 2;
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Some(opening) = framing.opening()
        && send_own(writer, queues, opening, stall).await.is_err()
    {
        return;
    }
    let mut last_write = tokio::time::Instant::now();
    loop {
        let heartbeat = framing.heartbeat();
        let heartbeat_due = heartbeat.as_ref().map(|(every, _)| last_write + *every);
        let own = tokio::select! {
            biased;
            () = queues.slow() => return Box::pin(close_slow_consumer(node, writer, queues, framing)).await,
            next = next_for_writer(queues, liveness) => match next {
                Next::Item(item) => {
                    last_write = tokio::time::Instant::now();
                    let mut barriers = Vec::new();
                    let mut step = feed(writer, item, framing, &mut barriers);
                    let mut written = 1;
                    while matches!(step, Step::Continue) && written < WRITE_BATCH {
                        let Some(next) = queues.try_next() else { break };
                        step = feed(writer, next, framing, &mut barriers);
                        written += 1;
                    }
                    let flushed = guarded(writer.flush(), queues, stall).await;
                    // What came before a barrier is on the wire now (a
                    // resume counts its replay until then).
                    if flushed.is_ok() {
                        for reached in barriers {
                            let _ = reached.send(());
                        }
                    }
                    match flushed {
                        Ok(()) if matches!(step, Step::Continue) => continue,
                        Ok(()) | Err(WriteStop::Stalled | WriteStop::Broken) => return,
                        Err(WriteStop::Slow) => return Box::pin(close_slow_consumer(node, writer, queues, framing)).await,
                    }
                }
                Next::Pong(payload) => Message::Pong(payload),
                Next::End => {
                    writer.push_message(Message::Close(None));
                    let _ = tokio::time::timeout(CLOSE_GRACE, writer.flush()).await;
                    return;
                }
            },
            _ = pings.tick() => {
                if liveness.missed_pongs.fetch_add(1, Ordering::Relaxed) >= 2 {
                    tracing::debug!("closing a connection that answered no ping twice");
                    return;
                }
                Message::Ping(Bytes::new())
            }
            () = async { match heartbeat_due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            } } => {
                last_write = tokio::time::Instant::now();
                let Some((_, beat)) = heartbeat else { continue };
                beat
            }
        };
        match send_own(writer, queues, own, stall).await {
            Ok(()) => {}
            Err(WriteStop::Slow) => return Box::pin(close_slow_consumer(node, writer, queues, framing)).await,
            Err(WriteStop::Stalled | WriteStop::Broken) => return,
        }
    }
}

/// Writes a frame of the writer's own (a ping, a pong, a heart-beat, the
/// opening), after taking the socket back from direct writes.
async fn send_own(
    writer: &mut FrameWriter,
    queues: &ConnectionQueues,
    message: Message,
    stall: Duration,
) -> Result<(), WriteStop> {
    if let Some(rest) = queues.claim_socket() {
        writer.push_framed(rest);
    }
    writer.push_message(message);
    guarded(writer.flush(), queues, stall).await
}

/// Queues one item's frames on the writer; a barrier is kept to be
/// answered once the batch is flushed.
fn feed(
    writer: &mut FrameWriter,
    item: Outbound,
    framing: &mut impl Framing,
    barriers: &mut Vec<tokio::sync::oneshot::Sender<()>>,
) -> Step {
    match item {
        Outbound::Barrier(reached) => {
            barriers.push(reached);
            Step::Continue
        }
        Outbound::Rest(rest) => {
            writer.push_framed(rest);
            Step::Continue
        }
        Outbound::Close { code, reason } => {
            push_close(writer, framing, code, reason);
            Step::Finish
        }
        item => match framing.encode(item) {
            Encoded::Nothing => Step::Continue,
            Encoded::Send(message) => {
                writer.push_message(message);
                Step::Continue
            }
            Encoded::Framed(frame) => {
                writer.push_framed(frame);
                Step::Continue
            }
            Encoded::SendAndClose(message, code, reason) => {
                writer.push_message(message);
                push_close(writer, framing, code, reason);
                Step::Finish
            }
        },
    }
}

fn push_close(writer: &mut FrameWriter, framing: &impl Framing, code: u16, reason: &'static str) {
    if let Some(last_words) = framing.closing(code, reason) {
        writer.push_message(last_words);
    }
    writer.push_message(close_message(code, reason));
}

/// Drops what was queued, puts the 4000 close behind what the socket
/// already holds, and gives the client a moment to read it.
async fn close_slow_consumer(
    node: &Node,
    writer: &mut FrameWriter,
    queues: &mut ConnectionQueues,
    framing: &impl Framing,
) {
    node.metrics.slow_consumer_closes.inc();
    node.metrics.count_close(close_code::SLOW_CONSUMER);
    // A frame a direct write began is finished first.
    if let Some(rest) = queues.claim_socket() {
        writer.push_framed(rest);
    }
    queues.close();
    push_close(
        writer,
        framing,
        close_code::SLOW_CONSUMER,
        "slow consumer: reconnect and resume with since",
    );
    let _ = tokio::time::timeout(CLOSE_GRACE, writer.flush()).await;
}

/// Draining: `reconnect` with a delay jittered over the drain window, so
/// that the node's clients do not all arrive elsewhere at once.
fn drain_notice(delay: Duration) -> Outbound {
    Outbound::event(Event::Reconnect {
        reason: "draining",
        delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
    })
}
