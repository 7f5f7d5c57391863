//! One client's protocol session over a message-oriented transport: decodes
//! frames, enforces rooms, limits and the invalid-frame budget, and queues
//! replies. The socket itself is driven by `http::ws`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use super::context::SessionContext;
use super::event::{ErrorEvent, Event};
use super::history::HistoryBudget;
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

/// Subscriptions with presence one connection may hold: each costs the
/// node a renewal of its entry every quarter of the presence TTL.
pub const MAX_PRESENCE_SUBSCRIPTIONS: usize = 32;

/// Refreshes a connection may send per minute (each checks a signature).
pub const REFRESHES_PER_MINUTE: u32 = 6;

/// `rate_limited` refusals a connection may earn per minute, per publish
/// of `RELAY_PUBLISH_RATE`, before it is closed with 1008.
pub const RATE_LIMITED_REFUSALS_PER_RATE: u32 = 10;

/// What a publish or signal in flight answers: an event, or nothing (a
/// signal that went out).
type PendingReply = Pin<Box<dyn Future<Output = Option<Event>> + Send>>;

/// See the module docs.
pub struct ClientSession {
    context: Arc<SessionContext>,
    identity: Identity,
    connection: ConnectionHandle,
    replies: ReplySender,
    /// Each subscription, and whether it watches presence.
    subscriptions: HashMap<RoomName, (Subscription, bool)>,
    /// The key of the client's shared budgets (see [`Identity::client_key`]).
    client: Arc<str>,
    publish_limiter: PublishRateLimiter,
    invalid_frames: InvalidFrameBudget,
    /// `rate_limited` refusals have their own budget: a client that keeps
    /// publishing past its rate is closed, one that backs off is not.
    rate_limited_refusals: InvalidFrameBudget,
    /// Each refresh checks a signature: a few a minute at most.
    refreshes: InvalidFrameBudget,
    /// Publishes awaiting the broker, oldest first. They were submitted to
    /// the broker in frame order (which fixes the commit order); this only
    /// orders the acks. Made at the first publish: its queue allocates, and
    /// most connections only listen.
    publishes_in_flight: Option<FuturesOrdered<PendingReply>>,
    /// Bumped when a refresh replaces the identity (and so its expiry).
    identity_version: u64,
    /// This connection among the node's, for the order of its publishes.
    connection_id: u64,
}

/// Ids of the node's client connections.
static NEXT_CONNECTION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

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
        client: Arc<str>,
        connection: ConnectionHandle,
        replies: ReplySender,
    ) -> Self {
        let publish_rate = context.limits.announced.publish_rate;
        let publish_limiter = PublishRateLimiter::new(publish_rate);
        let invalid_frames = InvalidFrameBudget::new(context.limits.invalid_frame_limit);
        let rate_limited_refusals =
            InvalidFrameBudget::new(publish_rate.saturating_mul(RATE_LIMITED_REFUSALS_PER_RATE));
        Self {
            context,
            identity,
            connection,
            replies,
            subscriptions: HashMap::new(),
            client,
            publish_limiter,
            invalid_frames,
            rate_limited_refusals,
            refreshes: InvalidFrameBudget::new(REFRESHES_PER_MINUTE),
            publishes_in_flight: None,
            identity_version: 0,
            connection_id: NEXT_CONNECTION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The node drains and told this client to reconnect: its presence
    /// entries stay until `until` (its reconnect delay plus the time to
    /// join elsewhere) instead of leaving with the connection.
    pub fn hand_over_presence(&mut self, until: std::time::Instant) {
        for (subscription, _) in self.subscriptions.values_mut().filter(|(_, presence)| *presence) {
            subscription.hand_over(until);
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
        self.tell(Refusal {
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

    /// Waits, delivering answers, until fewer than
    /// [`MAX_PUBLISHES_IN_FLIGHT`] are in flight, so that one more may be
    /// added (a transport whose one message holds many requests, STOMP's,
    /// keeps the bound this way); `false` once the connection is gone.
    pub async fn make_room_for_an_answer(&mut self) -> bool {
        while self.publishes_in_flight() >= MAX_PUBLISHES_IN_FLIGHT {
            let Some(reply) = self.next_publish_reply().await else {
                return true;
            };
            if !self.deliver_reply(reply).await {
                return false;
            }
        }
        true
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

    /// Queues an `error` event; `false` once the connection is gone.
    async fn tell(&mut self, refusal: Refusal<'_>) -> bool {
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

    /// Refuses a frame: the `error` event, charged to the budget of its
    /// kind (a client's fault to the invalid-frame budget, `rate_limited`
    /// to its own); past the budget the connection is closed with 1008.
    async fn refuse(&mut self, refusal: Refusal<'_>) -> SessionVerdict {
        let budget = if refusal.code.is_client_fault() {
            Some(&self.invalid_frames)
        } else if refusal.code == ErrorCode::RateLimited {
            Some(&self.rate_limited_refusals)
        } else {
            None
        };
        let within_budget = budget.is_none_or(InvalidFrameBudget::spend);
        let delivered = self.tell(refusal).await;
        if !within_budget {
            return SessionVerdict::Close {
                code: close_code::POLICY,
                reason: "too many refused frames",
            };
        }
        if delivered { SessionVerdict::Continue } else { gone() }
    }

    /// Handles one text frame.
    pub async fn handle_text(&mut self, text: &str) -> SessionVerdict {
        match decode_client_frame(text, self.context.limits.decode) {
            Ok(frame) => self.handle_frame(frame).await,
            Err(rejection) => {
                self.refuse(Refusal {
                    req: rejection.req.as_ref(),
                    code: rejection.code,
                    message: &rejection.message,
                    room: rejection.room.as_ref(),
                    retry_after_ms: None,
                })
                .await
            }
        }
    }

    async fn handle_frame(&mut self, frame: ClientFrame) -> SessionVerdict {
        let req = frame.req.as_ref();
        match frame.request {
            ClientRequest::Subscribe { room, replay, presence } => self.subscribe(req, room, replay, presence).await,
            ClientRequest::Unsubscribe { room } => {
                if self.unsubscribe(&room) {
                    let delivered = self
                        .reply(Event::Unsubscribed {
                            req: req.cloned(),
                            room,
                        })
                        .await;
                    if delivered { SessionVerdict::Continue } else { gone() }
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
            ClientRequest::Ping => {
                if self.reply(Event::Pong { req: req.cloned() }).await {
                    SessionVerdict::Continue
                } else {
                    gone()
                }
            }
            ClientRequest::Refresh { token } => self.refresh(req, &token).await,
        }
    }

    /// Replaces the identity with a new token's: same subject required;
    /// rooms it no longer allows are left, each with a `forbidden` error.
    async fn refresh(&mut self, req: Option<&RequestTag>, token: &str) -> SessionVerdict {
        if matches!(*self.context.authenticator, crate::auth::Authenticator::Open) {
            let message = "this node runs without authentication (RELAY_AUTH=none); there is no token to refresh";
            return self
                .refuse(Refusal {
                    req,
                    code: ErrorCode::BadRequest,
                    message,
                    room: None,
                    retry_after_ms: None,
                })
                .await;
        }
        if !self.refreshes.spend() {
            let message = format!(
                "more than {REFRESHES_PER_MINUTE} refreshes a minute; refresh once, shortly before the token expires"
            );
            return self
                .refuse(Refusal {
                    req,
                    code: ErrorCode::RateLimited,
                    message: &message,
                    room: None,
                    retry_after_ms: Some(60_000 / u64::from(REFRESHES_PER_MINUTE)),
                })
                .await;
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
            self.tell(Refusal {
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
            self.tell(Refusal {
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
        let refused = self.may_subscribe(&room, presence).err().or_else(|| {
            self.subscriptions.contains_key(&room).then(|| {
                (
                    ErrorCode::BadRequest,
                    format!("already subscribed to {room}; unsubscribe first to subscribe again"),
                )
            })
        });
        if let Some((code, message)) = refused {
            return self
                .refuse(Refusal {
                    req,
                    code,
                    message: &message,
                    room: Some(&room),
                    retry_after_ms: None,
                })
                .await;
        }
        let target = ResumeTarget {
            replies: &self.replies,
            connection: self.connection.clone(),
            req,
            presence: presence.then(|| self.context.hub.presence_entry(self.identity.subject())),
            memory: &self.context.replay_memory,
        };
        // Boxed: it is large and rare, and would otherwise size every connection's future.
        match Box::pin(subscribe_and_resume(
            &self.context.hub,
            &room,
            replay,
            HistoryBudget {
                messages: self.context.limits.decode.max_replay,
                bytes: self.context.limits.max_replay_bytes,
            },
            target,
        ))
        .await
        {
            Ok(resumed) => {
                self.context
                    .metrics
                    .messages_delivered
                    .inc_by(u64::try_from(resumed.replayed).unwrap_or(u64::MAX));
                self.subscriptions.insert(room, (resumed.subscription, presence));
                SessionVerdict::Continue
            }
            Err(ResumeError::ConnectionClosed) => gone(),
            Err(ResumeError::Busy(busy)) => {
                let message =
                    format!("could not subscribe to {room}: {busy}; subscribe again (with since) in a second");
                self.refuse(Refusal {
                    req,
                    code: ErrorCode::Unavailable,
                    message: &message,
                    room: Some(&room),
                    retry_after_ms: Some(1000),
                })
                .await
            }
            Err(ResumeError::Broker(error)) => {
                tracing::warn!(%room, %error, "subscribe failed: broker unavailable");
                let message = format!(
                    "could not subscribe to {room}: the message store is unavailable; subscribe again (with since) shortly"
                );
                self.refuse(Refusal {
                    req,
                    code: ErrorCode::Unavailable,
                    message: &message,
                    room: Some(&room),
                    retry_after_ms: Some(1000),
                })
                .await
            }
        }
    }

    /// Whether this connection may subscribe to `room` (with presence or
    /// not) now: the token's grant, and the caps of subscriptions and of
    /// presence subscriptions per connection. Every transport asks here.
    ///
    /// # Errors
    /// The refusal's code and what to tell the client.
    pub fn may_subscribe(&self, room: &RoomName, presence: bool) -> Result<(), (ErrorCode, String)> {
        if !self.identity.may_subscribe(room) {
            return Err((
                ErrorCode::Forbidden,
                format!("your token does not allow reading {room}"),
            ));
        }
        let max = self.context.limits.announced.max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err((
                ErrorCode::TooManySubscriptions,
                format!(
                    "this connection holds {max} subscriptions, the most one may (max_subscriptions); unsubscribe from one first, or open another connection"
                ),
            ));
        }
        if presence
            && self.subscriptions.values().filter(|(_, presence)| *presence).count() >= MAX_PRESENCE_SUBSCRIPTIONS
        {
            return Err((
                ErrorCode::TooManySubscriptions,
                format!(
                    "this connection watches the presence of {MAX_PRESENCE_SUBSCRIPTIONS} rooms, the most one may; subscribe without presence, or leave one first"
                ),
            ));
        }
        Ok(())
    }

    /// Whether this connection may write `count` messages of `bytes` bytes
    /// in all to `room` now: the token's grant, the connection's rate and
    /// the client's shared budget of messages and bytes (taken, all or
    /// none, when they pass). Every transport asks here.
    ///
    /// # Errors
    /// The refusal: its code, what to tell the client and, for a rate, when
    /// to retry.
    pub fn may_write(&self, room: &RoomName, count: usize, bytes: usize) -> Result<(), WriteRefusal> {
        if !self.identity.may_publish(room) {
            return Err(WriteRefusal {
                code: ErrorCode::Forbidden,
                message: format!("your token does not allow publishing to {room}"),
                retry_after_ms: None,
            });
        }
        self.within_rates(count, bytes)
    }

    /// Whether this connection may write `count` messages of `bytes` bytes
    /// in all now, by its rate and its client's shared budget (taken when
    /// they pass; a write is refused whole, never cut short).
    ///
    /// # Errors
    /// A `rate_limited` refusal with when to retry.
    pub fn within_rates(&self, count: usize, bytes: usize) -> Result<(), WriteRefusal> {
        let rate = self.context.limits.announced.publish_rate;
        let connection = match NonZeroU32::new(u32::try_from(count).unwrap_or(u32::MAX)) {
            Some(count) => self.publish_limiter.check_n(count),
            None => Ok(()),
        };
        let refusal = |wait: Duration, message: String| WriteRefusal {
            code: ErrorCode::RateLimited,
            message,
            retry_after_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).clamp(1, 3_600_000)),
        };
        connection.map_err(|wait| {
            refusal(
                wait,
                format!("over {rate} publishes and signals per second on this connection; retry after the given delay"),
            )
        })?;
        self.context.client_writes.check(&self.client, count, bytes).map_err(|wait| {
            refusal(
                wait,
                format!(
                    "over {} publishes and signals, or {} bytes of bodies, per second from this client across its connections; retry after the given delay",
                    self.context.limits.client_publish_rate, self.context.limits.client_publish_bytes
                ),
            )
        })
    }

    /// Refuses a publish or signal the token or the rates do not allow;
    /// `Some(verdict)` when it was refused.
    async fn refuse_write(
        &mut self,
        req: Option<&RequestTag>,
        room: &RoomName,
        bytes: usize,
    ) -> Option<SessionVerdict> {
        let refusal = self.may_write(room, 1, bytes).err()?;
        Some(
            self.refuse(Refusal {
                req,
                code: refusal.code,
                message: &refusal.message,
                room: Some(room),
                retry_after_ms: refusal.retry_after_ms,
            })
            .await,
        )
    }

    /// A signal: sent to the broker now; only a failure is answered.
    pub async fn signal(&mut self, req: Option<&RequestTag>, room: RoomName, body: &str) -> SessionVerdict {
        if let Some(verdict) = self.refuse_write(req, &room, body.len()).await {
            return verdict;
        }
        self.submit_signal(req, room, body);
        SessionVerdict::Continue
    }

    /// Sends a signal the caller has checked with [`Self::may_write`].
    pub fn submit_signal(&mut self, req: Option<&RequestTag>, room: RoomName, body: &str) {
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
    }

    /// A publish of a validated JSON `body`: submitted to the broker now,
    /// answered (`ack` or `error`) in submission order.
    pub async fn publish(
        &mut self,
        req: Option<&RequestTag>,
        room: RoomName,
        body: String,
        cmid: Option<String>,
    ) -> SessionVerdict {
        if let Some(verdict) = self.refuse_write(req, &room, body.len()).await {
            return verdict;
        }
        self.submit_publish(req, room, &body, cmid);
        SessionVerdict::Continue
    }

    /// Submits a publish the caller has checked with [`Self::may_write`]
    /// (a STOMP transaction's SENDs, taken together at COMMIT).
    pub fn submit_publish(&mut self, req: Option<&RequestTag>, room: RoomName, body: &str, cmid: Option<String>) {
        // Submitted now, in frame order; only the wait for the outcome is
        // deferred.
        let pending = self.context.publisher.publish(
            room.clone(),
            self.identity.subject(),
            cmid,
            body,
            Some(self.connection_id),
        );
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
    }
}

/// Why a write was refused (see [`ClientSession::may_write`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRefusal {
    /// `forbidden` or `rate_limited`.
    pub code: ErrorCode,
    /// What to tell the client.
    pub message: String,
    /// When to retry, for a rate.
    pub retry_after_ms: Option<u64>,
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
