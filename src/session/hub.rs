//! The node's room hub: local subscribers per room, fan-out of the live feed,
//! and repair of the live feed from history.
//!
//! The hub turns a broker's live feed, which may drop messages (Redis Pub/Sub
//! does during a blip), into a verified sequence per room: it remembers the
//! last id it delivered in each room, and a message whose `prev` is not that
//! id makes it read the missing range from history first. Only when history
//! no longer holds the range do live subscribers get a `gap` frame.
//!
//! A new subscriber is attached in *buffering* mode: live messages are kept
//! for it while its resume reads history (see [`super::resume`]); it then
//! switches to *live* mode, in which the hub writes straight to its queue.
//! Locks here are plain mutexes held for short, non-async sections.
//!
//! The hub also carries each room's presence changes to its watchers (see
//! [`super::presence`] for the batching) and signals to its live
//! subscribers; both skip the chain and history entirely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::event::RoomEvent;
use super::handover::Handover;
use super::outbound::{ConnectionHandle, LiveMessage, Outbound};
use super::presence::{PRESENCE_BATCH, PresenceTiming, Watcher};
use crate::broker::{Broker, BrokerError, LiveSink, PresenceChange, PresenceEntry, PresenceState, StoredMessage};
use crate::protocol::{MessageId, RoomName, message_frame, wall_clock_ms};
use crate::tasks::NodeTasks;
use crate::telemetry::{Metrics, trace_context};

/// Messages read per history request while repairing.
const REPAIR_PAGE: usize = 1000;
/// Longest wait between two attempts to read history during a repair.
const REPAIR_MAX_BACKOFF: Duration = Duration::from_secs(5);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything that
    // could panic, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a resuming subscriber may hold of live messages: as much as its
/// live queue may (`RELAY_OUTBOUND_QUEUE` and `RELAY_OUTBOUND_QUEUE_BYTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimit {
    /// Most messages.
    pub messages: usize,
    /// Most bytes of frames.
    pub bytes: usize,
}

enum Mode {
    /// Live messages held while the subscriber resumes, and their bytes.
    Buffering(Vec<Arc<LiveMessage>>, usize),
    /// `skip_through`: the last message the subscriber was sent from
    /// history, until a live message passes it.
    Live { skip_through: Option<MessageId> },
}

struct LocalSubscriber {
    key: u64,
    connection: ConnectionHandle,
    mode: Mode,
    /// Present for a subscription with `presence: true` (boxed: rare).
    watcher: Option<Box<Watcher>>,
}

struct PendingRepair {
    /// Live messages that arrived while history was being read.
    held: Vec<Arc<LiveMessage>>,
    /// Read history to its end, not only up to the first held message.
    to_end: bool,
}

#[derive(Default)]
struct RoomState {
    subscribers: Vec<LocalSubscriber>,
    last_delivered: Option<MessageId>,
    /// Where a room that has fanned nothing out live yet continues from:
    /// the newest id its live subscribers read from history. A feed
    /// reconnect repairs from it (else the next live message would go out
    /// over the hole; the soak found this). It never gates the fan-out, so
    /// messages still in flight reach buffering and live-only subscribers.
    resume_position: Option<MessageId>,
    repair: Option<PendingRepair>,
    broker_subscribed: bool,
    /// Presence changes since the last batch, in version order; kept only
    /// while the room has watchers here.
    presence_batch: Vec<PresenceChange>,
    /// The newest presence version received without a gap before it.
    presence_version: Option<u64>,
    /// A read of missed presence changes is under way (after this version):
    /// the room's batches wait for it.
    presence_repair: Option<u64>,
    /// Another gap showed up during that read: read again when it ends.
    presence_repair_again: bool,
    /// How busy the room's fan-out is: decides direct writes.
    pace: FanOutPace,
}

/// When the fan-out writes a message straight to idle sockets itself.
///
/// A direct write saves the connection's task a wake-up, but it is one
/// send per socket, one message at a time. While the room's fan-out rests
/// at least as long as its sends kept the cores busy (wall time times the
/// cores they were spread over: a room below saturation), that is the
/// cheapest way. When messages come faster, they are queued instead: the
/// connections' writers run on every core and write what piled up in one
/// vectored write each (a batch of 64 frames costs the kernel about what
/// 2 single sends do). Measured (docs/benchmarks.md): resting twice as long
/// flipped a room of 2,000 at 10 messages/s between the two ways; counting
/// wall time only kept a room at 100 to 250 messages/s writing directly.
#[derive(Default)]
struct FanOutPace {
    /// When the last fan-out ended, and the core time its sends took
    /// (wall time times the cores they were spread over).
    last: Option<(Instant, Duration)>,
}

impl FanOutPace {
    fn direct_allowed(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|(ended, busy)| now.saturating_duration_since(ended) >= busy)
    }

    fn record(&mut self, started: Instant, cores: usize) {
        let ended = Instant::now();
        let busy = ended.saturating_duration_since(started) * u32::try_from(cores).unwrap_or(u32::MAX);
        self.last = Some((ended, busy));
    }
}

impl RoomState {
    fn has_watchers(&self) -> bool {
        self.subscribers.iter().any(|subscriber| subscriber.watcher.is_some())
    }
}

struct LocalRoom {
    name: RoomName,
    state: Mutex<RoomState>,
    /// Serializes subscribe and unsubscribe calls to the broker for the room.
    broker_subscription: tokio::sync::Mutex<()>,
}

/// The hub; one per node. See the module docs.
pub struct RoomHub {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    rooms: Mutex<HashMap<RoomName, Arc<LocalRoom>>>,
    buffer_limit: BufferLimit,
    next_key: std::sync::atomic::AtomicU64,
    /// The hub's own `Arc`, for work that `LiveSink` calls (given `&self`) spawn.
    this: std::sync::Weak<RoomHub>,
    /// Owner of the repair and release tasks.
    tasks: Arc<NodeTasks>,
    /// Presence entry lifetime and upkeep.
    presence: PresenceTiming,
    /// Set when the node drains: no more refreshes, and joins only read.
    presence_closed: std::sync::atomic::AtomicBool,
    /// During a drain, the entries of drained connections waiting for
    /// their users to join elsewhere; `None` otherwise.
    handover: Mutex<Option<Handover>>,
    /// Unique to this process, so entries of a restarted node never collide.
    incarnation: u64,
}

/// A subscriber's place in a room; detaches itself when dropped.
pub struct Subscription {
    hub: Arc<RoomHub>,
    room: Arc<LocalRoom>,
    key: u64,
    /// Set by a drain: the presence entry stays until then.
    handover: Option<Instant>,
}

impl RoomHub {
    /// Creates the hub and connects it to the broker's live feed.
    /// `buffer_limit` bounds what a subscriber may hold while it resumes
    /// (past it, the subscriber is a slow consumer).
    /// Starts the presence batch and upkeep tasks as tasks of `tasks`.
    pub fn new(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        buffer_limit: BufferLimit,
        tasks: Arc<NodeTasks>,
        presence: PresenceTiming,
    ) -> Arc<Self> {
        let hub = Arc::new_cyclic(|this| Self {
            broker: broker.clone(),
            metrics,
            rooms: Mutex::new(HashMap::new()),
            buffer_limit: BufferLimit {
                messages: buffer_limit.messages.max(1),
                bytes: buffer_limit.bytes,
            },
            next_key: std::sync::atomic::AtomicU64::new(1),
            this: this.clone(),
            tasks: tasks.clone(),
            presence,
            presence_closed: std::sync::atomic::AtomicBool::new(false),
            handover: Mutex::new(None),
            incarnation: fastrand::u64(..),
        });
        let sink: Arc<dyn LiveSink> = hub.clone();
        broker.set_live_sink(Arc::downgrade(&sink));
        let weak = Arc::downgrade(&hub);
        tasks.spawn("presence batches", async move {
            let mut ticks = tokio::time::interval(PRESENCE_BATCH);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                hub.send_presence_batches();
            }
        });
        let weak = Arc::downgrade(&hub);
        tasks.spawn("presence upkeep", async move {
            let every = presence.upkeep_interval();
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                hub.presence_upkeep().await;
            }
        });
        hub
    }

    /// The presence entry of a new connection-subscription of `user`.
    #[must_use]
    pub fn presence_entry(&self, user: Option<&str>) -> PresenceEntry {
        let key = self.next_key.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PresenceEntry {
            id: format!("{:016x}:{key}", self.incarnation),
            user: user.map(str::to_owned),
        }
    }

    /// Sends every room's batch of presence changes to its watchers.
    fn send_presence_batches(&self) {
        let rooms: Vec<_> = lock(&self.rooms).values().cloned().collect();
        for local in rooms {
            let mut state = lock(&local.state);
            if state.presence_batch.is_empty() || state.presence_repair.is_some() {
                continue;
            }
            let batch = std::mem::take(&mut state.presence_batch);
            let mut shared = None;
            for subscriber in &mut state.subscribers {
                let Some(watcher) = subscriber.watcher.as_mut() else {
                    continue;
                };
                match subscriber.mode {
                    Mode::Buffering(..) => watcher.hold(&batch),
                    Mode::Live { .. } => {
                        if watcher.seen.is_none() {
                            watcher.hold(&batch);
                        } else if let Some(frame) = watcher.frame(&local.name, &batch, &mut shared)
                            && subscriber
                                .connection
                                .offer(Outbound::Room(RoomEvent::presence(&local.name, frame)))
                        {
                            self.metrics.presence_frames.inc();
                        }
                    }
                }
            }
        }
    }

    /// Refreshes this node's entries, room by room; each call also sweeps
    /// the room's expired entries (those of nodes that died).
    async fn presence_upkeep(&self) {
        if self.presence_closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        for (room, entries) in self.presence_entries() {
            if let Err(error) = self
                .broker
                .presence_refresh(&room, &entries, self.presence.entry_lifetime())
                .await
            {
                tracing::warn!(%room, %error, "could not refresh presence; retrying at the next upkeep");
            }
        }
    }

    fn presence_entries(&self) -> Vec<(RoomName, Vec<PresenceEntry>)> {
        let rooms: Vec<_> = lock(&self.rooms).values().cloned().collect();
        rooms
            .into_iter()
            .filter_map(|local| {
                let state = lock(&local.state);
                let entries: Vec<PresenceEntry> = state
                    .subscribers
                    .iter()
                    .filter_map(|subscriber| subscriber.watcher.as_ref().map(|watcher| watcher.entry.clone()))
                    .collect();
                (!entries.is_empty()).then(|| (local.name.clone(), entries))
            })
            .collect()
    }

    /// The drain's presence (see `session::handover`): stops refreshing
    /// the node's entries, removes each handed-over entry when it is due,
    /// and at `ends` (or once no entry is left, here or waiting) removes
    /// every entry the node still has. Each broker call is bounded.
    pub async fn hand_over_presence(&self, ends: Instant) {
        /// How often the end of the hand-over is looked for.
        const CHECK: Duration = Duration::from_millis(100);
        self.presence_closed.store(true, std::sync::atomic::Ordering::Release);
        lock(&self.handover).get_or_insert_with(Handover::default);
        loop {
            let now = Instant::now();
            let (due, next, waiting) = {
                let mut handover = lock(&self.handover);
                let pending = handover.get_or_insert_with(Handover::default);
                (pending.take_due(now), pending.next_due(), !pending.is_empty())
            };
            self.leave_presence(due).await;
            if now >= ends || (!waiting && self.presence_entries().is_empty()) {
                break;
            }
            let wake = next.unwrap_or(ends).min(ends).min(now + CHECK);
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        }
        let rest = lock(&self.handover)
            .take()
            .map(|mut pending| pending.take_all())
            .unwrap_or_default();
        self.leave_presence(rest).await;
        self.leave_presence(self.presence_entries()).await;
    }

    async fn leave_presence(&self, rooms: Vec<(RoomName, Vec<PresenceEntry>)>) {
        let leaves = rooms.into_iter().map(|(room, entries)| async move {
            if let Err(error) = self.broker.presence_leave(&room, &entries).await {
                tracing::warn!(%room, %error, "could not remove presence at drain; it expires within the TTL");
            }
        });
        futures_util::future::join_all(leaves).await;
    }

    /// The broker behind the hub.
    #[must_use]
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Attaches a subscriber to a room in buffering mode and makes sure the
    /// broker's live feed of the room is confirmed before returning.
    ///
    /// # Errors
    /// [`BrokerError`] when the live feed could not be confirmed; the
    /// subscriber is detached again.
    pub async fn attach(
        self: &Arc<Self>,
        room: &RoomName,
        connection: ConnectionHandle,
    ) -> Result<Subscription, BrokerError> {
        let key = self.next_key.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let local = {
            let mut rooms = lock(&self.rooms);
            let local = rooms
                .entry(room.clone())
                .or_insert_with(|| {
                    Arc::new(LocalRoom {
                        name: room.clone(),
                        state: Mutex::new(RoomState::default()),
                        broker_subscription: tokio::sync::Mutex::new(()),
                    })
                })
                .clone();
            lock(&local.state).subscribers.push(LocalSubscriber {
                key,
                connection,
                mode: Mode::Buffering(Vec::new(), 0),
                watcher: None,
            });
            self.metrics.rooms.set(i64::try_from(rooms.len()).unwrap_or(i64::MAX));
            local
        };
        self.metrics.subscriptions.inc();
        let subscription = Subscription {
            hub: self.clone(),
            room: local.clone(),
            key,
            handover: None,
        };
        {
            let _serialized = local.broker_subscription.lock().await;
            let needs_broker = !lock(&local.state).broker_subscribed;
            if needs_broker {
                self.broker.subscribe_live(room).await?;
                lock(&local.state).broker_subscribed = true;
            }
        }
        Ok(subscription)
    }

    fn detach(self: &Arc<Self>, local: &Arc<LocalRoom>, key: u64, handover: Option<Instant>) {
        let (now_empty, watcher) = {
            let mut state = lock(&local.state);
            let position = state.subscribers.iter().position(|subscriber| subscriber.key == key);
            let watcher = position.and_then(|position| state.subscribers.swap_remove(position).watcher);
            if !state.has_watchers() {
                state.presence_batch.clear();
                // Continuity is not tracked without watchers.
                state.presence_version = None;
            }
            (state.subscribers.is_empty(), watcher)
        };
        self.metrics.subscriptions.dec();
        // A drained connection's entry waits for its user to join
        // elsewhere; when the drain's hand-over is over, it leaves now.
        let watcher = watcher.and_then(|watcher| match (handover, lock(&self.handover).as_mut()) {
            (Some(until), Some(pending)) => {
                pending.keep(local.name.clone(), watcher.entry, until);
                None
            }
            _ => Some(watcher),
        });
        if let Some(watcher) = watcher {
            let broker = self.broker.clone();
            let room = local.name.clone();
            self.tasks.spawn_if_running("presence leave", async move {
                if let Err(error) = broker.presence_leave(&room, &[watcher.entry]).await {
                    tracing::warn!(%room, %error, "could not remove a presence entry; it expires within the TTL");
                }
            });
        }
        if now_empty {
            let hub = self.clone();
            let local = local.clone();
            // Dropping happens in sync code; the broker call needs a task.
            self.tasks
                .spawn_if_running("room release", async move { hub.release_room(&local).await });
        }
    }

    async fn release_room(&self, local: &Arc<LocalRoom>) {
        let _serialized = local.broker_subscription.lock().await;
        let unsubscribe = {
            let state = lock(&local.state);
            state.subscribers.is_empty() && state.broker_subscribed
        };
        if unsubscribe {
            if let Err(error) = self.broker.unsubscribe_live(&local.name).await {
                tracing::warn!(room = %local.name, %error, "could not stop the live feed of a room; it will be dropped on the next reconnect");
            }
            let mut state = lock(&local.state);
            state.broker_subscribed = false;
            // Continuity is not tracked while the feed is off.
            state.last_delivered = None;
            state.resume_position = None;
        }
        let mut rooms = lock(&self.rooms);
        let idle = {
            let state = lock(&local.state);
            state.subscribers.is_empty() && !state.broker_subscribed
        };
        if idle
            && rooms
                .get(&local.name)
                .is_some_and(|current| Arc::ptr_eq(current, local))
        {
            rooms.remove(&local.name);
        }
        self.metrics.rooms.set(i64::try_from(rooms.len()).unwrap_or(i64::MAX));
    }

    /// Reads the room's presence changes after `after` (which the live feed
    /// may have dropped) into its batch; the batch is held meanwhile.
    fn start_presence_repair(&self, local: &Arc<LocalRoom>, state: &mut RoomState, after: u64) {
        if state.presence_repair.is_some() {
            state.presence_repair_again = true;
            return;
        }
        state.presence_repair = Some(after);
        self.metrics.live_repairs.inc();
        let Some(hub) = self.this.upgrade() else { return };
        let local = local.clone();
        self.tasks
            .spawn_if_running("presence repair", async move { hub.repair_presence(local).await });
    }

    async fn repair_presence(self: Arc<Self>, local: Arc<LocalRoom>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(after) = lock(&local.state).presence_repair else {
                return;
            };
            let read = self.broker.presence_changes_after(&local.name, after).await;
            let mut state = lock(&local.state);
            match read {
                Ok(changes) => {
                    if let Some(changes) = changes {
                        let newest = changes.last().map(|change| change.version);
                        for change in changes {
                            insert_change(&mut state.presence_batch, change);
                        }
                        state.presence_version = state.presence_version.max(newest);
                    } else {
                        tracing::warn!(
                            room = %local.name,
                            after,
                            "presence changes were missed and the room's change log no longer holds them; member lists may be stale until those users change again"
                        );
                    }
                    if std::mem::take(&mut state.presence_repair_again) {
                        continue;
                    }
                    state.presence_repair = None;
                    return;
                }
                Err(error) if backoff < REPAIR_MAX_BACKOFF => {
                    drop(state);
                    tracing::warn!(room = %local.name, %error, retry_in_ms = backoff.as_millis(), "cannot read missed presence changes");
                    tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
                    backoff *= 2;
                }
                Err(error) => {
                    tracing::warn!(room = %local.name, %error, "gave up reading missed presence changes");
                    state.presence_repair = None;
                    return;
                }
            }
        }
    }

    fn room(&self, name: &RoomName) -> Option<Arc<LocalRoom>> {
        lock(&self.rooms).get(name).cloned()
    }

    /// Delivers in order, or starts a repair when the chain is broken.
    fn accept(self: &Arc<Self>, local: &Arc<LocalRoom>, state: &mut RoomState, message: Arc<LiveMessage>) {
        if let Some(repair) = &mut state.repair {
            repair.held.push(message);
            return;
        }
        match state.last_delivered {
            Some(last) if message.id <= last => {}
            Some(last) if message.prev != last => {
                state.repair = Some(PendingRepair {
                    held: vec![message],
                    to_end: false,
                });
                self.metrics.live_repairs.inc();
                self.spawn_repair(local.clone());
            }
            _ => self.fan_out(&local.name, state, &message),
        }
    }

    fn fan_out(&self, room: &RoomName, state: &mut RoomState, message: &Arc<LiveMessage>) {
        state.last_delivered = Some(message.id);
        let started = Instant::now();
        // Buffering subscribers keep the message; a subscriber switching
        // from history to live skips what history gave it and learns of
        // a break in the chain. The rest get it below.
        for subscriber in &mut state.subscribers {
            match &mut subscriber.mode {
                Mode::Buffering(held, bytes) => {
                    let size = message.frame().len();
                    if held.len() >= self.buffer_limit.messages || bytes.saturating_add(size) > self.buffer_limit.bytes
                    {
                        subscriber.connection.mark_slow();
                    } else {
                        held.push(message.clone());
                        *bytes += size;
                    }
                }
                Mode::Live {
                    skip_through: Some(skip),
                } => {
                    if message.id <= *skip {
                        continue;
                    }
                    // The first live message past what history gave the
                    // subscriber must chain to it. It always does when
                    // history and the feed are one stream; on a cluster, a
                    // read answered by a primary that was failed over (and
                    // then drops its writes) breaks it, and the subscriber
                    // is told.
                    if message.prev != *skip {
                        self.metrics.gaps.inc();
                        subscriber.connection.offer(Outbound::Room(RoomEvent::gap(
                            room,
                            Some(*skip),
                            Some(message.id),
                        )));
                    }
                    subscriber.mode = Mode::Live { skip_through: None };
                }
                Mode::Live { skip_through: None } => {}
            }
        }
        let live = state
            .subscribers
            .iter()
            .filter(|subscriber| matches!(subscriber.mode, Mode::Live { skip_through: None }))
            .map(|subscriber| &subscriber.connection);
        let (delivered, cores) = if state.pace.direct_allowed(started) {
            write_out(live, message)
        } else {
            let queued = live
                .filter(|connection| connection.offer(Outbound::Message(message.clone())))
                .count();
            (queued, 1)
        };
        state.pace.record(started, cores);
        self.metrics.messages_delivered.inc_by(delivered as u64);
    }

    fn announce_gap(&self, room: &RoomName, state: &mut RoomState, next: MessageId) {
        self.metrics.gaps.inc();
        tracing::warn!(%room, after = ?state.last_delivered, %next, "live feed lost messages that history no longer holds");
        let gap = RoomEvent::gap(room, state.last_delivered, Some(next));
        for subscriber in &state.subscribers {
            // A buffering subscriber finds the break itself from the chain,
            // and so does one just past its replay (the fan-out checks that
            // the next message continues it): each is told once.
            if matches!(subscriber.mode, Mode::Live { skip_through: None }) {
                subscriber.connection.offer(Outbound::Room(gap.clone()));
            }
        }
    }

    fn spawn_repair(self: &Arc<Self>, local: Arc<LocalRoom>) {
        let hub = self.clone();
        self.tasks
            .spawn_if_running("live feed repair", async move { hub.repair(local).await });
    }

    /// Reads the missing range from history, delivers it, then what was held
    /// meanwhile. Loops while new breaks show up; retries reads with backoff.
    async fn repair(self: Arc<Self>, local: Arc<LocalRoom>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let (after, until) = {
                let mut state = lock(&local.state);
                let Some(repair) = &state.repair else { return };
                let until = if repair.to_end {
                    None
                } else {
                    repair.held.first().map(|message| message.id)
                };
                match state.last_delivered.or(state.resume_position) {
                    Some(after) if !state.subscribers.is_empty() => (after, until),
                    _ => {
                        // Nothing to continue from, or nobody to deliver to.
                        let held = state.repair.take().map(|repair| repair.held).unwrap_or_default();
                        for message in held {
                            if state.last_delivered.is_none_or(|last| message.id > last) {
                                self.fan_out(&local.name, &mut state, &message);
                            }
                        }
                        return;
                    }
                }
            };
            let fetched = match self.read_range(&local.name, after, until).await {
                Ok(fetched) => fetched,
                Err(error) => {
                    tracing::warn!(room = %local.name, %error, retry_in_ms = backoff.as_millis(), "cannot read history to repair the live feed");
                    tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
                    backoff = (backoff * 2).min(REPAIR_MAX_BACKOFF);
                    continue;
                }
            };
            let mut state = lock(&local.state);
            for message in fetched {
                self.deliver_checked(&local.name, &mut state, &message);
            }
            let Some(repair) = state.repair.take() else {
                return;
            };
            let mut held = repair.held.into_iter();
            let mut broken_again = None;
            for (index, message) in held.by_ref().enumerate() {
                let last = state.last_delivered.unwrap_or(MessageId::ZERO);
                if message.id <= last {
                    continue;
                }
                if message.prev != last && index > 0 {
                    broken_again = Some(message);
                    break;
                }
                // For the first held message, history had everything it holds
                // up to it: a remaining break cannot be repaired.
                self.deliver_checked(&local.name, &mut state, &message);
            }
            match broken_again {
                None => return,
                Some(first) => {
                    let mut rest = vec![first];
                    rest.extend(held);
                    state.repair = Some(PendingRepair {
                        held: rest,
                        to_end: false,
                    });
                    self.metrics.live_repairs.inc();
                }
            }
        }
    }

    fn deliver_checked(&self, room: &RoomName, state: &mut RoomState, message: &Arc<LiveMessage>) {
        let Some(last) = state.last_delivered.or(state.resume_position) else {
            self.fan_out(room, state, message);
            return;
        };
        if message.id <= last {
            return;
        }
        if message.prev != last {
            self.announce_gap(room, state, message.id);
        }
        self.fan_out(room, state, message);
    }

    /// History after `after`, up to (not including) `until`, or to its end.
    async fn read_range(
        &self,
        room: &RoomName,
        after: MessageId,
        until: Option<MessageId>,
    ) -> Result<Vec<Arc<LiveMessage>>, BrokerError> {
        let mut fetched = Vec::new();
        let mut cursor = after;
        loop {
            let page = self.broker.read_after(room, cursor, REPAIR_PAGE).await?;
            let full_page = page.messages.len() == REPAIR_PAGE;
            for stored in &page.messages {
                if until.is_some_and(|until| stored.id >= until) {
                    return Ok(fetched);
                }
                cursor = stored.id;
                if let Some(message) = live_message(room, stored) {
                    fetched.push(message);
                }
            }
            if !full_page {
                return Ok(fetched);
            }
        }
    }

    /// Catches rooms up from history after their live feed may have
    /// dropped messages: presence from the change log, messages from the
    /// room's resume position on (a repair to the end of the stream).
    fn resync(&self, rooms: Vec<Arc<LocalRoom>>) {
        for local in &rooms {
            // Presence changes published while the feed was down are read
            // from the room's change log.
            let mut state = lock(&local.state);
            if let Some(last) = state.presence_version
                && state.has_watchers()
            {
                self.start_presence_repair(local, &mut state, last);
            }
        }
        for local in rooms {
            let start = {
                let mut state = lock(&local.state);
                let position = state.last_delivered.or(state.resume_position);
                match (&mut state.repair, position) {
                    (Some(repair), _) => {
                        repair.to_end = true;
                        false
                    }
                    (None, Some(_)) => {
                        state.repair = Some(PendingRepair {
                            held: Vec::new(),
                            to_end: true,
                        });
                        true
                    }
                    (None, None) => false,
                }
            };
            if start {
                self.metrics.live_repairs.inc();
                if let Some(hub) = self.this.upgrade() {
                    hub.spawn_repair(local);
                }
            }
        }
    }
}

/// Puts a change into a batch kept in version order, once.
/// A room with more live subscribers than this here has its direct writes
/// spread over the node's cores.
const PARALLEL_ABOVE: usize = 256;
/// Subscribers one core takes at a time when the writes are spread.
const PARALLEL_CHUNK: usize = 64;

/// Hands `message` to each of `connections`, written straight to the
/// socket where the connection allows it: one send per socket, so a large
/// room's sends are spread over the node's cores (rayon's pool). The next
/// message of the room starts only once every send of this one is done,
/// so each connection keeps the room's order. Returns how many took it, and
/// over how many cores the sends were spread.
fn write_out<'a>(
    connections: impl Iterator<Item = &'a ConnectionHandle> + Clone,
    message: &Arc<LiveMessage>,
) -> (usize, usize) {
    let offer = |connection: &&ConnectionHandle| connection.offer_or_write(Outbound::Message(message.clone()));
    if connections.clone().count() <= PARALLEL_ABOVE || rayon::current_num_threads() < 2 {
        return (connections.filter(offer).count(), 1);
    }
    let connections: Vec<&ConnectionHandle> = connections.collect();
    let delivered = connections
        .par_chunks(PARALLEL_CHUNK)
        .map(|chunk| chunk.iter().copied().filter(offer).count())
        .sum();
    (delivered, rayon::current_num_threads())
}

fn insert_change(batch: &mut Vec<PresenceChange>, change: PresenceChange) {
    let at = batch.partition_point(|held| held.version < change.version);
    if batch.get(at).is_none_or(|held| held.version != change.version) {
        batch.insert(at, change);
    }
}

/// Wraps a stored message for delivery, logging one the broker corrupted.
pub(crate) fn live_message(room: &RoomName, stored: &StoredMessage) -> Option<Arc<LiveMessage>> {
    let message = LiveMessage::from_stored(room, stored);
    if message.is_none() {
        tracing::error!(%room, id = %stored.id, "broker returned a message frame that is not UTF-8; skipped");
    }
    message
}

impl LiveSink for RoomHub {
    fn presence(&self, room: &RoomName, change: PresenceChange) {
        let Some(local) = self.room(room) else { return };
        let mut state = lock(&local.state);
        if !state.has_watchers() {
            return;
        }
        match state.presence_version {
            Some(last) if change.version > last + 1 => {
                // The live feed dropped changes (a Pub/Sub blip): read them.
                self.start_presence_repair(&local, &mut state, last);
                state.presence_version = Some(change.version);
            }
            Some(last) if change.version <= last => {}
            _ => state.presence_version = Some(change.version),
        }
        insert_change(&mut state.presence_batch, change);
    }

    fn signal(&self, room: &RoomName, frame: bytes::Bytes) {
        let Some(local) = self.room(room) else { return };
        let Ok(text) = String::from_utf8(frame.to_vec()) else {
            tracing::error!(%room, "signal from the broker is not UTF-8; skipped");
            return;
        };
        let signal = RoomEvent::signal(room, text);
        let state = lock(&local.state);
        for subscriber in &state.subscribers {
            // Signals are live only: a subscriber still resuming misses them.
            if matches!(subscriber.mode, Mode::Live { .. }) {
                subscriber.connection.offer_or_drop(Outbound::Room(signal.clone()));
            }
        }
    }

    fn deliver(&self, room: &RoomName, stored: Arc<StoredMessage>) {
        let Some(local) = self.room(room) else { return };
        let Some(message) = live_message(room, &stored) else {
            return;
        };
        let Some(hub) = self.this.upgrade() else {
            return;
        };
        let span = trace_context::delivery_span(room, stored.id, stored.trace.as_ref());
        let _in_span = span.enter();
        if let Some(published_ms) = message_frame::ts_ms(&stored.frame) {
            let age_ms = wall_clock_ms().saturating_sub(published_ms);
            #[allow(clippy::cast_precision_loss, reason = "milliseconds far below 2^52")]
            self.metrics.delivery_latency.observe(age_ms as f64 / 1000.0);
        }
        let mut state = lock(&local.state);
        hub.accept(&local, &mut state, message);
    }

    fn resync_all(&self) {
        self.metrics.live_feed_resyncs.inc();
        let rooms: Vec<_> = lock(&self.rooms).values().cloned().collect();
        self.resync(rooms);
    }

    fn resync_rooms(&self, rooms: &[RoomName]) {
        self.metrics.live_feed_resyncs.inc();
        let rooms: Vec<_> = {
            let known = lock(&self.rooms);
            rooms.iter().filter_map(|room| known.get(room).cloned()).collect()
        };
        self.resync(rooms);
    }
}

impl Subscription {
    /// Keeps the subscription's presence entry, once it is dropped, until
    /// `until` (see `session::handover`); only while the node drains.
    pub fn hand_over(&mut self, until: Instant) {
        self.handover = Some(until);
    }

    /// The room subscribed to.
    #[must_use]
    pub fn room(&self) -> &RoomName {
        &self.room.name
    }

    /// Makes the subscription a presence watcher with `entry` and returns
    /// the room's presence after its join (first `list` members). After a
    /// drain started, the node only reads: nothing joins.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker failed; the entry (which may have
    /// been stored) is removed when the subscription is dropped.
    pub async fn join_presence(&self, entry: PresenceEntry, list: usize) -> Result<PresenceState, BrokerError> {
        let hub = &self.hub;
        let closed = hub.presence_closed.load(std::sync::atomic::Ordering::Acquire);
        {
            let mut state = lock(&self.room.state);
            if let Some(subscriber) = state
                .subscribers
                .iter_mut()
                .find(|subscriber| subscriber.key == self.key)
            {
                subscriber.watcher = Some(Box::new(Watcher::new(entry.clone())));
            }
        }
        let presence = if closed {
            hub.broker.presence_members(&self.room.name, None, list).await?
        } else {
            hub.broker
                .presence_join(&self.room.name, &entry, hub.presence.entry_lifetime(), list)
                .await?
        };
        let mut state = lock(&self.room.state);
        state.presence_version = state.presence_version.max(Some(presence.version));
        if let Some(watcher) = state
            .subscribers
            .iter_mut()
            .find(|subscriber| subscriber.key == self.key)
            .and_then(|subscriber| subscriber.watcher.as_mut())
        {
            watcher.seen = Some(presence.version);
        }
        Ok(presence)
    }

    /// Hands over what was buffered for the subscriber, or, when nothing is,
    /// switches it to live mode (atomically with the room's fan-out), from
    /// then on skipping messages up to `last_sent`. `None` means it is live.
    #[must_use]
    pub fn take_buffered_or_go_live(&self, last_sent: Option<MessageId>) -> Option<Vec<Arc<LiveMessage>>> {
        let mut state = lock(&self.room.state);
        let subscriber = state
            .subscribers
            .iter_mut()
            .find(|subscriber| subscriber.key == self.key)?;
        match &mut subscriber.mode {
            Mode::Buffering(held, bytes) if !held.is_empty() => {
                *bytes = 0;
                Some(std::mem::take(held))
            }
            Mode::Buffering(..) => {
                subscriber.mode = Mode::Live {
                    skip_through: last_sent,
                };
                if state.last_delivered.is_none() {
                    state.resume_position = state.resume_position.max(last_sent);
                }
                None
            }
            Mode::Live { .. } => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.detach(&self.room, self.key, self.handover);
    }
}
