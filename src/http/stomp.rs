//! STOMP over WebSocket, raw and in SockJS framing: `GET /v1/stomp` (and
//! the paths of `RELAY_STOMP_ENDPOINTS`, laid out as Spring's
//! `withSockJS()` lays them out), `.../info` and
//! `.../{server}/{session}/websocket`. The socket is driven by `ws`'s
//! driver; the protocol is `stomp`'s; this module joins them and owns the
//! SockJS framing (`o`, `a[...]`, `h`, `c[...]` out, `[...]` in).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::socket::{UpgradeRefused, WsUpgrade};
use super::ws::{
    Connection, Encoded, Framing, Inbound, Incoming, Protocol, check_origin, read_limits, serve_connection,
};
use super::{ApiError, AuthQuery, admit, bad_query, identify};
use crate::node::Node;
use crate::protocol::close_code;
use crate::session::{ClientSession, ConnectionHandle, Outbound, SessionVerdict};
use crate::stomp::{Outgoing, OutgoingFrame, Shared, StompContext, StompSession};
use tungstenite::Message;

/// The subprotocols a STOMP WebSocket may select, best first.
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];
/// How often a SockJS connection without STOMP heart-beats gets `h`.
const SOCKJS_HEARTBEAT: Duration = Duration::from_secs(25);
/// The longest interval of the server's own heart-beats.
const MAX_HEARTBEAT_OUT: Duration = Duration::from_secs(10);

/// The paths one STOMP endpoint serves: `base` (a raw WebSocket), and the
/// SockJS layout under `sockjs` (`{sockjs}/info`,
/// `{sockjs}/{server}/{session}/websocket`, and the raw `{sockjs}/websocket`).
pub(crate) fn add_routes(
    router: axum::Router<Arc<Node>>,
    base: &str,
    sockjs: &str,
    info_cors: &tower_http::cors::CorsLayer,
) -> axum::Router<Arc<Node>> {
    use axum::routing::get;
    let mut router = router
        .route(base, get(upgrade::<false>))
        // Only `info` is fetched by a page (with credentials); the
        // upgrades are not subject to CORS and check the Origin themselves.
        .route(&format!("{sockjs}/info"), get(info).layer(info_cors.clone()))
        .route(
            &format!("{sockjs}/{{server}}/{{session}}/websocket"),
            get(upgrade::<true>),
        );
    if sockjs != base {
        router = router.route(sockjs, get(upgrade::<false>));
    }
    router.route(&format!("{sockjs}/websocket"), get(upgrade::<false>))
}

/// The upgrade of a raw (`SOCKJS = false`) or SockJS STOMP WebSocket.
async fn upgrade<const SOCKJS: bool>(
    node: State<Arc<Node>>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    query: Result<Query<AuthQuery>, QueryRejection>,
    upgrade: Result<WsUpgrade, UpgradeRefused>,
) -> Response {
    open(node, connect_info, &headers, query, upgrade, SOCKJS)
}

/// SockJS's `info`: WebSocket only, no cookies, any origin (the upgrade
/// checks `RELAY_ALLOWED_ORIGINS`).
async fn info() -> Response {
    let body = serde_json::json!({
        "websocket": true,
        "cookie_needed": false,
        "origins": ["*:*"],
        "entropy": fastrand::u32(..),
    });
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, no-transform, must-revalidate, max-age=0"),
    );
    response
}

fn open(
    State(node): State<Arc<Node>>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: &HeaderMap,
    query: Result<Query<AuthQuery>, QueryRejection>,
    upgrade: Result<WsUpgrade, UpgradeRefused>,
    sockjs: bool,
) -> Response {
    if node.is_draining() {
        return ApiError::draining().into_response();
    }
    if let Err(error) = check_origin(&node, headers) {
        return error.into_response();
    }
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return bad_query(&rejection).into_response(),
    };
    // The CONNECT frame carries the credentials; an access_token on the
    // URL is checked now, as on every other endpoint.
    let upgrade_identity = if query.access_token.is_some() {
        match identify(&node, headers, &query) {
            Ok(identity) => Some(identity),
            Err(error) => return error.into_response(),
        }
    } else {
        None
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(UpgradeRefused(reason)) => {
            return ApiError::bad_request(format!(
                "{reason}; connect with a STOMP client over a WebSocket (or SockJS)"
            ))
            .into_response();
        }
    };
    let protocol = if sockjs {
        None
    } else {
        upgrade.select_protocol(&SUBPROTOCOLS)
    };
    // A place from the first byte, by the address (or the upgrade's
    // token); CONNECT moves it to the subject it proves.
    let address = connect_info.map(|info| info.0.0.ip());
    let client = match &upgrade_identity {
        Some(identity) => identity.client_key(address),
        None => crate::auth::Identity::anonymous().client_key(address),
    };
    let slot = match admit(&node, &client) {
        Ok(slot) => slot,
        Err(error) => return error.into_response(),
    };
    let tracker = node.connections.clone();
    let parts = Box::new((node.clone(), upgrade_identity, slot));
    upgrade.on_upgrade(protocol, read_limits(&node.settings), move |socket| {
        let (node, upgrade_identity, slot) = *parts;
        let (connection, replies, queues) =
            ConnectionHandle::with_limits(node.settings.outbound_queue, node.settings.outbound_queue_bytes);
        let shared = Arc::new(Shared::default());
        let context = StompContext {
            session: node.session.clone(),
            app_routes: node.stomp_app_routes.clone(),
            max_frame_bytes: node.settings.max_frame_bytes,
            heartbeat_out: node.settings.ping_interval.min(MAX_HEARTBEAT_OUT),
        };
        let stomp = StompSession::new(
            context,
            shared.clone(),
            connection,
            replies.clone(),
            upgrade_identity,
            slot,
            address,
        );
        let protocol = Protocol {
            inbound: StompInbound { stomp, sockjs },
            framing: StompFraming {
                outgoing: Outgoing::new(shared.clone(), node.settings.node_id.clone()),
                shared,
                sockjs,
            },
            transport: if sockjs { "sockjs" } else { "stomp" },
            first: None,
            direct: false,
        };
        tracker.track_future(serve_connection(Connection::open(
            node, protocol, None, socket, replies, queues,
        )))
    })
}

/// The reading side: each message's bytes (SockJS: each string of its
/// array) go to the STOMP session.
struct StompInbound {
    stomp: StompSession,
    sockjs: bool,
}

impl Inbound for StompInbound {
    fn session(&mut self) -> Option<&mut ClientSession> {
        self.stomp.session()
    }

    async fn receive(&mut self, message: Incoming) -> SessionVerdict {
        match (message, self.sockjs) {
            (Incoming::Text(text), false) => Box::pin(self.stomp.receive(text.as_bytes())).await,
            (Incoming::Binary(data), false) => Box::pin(self.stomp.receive(&data)).await,
            (Incoming::Text(text), true) => {
                // sockjs-client sends a JSON array of strings; an empty
                // message is nothing.
                if text.trim().is_empty() {
                    return SessionVerdict::Continue;
                }
                let Ok(pieces) = serde_json::from_str::<Vec<String>>(&text) else {
                    return SessionVerdict::Close {
                        code: 1002,
                        reason: "a SockJS message is a JSON array of strings",
                    };
                };
                for piece in pieces {
                    let verdict = Box::pin(self.stomp.receive(piece.as_bytes())).await;
                    if let SessionVerdict::Close { .. } = verdict {
                        return verdict;
                    }
                }
                SessionVerdict::Continue
            }
            (Incoming::Binary(_), true) => SessionVerdict::Close {
                code: close_code::UNSUPPORTED_DATA,
                reason: "SockJS carries text only",
            },
        }
    }

    fn silence_limit(&self) -> Option<Duration> {
        self.stomp.silence_limit()
    }

    fn awaits_login(&self) -> bool {
        self.stomp.awaits_connect()
    }

    async fn login_timed_out(&mut self, allowed: Duration) -> SessionVerdict {
        Box::pin(self.stomp.connect_timed_out(allowed)).await
    }
}

/// The writing side: STOMP frames, raw or in SockJS framing.
struct StompFraming {
    outgoing: Outgoing,
    shared: Arc<Shared>,
    sockjs: bool,
}

impl StompFraming {
    fn wrap(&self, text: String) -> Message {
        if self.sockjs {
            let mut framed = String::with_capacity(text.len() + 16);
            framed.push_str("a[");
            framed.push_str(&serde_json::to_string(&text).unwrap_or_default());
            framed.push(']');
            Message::Text(framed.into())
        } else {
            Message::Text(text.into())
        }
    }
}

impl Framing for StompFraming {
    fn opening(&mut self) -> Option<Message> {
        self.sockjs.then(|| Message::Text("o".into()))
    }

    fn encode(&mut self, item: Outbound) -> Encoded {
        let frame: Option<OutgoingFrame> = match &item {
            Outbound::Message(message) => self.outgoing.message(message),
            Outbound::Room(event) => self.outgoing.room_event(event),
            Outbound::Event(event) => self.outgoing.event(event),
            Outbound::Barrier(_) | Outbound::Rest(_) | Outbound::Close { .. } => None,
        };
        match frame {
            None => Encoded::Nothing,
            Some(OutgoingFrame { text, close: None }) => Encoded::Send(self.wrap(text)),
            Some(OutgoingFrame {
                text,
                close: Some((code, reason)),
            }) => Encoded::SendAndClose(self.wrap(text), code, reason),
        }
    }

    fn heartbeat(&self) -> Option<(Duration, Message)> {
        match (self.shared.heartbeat_out(), self.sockjs) {
            (Some(every), _) => Some((every, self.wrap("\n".to_owned()))),
            (None, true) => Some((SOCKJS_HEARTBEAT, Message::Text("h".into()))),
            (None, false) => None,
        }
    }

    fn closing(&self, code: u16, reason: &str) -> Option<Message> {
        self.sockjs.then(|| {
            let reason = serde_json::to_string(reason).unwrap_or_default();
            Message::Text(format!("c[{code},{reason}]").into())
        })
    }
}
