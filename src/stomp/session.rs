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
    ErrorCode, MAX_CMID_BYTES, MAX_SIGNAL_BYTES, MessageId, ReplayRequest, RequestTag, RoomName, close_code,
    compact_json,
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
/// Most SENDs one transaction may hold.
const MAX_TRANSACTION_SENDS: usize = 1000;

/// Takes a connection place for an authenticated client, or says why not.
pub type Admit = Box<dyn Fn(&Identity) -> Result<ConnectionSlot, (ErrorCode, String)> + Send>;

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
        admit: Admit,
    },
    Connected(Box<Connected>),
    /// Refused or disconnected: nothing more is read.
    Done,
}

struct Connected {
    session: ClientSession,
    /// Held while connected.
    _slot: ConnectionSlot,
    transactions: HashMap<String, Vec<Frame>>,
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
        admit: Admit,
    ) -> Self {
        let decoder = Decoder::new(context.max_frame_bytes);
        Self {
            context,
            shared,
            replies,
            decoder,
            phase: Phase::AwaitingConnect {
                connection,
                upgrade_identity,
                admit,
            },
            silence_limit: None,
        }
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
            admit,
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
        let slot = admit(&identity).map_err(|(code, message)| Refusal { code, message })?;
        self.decoder.set_version(version);
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
        let session = ClientSession::new(self.context.session.clone(), identity, connection, self.replies.clone());
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
            _slot: slot,
            transactions: HashMap::new(),
        }));
        Ok(SessionVerdict::Continue)
    }
}

fn parse_heartbeat(header: Option<&str>) -> Result<(u64, u64), Refusal> {
    let Some(header) = header else { return Ok((0, 0)) };
    let parsed = header
        .split_once(',')
        .and_then(|(out, inn)| Some((out.trim().parse().ok()?, inn.trim().parse().ok()?)));
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

fn gone(delivered: bool) -> SessionVerdict {
    if delivered {
        SessionVerdict::Continue
    } else {
        SessionVerdict::Close {
            code: close_code::NORMAL,
            reason: "connection closed",
        }
    }
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
            if let Some(transaction) = frame.header("transaction") {
                let Some(held) = connected.transactions.get_mut(transaction) else {
                    return Err(Refusal::protocol(format!(
                        "SEND in transaction {transaction:?}, which is not open; BEGIN it first"
                    )));
                };
                if held.len() >= MAX_TRANSACTION_SENDS {
                    return Err(Refusal {
                        code: ErrorCode::TooLarge,
                        message: format!(
                            "transaction {transaction:?} holds {MAX_TRANSACTION_SENDS} SENDs, the most one may; COMMIT it"
                        ),
                    });
                }
                // Checked now, so that COMMIT cannot fail half-way.
                prepare_send(context, &frame)?;
                held.push(frame);
                if let Some(receipt) = receipt {
                    connected.session.receipt_after_publishes(receipt);
                }
                return Ok(SessionVerdict::Continue);
            }
            send(context, connected, &frame).await
        }
        Command::Begin => {
            let transaction = required(&frame, "transaction")?;
            if connected.transactions.contains_key(transaction) {
                return Err(Refusal::protocol(format!(
                    "transaction {transaction:?} is open already; COMMIT or ABORT it first"
                )));
            }
            if connected.transactions.len() >= MAX_TRANSACTIONS {
                return Err(Refusal::protocol(format!(
                    "{MAX_TRANSACTIONS} transactions are open, the most one connection may hold; COMMIT or ABORT one"
                )));
            }
            connected.transactions.insert(transaction.to_owned(), Vec::new());
            Ok(receipt_only(connected, receipt))
        }
        Command::Commit | Command::Abort => {
            let transaction = required(&frame, "transaction")?;
            let Some(held) = connected.transactions.remove(transaction) else {
                return Err(Refusal::protocol(format!(
                    "{command} of transaction {transaction:?}, which is not open; BEGIN it first"
                )));
            };
            if command == Command::Commit {
                for send_frame in &held {
                    if let Ok(SessionVerdict::Close { code, reason }) = send(context, connected, send_frame).await {
                        return Ok(SessionVerdict::Close { code, reason });
                    }
                }
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
            connected.transactions.clear();
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
    if !connected.session.identity().may_subscribe(&room) {
        return Err(Refusal {
            code: ErrorCode::Forbidden,
            message: format!("your token does not allow reading {room}"),
        });
    }
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
    if let Some(cmid) = &cmid
        && (cmid.is_empty() || cmid.len() > MAX_CMID_BYTES)
    {
        return Err(Refusal::protocol(format!(
            "cmid is {} bytes; it must be 1 to {MAX_CMID_BYTES}",
            cmid.len()
        )));
    }
    let body = stored_body(text);
    let limit = if signal {
        MAX_SIGNAL_BYTES
    } else {
        context.session.limits.decode.max_message_bytes
    };
    if body.len() > limit {
        return Err(Refusal {
            code: ErrorCode::TooLarge,
            message: format!(
                "the body is {} bytes stored; the limit is {limit}{}",
                body.len(),
                if signal {
                    " for a signal"
                } else {
                    " (max_message_bytes)"
                }
            ),
        });
    }
    Ok(PreparedSend {
        room,
        body,
        cmid,
        signal,
    })
}

/// What a STOMP body is stored as: itself when it is compact JSON other
/// than a string (so it reads back byte for byte, and JSON clients see
/// that value), else a JSON string of the text (which STOMP subscribers
/// get back as the same text).
fn stored_body(text: &str) -> String {
    let is_json = !text.starts_with('"') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    if is_json && compact_json(text).len() == text.len() {
        return text.to_owned();
    }
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

async fn send(context: &StompContext, connected: &mut Connected, frame: &Frame) -> Handled {
    let prepared = prepare_send(context, frame)?;
    // Refused here, so that nothing read after it is handled.
    if !connected.session.identity().may_publish(&prepared.room) {
        return Err(Refusal {
            code: ErrorCode::Forbidden,
            message: format!("your token does not allow publishing to {}", prepared.room),
        });
    }
    let receipt = receipt_of(frame);
    let session = &mut connected.session;
    if prepared.signal {
        let delivered = session.signal(receipt.as_ref(), prepared.room, &prepared.body).await;
        if let Some(receipt) = receipt {
            session.receipt_after_publishes(receipt);
        }
        return Ok(gone(delivered));
    }
    let delivered = session
        .publish(receipt.as_ref(), prepared.room, prepared.body, prepared.cmid)
        .await;
    Ok(gone(delivered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_is_stored_as_itself_and_anything_else_as_a_string() {
        assert_eq!(stored_body(r#"{"a":1,"b":[true,null]}"#), r#"{"a":1,"b":[true,null]}"#);
        assert_eq!(stored_body("42"), "42");
        assert_eq!(stored_body("hello world"), r#""hello world""#);
        // Not compact: kept as the text, so a STOMP reader gets it back as sent.
        assert_eq!(stored_body(r#"{"a": 1}"#), r#""{\"a\": 1}""#);
        // A JSON string is text too, quotes and all.
        assert_eq!(stored_body(r#""hi""#), r#""\"hi\"""#);
        assert_eq!(stored_body(""), r#""""#);
    }

    #[test]
    fn heart_beats_parse_or_say_what_to_send() {
        assert_eq!(parse_heartbeat(None).ok(), Some((0, 0)));
        assert_eq!(parse_heartbeat(Some("10000,10000")).ok(), Some((10_000, 10_000)));
        assert!(
            parse_heartbeat(Some("fast"))
                .err()
                .unwrap()
                .message
                .contains("10000,10000")
        );
    }
}
