//! What flows from the node to one client connection, and the bounded queue
//! that carries it.
//!
//! Live messages go through the connection's live queue with
//! [`ConnectionHandle::offer`]: a full queue marks the connection a slow
//! consumer (closed with 4000), never blocks the room and never skips a
//! message silently. Replies and replays go through a small reply queue
//! with backpressure instead ([`ReplySender::send`]). The writer takes
//! replies first, then live messages.
//!
//! A transport may also let the fan-out write a live message to its
//! socket itself ([`DirectWrite`]): only while the writer is idle with
//! nothing queued, under the queue's lock, so the message keeps its place.
//! An idle connection then costs no wake-up of its task per message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, oneshot};

use super::event::{Encoding, Encodings, Event, RoomEvent};
use crate::broker::StoredMessage;
use crate::protocol::{MessageId, RoomName};

/// Capacity of a connection's reply queue (control frames and replays).
pub const REPLY_QUEUE_CAPACITY: usize = 32;

/// One message as the node fans it out: decoded once, shared by every local
/// subscriber; each subscriber gets a reference-counted handle to the same
/// bytes, and each transport's encoding of it is built once.
#[derive(Debug)]
pub struct LiveMessage {
    /// Its id.
    pub id: MessageId,
    /// The id before it in the room.
    pub prev: MessageId,
    /// Its room.
    pub room: RoomName,
    /// The `message` frame of the JSON protocol; valid UTF-8.
    frame: Bytes,
    encodings: Encodings,
}

impl LiveMessage {
    /// Wraps a stored message; `None` if the broker handed invalid UTF-8.
    #[must_use]
    pub fn from_stored(room: &RoomName, message: &StoredMessage) -> Option<Arc<Self>> {
        std::str::from_utf8(&message.frame).ok()?;
        Some(Arc::new(Self {
            id: message.id,
            prev: message.prev,
            room: room.clone(),
            frame: message.frame.clone(),
            encodings: Encodings::default(),
        }))
    }

    /// The JSON protocol's `message` frame, as bytes (valid UTF-8).
    #[must_use]
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The JSON protocol's `message` frame, as text.
    #[must_use]
    pub fn text(&self) -> &str {
        // Checked in `from_stored`; the fallback is never taken.
        std::str::from_utf8(&self.frame).unwrap_or_default()
    }

    /// The message in `encoding`, built once for all its subscribers.
    pub fn encoded(&self, encoding: Encoding, build: impl FnOnce(&Self) -> Bytes) -> Bytes {
        self.encodings.get_or_build(encoding, || build(self))
    }
}

/// One item on a connection's queues.
#[derive(Debug)]
pub enum Outbound {
    /// A room message.
    Message(Arc<LiveMessage>),
    /// A control event of this connection (boxed: one pointer per slot).
    Event(Box<Event>),
    /// A control event shared with the room's other subscribers.
    Room(Arc<RoomEvent>),
    /// Answered once every earlier item of the same queue is written (a
    /// WebSocket writer answers after the flush of its batch); lets a
    /// replay finish before its room switches to live, and tells when its
    /// bytes have left the node.
    Barrier(oneshot::Sender<()>),
    /// The unwritten end of a frame that a direct write began: it goes to
    /// the socket first, as it is.
    Rest(Bytes),
    /// Close the connection with this code after the items before it.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason for humans.
        reason: &'static str,
    },
}

impl Outbound {
    /// A control event.
    #[must_use]
    pub fn event(event: Event) -> Self {
        Outbound::Event(Box::new(event))
    }
}

/// A socket that the fan-out may write a live message to without waiting
/// (a transport's, when its framing of a message is the same for all).
pub trait DirectWrite: Send + Sync + std::fmt::Debug {
    /// Writes what the socket takes of `message` now, without waiting.
    fn try_write(&self, message: &LiveMessage) -> Direct;
}

/// What a direct write did.
#[derive(Debug)]
pub enum Direct {
    /// The whole message is written.
    Written,
    /// Part of it is written; the rest must go next.
    Partly(Bytes),
    /// Nothing is written (the socket is full, or broken): queue it.
    NotNow,
}

/// Why a reply could not be queued: the connection's writer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection is closed")]
pub struct ConnectionClosed;

/// What an item counts against a live queue's byte bound: a message's
/// frame, a room event's JSON (the bytes a connection that stops reading
/// keeps alive).
fn queued_bytes(item: &Outbound) -> usize {
    match item {
        Outbound::Message(message) => message.frame.len(),
        Outbound::Room(event) => event.json().len(),
        Outbound::Rest(rest) => rest.len(),
        Outbound::Event(_) | Outbound::Barrier(_) | Outbound::Close { .. } => 0,
    }
}

/// A live queue that grew past this many slots in a burst gives the memory
/// back once drained.
const LIVE_SHRINK_ABOVE: usize = 256;
const LIVE_SHRINK_TO: usize = 16;

/// One connection's outbound queues, shared by the node (live messages),
/// the session (replies and replays) and the connection's writer.
///
/// Two deques behind one short lock, one waker slot for the writer and a
/// `Notify` for reply senders waiting for room. An idle connection's
/// queues allocate nothing; tokio's channels allocate a 32-slot block each
/// up front (about 3.4 KiB per connection for the pair). The writer is
/// woken only when the queues go from empty to not empty, so a busy writer
/// takes a burst without a wake-up per frame.
#[derive(Debug)]
struct Outbox {
    state: Mutex<OutboxState>,
    /// The writer, the queues' only reader.
    writer: AtomicWaker,
    /// Reply senders waiting for room, or for the writer to go.
    reply_room: Notify,
    /// Set once when the connection fell behind; read without the lock.
    slow: AtomicBool,
}

#[derive(Debug)]
struct OutboxState {
    live: VecDeque<Outbound>,
    replies: VecDeque<Outbound>,
    live_capacity: usize,
    /// Bytes of the messages in `live`, and the most it may hold.
    live_bytes: usize,
    live_capacity_bytes: usize,
    live_senders: usize,
    reply_senders: usize,
    /// The writer stopped (closed or dropped its end): nothing more is queued.
    writer_gone: bool,
    /// Where live messages may be written straight to the socket.
    direct: Option<Arc<dyn DirectWrite>>,
    /// The writer has written everything and waits: a direct write may go.
    socket_idle: bool,
    /// The end of a frame a direct write began.
    rest: Option<Bytes>,
}

impl OutboxState {
    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.replies.is_empty() && self.rest.is_none()
    }

    fn senders(&mut self, kind: SenderKind) -> &mut usize {
        match kind {
            SenderKind::Live => &mut self.live_senders,
            SenderKind::Reply => &mut self.reply_senders,
        }
    }
}

impl Outbox {
    fn state(&self) -> MutexGuard<'_, OutboxState> {
        // Every critical section leaves the deques consistent before
        // anything that could panic, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn raise_slow(&self) {
        self.slow.store(true, Ordering::Release);
        self.writer.wake();
    }

    /// Counts one more sender of `kind` and shares the outbox with it.
    fn add_sender(self: &Arc<Self>, kind: SenderKind) -> Arc<Self> {
        *self.state().senders(kind) += 1;
        self.clone()
    }

    /// Counts a sender of `kind` out; the writer is woken when it was the
    /// last of its kind, since the queues may now be finished.
    fn remove_sender(&self, kind: SenderKind) {
        let last = {
            let mut state = self.state();
            let senders = state.senders(kind);
            *senders -= 1;
            *senders == 0
        };
        if last {
            self.writer.wake();
        }
    }
}

/// The two kinds of sender an outbox counts.
#[derive(Debug, Clone, Copy)]
enum SenderKind {
    /// [`ConnectionHandle`]: live messages.
    Live,
    /// [`ReplySender`]: replies and replays.
    Reply,
}

/// The node's handle on one connection's live queue (the hub holds one per
/// subscription). The writer finishes once every handle and every
/// [`ReplySender`] is gone and the queues are drained.
#[derive(Debug)]
pub struct ConnectionHandle {
    outbox: Arc<Outbox>,
}

/// Queues replies and replays for one connection, waiting for room when
/// its reply queue is full (backpressure on the client's own requests).
#[derive(Debug)]
pub struct ReplySender {
    outbox: Arc<Outbox>,
}

/// The writer's end of a connection's queues. Dropping it (or
/// [`ConnectionQueues::close`]) discards what is queued and refuses more.
#[derive(Debug)]
pub struct ConnectionQueues {
    outbox: Arc<Outbox>,
}

impl ConnectionHandle {
    /// Creates a connection's queues; returns the node-side handle, the
    /// sender for replies and the writer's end.
    #[must_use]
    pub fn new(live_capacity: usize) -> (Self, ReplySender, ConnectionQueues) {
        Self::with_limits(live_capacity, usize::MAX)
    }

    /// As [`ConnectionHandle::new`], with the live queue bounded in bytes
    /// of messages too (`RELAY_OUTBOUND_QUEUE_BYTES`): a full queue by
    /// either count marks the connection slow.
    #[must_use]
    pub fn with_limits(live_capacity: usize, live_capacity_bytes: usize) -> (Self, ReplySender, ConnectionQueues) {
        let outbox = Arc::new(Outbox {
            state: Mutex::new(OutboxState {
                live: VecDeque::new(),
                replies: VecDeque::new(),
                live_capacity: live_capacity.max(1),
                live_bytes: 0,
                live_capacity_bytes,
                live_senders: 1,
                reply_senders: 1,
                writer_gone: false,
                direct: None,
                socket_idle: false,
                rest: None,
            }),
            writer: AtomicWaker::new(),
            reply_room: Notify::new(),
            slow: AtomicBool::new(false),
        });
        (
            Self { outbox: outbox.clone() },
            ReplySender { outbox: outbox.clone() },
            ConnectionQueues { outbox },
        )
    }

    /// Queues a live item; a full queue marks the connection slow instead.
    /// Returns whether the item was queued.
    #[allow(
        clippy::must_use_candidate,
        reason = "a refused offer marks the connection slow by itself; most callers need not look"
    )]
    pub fn offer(&self, item: Outbound) -> bool {
        self.push_live(item, true, false)
    }

    /// As [`ConnectionHandle::offer`], but a message is written straight
    /// to the socket when the connection allows it ([`DirectWrite`]) and
    /// its writer is idle with nothing queued.
    #[allow(
        clippy::must_use_candidate,
        reason = "a refused offer marks the connection slow by itself; most callers need not look"
    )]
    pub fn offer_or_write(&self, item: Outbound) -> bool {
        self.push_live(item, true, true)
    }

    /// Queues an item that may be lost under load (a signal): when the live
    /// queue is full it is dropped, and the connection is not marked slow.
    /// Returns whether the item was queued.
    #[allow(
        clippy::must_use_candidate,
        reason = "a refused offer marks the connection slow by itself; most callers need not look"
    )]
    pub fn offer_or_drop(&self, item: Outbound) -> bool {
        self.push_live(item, false, false)
    }

    fn push_live(&self, item: Outbound, full_is_slow: bool, may_write: bool) -> bool {
        let mut state = self.outbox.state();
        if state.writer_gone || self.outbox.slow.load(Ordering::Acquire) {
            return false;
        }
        let bytes = queued_bytes(&item);
        if state.live.len() >= state.live_capacity || state.live_bytes.saturating_add(bytes) > state.live_capacity_bytes
        {
            drop(state);
            if full_is_slow {
                self.outbox.raise_slow();
            }
            return false;
        }
        let was_empty = state.is_empty();
        if may_write
            && was_empty
            && state.socket_idle
            && let (Outbound::Message(message), Some(direct)) = (&item, &state.direct)
        {
            match direct.try_write(message) {
                Direct::Written => return true,
                Direct::Partly(rest) => {
                    state.rest = Some(rest);
                    state.socket_idle = false;
                    drop(state);
                    self.outbox.writer.wake();
                    return true;
                }
                Direct::NotNow => {}
            }
        }
        state.live.push_back(item);
        state.live_bytes += bytes;
        drop(state);
        if was_empty {
            self.outbox.writer.wake();
        }
        true
    }

    /// Marks the connection slow: the writer closes it with 4000.
    pub fn mark_slow(&self) {
        self.outbox.raise_slow();
    }

    /// Whether the connection was marked slow.
    #[must_use]
    pub fn is_slow(&self) -> bool {
        self.outbox.slow.load(Ordering::Acquire)
    }
}

impl Clone for ConnectionHandle {
    fn clone(&self) -> Self {
        Self {
            outbox: self.outbox.add_sender(SenderKind::Live),
        }
    }
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        self.outbox.remove_sender(SenderKind::Live);
    }
}

/// Why a reply was not queued.
enum ReplyRefusal {
    /// The reply queue is full; here is the item back.
    Full(Outbound),
    /// The writer is gone.
    Closed,
}

impl ReplySender {
    fn try_queue(&self, item: Outbound) -> Result<(), ReplyRefusal> {
        let mut state = self.outbox.state();
        if state.writer_gone {
            return Err(ReplyRefusal::Closed);
        }
        if state.replies.len() >= REPLY_QUEUE_CAPACITY {
            return Err(ReplyRefusal::Full(item));
        }
        let was_empty = state.is_empty();
        state.replies.push_back(item);
        drop(state);
        if was_empty {
            self.outbox.writer.wake();
        }
        Ok(())
    }

    /// Queues `item` behind the replies before it, waiting while the reply
    /// queue is full.
    ///
    /// # Errors
    /// [`ConnectionClosed`] once the writer is gone.
    pub async fn send(&self, item: Outbound) -> Result<(), ConnectionClosed> {
        match self.try_queue(item) {
            Ok(()) => Ok(()),
            Err(ReplyRefusal::Closed) => Err(ConnectionClosed),
            // Boxed: a full reply queue is rare, and every connection task
            // awaiting a send would otherwise carry the wait's state.
            Err(ReplyRefusal::Full(back)) => Box::pin(self.send_when_room(back)).await,
        }
    }

    async fn send_when_room(&self, mut item: Outbound) -> Result<(), ConnectionClosed> {
        loop {
            // Registered before the attempt, so room made in between is seen.
            let room = self.outbox.reply_room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_queue(item) {
                Ok(()) => return Ok(()),
                Err(ReplyRefusal::Closed) => return Err(ConnectionClosed),
                Err(ReplyRefusal::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Queues `item` if the reply queue has room, without waiting.
    ///
    /// # Errors
    /// [`ConnectionClosed`] when the queue is full or the writer is gone.
    pub fn try_send(&self, item: Outbound) -> Result<(), ConnectionClosed> {
        self.try_queue(item).map_err(|_| ConnectionClosed)
    }

    /// Wakes the connection's writer (something of its own is due: the
    /// transport's answer to a ping).
    pub fn wake_writer(&self) {
        self.outbox.writer.wake();
    }

    /// Completes once the writer is gone (the client left).
    pub async fn closed(&self) {
        loop {
            let gone = self.outbox.reply_room.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.outbox.state().writer_gone {
                return;
            }
            gone.await;
        }
    }
}

impl Clone for ReplySender {
    fn clone(&self) -> Self {
        Self {
            outbox: self.outbox.add_sender(SenderKind::Reply),
        }
    }
}

impl Drop for ReplySender {
    fn drop(&mut self) {
        self.outbox.remove_sender(SenderKind::Reply);
    }
}

impl ConnectionQueues {
    /// The next item without waiting: replies first, then live messages.
    #[must_use]
    pub fn try_next(&self) -> Option<Outbound> {
        let mut state = self.outbox.state();
        // Whatever the writer takes, it writes: no direct write may go now.
        state.socket_idle = false;
        if let Some(rest) = state.rest.take() {
            return Some(Outbound::Rest(rest));
        }
        if let Some(item) = state.replies.pop_front() {
            let had_waiters = state.replies.len() + 1 == REPLY_QUEUE_CAPACITY;
            if state.replies.is_empty() {
                // Replies come now and then (a welcome, an ack): an idle
                // connection keeps no room for them.
                state.replies = VecDeque::new();
            }
            drop(state);
            if had_waiters {
                self.outbox.reply_room.notify_waiters();
            }
            return Some(item);
        }
        let item = state.live.pop_front();
        if let Some(item) = &item {
            state.live_bytes -= queued_bytes(item);
        }
        if state.live.is_empty() && state.live.capacity() > LIVE_SHRINK_ABOVE {
            state.live.shrink_to(LIVE_SHRINK_TO);
        }
        item
    }

    /// The next item; `Ready(None)` once every sender is gone and nothing
    /// is left.
    pub fn poll_next(&self, context: &mut Context<'_>) -> Poll<Option<Outbound>> {
        if let Some(item) = self.try_next() {
            return Poll::Ready(Some(item));
        }
        self.outbox.writer.register(context.waker());
        // Queued (or the last sender left) between the check and the
        // registration: not missed.
        if let Some(item) = self.try_next() {
            return Poll::Ready(Some(item));
        }
        let mut state = self.outbox.state();
        if state.live_senders == 0 && state.reply_senders == 0 {
            Poll::Ready(None)
        } else {
            // The writer asks only once it has written everything.
            state.socket_idle = true;
            Poll::Pending
        }
    }

    /// Lets the fan-out write live messages to the socket through `direct`
    /// while the writer is idle.
    pub fn write_directly(&self, direct: Arc<dyn DirectWrite>) {
        self.outbox.state().direct = Some(direct);
    }

    /// Takes the socket back from direct writes before the writer writes
    /// something of its own (a ping, a close): returns the end of a frame
    /// a direct write began, which must be written first.
    #[must_use]
    pub fn claim_socket(&self) -> Option<Bytes> {
        let mut state = self.outbox.state();
        state.socket_idle = false;
        state.rest.take()
    }

    /// The next item; `None` once every sender is gone and nothing is left.
    pub async fn next(&self) -> Option<Outbound> {
        std::future::poll_fn(|context| self.poll_next(context)).await
    }

    /// Whether the connection fell behind.
    #[must_use]
    pub fn is_slow(&self) -> bool {
        self.outbox.slow.load(Ordering::Acquire)
    }

    /// Completes once the connection is marked slow.
    pub async fn slow(&self) {
        std::future::poll_fn(|context| {
            if self.is_slow() {
                return Poll::Ready(());
            }
            self.outbox.writer.register(context.waker());
            if self.is_slow() { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
    }

    /// Stops the queues: what is queued is dropped, senders are refused
    /// from now on and reply senders waiting for room are released.
    pub fn close(&mut self) {
        let discarded = {
            let mut state = self.outbox.state();
            state.writer_gone = true;
            state.socket_idle = false;
            state.rest = None;
            state.live_bytes = 0;
            (
                std::mem::take(&mut state.live),
                std::mem::take(&mut state.replies),
                state.direct.take(),
            )
        };
        // Dropped outside the lock: a dropped barrier wakes its waiter.
        drop(discarded);
        self.outbox.reply_room.notify_waiters();
    }
}

impl Drop for ConnectionQueues {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "the tests play the writer and the senders as plain tasks"
)]
mod tests {
    use std::time::Duration;

    use super::*;

    use crate::protocol::ErrorCode;
    use crate::session::event::ErrorEvent;

    /// An item told apart by its text.
    fn control(text: &str) -> Outbound {
        Outbound::event(Event::Error(Box::new(ErrorEvent {
            req: None,
            code: ErrorCode::BadRequest,
            message: text.to_owned(),
            room: None,
            retry_after_ms: None,
            stored: None,
        })))
    }

    fn text_of(item: Option<Outbound>) -> String {
        match item {
            Some(Outbound::Event(event)) => match *event {
                Event::Error(error) => error.message,
                other => panic!("expected a marked item, got {other:?}"),
            },
            other => panic!("expected a marked item, got {other:?}"),
        }
    }

    /// A socket for direct writes that takes what it is told to, and
    /// records which messages (by sequence) it was asked to write.
    #[derive(Debug)]
    struct FakeSocket {
        answers: Mutex<VecDeque<Direct>>,
        written: Mutex<Vec<u64>>,
    }

    impl FakeSocket {
        fn answering(answers: impl IntoIterator<Item = Direct>) -> Arc<Self> {
            Arc::new(Self {
                answers: Mutex::new(answers.into_iter().collect()),
                written: Mutex::new(Vec::new()),
            })
        }

        fn written(&self) -> Vec<u64> {
            self.written.lock().unwrap().clone()
        }
    }

    impl DirectWrite for FakeSocket {
        fn try_write(&self, message: &LiveMessage) -> Direct {
            let answer = self.answers.lock().unwrap().pop_front().unwrap_or(Direct::Written);
            if !matches!(answer, Direct::NotNow) {
                self.written.lock().unwrap().push(message.id.seq);
            }
            answer
        }
    }

    fn message(sequence: u64) -> Outbound {
        let room = RoomName::parse("direct").unwrap();
        let stored = StoredMessage {
            id: MessageId::new(1, sequence),
            prev: MessageId::new(1, sequence.saturating_sub(1)),
            frame: Bytes::from(format!(r#"{{"type":"message","n":{sequence}}}"#)),
            trace: None,
        };
        Outbound::Message(LiveMessage::from_stored(&room, &stored).unwrap())
    }

    fn sequence_of(item: Option<Outbound>) -> u64 {
        match item {
            Some(Outbound::Message(message)) => message.id.seq,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Plays the writer that has written everything and waits.
    fn writer_goes_idle(queues: &ConnectionQueues) {
        assert!(
            queues
                .poll_next(&mut Context::from_waker(std::task::Waker::noop()))
                .is_pending()
        );
    }

    #[test]
    fn an_idle_writer_lets_the_fan_out_write_and_a_busy_one_gets_the_queue() {
        let (handle, _replies, queues) = ConnectionHandle::new(8);
        let socket = FakeSocket::answering([]);
        queues.write_directly(socket.clone());
        // Not idle yet (the writer has not asked): queued.
        assert!(handle.offer_or_write(message(1)));
        assert!(socket.written().is_empty());
        assert_eq!(sequence_of(queues.try_next()), 1);
        writer_goes_idle(&queues);
        assert!(handle.offer_or_write(message(2)));
        assert!(handle.offer_or_write(message(3)));
        assert_eq!(socket.written(), [2, 3]);
        assert!(queues.try_next().is_none(), "written directly, not queued");
        // A reply is waiting for the writer: the next message queues behind it.
        writer_goes_idle(&queues);
        assert!(handle.offer(control("gap")));
        assert!(handle.offer_or_write(message(4)));
        assert_eq!(socket.written(), [2, 3]);
        assert_eq!(text_of(queues.try_next()), "gap");
        assert_eq!(sequence_of(queues.try_next()), 4);
        // A plain offer always queues (the fan-out when it falls behind).
        writer_goes_idle(&queues);
        assert!(handle.offer(message(5)));
        assert_eq!(socket.written(), [2, 3]);
        assert_eq!(sequence_of(queues.try_next()), 5);
    }

    #[test]
    fn a_direct_write_cut_short_sends_its_rest_first_and_a_full_socket_queues() {
        let (handle, _replies, queues) = ConnectionHandle::new(8);
        let socket = FakeSocket::answering([Direct::Partly(Bytes::from_static(b"end of 1")), Direct::NotNow]);
        queues.write_directly(socket.clone());
        writer_goes_idle(&queues);
        assert!(handle.offer_or_write(message(1)));
        // Once cut short, nothing goes direct until the writer is idle again.
        assert!(handle.offer_or_write(message(2)));
        assert_eq!(socket.written(), [1]);
        match queues.try_next() {
            Some(Outbound::Rest(rest)) => assert_eq!(&rest[..], b"end of 1"),
            other => panic!("expected the rest of message 1, got {other:?}"),
        }
        assert_eq!(sequence_of(queues.try_next()), 2);
        // The socket is full: queued, in order, for the writer.
        writer_goes_idle(&queues);
        assert!(handle.offer_or_write(message(3)));
        assert!(handle.offer_or_write(message(4)));
        assert_eq!(socket.written(), [1]);
        assert_eq!(sequence_of(queues.try_next()), 3);
        assert_eq!(sequence_of(queues.try_next()), 4);
    }

    #[test]
    fn the_writer_claims_the_socket_back_with_any_rest_and_a_close_ends_direct_writes() {
        let (handle, _replies, mut queues) = ConnectionHandle::new(8);
        let socket = FakeSocket::answering([Direct::Partly(Bytes::from_static(b"tail"))]);
        queues.write_directly(socket.clone());
        writer_goes_idle(&queues);
        assert!(handle.offer_or_write(message(1)));
        // A ping is due: the writer takes the socket, and the rest first.
        assert_eq!(queues.claim_socket().as_deref(), Some(&b"tail"[..]));
        assert!(handle.offer_or_write(message(2)));
        assert_eq!(socket.written(), [1], "claimed: no direct write");
        assert_eq!(sequence_of(queues.try_next()), 2);
        writer_goes_idle(&queues);
        queues.close();
        assert!(!handle.offer_or_write(message(3)));
        assert_eq!(socket.written(), [1]);
    }

    #[test]
    fn a_full_live_queue_marks_the_connection_slow_instead_of_dropping_silently() {
        let (handle, _replies, queues) = ConnectionHandle::new(2);
        assert!(handle.offer(control("1")));
        assert!(handle.offer(control("2")));
        assert!(!handle.is_slow());
        assert!(!handle.offer(control("3")));
        assert!(handle.is_slow());
        assert!(queues.is_slow());
        assert_eq!(text_of(queues.try_next()), "1");
    }

    #[test]
    fn a_live_queue_full_in_bytes_marks_the_connection_slow_and_drained_bytes_come_back() {
        // Each test message's frame is 25 bytes.
        let (handle, _replies, queues) = ConnectionHandle::with_limits(1000, 80);
        for sequence in 1..=3 {
            assert!(handle.offer(message(sequence)), "{sequence} fits");
        }
        assert_eq!(sequence_of(queues.try_next()), 1);
        assert!(handle.offer(message(4)), "a drained message gives its bytes back");
        assert!(!handle.is_slow());
        assert!(!handle.offer(message(5)), "past 80 bytes");
        assert!(handle.is_slow());
    }

    #[tokio::test]
    async fn marking_a_connection_slow_wakes_its_writer() {
        let (handle, _replies, queues) = ConnectionHandle::new(2);
        let writer = tokio::spawn(async move { queues.slow().await });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        handle.mark_slow();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the waiting writer was woken")
            .expect("writer task");
    }

    #[tokio::test]
    async fn replies_go_before_live_messages_and_each_keeps_its_order() {
        let (handle, replies, queues) = ConnectionHandle::new(8);
        assert!(handle.offer(control("live-1")));
        replies.send(control("reply-1")).await.unwrap();
        assert!(handle.offer(control("live-2")));
        replies.send(control("reply-2")).await.unwrap();
        let order: Vec<String> = (0..4).map(|_| text_of(queues.try_next())).collect();
        assert_eq!(order, ["reply-1", "reply-2", "live-1", "live-2"]);
        assert!(queues.try_next().is_none());
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_live_message_and_by_a_reply() {
        let (handle, replies, queues) = ConnectionHandle::new(8);
        let writer = tokio::spawn(async move {
            let first = text_of(queues.next().await);
            let second = text_of(queues.next().await);
            (first, second)
        });
        tokio::task::yield_now().await;
        assert!(handle.offer(control("live")));
        tokio::task::yield_now().await;
        replies.send(control("reply")).await.unwrap();
        let (first, second) = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("live", "reply"));
    }

    #[tokio::test]
    async fn a_full_reply_queue_holds_the_sender_until_the_writer_takes_one() {
        let (_handle, replies, queues) = ConnectionHandle::new(8);
        for n in 0..REPLY_QUEUE_CAPACITY {
            replies.send(control(&n.to_string())).await.unwrap();
        }
        let extra = replies.clone();
        let blocked = tokio::spawn(async move { extra.send(control("extra")).await });
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished(), "the sender waits for room");
        assert_eq!(text_of(queues.try_next()), "0");
        tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .expect("room made wakes the sender")
            .unwrap()
            .unwrap();
        let rest: Vec<String> = std::iter::from_fn(|| queues.try_next().map(|item| text_of(Some(item)))).collect();
        assert_eq!(rest.len(), REPLY_QUEUE_CAPACITY);
        assert_eq!(rest.last().map(String::as_str), Some("extra"));
    }

    #[tokio::test]
    async fn the_writer_finishes_after_the_last_sender_and_the_last_item() {
        let (handle, replies, queues) = ConnectionHandle::new(8);
        let subscription = handle.clone();
        assert!(subscription.offer(control("last words")));
        drop(handle);
        drop(replies);
        assert_eq!(text_of(queues.next().await), "last words");
        let writer = tokio::spawn(async move { queues.next().await.is_none() });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished(), "a live handle is still held");
        drop(subscription);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), writer)
                .await
                .unwrap()
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_closed_writer_refuses_senders_and_releases_waiters() {
        let (handle, replies, mut queues) = ConnectionHandle::new(8);
        for n in 0..REPLY_QUEUE_CAPACITY {
            replies.send(control(&n.to_string())).await.unwrap();
        }
        let (reached, barrier) = oneshot::channel();
        assert!(handle.offer(Outbound::Barrier(reached)));
        let waiting = replies.clone();
        let blocked = tokio::spawn(async move { waiting.send(control("late")).await });
        let watcher = replies.clone();
        let closed = tokio::spawn(async move { watcher.closed().await });
        tokio::task::yield_now().await;
        queues.close();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), blocked)
                .await
                .unwrap()
                .unwrap(),
            Err(ConnectionClosed)
        );
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .unwrap()
            .unwrap();
        assert!(barrier.await.is_err(), "a discarded barrier tells its waiter");
        assert!(!handle.offer(control("after")));
        assert_eq!(replies.send(control("after")).await, Err(ConnectionClosed));
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let (handle, _replies, queues) = ConnectionHandle::new(1024);
        for _ in 0..1000 {
            assert!(handle.offer(control("x")));
        }
        while queues.try_next().is_some() {}
        assert!(queues.outbox.state().live.capacity() <= LIVE_SHRINK_ABOVE);
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn a_queue_slot_stays_small() {
        // Queued items are what a slow reader's queue holds, up to
        // RELAY_OUTBOUND_QUEUE of them.
        assert!(
            std::mem::size_of::<super::Outbound>() <= 40,
            "{}",
            std::mem::size_of::<super::Outbound>()
        );
    }
}
