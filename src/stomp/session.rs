//! One STOMP client: frames in, onto the session core. `CONNECT` (or
//! `STOMP`) authenticates and opens a [`ClientSession`]; `SUBSCRIBE`,
//! `SEND`, `UNSUBSCRIBE` map onto its subscribe, publish and leave, with
//! the resume headers and `cmid` of the JSON protocol; transactions hold
//! SENDs until `COMMIT`; `ACK`/`NACK` are accepted (the cursor is the
//! client's: nothing is redelivered); `DISCONNECT` is answered after every
//! earlier publish. Every refusal is an `ERROR`, then the close.
//!
//! Free of any socket: the transport hands it the bytes of each message
//! (see `http::stomp`), and [`super::outgoing`] writes what the session
//! says.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::destination::{AppRoutes, topic_room};
use super::frame::{Command, Decoded, Decoder, Frame, FrameError, Version};
use super::outgoing::{AckMode, Shared};
use crate::auth::{Credentials, Identity};
use crate::protocol::{
    BodyRefusal, ErrorCode, MAX_SIGNAL_BYTES, MessageId, ReplayRequest, RequestTag, RoomName, body, check_cmid,
    close_code,
};
use crate::session::{
    ClientSession, ConnectionHandle, ConnectionSlot, ErrorEvent, Event, Outbound, ReplySender, SessionContext,
    SessionVerdict,
};

/// The heart-beat interval the server asks of clients (`sy`), in ms: any
/// client interval at least this long is taken as it is.
const HEARTBEAT_IN_MS: u64 = 1000;
/// Most transactions one connection may hold open.
const MAX_TRANSACTIONS: usize = 16;
/// Largest frame before CONNECT: a CONNECT with a long token fits; a
/// client that has not authenticated cannot make the node buffer more.
pub const MAX_PRE_CONNECT_FRAME_BYTES: usize = 16 * 1024;

/// What a STOMP session needs of its node.
pub struct StompContext {
    /// The session core's context.
    pub session: Arc<SessionContext>,
    /// `RELAY_STOMP_APP_ROUTES`.
    pub app_routes: Arc<AppRoutes>,
    /// Largest frame, reassembled.
    pub max_frame_bytes: usize,
    /// How often the server can send heart-beats (`sx`).
    pub heartbeat_out: Duration,
}

enum Phase {
    /// Before CONNECT: the queues wait for the session.
    AwaitingConnect {
        connection: ConnectionHandle,
        /// Identity from the upgrade's `access_token`, if it had one.
        upgrade_identity: Option<Identity>,
    },
    Connected(Box<Connected>),
    /// Refused or disconnected: nothing more is read.
    Done,
}

struct Connected {
    session: ClientSession,
    transactions: Transactions,
}

/// The open transactions of a connection: SENDs checked when they arrived
/// (room, size, grant), held as what will be stored, within the frame
/// limit in all (a connection holds no more of what it sent in its open
/// transactions than of a frame it is sending).
struct Transactions {
    open: HashMap<String, Vec<PreparedSend>>,
    bytes: usize,
    max_bytes: usize,
}

/// See the module docs.
pub struct StompSession {
    context: StompContext,
    shared: Arc<Shared>,
    replies: ReplySender,
    decoder: Decoder,
    phase: Phase,
    /// The client's heart-beat interval, once negotiated.
    silence_limit: Option<Duration>,
    /// The connection's place, taken at the upgrade for its address (or
    /// the upgrade's token) and moved to the token's subject at CONNECT.
    slot: ConnectionSlot,
    /// The client's address, for the key of its budgets.
    address: Option<std::net::IpAddr>,
}

/// An `ERROR` for the client, then the close.
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn protocol(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

type Handled = Result<SessionVerdict, Refusal>;

impl StompSession {
    /// A session for a new connection, whose queues `connection` and
    /// `replies` are; `shared` is what the writer sees.
    #[must_use]
    pub fn new(
        context: StompContext,
        shared: Arc<Shared>,
        connection: ConnectionHandle,
        replies: ReplySender,
        upgrade_identity: Option<Identity>,
        slot: ConnectionSlot,
        address: Option<std::net::IpAddr>,
    ) -> Self {
        let decoder = Decoder::new(MAX_PRE_CONNECT_FRAME_BYTES.min(context.max_frame_bytes));
        Self {
            context,
            shared,
            replies,
            decoder,
            phase: Phase::AwaitingConnect {
                connection,
                upgrade_identity,
            },
            silence_limit: None,
            slot,
            address,
        }
    }

    /// Whether CONNECT is still awaited (the driver gives it
    /// `RELAY_HEADER_TIMEOUT_SECS`).
    #[must_use]
    pub fn awaits_connect(&self) -> bool {
        matches!(self.phase, Phase::AwaitingConnect { .. })
    }

    /// No CONNECT came in time: an ERROR, then the close.
    pub async fn connect_timed_out(&mut self, allowed: Duration) -> SessionVerdict {
        let message = format!(
            "no CONNECT within {} s of opening the connection; send CONNECT (with accept-version:1.2 and your credentials) at once",
            allowed.as_secs()
        );
        self.refuse(Refusal::protocol(message), None).await
    }

    /// The session core, once CONNECT opened it.
    pub fn session(&mut self) -> Option<&mut ClientSession> {
        match &mut self.phase {
            Phase::Connected(connected) => Some(&mut connected.session),
            _ => None,
        }
    }

    /// How long the client may stay silent: twice its negotiated
    /// heart-beat interval.
    #[must_use]
    pub fn silence_limit(&self) -> Option<Duration> {
        self.silence_limit
    }

    /// Handles the bytes of one transport message (any piece of a frame,
    /// or several frames).
    pub async fn receive(&mut self, bytes: &[u8]) -> SessionVerdict {
        if matches!(self.phase, Phase::Done) {
            return SessionVerdict::Continue;
        }
        if let Err(error) = self.decoder.push(bytes) {
            return self.refuse_frame(&error, None).await;
        }
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Decoded::Frame(frame)) => frame,
                Ok(Decoded::Incomplete) => return SessionVerdict::Continue,
                Err(error) => return self.refuse_frame(&error, None).await,
            };
            // Receipts and publishes wait in the session's answers in
            // flight; one message may hold many frames, so the bound is
            // kept here too, frame by frame.
            if let Some(session) = self.session()
                && !session.make_room_for_an_answer().await
            {
                return SessionVerdict::Close {
                    code: close_code::NORMAL,
                    reason: "connection closed",
                };
            }
            let receipt = frame.header("receipt").map(RequestTag::from_text);
            let verdict = match Box::pin(self.handle(frame)).await {
                Ok(verdict) => verdict,
                Err(refusal) => self.refuse(refusal, receipt).await,
            };
            if let SessionVerdict::Close { .. } = verdict {
                return verdict;
            }
        }
    }

    async fn refuse_frame(&mut self, error: &FrameError, receipt: Option<RequestTag>) -> SessionVerdict {
        let code = match error {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        };
        self.refuse(
            Refusal {
                code,
                message: error.to_string(),
            },
            receipt,
        )
        .await
    }

    /// Queues the ERROR (the writer closes after it) and stops reading.
    async fn refuse(&mut self, refusal: Refusal, receipt: Option<RequestTag>) -> SessionVerdict {
        self.context.session.metrics.count_error(refusal.code);
        self.phase = Phase::Done;
        let (code, reason) = super::outgoing::close_for(refusal.code);
        let _ = self
            .replies
            .send(Outbound::event(Event::Error(Box::new(ErrorEvent {
                req: receipt,
                code: refusal.code,
                message: refusal.message,
                room: None,
                retry_after_ms: None,
                stored: None,
            }))))
            .await;
        SessionVerdict::Close { code, reason }
    }

    async fn handle(&mut self, frame: Frame) -> Handled {
        match (&mut self.phase, frame.command) {
            (Phase::AwaitingConnect { .. }, Command::Connect | Command::Stomp) => self.connect(&frame),
            (Phase::AwaitingConnect { .. }, command) => Err(Refusal::protocol(format!(
                "{command} before CONNECT; send CONNECT (with accept-version:1.2 and your credentials) first"
            ))),
            (Phase::Connected(_), Command::Connect | Command::Stomp) => Err(Refusal::protocol(
                "this connection is connected already; send CONNECT once per connection",
            )),
            (Phase::Connected(connected), command) => {
                let connected = &mut **connected;
                handle_connected(&self.context, &self.shared, connected, frame, command).await
            }
            (Phase::Done, _) => Ok(SessionVerdict::Continue),
        }
    }

    fn connect(&mut self, frame: &Frame) -> Handled {
        let Some(version) = Version::negotiate(frame.header("accept-version")) else {
            return Err(Refusal::protocol(format!(
                "this server speaks STOMP 1.2 and 1.1, and the CONNECT offered {}; send accept-version:1.2,1.1",
                frame.header("accept-version").unwrap_or("none (STOMP 1.0)")
            )));
        };
        let (client_out, client_in) = parse_heartbeat(frame.header("heart-beat"))?;
        let Phase::AwaitingConnect {
            connection,
            upgrade_identity,
        } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Err(Refusal::protocol("CONNECT out of turn"));
        };
        let bearer = frame
            .header("Authorization")
            .or_else(|| frame.header("authorization"))
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")));
        let passcode = frame.header("passcode").filter(|passcode| !passcode.is_empty());
        let identity = match (bearer.or(passcode), upgrade_identity) {
            (None, Some(identity)) => identity,
            (token, _) => self
                .context
                .session
                .authenticator
                .authenticate(&Credentials {
                    bearer: token,
                    access_token: None,
                    user: frame.header("login"),
                })
                .map_err(|error| Refusal {
                    code: ErrorCode::Unauthorized,
                    message: format!(
                        "{error} (STOMP: send the JWT as an Authorization:Bearer header or as passcode in CONNECT, or as access_token on the URL)"
                    ),
                })?,
        };
        let client = identity.client_key(self.address);
        self.slot.rekey(&client).map_err(|_| Refusal {
            code: ErrorCode::RateLimited,
            message: "too many open connections for this client (RELAY_MAX_CONNECTIONS_PER_CLIENT); close some first"
                .to_owned(),
        })?;
        self.decoder.set_version(version);
        self.decoder.set_max_frame_bytes(self.context.max_frame_bytes);
        // Server to client: every max(sx, cy); client to server: every
        // max(cx, sy), dropped past twice that.
        let server_ms = u64::try_from(self.context.heartbeat_out.as_millis()).unwrap_or(u64::MAX);
        let heartbeat_out = (client_in > 0).then(|| Duration::from_millis(server_ms.max(client_in)));
        self.silence_limit = (client_out > 0).then(|| Duration::from_millis(client_out.max(HEARTBEAT_IN_MS) * 2));
        let session_id = format!("{:016x}", fastrand::u64(..));
        self.shared.connected(
            version,
            heartbeat_out,
            format!("{server_ms},{HEARTBEAT_IN_MS}"),
            session_id,
        );
        let session = ClientSession::new(
            self.context.session.clone(),
            identity,
            client,
            connection,
            self.replies.clone(),
        );
        // The welcome is CONNECTED on this transport.
        let welcome = session.welcome();
        if self.replies.try_send(welcome).is_err() {
            return Ok(SessionVerdict::Close {
                code: close_code::NORMAL,
                reason: "connection closed",
            });
        }
        self.phase = Phase::Connected(Box::new(Connected {
            session,
            transactions: Transactions::new(self.context.max_frame_bytes),
        }));
        Ok(SessionVerdict::Continue)
    }
}

/// The longest heart-beat interval taken from a client, in ms (an hour):
/// a longer one is cut to it, so no timer is set past what a clock holds.
const MAX_HEARTBEAT_MS: u64 = 3_600_000;

fn parse_heartbeat(header: Option<&str>) -> Result<(u64, u64), Refusal> {
    let Some(header) = header else { return Ok((0, 0)) };
    let parse = |text: &str| text.trim().parse::<u64>().ok().map(|ms| ms.min(MAX_HEARTBEAT_MS));
    let parsed = header
        .split_once(',')
        .and_then(|(out, inn)| Some((parse(out)?, parse(inn)?)));
    parsed.ok_or_else(|| {
        Refusal::protocol(format!(
            "heart-beat {header:?} is not two numbers of milliseconds; send heart-beat:10000,10000 (or 0,0 for none)"
        ))
    })
}

fn receipt_of(frame: &Frame) -> Option<RequestTag> {
    frame.header("receipt").map(RequestTag::from_text)
}

fn required<'a>(frame: &'a Frame, name: &str) -> Result<&'a str, Refusal> {
    frame.header(name).ok_or_else(|| {
        Refusal::protocol(format!(
            "{} needs a {name} header; see docs/protocol.md#stomp",
            frame.command
        ))
    })
}

async fn handle_connected(
    context: &StompContext,
    shared: &Shared,
    connected: &mut Connected,
    frame: Frame,
    command: Command,
) -> Handled {
    let receipt = receipt_of(&frame);
    match command {
        Command::Subscribe => subscribe(context, shared, connected, &frame).await,
        Command::Unsubscribe => {
            let id = required(&frame, "id")?;
            let Some(room) = shared.unsubscribe(id) else {
                return Err(Refusal {
                    code: ErrorCode::NotSubscribed,
                    message: format!("no subscription has id {id:?}; nothing to unsubscribe"),
                });
            };
            connected.session.unsubscribe(&room);
            // Messages of the old subscription still queued are dropped by
            // the writer (the subscription is gone); wait for them to pass,
            // so that a new SUBSCRIBE of the destination cannot get them.
            connected.session.live_queue_flushed().await;
            if let Some(receipt) = receipt {
                connected.session.receipt_after_publishes(receipt);
            }
            Ok(SessionVerdict::Continue)
        }
        Command::Send => {
            // Checked now, in or out of a transaction: where it goes, what
            // is stored, and the grant (a forbidden SEND is refused when it
            // arrives, with its receipt, never dropped at COMMIT).
            let prepared = prepare_send(context, &frame)?;
            if !connected.session.identity().may_publish(&prepared.room) {
                return Err(Refusal {
                    code: ErrorCode::Forbidden,
                    message: format!("your token does not allow publishing to {}", prepared.room),
                });
            }
            match frame.header("transaction") {
                Some(transaction) => {
                    connected.transactions.hold(transaction, prepared)?;
                    Ok(receipt_only(connected, receipt))
                }
                None => send(connected, prepared, receipt),
            }
        }
        Command::Begin => {
            let transaction = required(&frame, "transaction")?;
            connected.transactions.begin(transaction)?;
            Ok(receipt_only(connected, receipt))
        }
        Command::Commit | Command::Abort => {
            let transaction = required(&frame, "transaction")?;
            let held = connected.transactions.end(transaction).ok_or_else(|| {
                Refusal::protocol(format!(
                    "{command} of transaction {transaction:?}, which is not open; BEGIN it first"
                ))
            })?;
            if command == Command::Commit {
                commit(connected, transaction, held)?;
            }
            Ok(receipt_only(connected, receipt))
        }
        // The cursor is the client's: an ACK moves nothing here and a NACK
        // redelivers nothing (resume with since does).
        Command::Ack | Command::Nack => {
            if frame.header("id").is_none() && frame.header("message-id").is_none() {
                return Err(Refusal::protocol(format!(
                    "{command} needs an id header (the ack header of the MESSAGE)"
                )));
            }
            Ok(receipt_only(connected, receipt))
        }
        Command::Disconnect => {
            connected.transactions = Transactions::new(connected.transactions.max_bytes);
            if let Some(receipt) = receipt {
                connected.session.receipt_after_publishes(receipt);
            }
            Ok(SessionVerdict::Close {
                code: close_code::NORMAL,
                reason: "client disconnected",
            })
        }
        Command::Connect | Command::Stomp => Err(Refusal::protocol("CONNECT sent twice")),
        Command::Connected | Command::Message | Command::Receipt | Command::Error => Err(Refusal::protocol(format!(
            "{command} is a server frame; a client sends CONNECT, SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT or DISCONNECT"
        ))),
    }
}

fn receipt_only(connected: &mut Connected, receipt: Option<RequestTag>) -> SessionVerdict {
    if let Some(receipt) = receipt {
        connected.session.receipt_after_publishes(receipt);
    }
    SessionVerdict::Continue
}

async fn subscribe(context: &StompContext, shared: &Shared, connected: &mut Connected, frame: &Frame) -> Handled {
    let destination = required(frame, "destination")?;
    let id = required(frame, "id")?;
    let room = topic_room(destination).map_err(|message| Refusal {
        code: ErrorCode::InvalidRoom,
        message,
    })?;
    let ack = AckMode::parse(frame.header("ack")).map_err(Refusal::protocol)?;
    let max_replay = context.session.limits.decode.max_replay;
    let replay = match (frame.header("since"), frame.header("last")) {
        (Some(_), Some(_)) => {
            return Err(Refusal::protocol("send since or last on a SUBSCRIBE, not both"));
        }
        (Some(since), None) => ReplayRequest::Since(
            since
                .parse::<MessageId>()
                .map_err(|error| Refusal::protocol(format!("since: {error}")))?,
        ),
        (None, Some(last)) => ReplayRequest::Last(
            last.parse::<usize>()
                .ok()
                .filter(|last| *last <= max_replay)
                .ok_or_else(|| {
                    Refusal::protocol(format!("last must be an integer from 0 to {max_replay} (max_replay)"))
                })?,
        ),
        (None, None) => ReplayRequest::None,
    };
    let (id_taken, room_taken) = shared.find(id, &room);
    if id_taken {
        return Err(Refusal::protocol(format!(
            "subscription id {id:?} is in use on this connection; give each SUBSCRIBE its own id"
        )));
    }
    if let Some(other) = room_taken {
        return Err(Refusal::protocol(format!(
            "{destination} is subscribed already on this connection (id {other:?}); one subscription per destination"
        )));
    }
    connected
        .session
        .may_subscribe(&room, false)
        .map_err(|(code, message)| Refusal { code, message })?;
    shared.subscribe(room.clone(), id.to_owned(), destination.to_owned(), ack);
    let receipt = receipt_of(frame);
    let verdict = connected.session.subscribe(receipt.as_ref(), room, replay, false).await;
    Ok(verdict)
}

/// A SEND, checked: where it goes and what is stored.
struct PreparedSend {
    room: RoomName,
    body: String,
    cmid: Option<String>,
    signal: bool,
}

fn prepare_send(context: &StompContext, frame: &Frame) -> Result<PreparedSend, Refusal> {
    let destination = required(frame, "destination")?;
    let Ok(text) = std::str::from_utf8(&frame.body) else {
        return Err(Refusal::protocol(
            "the SEND body is not UTF-8 text; the relay stores JSON and text bodies only",
        ));
    };
    let room = match context.app_routes.room_for(destination, text) {
        Some(room) => room,
        None => topic_room(destination),
    }
    .map_err(|message| Refusal {
        code: ErrorCode::InvalidRoom,
        message,
    })?;
    let signal = match frame.header("signal") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(Refusal::protocol(format!("signal {other:?} must be true or false"))),
    };
    let cmid = frame.header("cmid").map(str::to_owned);
    if let Some(cmid) = &cmid {
        check_cmid(cmid).map_err(|reason| Refusal::protocol(format!("cmid {reason}")))?;
    }
    let limit = if signal {
        MAX_SIGNAL_BYTES
    } else {
        context.session.limits.decode.max_message_bytes
    };
    let body = stored_body(text, limit).map_err(|refusal| Refusal {
        code: ErrorCode::TooLarge,
        message: match refusal {
            BodyRefusal::TooLarge { .. } if signal => format!("{refusal} stored, for a signal"),
            BodyRefusal::TooLarge { .. } => format!("{refusal} stored (max_message_bytes)"),
            BodyRefusal::TooDeep { .. } => refusal.to_string(),
        },
    })?;
    Ok(PreparedSend {
        room,
        body,
        cmid,
        signal,
    })
}

/// What a STOMP body is stored as: its text as sent when it is JSON other
/// than a string (so JSON clients get that value, whitespace and all, and
/// STOMP subscribers the same bytes back), else a JSON string of the text
/// (which STOMP subscribers get back as the same text). The size limit
/// applies to what is stored; JSON nested past the body depth is refused,
/// however deep (even past what a parser reads).
fn stored_body(text: &str, limit: usize) -> Result<String, BodyRefusal> {
    let looks_nested = text.trim_start().starts_with(['[', '{']);
    if looks_nested {
        body::check_depth(text)?;
    }
    let is_json = !text.trim_start().starts_with('"') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    let stored = if is_json {
        text.to_owned()
    } else {
        serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
    };
    if stored.len() > limit {
        return Err(BodyRefusal::TooLarge {
            bytes: stored.len(),
            limit,
        });
    }
    Ok(stored)
}

impl Transactions {
    fn new(max_bytes: usize) -> Self {
        Self {
            open: HashMap::new(),
            bytes: 0,
            max_bytes,
        }
    }

    fn begin(&mut self, transaction: &str) -> Result<(), Refusal> {
        if self.open.contains_key(transaction) {
            return Err(Refusal::protocol(format!(
                "transaction {transaction:?} is open already; COMMIT or ABORT it first"
            )));
        }
        if self.open.len() >= MAX_TRANSACTIONS {
            return Err(Refusal::protocol(format!(
                "{MAX_TRANSACTIONS} transactions are open, the most one connection may hold; COMMIT or ABORT one"
            )));
        }
        self.open.insert(transaction.to_owned(), Vec::new());
        Ok(())
    }

    /// Holds a checked SEND until its transaction ends, within the byte
    /// budget of the connection's transactions.
    fn hold(&mut self, transaction: &str, send: PreparedSend) -> Result<(), Refusal> {
        let Some(held) = self.open.get_mut(transaction) else {
            return Err(Refusal::protocol(format!(
                "SEND in transaction {transaction:?}, which is not open; BEGIN it first"
            )));
        };
        let bytes = send.held_bytes();
        if self.bytes.saturating_add(bytes) > self.max_bytes {
            return Err(Refusal {
                code: ErrorCode::TooLarge,
                message: format!(
                    "the open transactions of this connection would hold over {} bytes (RELAY_MAX_FRAME_BYTES); COMMIT before sending more",
                    self.max_bytes
                ),
            });
        }
        self.bytes += bytes;
        held.push(send);
        Ok(())
    }

    /// Ends a transaction: its SENDs, in order.
    fn end(&mut self, transaction: &str) -> Option<Vec<PreparedSend>> {
        let held = self.open.remove(transaction)?;
        self.bytes = self
            .bytes
            .saturating_sub(held.iter().map(PreparedSend::held_bytes).sum());
        Some(held)
    }
}

impl PreparedSend {
    /// What holding it costs, as the transactions' budget counts.
    fn held_bytes(&self) -> usize {
        self.body.len() + self.room.as_str().len() + self.cmid.as_ref().map_or(0, String::len) + 64
    }
}

/// Stores a transaction's SENDs, all of them: the rates are taken for all
/// at once before the first is submitted, so a COMMIT is refused whole or
/// submitted whole (each in order, acknowledged by its own receipt).
fn commit(connected: &mut Connected, transaction: &str, held: Vec<PreparedSend>) -> Result<(), Refusal> {
    let bytes = held.iter().map(|send| send.body.len()).sum();
    if let Err(refusal) = connected.session.within_rates(held.len(), bytes) {
        return Err(Refusal {
            code: refusal.code,
            message: format!(
                "COMMIT of transaction {transaction:?} refused: nothing of its {} SENDs was stored. {}",
                held.len(),
                refusal.message
            ),
        });
    }
    for send in held {
        if send.signal {
            connected.session.submit_signal(None, send.room, &send.body);
        } else {
            connected.session.submit_publish(None, send.room, &send.body, send.cmid);
        }
    }
    Ok(())
}

/// A SEND outside a transaction, checked by [`prepare_send`] and its
/// grant: refused here past a rate (so that nothing read after it is
/// handled), else submitted and answered by its receipt.
fn send(connected: &mut Connected, prepared: PreparedSend, receipt: Option<RequestTag>) -> Handled {
    let session = &mut connected.session;
    session
        .within_rates(1, prepared.body.len())
        .map_err(|refusal| Refusal {
            code: refusal.code,
            message: refusal.message,
        })?;
    if prepared.signal {
        session.submit_signal(receipt.as_ref(), prepared.room, &prepared.body);
        if let Some(receipt) = receipt {
            session.receipt_after_publishes(receipt);
        }
    } else {
        session.submit_publish(receipt.as_ref(), prepared.room, &prepared.body, prepared.cmid);
    }
    Ok(SessionVerdict::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_stored_as_sent_and_anything_else_as_a_string() {
        let stored = |text: &str| stored_body(text, 1000).unwrap();
        assert_eq!(stored(r#"{"a":1,"b":[true,null]}"#), r#"{"a":1,"b":[true,null]}"#);
        assert_eq!(stored("42"), "42");
        assert_eq!(stored("hello world"), r#""hello world""#);
        // Python's json.dumps and pretty printers: the same JSON value,
        // kept byte for byte.
        assert_eq!(stored(r#"{"a": 1, "b": [1, 2]}"#), r#"{"a": 1, "b": [1, 2]}"#);
        assert_eq!(stored("{\n  \"a\" : 1\n}\n"), "{\n  \"a\" : 1\n}\n");
        // A JSON string is text too, quotes and all.
        assert_eq!(stored(r#""hi""#), r#""\"hi\"""#);
        assert_eq!(stored(""), r#""""#);
        // The limit is on what is stored.
        assert_eq!(
            stored_body("x".repeat(9).as_str(), 10),
            Err(BodyRefusal::TooLarge { bytes: 11, limit: 10 })
        );
        // Nested past 32: refused however deep, parsable or not.
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(stored_body(&nested(32), 1_000_000).is_ok());
        assert!(matches!(
            stored_body(&nested(33), 1_000_000),
            Err(BodyRefusal::TooDeep { .. })
        ));
        assert!(matches!(
            stored_body(&nested(32_000), 1_000_000),
            Err(BodyRefusal::TooDeep { .. })
        ));
    }

    #[test]
    fn heart_beats_parse_or_say_what_to_send() {
        assert_eq!(parse_heartbeat(None).ok(), Some((0, 0)));
        assert_eq!(parse_heartbeat(Some("10000,10000")).ok(), Some((10_000, 10_000)));
        // A client's interval past an hour is cut to one (no timer overflows).
        assert_eq!(
            parse_heartbeat(Some("18446744073709551615,18446744073709551615")).ok(),
            Some((MAX_HEARTBEAT_MS, MAX_HEARTBEAT_MS))
        );
        assert!(
            parse_heartbeat(Some("fast"))
                .err()
                .unwrap()
                .message
                .contains("10000,10000")
        );
    }
}
