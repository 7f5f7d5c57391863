//! Subscribe and resume without a gap or a duplicate.
//!
//! 1. Attach to the room in buffering mode; the broker's live feed of the
//!    room is confirmed before history is read. With presence, join the
//!    room's presence then (its changes ride the live feed, so none is
//!    missed between the snapshot and the first batch).
//! 2. Read history after `since` (or the last N, or only the room's head),
//!    bounded by `max_replay` messages and `max_replay_bytes`, and decide
//!    `recovered` and the subscription's `position` (protocol.md,
//!    "Positions"): the id right before the first message it delivers.
//! 3. Queue `subscribed`, then the history.
//! 4. Drain the buffer: skip what was already sent; when a message's `prev`
//!    is not the last sent id, read the missing range from history first
//!    (a `gap` only when history lacks it). Then switch to live.
//!
//! Subscribing before reading closes the race; the `prev` chain proves it.
//! Every subscription has a position, a live-only one too, so the room
//! repairs each one the same way after a live-feed loss.
//! This is written once for every broker and transport.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::event::{Event, RoomEvent};
use super::history::{self, HistoryBudget, ReplayMemory, ReplayMemoryBusy};
use super::hub::{RoomHub, Subscription, live_message};
use super::outbound::{ConnectionHandle, LiveMessage, Outbound, ReplySender};
use crate::broker::{Broker, BrokerError, PresenceEntry};
use crate::protocol::server_frame::{PRESENCE_SNAPSHOT_MEMBERS, PresenceSnapshot};
use crate::protocol::{MessageId, ReplayRequest, RequestTag, RoomName};

/// Why a resume did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The broker failed; the subscription was dropped.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The connection went away during the resume.
    #[error("connection closed during resume")]
    ConnectionClosed,
    /// The node's replay memory stayed full (see [`ReplayMemory`]).
    #[error(transparent)]
    Busy(#[from] ReplayMemoryBusy),
}

/// How long a resume waits for room in the node's replay memory before it
/// is refused (`unavailable`, retry shortly).
pub const REPLAY_MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What history a resume found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryDecision {
    /// Messages to replay, oldest first.
    pub messages: Vec<Arc<crate::broker::StoredMessage>>,
    /// `recovered`, present iff the request had `since`.
    pub recovered: Option<bool>,
    /// The id right before the first message the subscription delivers:
    /// `since` when recovered, else the first replayed message's `prev`,
    /// else the room's newest id (`0-0` for a room that never held one).
    pub position: MessageId,
}

/// The id of the newest message a room holds (`0-0` when it holds none):
/// the `prev` its next message will carry.
///
/// # Errors
/// [`BrokerError`] when history cannot be read.
pub async fn room_head(broker: &dyn Broker, room: &RoomName) -> Result<MessageId, BrokerError> {
    Ok(broker
        .read_before(room, None, 1)
        .await?
        .last_id
        .unwrap_or(MessageId::ZERO))
}

/// Where a subscription stands: right before its first replayed message,
/// or at `head` when it replays none.
fn position_of(messages: &[Arc<crate::broker::StoredMessage>], head: Option<MessageId>) -> MessageId {
    messages
        .first()
        .map(|first| first.prev)
        .or(head)
        .unwrap_or(MessageId::ZERO)
}

/// Reads the history a subscribe asks for and applies the `recovered` rule:
/// true iff the first message after `since` chains to it (or there is none
/// and the history ends at `since`) and everything after it fits the
/// budget (`max_replay` messages, `max_replay_bytes` bytes). Otherwise the
/// newest messages after `since` that fit are returned, with `recovered`
/// false: a replay too heavy is told exactly as one too long.
///
/// # Errors
/// [`BrokerError`] when history cannot be read.
pub async fn read_requested_history(
    broker: &dyn Broker,
    room: &RoomName,
    replay: ReplayRequest,
    budget: HistoryBudget,
) -> Result<HistoryDecision, BrokerError> {
    match replay {
        ReplayRequest::None | ReplayRequest::Last(0) => Ok(HistoryDecision {
            messages: Vec::new(),
            recovered: None,
            position: room_head(broker, room).await?,
        }),
        ReplayRequest::Last(count) => {
            let budget = HistoryBudget {
                messages: count.min(budget.messages),
                ..budget
            };
            let page = history::read_backward(broker, room, None, None, budget).await?;
            Ok(HistoryDecision {
                position: position_of(&page.messages, page.last_id),
                messages: page.messages,
                recovered: None,
            })
        }
        ReplayRequest::Since(since) => {
            let one_more = HistoryBudget {
                messages: budget.messages.saturating_add(1),
                ..budget
            };
            let page = history::read_forward(broker, room, since, one_more).await?;
            if page.messages.len() > budget.messages || page.cut_by_bytes {
                let newest = history::read_backward(broker, room, None, Some(since), budget).await?;
                return Ok(HistoryDecision {
                    position: position_of(&newest.messages, newest.last_id),
                    messages: newest.messages,
                    recovered: Some(false),
                });
            }
            let recovered = match page.messages.first() {
                Some(first) => first.prev == since,
                None => page.last_id.unwrap_or(MessageId::ZERO) == since,
            };
            Ok(HistoryDecision {
                position: if recovered {
                    since
                } else {
                    position_of(&page.messages, page.last_id)
                },
                messages: page.messages,
                recovered: Some(recovered),
            })
        }
    }
}

/// Where a resume writes, in order: the connection's reply queue.
pub struct ResumeTarget<'a> {
    /// The connection's reply queue.
    pub replies: &'a ReplySender,
    /// The connection's live handle, for the hub.
    pub connection: ConnectionHandle,
    /// The subscribe's `req`.
    pub req: Option<&'a RequestTag>,
    /// The connection's presence entry, when it asked for presence.
    pub presence: Option<PresenceEntry>,
    /// The node's replay memory, which the replay is counted in until it
    /// reaches the connection's writer.
    pub memory: &'a ReplayMemory,
}

/// What a completed resume reports.
pub struct Resumed {
    /// The live subscription; dropping it unsubscribes.
    pub subscription: Subscription,
    /// Messages replayed from history.
    pub replayed: usize,
}

async fn send(replies: &ReplySender, item: Outbound) -> Result<(), ResumeError> {
    replies.send(item).await.map_err(|_| ResumeError::ConnectionClosed)
}

/// Runs the whole algorithm of the module docs for one subscriber.
///
/// # Errors
/// [`ResumeError`] when the broker fails or the connection closes; nothing
/// stays subscribed then.
pub async fn subscribe_and_resume(
    hub: &Arc<RoomHub>,
    room: &RoomName,
    replay: ReplayRequest,
    budget: HistoryBudget,
    target: ResumeTarget<'_>,
) -> Result<Resumed, ResumeError> {
    let subscription = hub.attach(room, target.connection.clone()).await?;
    let presence = match target.presence {
        Some(entry) => {
            let state = subscription.join_presence(entry, PRESENCE_SNAPSHOT_MEMBERS).await?;
            Some(PresenceSnapshot {
                count: state.count,
                members: state.members,
            })
        }
        None => None,
    };
    let broker = hub.broker().as_ref();
    let mut reservation = match replay {
        ReplayRequest::None | ReplayRequest::Last(0) => None,
        ReplayRequest::Since(_) | ReplayRequest::Last(_) => Some(target.memory.reserve(REPLAY_MEMORY_WAIT).await?),
    };
    let history = read_requested_history(broker, room, replay, budget).await?;
    if let Some(reservation) = &mut reservation {
        reservation.keep_for(&history.messages);
    }
    let replayed = history.messages.len();
    send(
        target.replies,
        Outbound::event(Event::Subscribed {
            req: target.req.cloned(),
            room: room.clone(),
            recovered: history.recovered,
            replay: replayed,
            position: history.position,
            presence,
        }),
    )
    .await?;
    let mut last_sent = Some(history.position);
    for stored in &history.messages {
        if let Some(message) = live_message(room, stored) {
            last_sent = Some(message.id);
            send(target.replies, Outbound::Message(message)).await?;
        }
    }
    loop {
        // Everything queued so far must reach the socket writer before the
        // room may write to the live queue, or order across queues breaks.
        let (reached, barrier) = oneshot::channel();
        send(target.replies, Outbound::Barrier(reached)).await?;
        barrier.await.map_err(|_| ResumeError::ConnectionClosed)?;
        // The replay is with the writer now.
        drop(reservation.take());
        let Some(buffered) = subscription.take_buffered_or_go_live(last_sent) else {
            return Ok(Resumed { subscription, replayed });
        };
        for message in buffered {
            if last_sent.is_some_and(|last| message.id <= last) {
                continue;
            }
            if let Some(last) = last_sent.filter(|last| message.prev != *last) {
                fill_from_history(broker, room, last, &message, budget, target.replies).await?;
            }
            last_sent = Some(message.id);
            send(target.replies, Outbound::Message(message)).await?;
        }
    }
}

/// Sends what history holds between `last` and `next` (exclusive), and a
/// `gap` where the chain still breaks. Read a budget's page at a time, each
/// sent (with the reply queue's backpressure) before the next is read.
async fn fill_from_history(
    broker: &dyn Broker,
    room: &RoomName,
    last: MessageId,
    next: &LiveMessage,
    budget: HistoryBudget,
    replies: &ReplySender,
) -> Result<(), ResumeError> {
    let mut cursor = last;
    'pages: loop {
        let page = history::read_forward(broker, room, cursor, budget).await?;
        let more = !page.whole;
        for stored in &page.messages {
            if stored.id >= next.id {
                break 'pages;
            }
            let Some(message) = live_message(room, stored) else {
                continue;
            };
            if message.prev != cursor {
                send(
                    replies,
                    Outbound::Room(RoomEvent::gap(room, Some(cursor), Some(message.id))),
                )
                .await?;
            }
            cursor = message.id;
            send(replies, Outbound::Message(message)).await?;
        }
        if !more || page.messages.is_empty() {
            break;
        }
    }
    if next.prev != cursor {
        send(
            replies,
            Outbound::Room(RoomEvent::gap(room, Some(cursor), Some(next.id))),
        )
        .await?;
    }
    Ok(())
}
