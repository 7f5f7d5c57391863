//! The embedded memory broker: one process, the same semantics as Redis.
//!
//! Same id form and clock rule, same `prev` chain, trimming to
//! `history_maxlen`, history TTL from the last message, the `cmid` window.
//! A publish stores the message and hands it to the live sink under the
//! room's lock, so live order equals history order, as with the Redis script.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::presence::RoomPresence;
use super::{
    Broker, BrokerError, HistoryPage, LiveSink, PendingPublish, PresenceChange, PresenceEntry, PresenceState,
    PublishOutcome, PublishRequest, RetentionSettings, StoredMessage,
};
use crate::protocol::{MessageId, RoomName, message_frame, wall_clock_ms};
use crate::tasks::NodeTasks;
use crate::telemetry::TraceParent;

/// How often expired rooms and `cmid`s are swept out of memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct RoomHistory {
    entries: VecDeque<Arc<StoredMessage>>,
    last_id: MessageId,
    expires_at: Instant,
    committed_cmids: HashMap<String, (MessageId, MessageId, Instant)>,
    cmid_expiry_order: VecDeque<(Instant, String)>,
}

impl RoomHistory {
    fn new(now: Instant) -> Self {
        Self {
            entries: VecDeque::new(),
            last_id: MessageId::ZERO,
            expires_at: now,
            committed_cmids: HashMap::new(),
            cmid_expiry_order: VecDeque::new(),
        }
    }

    fn forget_expired_cmids(&mut self, now: Instant) {
        while let Some((expires_at, _)) = self.cmid_expiry_order.front() {
            if *expires_at > now {
                break;
            }
            if let Some((_, cmid)) = self.cmid_expiry_order.pop_front()
                && self.committed_cmids.get(&cmid).is_some_and(|(_, _, at)| *at <= now)
            {
                self.committed_cmids.remove(&cmid);
            }
        }
    }

    fn page(&self, range: std::ops::Range<usize>) -> HistoryPage {
        HistoryPage {
            messages: self.entries.range(range).cloned().collect(),
            last_id: self.entries.back().map(|message| message.id),
        }
    }
}

/// The embedded broker; see the module docs.
pub struct MemoryBroker {
    retention: RetentionSettings,
    rooms: Mutex<HashMap<RoomName, Arc<Mutex<RoomHistory>>>>,
    live_rooms: Mutex<HashSet<RoomName>>,
    sink: Mutex<Option<Weak<dyn LiveSink>>>,
    /// Presence per room (`super::presence`); changes reach the sink under
    /// this lock, in version order.
    presence: Mutex<HashMap<RoomName, RoomPresence>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data behind
    // (every update is a single push or pop), so poisoning is ignored.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryBroker {
    /// Creates the broker and starts its sweeper as a task of `tasks`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn new(retention: RetentionSettings, tasks: &Arc<NodeTasks>) -> Arc<Self> {
        let broker = Arc::new(Self {
            retention,
            rooms: Mutex::new(HashMap::new()),
            live_rooms: Mutex::new(HashSet::new()),
            sink: Mutex::new(None),
            presence: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&broker);
        tasks.spawn("memory broker sweeper", async move {
            let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                ticks.tick().await;
                let Some(broker) = weak.upgrade() else { return };
                broker.sweep_expired(Instant::now());
            }
        });
        broker
    }

    fn sweep_expired(&self, now: Instant) {
        let rooms: Vec<_> = lock(&self.rooms)
            .iter()
            .map(|(name, room)| (name.clone(), room.clone()))
            .collect();
        for (name, room) in rooms {
            let expired = {
                let mut history = lock(&room);
                history.forget_expired_cmids(now);
                history.expires_at <= now && history.committed_cmids.is_empty()
            };
            if expired {
                let mut rooms = lock(&self.rooms);
                // Re-check under the map lock: a publish may have revived it.
                if rooms.get(&name).is_some_and(|current| {
                    let history = lock(current);
                    history.expires_at <= now && history.committed_cmids.is_empty()
                }) {
                    rooms.remove(&name);
                }
            }
        }
    }

    /// The room's history, or `None` if it never existed or has expired.
    fn existing_room(&self, room: &RoomName) -> Option<Arc<Mutex<RoomHistory>>> {
        lock(&self.rooms).get(room).cloned()
    }

    fn room_for_publish(&self, room: &RoomName) -> Arc<Mutex<RoomHistory>> {
        lock(&self.rooms)
            .entry(room.clone())
            .or_insert_with(|| Arc::new(Mutex::new(RoomHistory::new(Instant::now()))))
            .clone()
    }

    fn read<F>(&self, room: &RoomName, select: F) -> HistoryPage
    where
        F: FnOnce(&RoomHistory) -> std::ops::Range<usize>,
    {
        let Some(room) = self.existing_room(room) else {
            return HistoryPage::default();
        };
        let history = lock(&room);
        if history.expires_at <= Instant::now() || history.entries.is_empty() {
            return HistoryPage::default();
        }
        let range = select(&history);
        history.page(range)
    }

    /// Stores one message and hands it to the live sink, under the room's lock.
    fn commit(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        let now = Instant::now();
        let room = self.room_for_publish(&request.room);
        let mut history = lock(&room);
        if history.expires_at <= now && !history.entries.is_empty() {
            // Expired like a Redis key: the next message starts a new history.
            history.entries.clear();
            history.last_id = MessageId::ZERO;
        }
        history.forget_expired_cmids(now);
        if let Some(cmid) = &request.idempotency_key
            && let Some((id, prev, _)) = history.committed_cmids.get(cmid)
        {
            return Ok(PublishOutcome {
                id: *id,
                prev: *prev,
                duplicate: true,
            });
        }
        let prev = history.entries.back().map_or(MessageId::ZERO, |last| last.id);
        let id = MessageId::next_after(history.last_id, wall_clock_ms())
            .ok_or_else(|| BrokerError::Internal("message id space exhausted".to_owned()))?;
        let frame = message_frame::compose(&request.room, id, prev, request.tail.as_str());
        let message = Arc::new(StoredMessage {
            id,
            prev,
            frame: Bytes::from(frame),
            trace: TraceParent::of_span(&tracing::Span::current()),
        });
        history.entries.push_back(message.clone());
        history.last_id = id;
        let maxlen = usize::try_from(self.retention.history_maxlen).unwrap_or(usize::MAX);
        while history.entries.len() > maxlen {
            history.entries.pop_front();
        }
        history.expires_at = now + self.retention.history_ttl;
        if let Some(cmid) = request.idempotency_key {
            let expires_at = now + self.retention.idempotency_ttl;
            history.committed_cmids.insert(cmid.clone(), (id, prev, expires_at));
            history.cmid_expiry_order.push_back((expires_at, cmid));
        }
        // Still under the room lock: the live feed sees history order.
        if lock(&self.live_rooms).contains(&request.room)
            && let Some(sink) = self.live_sink()
        {
            sink.deliver(&request.room, message);
        }
        Ok(PublishOutcome {
            id,
            prev,
            duplicate: false,
        })
    }

    fn live_sink(&self) -> Option<Arc<dyn LiveSink>> {
        lock(&self.sink).as_ref().and_then(Weak::upgrade)
    }

    /// Runs `work` on a room's presence and hands its changes to the live
    /// sink (when the room is live here) under the presence lock.
    fn with_presence<T>(
        &self,
        room: &RoomName,
        work: impl FnOnce(&mut RoomPresence, Instant, &mut Vec<PresenceChange>) -> T,
    ) -> T {
        let now = Instant::now();
        let mut all = lock(&self.presence);
        let presence = all.entry(room.clone()).or_default();
        let mut changes = presence.sweep(now);
        let result = work(presence, now, &mut changes);
        if presence.is_empty() {
            all.remove(room);
        }
        if !changes.is_empty()
            && lock(&self.live_rooms).contains(room)
            && let Some(sink) = self.live_sink()
        {
            for change in changes {
                sink.presence(room, change);
            }
        }
        result
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn set_live_sink(&self, sink: Weak<dyn LiveSink>) {
        *lock(&self.sink) = Some(sink);
    }

    fn publish(&self, request: PublishRequest) -> PendingPublish {
        Box::pin(std::future::ready(self.commit(request)))
    }

    async fn read_after(&self, room: &RoomName, after: MessageId, limit: usize) -> Result<HistoryPage, BrokerError> {
        Ok(self.read(room, |history| {
            let start = history.entries.partition_point(|message| message.id <= after);
            start..history.entries.len().min(start.saturating_add(limit))
        }))
    }

    async fn read_before(
        &self,
        room: &RoomName,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        Ok(self.read(room, |history| {
            let end = before.map_or(history.entries.len(), |before| {
                history.entries.partition_point(|message| message.id < before)
            });
            end.saturating_sub(limit)..end
        }))
    }

    async fn subscribe_live(&self, room: &RoomName) -> Result<(), BrokerError> {
        // Take the room lock too, so no publish is half-way through delivery.
        let history = self.room_for_publish(room);
        let _publishes_wait = lock(&history);
        lock(&self.live_rooms).insert(room.clone());
        Ok(())
    }

    async fn unsubscribe_live(&self, room: &RoomName) -> Result<(), BrokerError> {
        lock(&self.live_rooms).remove(room);
        Ok(())
    }

    async fn is_ready(&self) -> bool {
        true
    }

    async fn presence_join(
        &self,
        room: &RoomName,
        entry: &PresenceEntry,
        lifetime: Duration,
        list: usize,
    ) -> Result<PresenceState, BrokerError> {
        Ok(self.with_presence(room, |presence, now, changes| {
            changes.extend(presence.add(entry, now + lifetime));
            presence.state(None, list)
        }))
    }

    async fn presence_refresh(
        &self,
        room: &RoomName,
        entries: &[PresenceEntry],
        lifetime: Duration,
    ) -> Result<(), BrokerError> {
        self.with_presence(room, |presence, now, changes| {
            changes.extend(entries.iter().filter_map(|entry| presence.add(entry, now + lifetime)));
        });
        Ok(())
    }

    async fn presence_leave(&self, room: &RoomName, entries: &[PresenceEntry]) -> Result<(), BrokerError> {
        self.with_presence(room, |presence, _, changes| {
            changes.extend(entries.iter().filter_map(|entry| presence.remove(&entry.id)));
        });
        Ok(())
    }

    async fn presence_sweep(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.with_presence(room, |_, _, _| ());
        Ok(())
    }

    async fn presence_members(
        &self,
        room: &RoomName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PresenceState, BrokerError> {
        Ok(self.with_presence(room, |presence, _, _| presence.state(after, limit)))
    }

    async fn presence_changes_after(
        &self,
        room: &RoomName,
        after: u64,
    ) -> Result<Option<Vec<PresenceChange>>, BrokerError> {
        Ok(self.with_presence(room, |presence, _, _| presence.changes_after(after)))
    }

    async fn signal(&self, room: &RoomName, frame: Bytes) -> Result<(), BrokerError> {
        if lock(&self.live_rooms).contains(room)
            && let Some(sink) = self.live_sink()
        {
            sink.signal(room, frame);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(maxlen: u64) -> RetentionSettings {
        RetentionSettings {
            history_maxlen: maxlen,
            history_ttl: Duration::from_secs(60),
            idempotency_ttl: Duration::from_secs(10),
            replicas_acked: 0,
        }
    }

    fn request(room: &str, cmid: Option<&str>) -> PublishRequest {
        PublishRequest {
            room: RoomName::parse(room).unwrap(),
            idempotency_key: cmid.map(|cmid| crate::protocol::idempotency_key(None, cmid)),
            tail: crate::protocol::MessageFrameTail::new(None, 0, cmid, "1"),
            connection: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn history_expires_ttl_after_the_last_message() {
        let broker = MemoryBroker::new(settings(10), &NodeTasks::new());
        let room = RoomName::parse("r").unwrap();
        broker.publish(request("r", None)).await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            broker
                .read_after(&room, MessageId::ZERO, 10)
                .await
                .unwrap()
                .messages
                .len(),
            1
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let page = broker.read_after(&room, MessageId::ZERO, 10).await.unwrap();
        assert!(page.messages.is_empty());
        assert_eq!(page.last_id, None);
        let next = broker.publish(request("r", None)).await.unwrap();
        assert_eq!(next.prev, MessageId::ZERO, "a new history starts after expiry");
    }

    #[tokio::test(start_paused = true)]
    async fn cmid_is_forgotten_after_the_idempotency_window() {
        let broker = MemoryBroker::new(settings(10), &NodeTasks::new());
        let first = broker.publish(request("r", Some("c"))).await.unwrap();
        let again = broker.publish(request("r", Some("c"))).await.unwrap();
        assert!(again.duplicate);
        assert_eq!((again.id, again.prev), (first.id, first.prev));
        tokio::time::advance(Duration::from_secs(11)).await;
        let later = broker.publish(request("r", Some("c"))).await.unwrap();
        assert!(!later.duplicate);
        assert!(later.id > first.id);
    }

    #[tokio::test(start_paused = true)]
    async fn sweeper_frees_expired_rooms() {
        let broker = MemoryBroker::new(settings(10), &NodeTasks::new());
        broker.publish(request("r", Some("c"))).await.unwrap();
        tokio::time::advance(Duration::from_secs(120)).await;
        broker.sweep_expired(Instant::now());
        assert!(lock(&broker.rooms).is_empty());
    }
}
