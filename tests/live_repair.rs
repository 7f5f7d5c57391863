//! The hub repairs a lossy live feed from history. A wrapper around the real
//! memory broker drops chosen live deliveries (as Redis Pub/Sub does during
//! a blip); subscribers must still get every message exactly once, in order,
//! and a `gap` only where history lost the range too.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chat_relay::broker::{
    Broker, BrokerError, HistoryPage, LiveSink, MemoryBroker, PendingPublish, PresenceChange, PresenceEntry,
    PresenceState, PublishOutcome, PublishRequest, RetentionSettings, StoredMessage,
};
use chat_relay::protocol::{MessageFrameTail, MessageId, ReplayRequest, RoomName};
use chat_relay::session::{
    ConnectionHandle, HistoryBudget, Outbound, ReplayMemory, ResumeTarget, RoomHub, Subscription, subscribe_and_resume,
};
use chat_relay::tasks::NodeTasks;
use chat_relay::telemetry::Metrics;
use serde_json::Value;

/// Which publishes (by 0-based order) never reach the live feed.
struct LossyBroker {
    inner: Arc<MemoryBroker>,
    state: Arc<LossState>,
}

struct LossState {
    dropped: Mutex<HashSet<usize>>,
    seen: Mutex<usize>,
    offline: Mutex<bool>,
    sink: Mutex<Option<Weak<dyn LiveSink>>>,
    /// A history page the next `read_after` answers instead of the broker,
    /// as a primary that was failed over (and will drop its writes) does.
    stale_read: Mutex<Option<HistoryPage>>,
}

struct LossySink(Arc<LossState>);

impl LiveSink for LossySink {
    fn deliver(&self, room: &RoomName, message: Arc<StoredMessage>) {
        let index = {
            let mut seen = self.0.seen.lock().unwrap();
            *seen += 1;
            *seen - 1
        };
        if self.0.dropped.lock().unwrap().contains(&index) || *self.0.offline.lock().unwrap() {
            return;
        }
        if let Some(sink) = self.0.sink.lock().unwrap().as_ref().and_then(Weak::upgrade) {
            sink.deliver(room, message);
        }
    }

    fn resync_rooms(&self, _rooms: &[chat_relay::protocol::RoomName]) {
        self.resync_all();
    }

    fn resync_all(&self) {
        if let Some(sink) = self.0.sink.lock().unwrap().as_ref().and_then(Weak::upgrade) {
            sink.resync_all();
        }
    }

    fn presence(&self, room: &RoomName, change: PresenceChange) {
        if let Some(sink) = self.0.sink.lock().unwrap().as_ref().and_then(Weak::upgrade) {
            sink.presence(room, change);
        }
    }

    fn signal(&self, room: &RoomName, frame: bytes::Bytes) {
        if let Some(sink) = self.0.sink.lock().unwrap().as_ref().and_then(Weak::upgrade) {
            sink.signal(room, frame);
        }
    }
}

#[async_trait]
impl Broker for LossyBroker {
    fn kind(&self) -> &'static str {
        "lossy-memory"
    }
    fn set_live_sink(&self, sink: Weak<dyn LiveSink>) {
        *self.state.sink.lock().unwrap() = Some(sink);
        let lossy: Arc<dyn LiveSink> = Arc::new(LossySink(self.state.clone()));
        self.inner.set_live_sink(Arc::downgrade(&lossy));
        std::mem::forget(lossy);
    }
    fn publish(&self, request: PublishRequest) -> PendingPublish {
        self.inner.publish(request)
    }
    async fn read_after(&self, room: &RoomName, after: MessageId, limit: usize) -> Result<HistoryPage, BrokerError> {
        if let Some(stale) = self.state.stale_read.lock().unwrap().take() {
            return Ok(stale);
        }
        self.inner.read_after(room, after, limit).await
    }
    async fn read_before(
        &self,
        room: &RoomName,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        self.inner.read_before(room, before, limit).await
    }
    async fn subscribe_live(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.inner.subscribe_live(room).await
    }
    async fn unsubscribe_live(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.inner.unsubscribe_live(room).await
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
        self.inner.presence_join(room, entry, lifetime, list).await
    }
    async fn presence_refresh(
        &self,
        room: &RoomName,
        entries: &[PresenceEntry],
        lifetime: Duration,
    ) -> Result<(), BrokerError> {
        self.inner.presence_refresh(room, entries, lifetime).await
    }
    async fn presence_leave(&self, room: &RoomName, entries: &[PresenceEntry]) -> Result<(), BrokerError> {
        self.inner.presence_leave(room, entries).await
    }
    async fn presence_sweep(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.inner.presence_sweep(room).await
    }
    async fn presence_members(
        &self,
        room: &RoomName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PresenceState, BrokerError> {
        self.inner.presence_members(room, after, limit).await
    }
    async fn presence_changes_after(
        &self,
        room: &RoomName,
        after: u64,
    ) -> Result<Option<Vec<PresenceChange>>, BrokerError> {
        self.inner.presence_changes_after(room, after).await
    }
    async fn signal(&self, room: &RoomName, frame: bytes::Bytes) -> Result<(), BrokerError> {
        self.inner.signal(room, frame).await
    }
}

struct Setup {
    broker: Arc<LossyBroker>,
    hub: Arc<RoomHub>,
    state: Arc<LossState>,
    room: RoomName,
}

fn setup(maxlen: u64, dropped: impl IntoIterator<Item = usize>) -> Setup {
    let tasks = NodeTasks::new();
    let inner = MemoryBroker::new(
        RetentionSettings {
            history_maxlen: maxlen,
            history_ttl: Duration::from_secs(3600),
            idempotency_ttl: Duration::from_secs(60),
            replicas_acked: 0,
        },
        &tasks,
    );
    let state = Arc::new(LossState {
        dropped: Mutex::new(dropped.into_iter().collect()),
        seen: Mutex::new(0),
        offline: Mutex::new(false),
        sink: Mutex::new(None),
        stale_read: Mutex::new(None),
    });
    let broker = Arc::new(LossyBroker {
        inner,
        state: state.clone(),
    });
    let hub = RoomHub::new(
        broker.clone(),
        Arc::new(Metrics::new("test", "lossy")),
        chat_relay::session::BufferLimit {
            messages: 10_000,
            bytes: usize::MAX,
        },
        tasks,
        chat_relay::session::PresenceTiming {
            ttl: Duration::from_secs(45),
        },
    );
    Setup {
        broker,
        hub,
        state,
        room: RoomName::parse("lossy").unwrap(),
    }
}

/// A subscriber whose queues are drained into a list of JSON frames.
struct Collected {
    frames: Arc<Mutex<Vec<Value>>>,
    _subscription: Subscription,
}

async fn subscriber(setup: &Setup, replay: ReplayRequest) -> Collected {
    let (connection, replies, queues) = ConnectionHandle::new(10_000);
    let frames = Arc::new(Mutex::new(Vec::new()));
    let sink = frames.clone();
    tokio::spawn(async move {
        loop {
            match queues.next().await {
                Some(Outbound::Message(message)) => {
                    sink.lock().unwrap().push(serde_json::from_str(message.text()).unwrap());
                }
                Some(Outbound::Room(event)) => sink.lock().unwrap().push(serde_json::from_str(event.json()).unwrap()),
                Some(Outbound::Event(event)) => {
                    if let Some(json) = event.to_json() {
                        sink.lock().unwrap().push(serde_json::from_str(&json).unwrap());
                    }
                }
                Some(Outbound::Barrier(reached)) => {
                    let _ = reached.send(());
                }
                // No direct writer here: the queues carry everything.
                Some(Outbound::Rest(_)) => unreachable!("no direct writes without a socket"),
                Some(Outbound::Close { .. }) | None => return,
            }
        }
    });
    let memory = ReplayMemory::new(64 << 20, 4 << 20);
    let target = ResumeTarget {
        replies: &replies,
        connection,
        req: None,
        presence: None,
        memory: &memory,
    };
    let resumed = subscribe_and_resume(&setup.hub, &setup.room, replay, HistoryBudget::messages(1000), target)
        .await
        .expect("subscribed");
    std::mem::forget(replies);
    Collected {
        frames,
        _subscription: resumed.subscription,
    }
}

async fn publish(setup: &Setup, n: usize) -> PublishOutcome {
    setup
        .broker
        .publish(PublishRequest {
            room: setup.room.clone(),
            idempotency_key: None,
            tail: MessageFrameTail::new(None, 1, None, &n.to_string()),
            connection: None,
        })
        .await
        .unwrap()
}

async fn wait_for_messages(collected: &Collected, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frames = collected.frames.lock().unwrap().clone();
        if frames.iter().filter(|frame| frame["type"] == "message").count() >= count {
            return frames;
        }
        assert!(tokio::time::Instant::now() < deadline, "only got {frames:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_unbroken(frames: &[Value], ids: &[MessageId]) {
    let messages: Vec<_> = frames.iter().filter(|frame| frame["type"] == "message").collect();
    assert!(
        frames.iter().all(|frame| frame["type"] != "gap"),
        "no gap expected: {frames:?}"
    );
    let got: Vec<String> = messages.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    let want: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(got, want, "every message once, in order");
    let mut previous = "0-0".to_owned();
    for message in messages {
        assert_eq!(message["prev"], previous.as_str());
        previous = message["id"].as_str().unwrap().to_owned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_live_messages_are_repaired_from_history_without_a_gap() {
    let setup = setup(10_000, [3, 4, 10, 17, 18, 19, 20, 40]);
    let early = subscriber(&setup, ReplayRequest::None).await;
    let resumed = subscriber(&setup, ReplayRequest::Since(MessageId::ZERO)).await;
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(publish(&setup, n).await.id);
    }
    for collected in [&early, &resumed] {
        let frames = wait_for_messages(collected, 60).await;
        assert_unbroken(&frames, &ids);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_feed_catches_up_every_room_from_history() {
    let setup = setup(10_000, []);
    let collected = subscriber(&setup, ReplayRequest::None).await;
    let mut ids = vec![publish(&setup, 0).await.id];
    *setup.state.offline.lock().unwrap() = true;
    for n in 1..25 {
        ids.push(publish(&setup, n).await.id);
    }
    *setup.state.offline.lock().unwrap() = false;
    // No new message arrives: only the resync can deliver the missed ones.
    setup.hub.resync_all();
    let frames = wait_for_messages(&collected, 25).await;
    assert_unbroken(&frames, &ids);
}

/// Found by the soak: a subscriber resumes into a room that has delivered
/// nothing live on this node yet (new here, and quiet); the feed drops and
/// comes back. The resync must catch the room up from what the subscriber
/// read, and the next live message must not go out over the hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_only_replayed_history_is_caught_up_after_a_reconnect() {
    let setup = setup(10_000, []);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(publish(&setup, n).await.id);
    }
    let collected = subscriber(&setup, ReplayRequest::Since(ids[1])).await;
    wait_for_messages(&collected, 1).await;
    *setup.state.offline.lock().unwrap() = true;
    for n in 3..13 {
        ids.push(publish(&setup, n).await.id);
    }
    *setup.state.offline.lock().unwrap() = false;
    // No new message: only the resync can deliver the missed ones.
    setup.hub.resync_all();
    wait_for_messages(&collected, 11).await;
    ids.push(publish(&setup, 13).await.id);
    let frames = wait_for_messages(&collected, 12).await;
    assert!(frames.iter().all(|frame| frame["type"] != "gap"), "{frames:?}");
    let messages: Vec<&Value> = frames.iter().filter(|frame| frame["type"] == "message").collect();
    let got: Vec<&str> = messages.iter().map(|message| message["id"].as_str().unwrap()).collect();
    let want: Vec<String> = ids[2..].iter().map(ToString::to_string).collect();
    assert_eq!(got, want, "every message after since once, in order");
    let mut previous = ids[1].to_string();
    for message in messages {
        assert_eq!(message["prev"], previous.as_str(), "{frames:?}");
        previous = message["id"].as_str().unwrap().to_owned();
    }
}

/// A live-only subscription is positioned at the room's head (protocol.md,
/// "Positions"): when the feed drops before anything was delivered live
/// here, the resync repairs it from history like a resumed one. Before
/// positions it had no place to repair from, and missed the outage untold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_only_subscriber_is_repaired_after_a_feed_loss_from_its_position() {
    let setup = setup(10_000, []);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(publish(&setup, n).await.id);
    }
    let collected = subscriber(&setup, ReplayRequest::None).await;
    let subscribed = collected.frames.lock().unwrap()[0].clone();
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(
        subscribed["position"],
        ids[2].to_string(),
        "the room's head: {subscribed}"
    );
    assert!(subscribed.get("recovered").is_none(), "{subscribed}");
    *setup.state.offline.lock().unwrap() = true;
    let mut missed = Vec::new();
    for n in 3..13 {
        missed.push(publish(&setup, n).await.id);
    }
    *setup.state.offline.lock().unwrap() = false;
    // No new message: only the resync can deliver the missed ones.
    setup.hub.resync_all();
    let frames = wait_for_messages(&collected, 10).await;
    assert!(frames.iter().all(|frame| frame["type"] != "gap"), "{frames:?}");
    let got: Vec<&str> = frames
        .iter()
        .filter(|frame| frame["type"] == "message")
        .map(|message| message["id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = missed.iter().map(ToString::to_string).collect();
    assert_eq!(got, want, "every message after the position once, in order");
    assert_eq!(frames[1]["prev"], ids[2].to_string(), "{frames:?}");
}

/// `position` for every kind of subscribe: `last: N` stands before the
/// first replayed message, an unrecovered `since` before the first message
/// it delivers, a recovered one at `since`, an empty room at `0-0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscription_says_its_position() {
    let setup = setup(5, []);
    let empty = subscriber(&setup, ReplayRequest::None).await;
    assert_eq!(empty.frames.lock().unwrap()[0]["position"], "0-0");
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(publish(&setup, n).await.id);
    }
    let cases = [
        (ReplayRequest::None, ids[7]),
        (ReplayRequest::Last(0), ids[7]),
        (ReplayRequest::Last(2), ids[5]),
        // History keeps 5: asking for 9 replays the 5 it holds.
        (ReplayRequest::Last(9), ids[2]),
        (ReplayRequest::Since(ids[4]), ids[4]),
        (ReplayRequest::Since(ids[7]), ids[7]),
        // Trimmed: not recovered, positioned before what it holds.
        (ReplayRequest::Since(ids[0]), ids[2]),
    ];
    for (replay, want) in cases {
        let collected = subscriber(&setup, replay).await;
        let subscribed = collected.frames.lock().unwrap()[0].clone();
        assert_eq!(subscribed["position"], want.to_string(), "{replay:?}: {subscribed}");
        let frames = wait_for_messages(&collected, 0).await;
        if let Some(first) = frames.iter().find(|frame| frame["type"] == "message") {
            assert_eq!(first["prev"], subscribed["position"], "{replay:?}: {frames:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_lost_by_history_too_becomes_one_gap() {
    // History keeps 3 messages; live drops publishes 5 to 9, so when 10
    // arrives, 5, 6 and 7 are gone from history as well.
    let setup = setup(3, 5..10);
    let collected = subscriber(&setup, ReplayRequest::None).await;
    let mut ids = Vec::new();
    for n in 0..11 {
        ids.push(publish(&setup, n).await.id);
    }
    let frames = wait_for_messages(&collected, 8).await;
    let gap_at = frames
        .iter()
        .position(|frame| frame["type"] == "gap")
        .expect("a gap frame");
    let gap = &frames[gap_at];
    assert_eq!(gap["after"], ids[4].to_string().as_str());
    assert_eq!(gap["next"], ids[8].to_string().as_str());
    let after_gap: Vec<_> = frames[gap_at + 1..]
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(after_gap, ids[8..].iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(frames.iter().filter(|frame| frame["type"] == "gap").count(), 1);
}

/// Found by the cluster soak: a subscriber resumes while its room's shard
/// fails over, and its history read is answered by the old primary, which
/// ran a write (a phantom) before it learned it was demoted. The replay
/// chains to `since`, so `recovered` is true; but the live feed comes from
/// the new primary, whose next message does not chain to the phantom. The
/// subscriber must be told (`gap`) before that message, not left with a
/// hole it cannot see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_the_live_feed_does_not_continue_is_told_as_a_gap() {
    let setup = setup(10_000, []);
    // The room is live on this node.
    let early = subscriber(&setup, ReplayRequest::None).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(publish(&setup, n).await.id);
    }
    wait_for_messages(&early, 3).await;
    let phantom_id = MessageId::new(ids[2].ms, ids[2].seq + 1);
    let phantom = Arc::new(StoredMessage {
        id: phantom_id,
        prev: ids[2],
        frame: bytes::Bytes::from(format!(
            r#"{{"type":"message","room":"lossy","id":"{phantom_id}","prev":"{}","ts":1,"body":"phantom"}}"#,
            ids[2]
        )),
        trace: None,
    });
    *setup.state.stale_read.lock().unwrap() = Some(HistoryPage {
        messages: vec![phantom],
        last_id: Some(phantom_id),
    });
    let resumed = subscriber(&setup, ReplayRequest::Since(ids[2])).await;
    // Later than the phantom's id, and chained to the real history.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let next = publish(&setup, 3).await.id;
    let frames = wait_for_messages(&resumed, 2).await;
    let kinds: Vec<&str> = frames.iter().map(|frame| frame["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["subscribed", "message", "gap", "message"], "{frames:?}");
    assert_eq!(frames[0]["recovered"], true);
    assert_eq!(frames[1]["id"], phantom_id.to_string().as_str());
    assert_eq!(frames[2]["after"], phantom_id.to_string().as_str());
    assert_eq!(frames[2]["next"], next.to_string().as_str());
    assert_eq!(frames[3]["id"], next.to_string().as_str());
    assert_eq!(frames[3]["prev"], ids[2].to_string().as_str());
    // The room's other subscriber saw one unbroken chain.
    let mut all = ids.clone();
    all.push(next);
    assert_unbroken(&wait_for_messages(&early, 4).await, &all);
}

/// A subscriber that has just gone live after its replay, when the live
/// feed then breaks in a way history cannot repair, gets the one `gap`,
/// not two (one from the room's repair and one from its own check that the
/// live feed continues its replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_just_past_its_replay_is_told_of_a_break_once() {
    // History keeps 3 messages; live drops publishes 3 to 6, so when 7
    // arrives, 3 and 4 are gone from history as well.
    let setup = setup(3, 3..7);
    let early = subscriber(&setup, ReplayRequest::None).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(publish(&setup, n).await.id);
    }
    wait_for_messages(&early, 3).await;
    // Live now, its replay empty: it must next see what follows ids[2].
    let resumed = subscriber(&setup, ReplayRequest::Since(ids[2])).await;
    for n in 3..8 {
        ids.push(publish(&setup, n).await.id);
    }
    wait_for_messages(&resumed, 3).await;
    // Anything more (a second gap) would come at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let frames = resumed.frames.lock().unwrap().clone();
    let gaps: Vec<&Value> = frames.iter().filter(|frame| frame["type"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "{frames:?}");
    assert_eq!(gaps[0]["after"], ids[2].to_string().as_str());
    assert_eq!(gaps[0]["next"], ids[5].to_string().as_str());
    let delivered: Vec<&str> = frames
        .iter()
        .filter(|frame| frame["type"] == "message")
        .map(|frame| frame["id"].as_str().unwrap())
        .collect();
    let held: Vec<String> = ids[5..].iter().map(ToString::to_string).collect();
    assert_eq!(delivered, held.iter().map(String::as_str).collect::<Vec<_>>());
}
