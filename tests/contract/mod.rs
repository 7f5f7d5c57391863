//! The broker conformance suite: one set of behaviours every `Broker` must
//! have, written once. `contract_tests!(name, factory)` instantiates it for
//! a broker; `tests/broker_contract.rs` runs it for each broker.

#![allow(dead_code, reason = "used through the contract_tests! macro")]

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chat_relay::broker::{
    Broker, LiveSink, PresenceChange, PresenceEntry, PublishRequest, RetentionSettings, StoredMessage,
};
use chat_relay::protocol::{MessageFrameTail, MessageId, ReplayRequest, RoomName};
use chat_relay::session::{HistoryBudget, read_requested_history};

pub fn retention(maxlen: u64) -> RetentionSettings {
    RetentionSettings {
        history_maxlen: maxlen,
        history_ttl: Duration::from_secs(3600),
        idempotency_ttl: Duration::from_secs(600),
        replicas_acked: 0,
    }
}

pub fn room(name: &str) -> RoomName {
    RoomName::parse(&format!("{name}-{}", fastrand::u32(..))).expect("valid room")
}

pub async fn publish(
    broker: &dyn Broker,
    room: &RoomName,
    body: &str,
    cmid: Option<&str>,
) -> chat_relay::broker::PublishOutcome {
    broker
        .publish(PublishRequest {
            room: room.clone(),
            idempotency_key: cmid.map(|cmid| chat_relay::protocol::idempotency_key(Some("tester"), cmid)),
            tail: MessageFrameTail::new(Some("tester"), 1, cmid, body),
            connection: None,
        })
        .await
        .expect("publish succeeds")
}

/// A live sink that records what it receives.
#[derive(Default)]
pub struct RecordingSink {
    pub received: Mutex<Vec<(RoomName, Arc<StoredMessage>)>>,
    pub resyncs: Mutex<usize>,
    pub presence: Mutex<Vec<(RoomName, PresenceChange)>>,
    pub signals: Mutex<Vec<(RoomName, bytes::Bytes)>>,
}

impl LiveSink for RecordingSink {
    fn deliver(&self, room: &RoomName, message: Arc<StoredMessage>) {
        self.received.lock().unwrap().push((room.clone(), message));
    }

    fn resync_all(&self) {
        *self.resyncs.lock().unwrap() += 1;
    }

    fn resync_rooms(&self, _rooms: &[RoomName]) {
        *self.resyncs.lock().unwrap() += 1;
    }

    fn presence(&self, room: &RoomName, change: PresenceChange) {
        self.presence.lock().unwrap().push((room.clone(), change));
    }

    fn signal(&self, room: &RoomName, frame: bytes::Bytes) {
        self.signals.lock().unwrap().push((room.clone(), frame));
    }
}

fn entry(id: &str, user: Option<&str>) -> PresenceEntry {
    PresenceEntry {
        id: id.to_owned(),
        user: user.map(str::to_owned),
    }
}

/// Waits (bounded) until the sink recorded `count` presence changes of `room`.
async fn presence_changes(sink: &RecordingSink, room: &RoomName, count: usize) -> Vec<PresenceChange> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let changes: Vec<PresenceChange> = sink
            .presence
            .lock()
            .unwrap()
            .iter()
            .filter(|(of, _)| of == room)
            .map(|(_, change)| change.clone())
            .collect();
        if changes.len() >= count || tokio::time::Instant::now() > deadline {
            return changes;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LONG: Duration = Duration::from_secs(60);

pub async fn presence_counts_each_user_once_and_publishes_only_their_joins_and_leaves(broker: Arc<dyn Broker>) {
    let sink = attach_recorder(broker.as_ref());
    let room = room("presence");
    broker.subscribe_live(&room).await.unwrap();
    let state = broker
        .presence_join(&room, &entry("n:1", Some("ann")), LONG, 100)
        .await
        .unwrap();
    assert_eq!((state.count, state.members.clone()), (1, vec!["ann".to_owned()]));
    let second_tab = broker
        .presence_join(&room, &entry("n:2", Some("ann")), LONG, 100)
        .await
        .unwrap();
    assert_eq!(
        (second_tab.count, second_tab.version),
        (1, state.version),
        "a second tab changes nothing"
    );
    let state = broker
        .presence_join(&room, &entry("m:1", Some("bo lee")), LONG, 100)
        .await
        .unwrap();
    assert_eq!(state.members, ["ann", "bo lee"]);
    let state = broker
        .presence_join(&room, &entry("m:2", None), LONG, 100)
        .await
        .unwrap();
    assert_eq!(
        (state.count, state.members.len()),
        (3, 2),
        "anonymous connections count, unlisted"
    );
    broker
        .presence_leave(&room, &[entry("n:1", Some("ann"))])
        .await
        .unwrap();
    let state = broker.presence_members(&room, None, 100).await.unwrap();
    assert_eq!(
        (state.count, state.members.len()),
        (3, 2),
        "closing one of two tabs changes nothing"
    );
    broker
        .presence_leave(&room, &[entry("n:2", Some("ann")), entry("m:2", None)])
        .await
        .unwrap();
    broker
        .presence_leave(&room, &[entry("n:2", Some("ann"))])
        .await
        .unwrap();
    let changes = presence_changes(&sink, &room, 5).await;
    let seen: Vec<(Option<&str>, bool, u64)> = changes
        .iter()
        .map(|change| (change.user.as_deref(), change.joined, change.count))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("ann"), true, 1),
            (Some("bo lee"), true, 2),
            (None, true, 3),
            (Some("ann"), false, 2),
            (None, false, 1),
        ]
    );
    let versions: Vec<u64> = changes.iter().map(|change| change.version).collect();
    assert!(versions.windows(2).all(|pair| pair[1] == pair[0] + 1), "{versions:?}");
    let state = broker.presence_members(&room, None, 100).await.unwrap();
    assert_eq!(
        (state.count, state.members, state.version),
        (1, vec!["bo lee".to_owned()], versions[4])
    );
}

pub async fn presence_changes_can_be_read_again_after_a_version(broker: Arc<dyn Broker>) {
    let room = room("changelog");
    for (index, user) in ["ann", "bo", "cy"].iter().enumerate() {
        broker
            .presence_join(&room, &entry(&format!("e:{index}"), Some(user)), LONG, 10)
            .await
            .unwrap();
    }
    broker.presence_leave(&room, &[entry("e:1", Some("bo"))]).await.unwrap();
    let all = broker
        .presence_changes_after(&room, 0)
        .await
        .unwrap()
        .expect("the log holds every change");
    let seen: Vec<(u64, Option<&str>, bool, u64)> = all
        .iter()
        .map(|change| (change.version, change.user.as_deref(), change.joined, change.count))
        .collect();
    assert_eq!(
        seen,
        [
            (1, Some("ann"), true, 1),
            (2, Some("bo"), true, 2),
            (3, Some("cy"), true, 3),
            (4, Some("bo"), false, 2)
        ]
    );
    let tail = broker.presence_changes_after(&room, 2).await.unwrap().unwrap();
    assert_eq!(tail.iter().map(|change| change.version).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(broker.presence_changes_after(&room, 4).await.unwrap(), Some(Vec::new()));
}

pub async fn presence_entries_not_refreshed_expire(broker: Arc<dyn Broker>) {
    let sink = attach_recorder(broker.as_ref());
    let room = room("expiry");
    broker.subscribe_live(&room).await.unwrap();
    let short = Duration::from_millis(300);
    broker
        .presence_join(&room, &entry("dead:1", Some("ann")), short, 10)
        .await
        .unwrap();
    broker
        .presence_join(&room, &entry("live:1", Some("bo")), short, 10)
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        broker
            .presence_refresh(&room, &[entry("live:1", Some("bo"))], short)
            .await
            .unwrap();
    }
    broker.presence_sweep(&room).await.unwrap();
    let state = broker.presence_members(&room, None, 10).await.unwrap();
    assert_eq!((state.count, state.members), (1, vec!["bo".to_owned()]));
    let changes = presence_changes(&sink, &room, 3).await;
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert_eq!((changes[2].user.as_deref(), changes[2].joined), (Some("ann"), false));
    // An entry swept while its node was away comes back with its refresh.
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.presence_sweep(&room).await.unwrap();
    assert_eq!(broker.presence_members(&room, None, 10).await.unwrap().count, 0);
    broker
        .presence_refresh(&room, &[entry("live:1", Some("bo"))], LONG)
        .await
        .unwrap();
    assert_eq!(broker.presence_members(&room, None, 10).await.unwrap().members, ["bo"]);
}

pub async fn presence_members_page_in_sorted_order(broker: Arc<dyn Broker>) {
    let room = room("paging");
    let mut users: Vec<String> = (0..150).map(|n| format!("user-{n:03}")).collect();
    for (index, user) in users.iter().enumerate().rev() {
        broker
            .presence_join(&room, &entry(&format!("e:{index}"), Some(user)), LONG, 1)
            .await
            .unwrap();
    }
    users.sort();
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = broker.presence_members(&room, after.as_deref(), 40).await.unwrap();
        assert_eq!(page.count, 150);
        if page.members.is_empty() {
            break;
        }
        after = page.members.last().cloned();
        paged.extend(page.members);
    }
    assert_eq!(paged, users, "every member exactly once, in order");
}

pub async fn signals_reach_the_live_feed_and_are_never_stored(broker: Arc<dyn Broker>) {
    let sink = attach_recorder(broker.as_ref());
    let room = room("signals");
    broker.subscribe_live(&room).await.unwrap();
    let frame = bytes::Bytes::from_static(br#"{"type":"signal","room":"x","from":"ann","body":{"typing":true}}"#);
    broker.signal(&room, frame.clone()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sink.signals.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.signals.lock().unwrap().as_slice(), [(room.clone(), frame)]);
    assert!(sink.received.lock().unwrap().is_empty(), "a signal is not a message");
    let page = broker.read_after(&room, MessageId::ZERO, 10).await.unwrap();
    assert!(page.messages.is_empty() && page.last_id.is_none(), "nothing stored");
}

pub fn attach_recorder(broker: &dyn Broker) -> Arc<RecordingSink> {
    let sink = Arc::new(RecordingSink::default());
    let dynamic: Arc<dyn LiveSink> = sink.clone();
    broker.set_live_sink(Arc::downgrade(&dynamic) as Weak<dyn LiveSink>);
    // The broker holds a weak reference; keep the strong one alive here.
    std::mem::forget(dynamic);
    sink
}

pub async fn ids_increase_and_prev_chains(broker: Arc<dyn Broker>) {
    let room = room("chain");
    let mut previous = MessageId::ZERO;
    for n in 0..200 {
        let outcome = publish(broker.as_ref(), &room, &n.to_string(), None).await;
        assert!(!outcome.duplicate);
        assert_eq!(outcome.prev, previous, "message {n}");
        assert!(outcome.id > previous);
        previous = outcome.id;
    }
    let page = broker.read_after(&room, MessageId::ZERO, 1000).await.unwrap();
    assert_eq!(page.messages.len(), 200);
    assert_eq!(page.last_id, Some(previous));
}

pub async fn stored_frame_is_the_composed_message(broker: Arc<dyn Broker>) {
    let room = room("frame");
    let outcome = publish(broker.as_ref(), &room, r#"{"t":"hi"}"#, Some("c-9")).await;
    let page = broker.read_after(&room, MessageId::ZERO, 10).await.unwrap();
    let stored = &page.messages[0];
    assert_eq!((stored.id, stored.prev), (outcome.id, outcome.prev));
    let tail = MessageFrameTail::new(Some("tester"), 1, Some("c-9"), r#"{"t":"hi"}"#);
    let expected = chat_relay::protocol::message_frame::compose(&room, outcome.id, outcome.prev, tail.as_str());
    assert_eq!(std::str::from_utf8(&stored.frame).unwrap(), expected, "byte for byte");
}

pub async fn a_committed_cmid_returns_the_original(broker: Arc<dyn Broker>) {
    let room = room("dedupe");
    let first = publish(broker.as_ref(), &room, "1", Some("k")).await;
    publish(broker.as_ref(), &room, "2", None).await;
    let again = publish(broker.as_ref(), &room, "3", Some("k")).await;
    assert!(again.duplicate);
    assert_eq!((again.id, again.prev), (first.id, first.prev));
    assert_eq!(
        broker
            .read_after(&room, MessageId::ZERO, 10)
            .await
            .unwrap()
            .messages
            .len(),
        2,
        "stored once"
    );
    let elsewhere = publish(broker.as_ref(), &room_named(&room, "other"), "1", Some("k")).await;
    assert!(!elsewhere.duplicate, "cmids are per room");
}

fn room_named(base: &RoomName, suffix: &str) -> RoomName {
    RoomName::parse(&format!("{}-{suffix}", base.as_str())).unwrap()
}

pub async fn reads_are_exclusive_bounded_and_oldest_first(broker: Arc<dyn Broker>) {
    let room = room("reads");
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(publish(broker.as_ref(), &room, &n.to_string(), None).await.id);
    }
    let after = broker.read_after(&room, ids[4], 5).await.unwrap();
    assert_eq!(
        after.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[5..10].to_vec()
    );
    assert_eq!(after.last_id, Some(ids[19]));
    let before = broker.read_before(&room, Some(ids[10]), 3).await.unwrap();
    assert_eq!(
        before.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[7..10].to_vec()
    );
    let newest = broker.read_before(&room, None, 4).await.unwrap();
    assert_eq!(
        newest.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[16..].to_vec()
    );
    let none_after = broker.read_after(&room, ids[19], 5).await.unwrap();
    assert!(none_after.messages.is_empty());
    let empty = broker
        .read_after(&room_named(&room, "empty"), MessageId::ZERO, 5)
        .await
        .unwrap();
    assert!(empty.messages.is_empty());
    assert_eq!(empty.last_id, None);
}

pub async fn trimming_keeps_the_newest_maxlen_or_a_few_more(broker: Arc<dyn Broker>, maxlen: usize, slack: usize) {
    let room = room("trim");
    let total = maxlen * 3 + slack * 2;
    let mut ids = Vec::new();
    for n in 0..total {
        ids.push(publish(broker.as_ref(), &room, &n.to_string(), None).await.id);
    }
    let kept = broker.read_after(&room, MessageId::ZERO, total).await.unwrap().messages;
    assert!(
        kept.len() >= maxlen && kept.len() <= maxlen + slack,
        "kept {} of {total}, maxlen {maxlen}",
        kept.len()
    );
    assert_eq!(
        kept.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[total - kept.len()..].to_vec(),
        "the newest are kept"
    );
}

pub async fn live_feed_carries_every_publish_in_order_while_subscribed(broker: Arc<dyn Broker>) {
    let sink = attach_recorder(broker.as_ref());
    let room = room("live");
    let quiet = room_named(&room, "quiet");
    publish(broker.as_ref(), &room, "before", None).await;
    broker.subscribe_live(&room).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(publish(broker.as_ref(), &room, &n.to_string(), None).await.id);
        publish(broker.as_ref(), &quiet, "unsubscribed room", None).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.received.lock().unwrap().len() < 50 {
        assert!(tokio::time::Instant::now() < deadline, "live messages did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received: Vec<_> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(r, m)| (r.clone(), m.id))
        .collect();
    assert_eq!(
        received,
        ids.iter().map(|id| (room.clone(), *id)).collect::<Vec<_>>(),
        "exactly the subscribed room, in order"
    );
    broker.unsubscribe_live(&room).await.unwrap();
    publish(broker.as_ref(), &room, "after", None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.received.lock().unwrap().len(), 50, "nothing after unsubscribe");
}

pub async fn recovered_rule_holds(broker: Arc<dyn Broker>) {
    let room = room("recovered");
    let fresh = read_requested_history(
        broker.as_ref(),
        &room,
        ReplayRequest::Since(MessageId::ZERO),
        HistoryBudget::messages(10),
    )
    .await
    .unwrap();
    assert_eq!(fresh.recovered, Some(true), "nothing missed in an empty room");
    let mut ids = Vec::new();
    for n in 0..15 {
        ids.push(publish(broker.as_ref(), &room, &n.to_string(), None).await.id);
    }
    let from_start = read_requested_history(
        broker.as_ref(),
        &room,
        ReplayRequest::Since(MessageId::ZERO),
        HistoryBudget::messages(20),
    )
    .await
    .unwrap();
    assert_eq!((from_start.recovered, from_start.messages.len()), (Some(true), 15));
    let at_end = read_requested_history(
        broker.as_ref(),
        &room,
        ReplayRequest::Since(ids[14]),
        HistoryBudget::messages(20),
    )
    .await
    .unwrap();
    assert_eq!((at_end.recovered, at_end.messages.len()), (Some(true), 0));
    let too_many = read_requested_history(
        broker.as_ref(),
        &room,
        ReplayRequest::Since(ids[2]),
        HistoryBudget::messages(5),
    )
    .await
    .unwrap();
    assert_eq!(too_many.recovered, Some(false), "more than max_replay missed");
    assert_eq!(
        too_many.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[10..].to_vec(),
        "the newest max_replay"
    );
    let unknown = MessageId::new(ids[3].ms, ids[3].seq + 1000);
    let between = read_requested_history(
        broker.as_ref(),
        &room,
        ReplayRequest::Since(unknown),
        HistoryBudget::messages(20),
    )
    .await
    .unwrap();
    assert_eq!(between.recovered, Some(false), "an id the room never held");
    let future = MessageId::new(ids[14].ms + 1_000_000, 0);
    let ahead = read_requested_history(
        broker.as_ref(),
        &room,
        ReplayRequest::Since(future),
        HistoryBudget::messages(20),
    )
    .await
    .unwrap();
    assert_eq!((ahead.recovered, ahead.messages.len()), (Some(false), 0));
    let last = read_requested_history(
        broker.as_ref(),
        &room,
        ReplayRequest::Last(4),
        HistoryBudget::messages(20),
    )
    .await
    .unwrap();
    assert_eq!(
        (last.recovered, last.messages.iter().map(|m| m.id).collect::<Vec<_>>()),
        (None, ids[11..].to_vec())
    );
}

pub async fn concurrent_publishes_keep_one_chain(broker: Arc<dyn Broker>) {
    let room = room("concurrent");
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let broker = broker.clone();
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                publish(broker.as_ref(), &room, &format!("{worker}{n}"), None).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let all = broker.read_after(&room, MessageId::ZERO, 1000).await.unwrap().messages;
    assert_eq!(all.len(), 400);
    let mut previous = MessageId::ZERO;
    for message in all {
        assert_eq!(message.prev, previous);
        previous = message.id;
    }
}

/// Instantiates the suite for one broker: `contract_tests!(module, factory, slack)`,
/// where `factory(retention)` is an async fn returning the broker and a guard
/// that owns what the broker needs (e.g. its Redis container) until the test
/// ends, and `slack` is how far above maxlen trimming may leave a history.
#[macro_export]
macro_rules! contract_tests {
    ($name:ident, $factory:path, $slack:expr) => {
        mod $name {
            use super::contract::*;

            #[tokio::test]
            async fn ids_increase_and_prev_chains() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::ids_increase_and_prev_chains(broker).await;
            }
            #[tokio::test]
            async fn stored_frame_is_the_composed_message() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::stored_frame_is_the_composed_message(broker).await;
            }
            #[tokio::test]
            async fn a_committed_cmid_returns_the_original() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::a_committed_cmid_returns_the_original(broker).await;
            }
            #[tokio::test]
            async fn reads_are_exclusive_bounded_and_oldest_first() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::reads_are_exclusive_bounded_and_oldest_first(broker).await;
            }
            #[tokio::test]
            async fn trimming_keeps_the_newest_maxlen_or_a_few_more() {
                let (broker, _guard) = $factory(retention(20)).await;
                super::contract::trimming_keeps_the_newest_maxlen_or_a_few_more(broker, 20, $slack).await;
            }
            #[tokio::test]
            async fn live_feed_carries_every_publish_in_order_while_subscribed() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::live_feed_carries_every_publish_in_order_while_subscribed(broker).await;
            }
            #[tokio::test]
            async fn recovered_rule_holds() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::recovered_rule_holds(broker).await;
            }
            #[tokio::test]
            async fn presence_counts_each_user_once_and_publishes_only_their_joins_and_leaves() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::presence_counts_each_user_once_and_publishes_only_their_joins_and_leaves(broker).await;
            }
            #[tokio::test]
            async fn presence_changes_can_be_read_again_after_a_version() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::presence_changes_can_be_read_again_after_a_version(broker).await;
            }
            #[tokio::test]
            async fn presence_entries_not_refreshed_expire() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::presence_entries_not_refreshed_expire(broker).await;
            }
            #[tokio::test]
            async fn presence_members_page_in_sorted_order() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::presence_members_page_in_sorted_order(broker).await;
            }
            #[tokio::test]
            async fn signals_reach_the_live_feed_and_are_never_stored() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::signals_reach_the_live_feed_and_are_never_stored(broker).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_publishes_keep_one_chain() {
                let (broker, _guard) = $factory(retention(10_000)).await;
                super::contract::concurrent_publishes_keep_one_chain(broker).await;
            }
        }
    };
}
