//! One client's protocol session over a message-oriented transport: decodes
//! frames, enforces rooms, limits and the invalid-frame budget, and queues
//! replies. The socket itself is driven by `http::ws`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use super::context::SessionContext;
use super::event::{ErrorEvent, Event};
use super::hub::Subscription;
use super::outbound::{ConnectionHandle, Outbound, ReplySender};
use super::rate_limit::{InvalidFrameBudget, PublishRateLimiter};
use super::resume::{ResumeError, ResumeTarget, subscribe_and_resume};
use crate::auth::Identity;
use crate::protocol::{
    ClientFrame, ClientRequest, ErrorCode, PublishStored, ReplayRequest, RequestTag, RoomName, close_code,
    decode_client_frame,
};

/// What the transport should do after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionVerdict {
    /// Keep reading.
    Continue,
    /// Close with this code and reason after the queued frames.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Reason for humans.
        reason: &'static str,
    },
}

/// Publishes of one connection that may await the broker at once. They are
/// issued to the broker in the order received and acknowledged in that
/// order; past this many the transport stops reading the client.
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 64;

/// What a publish or signal in flight answers: an event, or nothing (a
/// signal that went out).
type PendingReply = Pin<Box<dyn Future<Output = Option<Event>> + Send>>;

/// See the module docs.
pub struct ClientSession {
    context: Arc<SessionContext>,
    identity: Identity,
    connection: ConnectionHandle,
    replies: ReplySender,
    subscriptions: HashMap<RoomName, Subscription>,
    publish_limiter: PublishRateLimiter,
    invalid_frames: InvalidFrameBudget,
    /// Publishes awaiting the broker, oldest first. They were submitted to
    /// the broker in frame order (which fixes the commit order); this only
    /// orders the acks. Made at the first publish: its queue allocates, and
    /// most connections only listen.
    publishes_in_flight: Option<FuturesOrdered<PendingReply>>,
    /// Bumped when a refresh replaces the identity (and so its expiry).
    identity_version: u64,
}

struct Refusal<'a> {
    req: Option<&'a RequestTag>,
    code: ErrorCode,
    message: &'a str,
    room: Option<&'a RoomName>,
    retry_after_ms: Option<u64>,
}

impl ClientSession {
    /// A session for an authenticated connection.
    #[must_use]
    pub fn new(
        context: Arc<SessionContext>,
        identity: Identity,
        connection: ConnectionHandle,
        replies: ReplySender,
    ) -> Self {
        let publish_limiter = PublishRateLimiter::new(context.limits.announced.publish_rate);
        let invalid_frames = InvalidFrameBudget::new(context.limits.invalid_frame_limit);
        Self {
            context,
            identity,
            connection,
            replies,
            subscriptions: HashMap::new(),
            publish_limiter,
            invalid_frames,
            publishes_in_flight: None,
            identity_version: 0,
        }
    }

    /// Who the client is now.
    #[must_use]
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Changes whenever a refresh replaces the identity.
    #[must_use]
    pub fn identity_version(&self) -> u64 {
        self.identity_version
    }

    /// The token expired: says so and asks for close 4001.
    pub async fn token_expired(&mut self) -> SessionVerdict {
        let message = "your token has expired; connect again with a new token, or send refresh before it expires";
        self.refuse(Refusal {
            req: None,
            code: ErrorCode::Unauthorized,
            message,
            room: None,
            retry_after_ms: None,
        })
        .await;
        SessionVerdict::Close {
            code: close_code::TOKEN_EXPIRED,
            reason: "token expired",
        }
    }

    /// How many publishes await the broker.
    #[must_use]
    pub fn publishes_in_flight(&self) -> usize {
        self.publishes_in_flight.as_ref().map_or(0, FuturesOrdered::len)
    }

    /// The reply to the oldest publish (or signal) once the broker answered
    /// it; `None` when none is in flight.
    pub async fn next_publish_reply(&mut self) -> Option<Option<Event>> {
        match &mut self.publishes_in_flight {
            Some(in_flight) => in_flight.next().await,
            None => None,
        }
    }

    /// Queues a reply produced by [`Self::next_publish_reply`]; `false` once
    /// the connection is gone.
    pub async fn deliver_reply(&mut self, event: Option<Event>) -> bool {
        match event {
            Some(event) => self.reply(event).await,
            None => true,
        }
    }

    /// Answers `req` with [`Event::Receipt`] once every publish submitted
    /// before it is answered, so that a receipt also vouches for them.
    pub fn receipt_after_publishes(&mut self, req: RequestTag) {
        let in_flight = self.publishes_in_flight.get_or_insert_with(FuturesOrdered::new);
        in_flight.push_back(Box::pin(std::future::ready(Some(Event::Receipt { req }))));
    }

    /// The `welcome` event for this session.
    #[must_use]
    pub fn welcome(&self) -> Outbound {
        Outbound::event(Event::Welcome {
            node_id: self.context.node_id.clone(),
            user: self.identity.subject().map(str::to_owned),
            limits: self.context.limits.announced,
        })
    }

    async fn reply(&mut self, event: Event) -> bool {
        self.replies.send(Outbound::event(event)).await.is_ok()
    }

    async fn refuse(&mut self, refusal: Refusal<'_>) -> bool {
        self.context.metrics.count_error(refusal.code);
        self.reply(Event::Error(Box::new(ErrorEvent {
            req: refusal.req.cloned(),
            code: refusal.code,
            message: refusal.message.to_owned(),
            room: refusal.room.cloned(),
            retry_after_ms: refusal.retry_after_ms,
            stored: None,
        })))
        .await
    }

    /// Handles one text frame.
    pub async fn handle_text(&mut self, text: &str) -> SessionVerdict {
        match decode_client_frame(text, self.context.limits.decode) {
            Ok(frame) => self.handle_frame(frame).await,
            Err(rejection) => {
                let delivered = self
                    .refuse(Refusal {
                        req: rejection.req.as_ref(),
                        code: rejection.code,
                        message: &rejection.message,
                        room: rejection.room.as_ref(),
                        retry_after_ms: None,
                    })
                    .await;
                if !self.invalid_frames.spend() {
                    return SessionVerdict::Close {
                        code: close_code::POLICY,
                        reason: "too many invalid frames",
                    };
                }
                if delivered { SessionVerdict::Continue } else { gone() }
            }
        }
    }

    async fn handle_frame(&mut self, frame: ClientFrame) -> SessionVerdict {
        let req = frame.req.as_ref();
        let delivered = match frame.request {
            ClientRequest::Subscribe { room, replay, presence } => {
                return self.subscribe(req, room, replay, presence).await;
            }
            ClientRequest::Unsubscribe { room } => {
                if self.unsubscribe(&room) {
                    self.reply(Event::Unsubscribed {
                        req: req.cloned(),
                        room,
                    })
                    .await
                } else {
                    let message = format!("not subscribed to {room}; nothing to unsubscribe");
                    self.refuse(Refusal {
                        req,
                        code: ErrorCode::NotSubscribed,
                        message: &message,
                        room: Some(&room),
                        retry_after_ms: None,
                    })
                    .await
                }
            }
            ClientRequest::Publish { room, body, cmid } => self.publish(req, room, body, cmid).await,
            ClientRequest::Signal { room, body } => self.signal(req, room, &body).await,
            ClientRequest::Ping => self.reply(Event::Pong { req: req.cloned() }).await,
            ClientRequest::Refresh { token } => return self.refresh(req, &token).await,
        };
        if delivered { SessionVerdict::Continue } else { gone() }
    }

    /// Replaces the identity with a new token's: same subject required;
    /// rooms it no longer allows are left, each with a `forbidden` error.
    async fn refresh(&mut self, req: Option<&RequestTag>, token: &str) -> SessionVerdict {
        if matches!(*self.context.authenticator, crate::auth::Authenticator::Open) {
            let message = "this node runs without authentication (RELAY_AUTH=none); there is no token to refresh";
            let delivered = self
                .refuse(Refusal {
                    req,
                    code: ErrorCode::BadRequest,
                    message,
                    room: None,
                    retry_after_ms: None,
                })
                .await;
            return if delivered { SessionVerdict::Continue } else { gone() };
        }
        let refused = match self.context.authenticator.refresh(token) {
            Err(error) => Some(error.to_string()),
            Ok(identity) if identity.subject() != self.identity.subject() => {
                Some("the new token is for another subject; connect again to change user".to_owned())
            }
            Ok(identity) => {
                self.identity = identity;
                self.identity_version += 1;
                None
            }
        };
        if let Some(message) = refused {
            self.refuse(Refusal {
                req,
                code: ErrorCode::Unauthorized,
                message: &message,
                room: None,
                retry_after_ms: None,
            })
            .await;
            return SessionVerdict::Close {
                code: close_code::TOKEN_EXPIRED,
                reason: "token refused",
            };
        }
        let no_longer_allowed: Vec<RoomName> = self
            .subscriptions
            .keys()
            .filter(|room| !self.identity.may_subscribe(room))
            .cloned()
            .collect();
        for room in no_longer_allowed {
            self.subscriptions.remove(&room);
            let message = format!("your refreshed token no longer allows reading {room}; you were unsubscribed");
            self.refuse(Refusal {
                req: None,
                code: ErrorCode::Forbidden,
                message: &message,
                room: Some(&room),
                retry_after_ms: None,
            })
            .await;
        }
        let exp = self.identity.expires_at().unwrap_or(0);
        if self.reply(Event::Refreshed { req: req.cloned(), exp }).await {
            SessionVerdict::Continue
        } else {
            gone()
        }
    }

    /// Leaves `room`; `false` when not subscribed to it.
    pub fn unsubscribe(&mut self, room: &RoomName) -> bool {
        self.subscriptions.remove(room).is_some()
    }

    /// Completes once every live message queued so far has reached the
    /// socket writer (at once if the connection is closing). After an
    /// unsubscribe, nothing of the old subscription is queued behind it.
    pub async fn live_queue_flushed(&mut self) {
        let (reached, barrier) = tokio::sync::oneshot::channel();
        if self.connection.offer(Outbound::Barrier(reached)) {
            let _ = barrier.await;
        }
    }

    /// Subscribes to `room`, replaying what `replay` asks for: `subscribed`
    /// (tagged `req`), the replay, then live messages; or an `error` event
    /// saying why not.
    pub async fn subscribe(
        &mut self,
        req: Option<&RequestTag>,
        room: RoomName,
        replay: ReplayRequest,
        presence: bool,
    ) -> SessionVerdict {
        let refused = if !self.identity.may_subscribe(&room) {
            Some((
                ErrorCode::Forbidden,
                format!("your token does not allow reading {room}"),
            ))
        } else if self.subscriptions.contains_key(&room) {
            Some((
                ErrorCode::BadRequest,
                format!("already subscribed to {room}; unsubscribe first to subscribe again"),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refused {
            let delivered = self
                .refuse(Refusal {
                    req,
                    code,
                    message: &message,
                    room: Some(&room),
                    retry_after_ms: None,
                })
                .await;
            return if delivered { SessionVerdict::Continue } else { gone() };
        }
        let target = ResumeTarget {
            replies: &self.replies,
            connection: self.connection.clone(),
            req,
            presence: presence.then(|| self.context.hub.presence_entry(self.identity.subject())),
        };
        // Boxed: it is large and rare, and would otherwise size every connection's future.
        match Box::pin(subscribe_and_resume(
            &self.context.hub,
            &room,
            replay,
            self.context.limits.decode.max_replay,
            target,
        ))
        .await
        {
            Ok(resumed) => {
                self.context
                    .metrics
                    .messages_delivered
                    .inc_by(u64::try_from(resumed.replayed).unwrap_or(u64::MAX));
                self.subscriptions.insert(room, resumed.subscription);
                SessionVerdict::Continue
            }
            Err(ResumeError::ConnectionClosed) => gone(),
            Err(ResumeError::Broker(error)) => {
                tracing::warn!(%room, %error, "subscribe failed: broker unavailable");
                let message = format!(
                    "could not subscribe to {room}: the message store is unavailable; subscribe again (with since) shortly"
                );
                let delivered = self
                    .refuse(Refusal {
                        req,
                        code: ErrorCode::Unavailable,
                        message: &message,
                        room: Some(&room),
                        retry_after_ms: Some(1000),
                    })
                    .await;
                if delivered { SessionVerdict::Continue } else { gone() }
            }
        }
    }

    /// Refuses a publish or signal the token or the rate does not allow;
    /// `Some(delivered)` when it was refused.
    async fn refuse_publish(&mut self, req: Option<&RequestTag>, room: &RoomName) -> Option<bool> {
        if !self.identity.may_publish(room) {
            let message = format!("your token does not allow publishing to {room}");
            return Some(
                self.refuse(Refusal {
                    req,
                    code: ErrorCode::Forbidden,
                    message: &message,
                    room: Some(room),
                    retry_after_ms: None,
                })
                .await,
            );
        }
        if let Err(wait) = self.publish_limiter.check() {
            let message = format!(
                "over {} publishes and signals per second; retry after the given delay",
                self.context.limits.announced.publish_rate
            );
            let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            return Some(
                self.refuse(Refusal {
                    req,
                    code: ErrorCode::RateLimited,
                    message: &message,
                    room: Some(room),
                    retry_after_ms: Some(retry_after_ms),
                })
                .await,
            );
        }
        None
    }

    /// A signal: sent to the broker now; only a failure is answered.
    /// `false` once the connection is gone.
    pub async fn signal(&mut self, req: Option<&RequestTag>, room: RoomName, body: &str) -> bool {
        if let Some(delivered) = self.refuse_publish(req, &room).await {
            return delivered;
        }
        let pending = self
            .context
            .publisher
            .signal(room.clone(), self.identity.subject(), body);
        let metrics = self.context.metrics.clone();
        let req = req.cloned();
        let in_flight = self.publishes_in_flight.get_or_insert_with(FuturesOrdered::new);
        in_flight.push_back(Box::pin(async move {
            let error = pending.await.err()?;
            tracing::warn!(%room, %error, "signal failed");
            metrics.count_error(ErrorCode::Unavailable);
            Some(Event::Error(Box::new(ErrorEvent {
                req,
                code: ErrorCode::Unavailable,
                message: "the message broker is unavailable and this signal was not sent; signals are never stored, so send a fresh one if it still matters".to_owned(),
                room: Some(room),
                retry_after_ms: Some(1000),
                stored: None,
            })))
        }));
        true
    }

    /// A publish of a validated, compact JSON `body`: submitted to the
    /// broker now, answered (`ack` or `error`) in submission order.
    /// `false` once the connection is gone.
    pub async fn publish(
        &mut self,
        req: Option<&RequestTag>,
        room: RoomName,
        body: String,
        cmid: Option<String>,
    ) -> bool {
        if let Some(delivered) = self.refuse_publish(req, &room).await {
            return delivered;
        }
        // Submitted now, in frame order; only the wait for the outcome is
        // deferred.
        let pending = self
            .context
            .publisher
            .publish(room.clone(), self.identity.subject(), cmid, &body);
        let metrics = self.context.metrics.clone();
        let req = req.cloned();
        let in_flight = self.publishes_in_flight.get_or_insert_with(FuturesOrdered::new);
        in_flight.push_back(Box::pin(async move {
            Some(match pending.await {
                Ok(outcome) => Event::Ack {
                    req,
                    room,
                    id: outcome.id,
                    prev: outcome.prev,
                    duplicate: outcome.duplicate,
                },
                Err(error) => {
                    let stored = error.publish_stored();
                    tracing::warn!(%room, %error, stored = ?stored, "publish failed");
                    metrics.count_publish_failure(stored);
                    metrics.count_error(ErrorCode::Unavailable);
                    Event::Error(Box::new(ErrorEvent {
                        req,
                        code: ErrorCode::Unavailable,
                        message: unavailable_publish_message(stored).to_owned(),
                        room: Some(room),
                        retry_after_ms: Some(1000),
                        stored: Some(stored),
                    }))
                }
            })
        }));
        true
    }
}

/// What a client is told of a publish answered `unavailable`, for humans.
#[must_use]
pub fn unavailable_publish_message(stored: PublishStored) -> &'static str {
    match stored {
        PublishStored::No => {
            "the message store is unavailable and this publish never reached it: nothing was stored. Retry (with the same cmid) shortly"
        }
        PublishStored::Unknown => {
            "the message store did not answer in time: this publish may yet be stored. Retry with the same cmid to learn its id (a retry without one may store it twice)"
        }
    }
}

/// The reply queue is gone: the connection is closing already.
fn gone() -> SessionVerdict {
    SessionVerdict::Close {
        code: close_code::NORMAL,
        reason: "connection closed",
    }
}
