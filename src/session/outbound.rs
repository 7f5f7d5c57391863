//! What flows from the node to one client connection, and the bounded queue
//! that carries it.
//!
//! Live messages go through the connection's live queue with `try_send`:
//! a full queue marks the connection a slow consumer (closed with 4000),
//! never blocks the room and never skips a message silently. Replies and
//! replays go through a small reply queue with backpressure instead.

use std::sync::Arc;
use std::sync::OnceLock;

use axum::extract::ws::Utf8Bytes;
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::StoredMessage;
use crate::protocol::MessageId;

/// Capacity of a connection's reply queue (control frames and replays).
pub const REPLY_QUEUE_CAPACITY: usize = 32;

/// One message as the node fans it out: decoded once, shared by every local
/// subscriber; each subscriber gets a reference-counted handle to the same
/// bytes.
#[derive(Debug)]
pub struct LiveMessage {
    /// Its id.
    pub id: MessageId,
    /// The id before it in the room.
    pub prev: MessageId,
    /// The `message` frame, as sent on WebSockets.
    pub text: Utf8Bytes,
    sse_event: OnceLock<Bytes>,
}

impl LiveMessage {
    /// Wraps a stored message; `None` if the broker handed invalid UTF-8.
    #[must_use]
    pub fn from_stored(message: &StoredMessage) -> Option<Arc<Self>> {
        let text = Utf8Bytes::try_from(message.frame.clone()).ok()?;
        Some(Arc::new(Self {
            id: message.id,
            prev: message.prev,
            text,
            sse_event: OnceLock::new(),
        }))
    }

    /// The message as one Server-Sent Event, built on first use and shared.
    pub fn sse_event(&self) -> Bytes {
        self.sse_event
            .get_or_init(|| {
                let id = self.id.to_string();
                let mut event = BytesMut::with_capacity(self.text.len() + id.len() + 32);
                event.extend_from_slice(b"event: message\nid: ");
                event.extend_from_slice(id.as_bytes());
                event.extend_from_slice(b"\ndata: ");
                event.extend_from_slice(self.text.as_bytes());
                event.extend_from_slice(b"\n\n");
                event.freeze()
            })
            .clone()
    }
}

/// The kind of a control frame, which is its SSE event name. One byte, so
/// that every slot of every connection's queues stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    /// `welcome`.
    Welcome,
    /// `subscribed`.
    Subscribed,
    /// `gap`.
    Gap,
    /// Replies only WebSockets carry: `ack`, `error`, `pong`, ...
    Reply,
}

impl ControlKind {
    /// The SSE event name.
    #[must_use]
    pub const fn event_name(self) -> &'static str {
        match self {
            ControlKind::Welcome => "welcome",
            ControlKind::Subscribed => "subscribed",
            ControlKind::Gap => "gap",
            ControlKind::Reply => "reply",
        }
    }
}

/// One item on a connection's queues.
#[derive(Debug)]
pub enum Outbound {
    /// A room message.
    Message(Arc<LiveMessage>),
    /// A control frame (JSON).
    Control {
        /// What it is (and its SSE event name).
        kind: ControlKind,
        /// The JSON frame.
        text: Utf8Bytes,
    },
    /// Answered once every earlier item of the same queue reached the socket
    /// writer; lets a replay finish before its room switches to live.
    Barrier(oneshot::Sender<()>),
    /// Close the connection with this code after the items before it.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason for humans.
        reason: &'static str,
    },
}

impl Outbound {
    /// A control frame.
    #[must_use]
    pub fn control(kind: ControlKind, json: String) -> Self {
        Outbound::Control {
            kind,
            text: Utf8Bytes::from(json),
        }
    }
}

/// The node's handle on one connection's live queue.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    live: mpsc::Sender<Outbound>,
    slow: CancellationToken,
}

/// The receiving ends a connection's writer drains.
#[derive(Debug)]
pub struct ConnectionQueues {
    /// Live messages, bounded by `RELAY_OUTBOUND_QUEUE`.
    pub live: mpsc::Receiver<Outbound>,
    /// Replies and replays.
    pub replies: mpsc::Receiver<Outbound>,
    /// Cancelled when the connection fell behind.
    pub slow: CancellationToken,
}

impl ConnectionHandle {
    /// Creates a connection's queues; returns the node-side handle, the
    /// sender for replies and the receivers for its writer.
    #[must_use]
    pub fn new(live_capacity: usize) -> (Self, mpsc::Sender<Outbound>, ConnectionQueues) {
        let (live_tx, live_rx) = mpsc::channel(live_capacity.max(1));
        let (reply_tx, reply_rx) = mpsc::channel(REPLY_QUEUE_CAPACITY);
        let slow = CancellationToken::new();
        let handle = Self {
            live: live_tx,
            slow: slow.clone(),
        };
        (
            handle,
            reply_tx,
            ConnectionQueues {
                live: live_rx,
                replies: reply_rx,
                slow,
            },
        )
    }

    /// Queues a live item; a full queue marks the connection slow instead.
    /// Returns whether the item was queued.
    pub fn offer(&self, item: Outbound) -> bool {
        match self.live.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.mark_slow();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Marks the connection a slow consumer: its writer closes it with 4000.
    pub fn mark_slow(&self) {
        self.slow.cancel();
    }

    /// Whether the connection was marked slow.
    #[must_use]
    pub fn is_slow(&self) -> bool {
        self.slow.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_live_queue_marks_the_connection_slow_instead_of_dropping_silently() {
        let (handle, _replies, mut queues) = ConnectionHandle::new(2);
        let control = || Outbound::control(ControlKind::Gap, "{}".to_owned());
        assert!(handle.offer(control()));
        assert!(handle.offer(control()));
        assert!(!handle.is_slow());
        assert!(!handle.offer(control()));
        assert!(handle.is_slow());
        assert!(queues.slow.is_cancelled());
        assert!(queues.live.try_recv().is_ok());
    }

    #[test]
    fn sse_event_carries_id_and_data_on_one_line_each() {
        let stored = StoredMessage {
            id: MessageId::new(3, 1),
            prev: MessageId::ZERO,
            frame: Bytes::from_static(b"{\"a\":1}"),
            trace: None,
        };
        let live = LiveMessage::from_stored(&stored).unwrap();
        assert_eq!(&live.sse_event()[..], b"event: message\nid: 3-1\ndata: {\"a\":1}\n\n");
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn a_queue_slot_stays_small() {
        // Every connection's two queues allocate 32 slots each up front.
        assert!(
            std::mem::size_of::<super::Outbound>() <= 40,
            "{}",
            std::mem::size_of::<super::Outbound>()
        );
    }
}
