//! Presence and signals (presence.md) end to end: real relay processes on
//! one real Redis (two nodes), and the memory broker (one node, both
//! "nodes" the same), with real WebSocket, SSE and HTTP clients.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::nodes::RelayProcess;
use common::redis::TestRedis;
use common::{SseClient, TestRelay, WsClient, http_get_json};
use serde_json::{Value, json};

/// Two nodes (or one, twice) and what keeps them running.
struct Deployment {
    bases: [String; 2],
    nodes: Vec<RelayProcess>,
    _memory: Option<TestRelay>,
    redis: Option<TestRedis>,
}

impl Deployment {
    async fn redis(extra: &[(&str, &str)]) -> Self {
        let redis = TestRedis::start().await;
        let nodes = vec![
            RelayProcess::spawn(&redis.url(), "presence-1", extra),
            RelayProcess::spawn(&redis.url(), "presence-2", extra),
        ];
        Self {
            bases: [nodes[0].addr.clone(), nodes[1].addr.clone()],
            nodes,
            _memory: None,
            redis: Some(redis),
        }
    }

    async fn memory(args: &[&str]) -> Self {
        let relay = TestRelay::start(args).await;
        let base = relay.addr.to_string();
        Self {
            bases: [base.clone(), base],
            nodes: Vec::new(),
            _memory: Some(relay),
            redis: None,
        }
    }

    async fn client(&self, node: usize, user: &str) -> WsClient {
        WsClient::connect_url(&format!("ws://{}/v1/ws?user={user}", self.bases[node])).await
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{path}", self.bases[node])
    }
}

fn room(name: &str) -> String {
    format!("{name}-{}", fastrand::u32(..))
}

fn names(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|name| name.as_str().expect("member names are strings").to_owned())
        .collect()
}

/// A watcher: subscribed with presence, its snapshot returned.
async fn watch(client: &mut WsClient, room: &str) -> Value {
    let reply = client.subscribe(room, json!({"presence": true})).await;
    assert!(reply["presence"].is_object(), "subscribed carries presence: {reply}");
    reply
}

/// Presence frames of `room` until `done` says the accumulated joined and
/// left sets are complete, or the deadline; returns every frame.
async fn presence_until(
    client: &mut WsClient,
    room: &str,
    within: Duration,
    done: impl Fn(&BTreeSet<String>, &BTreeSet<String>) -> bool,
) -> Vec<Value> {
    let mut frames = Vec::new();
    let (mut joined, mut left) = (BTreeSet::new(), BTreeSet::new());
    let deadline = tokio::time::Instant::now() + within;
    while !done(&joined, &left) {
        let frame = tokio::time::timeout_at(
            deadline,
            client.wait_for("presence", |frame| frame["type"] == "presence" && frame["room"] == room),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("presence incomplete after {within:?}: joined {joined:?}, left {left:?}, frames {frames:?}")
        });
        joined.extend(names(&frame["joined"]));
        left.extend(names(&frame["left"]));
        frames.push(frame);
    }
    frames
}

async fn opt_in_snapshot_and_bad_input(deployment: Deployment) {
    let room = room("optin");
    let mut plain = deployment.client(0, "quiet").await;
    let reply = plain.subscribe(&room, json!({})).await;
    assert!(
        reply.get("presence").is_none(),
        "no presence without the opt-in: {reply}"
    );
    let mut bo = deployment.client(1, "bo").await;
    watch(&mut bo, &room).await;
    let mut ann = deployment.client(0, "ann").await;
    let snapshot = watch(&mut ann, &room).await;
    assert_eq!(
        snapshot["presence"],
        json!({"count": 2, "members": ["ann", "bo"]}),
        "{snapshot}"
    );
    // The non-watcher is neither counted nor told.
    plain.expect_silence(Duration::from_millis(1500)).await;
    for bad in [json!("yes"), json!(1), json!(null)] {
        plain
            .send_json(json!({"type": "subscribe", "room": format!("{room}-bad"), "presence": bad, "req": "bad"}))
            .await;
        let error = plain.reply_to("bad").await;
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{error}"
        );
        assert!(error["message"].as_str().unwrap().contains("presence"), "{error}");
    }
    // An SSE watcher gets the same snapshot and the changes.
    let mut sse = SseClient::open(
        &deployment.url(1, &format!("/v1/rooms/{room}/events?presence=true&user=cy")),
        &[],
    )
    .await;
    assert_eq!(sse.next_event().await.retry.as_deref(), Some("1000"));
    let subscribed = sse.next_named("subscribed").await.json();
    assert_eq!(
        subscribed["presence"],
        json!({"count": 3, "members": ["ann", "bo", "cy"]})
    );
    drop(bo);
    let change = sse.next_named("presence").await.json();
    assert_eq!(
        (change["left"].clone(), change["count"].clone()),
        (json!(["bo"]), json!(2)),
        "{change}"
    );
    let refused = SseClient::open(
        &deployment.url(1, &format!("/v1/rooms/{room}/events?presence=maybe")),
        &[],
    )
    .await;
    assert_eq!(refused.status, 400);
}

async fn users_count_once_across_tabs_and_nodes(deployment: Deployment) {
    let room = room("tabs");
    let mut watcher = deployment.client(0, "watcher").await;
    watch(&mut watcher, &room).await;
    let started = Instant::now();
    let mut first_tab = deployment.client(1, "ann").await;
    watch(&mut first_tab, &room).await;
    let frames = presence_until(&mut watcher, &room, Duration::from_secs(2), |joined, _| {
        joined.contains("ann")
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "joined after {:?}",
        started.elapsed()
    );
    assert_eq!(frames.last().unwrap()["count"], 2);
    // A second tab (on the other node) and closing one of the two: nothing.
    let mut second_tab = deployment.client(0, "ann").await;
    let snapshot = watch(&mut second_tab, &room).await;
    assert_eq!(snapshot["presence"]["count"], 2, "{snapshot}");
    drop(first_tab);
    watcher.expect_silence(Duration::from_millis(2500)).await;
    drop(second_tab);
    let frames = presence_until(&mut watcher, &room, Duration::from_secs(3), |_, left| {
        left.contains("ann")
    })
    .await;
    assert_eq!(frames.last().unwrap()["count"], 1);
    // Unsubscribing leaves too; an anonymous watcher counts, unlisted.
    let mut anonymous = WsClient::connect_url(&format!("ws://{}/v1/ws", deployment.bases[1])).await;
    let snapshot = watch(&mut anonymous, &room).await;
    assert_eq!(snapshot["presence"], json!({"count": 2, "members": ["watcher"]}));
    let frame = watcher.wait_type("presence").await;
    assert_eq!(
        (frame["joined"].clone(), frame["count"].clone()),
        (json!([]), json!(2)),
        "{frame}"
    );
}

async fn a_burst_of_joins_arrives_in_at_most_two_frames(deployment: Deployment) {
    let room = room("burst");
    let mut watcher = deployment.client(0, "watcher").await;
    watch(&mut watcher, &room).await;
    let mut joiners = Vec::new();
    for n in 0..30 {
        joiners.push(deployment.client(n % 2, &format!("user-{n:02}")).await);
    }
    // All 30 subscribes go out back to back: the joins land within
    // milliseconds, inside one batch or across two.
    let started = Instant::now();
    for client in &mut joiners {
        client
            .send_json(json!({"type": "subscribe", "room": room, "presence": true}))
            .await;
    }
    eprintln!("30 subscribes sent in {:?}", started.elapsed());
    let frames = presence_until(&mut watcher, &room, Duration::from_secs(5), |joined, _| {
        joined.len() == 30
    })
    .await;
    assert!(frames.len() <= 2, "{} frames for 30 joins: {frames:?}", frames.len());
    assert_eq!(frames.last().unwrap()["count"], 31);
    watcher.expect_silence(Duration::from_millis(1500)).await;
}

async fn a_join_and_leave_inside_one_batch_is_invisible(deployment: Deployment) {
    let room = room("batch");
    let mut watcher = deployment.client(0, "watcher").await;
    watch(&mut watcher, &room).await;
    let mut marker = deployment.client(1, "marker").await;
    watch(&mut marker, &room).await;
    // A frame just arrived: the next batch is about a second away.
    presence_until(&mut watcher, &room, Duration::from_secs(3), |joined, _| {
        joined.contains("marker")
    })
    .await;
    let mut blink = deployment.client(1, "blink").await;
    watch(&mut blink, &room).await;
    drop(blink);
    let mut last = deployment.client(0, "last").await;
    watch(&mut last, &room).await;
    let frames = presence_until(&mut watcher, &room, Duration::from_secs(3), |joined, _| {
        joined.contains("last")
    })
    .await;
    watcher.expect_silence(Duration::from_millis(1500)).await;
    for frame in &frames {
        let shown: BTreeSet<String> = names(&frame["joined"]).union(&names(&frame["left"])).cloned().collect();
        assert!(
            !shown.contains("blink"),
            "a join and leave inside one batch showed: {frame}"
        );
    }
}

async fn a_large_room_pages_every_member_exactly_once(deployment: Deployment) {
    let room = room("paged");
    let mut members = Vec::new();
    let mut expected = BTreeSet::new();
    for n in 0..150 {
        let user = format!("m{n:03}");
        let mut client = deployment.client(n % 2, &user).await;
        client
            .send_json(json!({"type": "subscribe", "room": room, "presence": true, "req": "s"}))
            .await;
        members.push(client);
        expected.insert(user);
    }
    for client in &mut members {
        client.reply_to("s").await;
    }
    let mut watcher = deployment.client(0, "zz-watcher").await;
    let snapshot = watch(&mut watcher, &room).await;
    expected.insert("zz-watcher".to_owned());
    assert_eq!(snapshot["presence"]["count"], 151);
    let listed = names(&snapshot["presence"]["members"]);
    assert_eq!(listed.len(), 100, "the snapshot lists the first 100");
    assert_eq!(
        listed,
        expected.iter().take(100).cloned().collect(),
        "the first 100, sorted"
    );
    let mut paged = Vec::new();
    let mut after = String::new();
    for page in 0.. {
        assert!(page < 10, "paging does not end");
        let (status, body) =
            http_get_json(&deployment.url(1, &format!("/v1/rooms/{room}/presence?limit=40&after={after}"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["count"], 151);
        paged.extend(names(&body["members"]));
        match body["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(paged.len(), expected.len(), "each member once");
    assert_eq!(paged.into_iter().collect::<BTreeSet<_>>(), expected);
    let (status, body) = http_get_json(&deployment.url(0, &format!("/v1/rooms/{room}/presence?limit=1001"))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
}

async fn signals_are_live_only(deployment: Deployment) {
    let room = room("signals");
    let mut ann = deployment.client(0, "ann").await;
    ann.subscribe(&room, json!({})).await;
    let mut bo = deployment.client(1, "bo").await;
    bo.subscribe(&room, json!({})).await;
    let first = ann.publish(&room, json!("one"), None).await;
    ann.send_json(json!({"type": "signal", "room": room, "body": {"typing": true}}))
        .await;
    let second = ann.publish(&room, json!("two"), None).await;
    for client in [&mut ann, &mut bo] {
        let signal = client.wait_type("signal").await;
        assert_eq!(
            signal,
            json!({"type": "signal", "room": room, "from": "ann", "body": {"typing": true}})
        );
        let messages = client.messages(&room, 2).await;
        assert_eq!(
            messages[1]["prev"], messages[0]["id"],
            "a signal is not in the prev chain"
        );
    }
    assert_eq!(second["prev"], first["id"], "ack: {second}");
    let (status, reply) = common::http_publish_to(
        &deployment.url(1, &format!("/v1/rooms/{room}/signals?user=cy")),
        json!({"read": first["id"]}),
        None,
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    for client in [&mut ann, &mut bo] {
        let signal = client.wait_type("signal").await;
        assert_eq!(
            (signal["from"].as_str(), signal["body"]["read"].clone()),
            (Some("cy"), first["id"].clone())
        );
    }
    let history = common::history_at(&deployment.url(0, ""), &room, 100).await;
    assert_eq!(history.len(), 2, "signals are never stored: {history:?}");
    let mut late = deployment.client(1, "late").await;
    let reply = late.subscribe(&room, json!({"since": "0-0"})).await;
    assert_eq!(reply["replay"], 2, "signals are never replayed: {reply}");
    let replayed = late.messages(&room, 2).await;
    assert!(replayed.iter().all(|frame| frame["type"] == "message"));
    late.expect_silence(Duration::from_millis(500)).await;
    // Too large: an error for the sender alone.
    ann.send_json(json!({"type": "signal", "room": room, "body": "x".repeat(1100), "req": "big"}))
        .await;
    let error = ann.reply_to("big").await;
    assert_eq!(error["code"], "too_large", "{error}");
    let (status, reply) = common::http_publish_to(
        &deployment.url(0, &format!("/v1/rooms/{room}/signals")),
        json!("x".repeat(1100)),
        None,
    )
    .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{reply}"
    );
    bo.expect_silence(Duration::from_millis(500)).await;
}

mod memory {
    use super::*;

    fn args() -> Vec<&'static str> {
        vec!["--max-connections-per-client", "0"]
    }

    #[tokio::test]
    async fn opt_in_snapshot_and_bad_input() {
        super::opt_in_snapshot_and_bad_input(Deployment::memory(&args()).await).await;
    }
    #[tokio::test]
    async fn users_count_once_across_tabs_and_nodes() {
        super::users_count_once_across_tabs_and_nodes(Deployment::memory(&args()).await).await;
    }
    #[tokio::test]
    async fn a_burst_of_joins_arrives_in_at_most_two_frames() {
        super::a_burst_of_joins_arrives_in_at_most_two_frames(Deployment::memory(&args()).await).await;
    }
    #[tokio::test]
    async fn a_join_and_leave_inside_one_batch_is_invisible() {
        super::a_join_and_leave_inside_one_batch_is_invisible(Deployment::memory(&args()).await).await;
    }
    #[tokio::test]
    async fn a_large_room_pages_every_member_exactly_once() {
        super::a_large_room_pages_every_member_exactly_once(Deployment::memory(&args()).await).await;
    }
    #[tokio::test]
    async fn signals_are_live_only() {
        super::signals_are_live_only(Deployment::memory(&args()).await).await;
    }
}

mod redis {
    use super::*;

    #[tokio::test]
    async fn opt_in_snapshot_and_bad_input() {
        super::opt_in_snapshot_and_bad_input(Deployment::redis(&[]).await).await;
    }
    #[tokio::test]
    async fn users_count_once_across_tabs_and_nodes() {
        super::users_count_once_across_tabs_and_nodes(Deployment::redis(&[]).await).await;
    }
    #[tokio::test]
    async fn a_burst_of_joins_arrives_in_at_most_two_frames() {
        super::a_burst_of_joins_arrives_in_at_most_two_frames(Deployment::redis(&[]).await).await;
    }
    #[tokio::test]
    async fn a_join_and_leave_inside_one_batch_is_invisible() {
        super::a_join_and_leave_inside_one_batch_is_invisible(Deployment::redis(&[]).await).await;
    }
    #[tokio::test]
    async fn a_large_room_pages_every_member_exactly_once() {
        super::a_large_room_pages_every_member_exactly_once(Deployment::redis(&[]).await).await;
    }
    #[tokio::test]
    async fn signals_are_live_only() {
        super::signals_are_live_only(Deployment::redis(&[]).await).await;
    }

    /// `kill -9` of a node holding 5 users: they show in `left` within the
    /// TTL (4 s here) plus a margin for the batch and the sweep.
    #[tokio::test]
    async fn a_killed_nodes_members_leave_within_the_ttl() {
        let ttl = Duration::from_secs(4);
        let mut deployment = Deployment::redis(&[("RELAY_PRESENCE_TTL_SECS", "4")]).await;
        let room = room("killed");
        let mut watcher = deployment.client(0, "watcher").await;
        watch(&mut watcher, &room).await;
        let mut doomed = Vec::new();
        for n in 0..5 {
            let mut client = deployment.client(1, &format!("doomed-{n}")).await;
            watch(&mut client, &room).await;
            doomed.push(client);
        }
        presence_until(&mut watcher, &room, Duration::from_secs(3), |joined, _| {
            joined.len() == 5
        })
        .await;
        deployment.nodes[1].kill_hard();
        let killed = Instant::now();
        let frames = presence_until(&mut watcher, &room, ttl + Duration::from_secs(3), |_, left| {
            left.len() == 5
        })
        .await;
        let took = killed.elapsed();
        assert!(
            took <= ttl + Duration::from_millis(1500),
            "left after {took:?}, TTL {ttl:?}"
        );
        assert_eq!(frames.last().unwrap()["count"], 1);
        eprintln!("a killed node's 5 members left after {took:?} (TTL {ttl:?})");
        drop(doomed);
    }

    /// Changes published while a node's Pub/Sub connection is down are read
    /// from the room's change log when it comes back: its watchers still
    /// see every join.
    #[tokio::test]
    async fn changes_missed_during_a_pubsub_blip_are_caught_up() {
        let deployment = Deployment::redis(&[]).await;
        let room = room("blip");
        let mut watcher = deployment.client(0, "watcher").await;
        watch(&mut watcher, &room).await;
        let mut joiners = Vec::new();
        for n in 0..10 {
            joiners.push(deployment.client(1, &format!("during-blip-{n}")).await);
        }
        let mut admin = deployment.redis.as_ref().unwrap().command_connection().await;
        // No new connection for a moment: the killed feed cannot come back
        // before the joins below are published.
        let info: String = ::redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut admin)
            .await
            .unwrap();
        let connected: i64 = info
            .lines()
            .find_map(|line| line.strip_prefix("connected_clients:"))
            .and_then(|count| count.trim().parse().ok())
            .expect("connected_clients");
        let limit = |clients: i64| ::redis::cmd("CONFIG").arg("SET").arg("maxclients").arg(clients).clone();
        let () = limit(connected - 1).query_async(&mut admin).await.unwrap();
        let killed: i64 = ::redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        // The watcher's node is the one subscribed to anything.
        assert!(
            killed >= 1,
            "the watcher's node's Pub/Sub connection was killed, got {killed}"
        );
        for client in &mut joiners {
            client
                .send_json(json!({"type": "subscribe", "room": room, "presence": true, "req": "s"}))
                .await;
        }
        for client in &mut joiners {
            let reply = client.reply_to("s").await;
            assert_eq!(reply["type"], "subscribed", "{reply}");
        }
        let () = limit(10_000).query_async(&mut admin).await.unwrap();
        let frames = presence_until(&mut watcher, &room, Duration::from_secs(8), |joined, _| {
            joined.len() == 10
        })
        .await;
        assert_eq!(frames.last().unwrap()["count"], 11, "{frames:?}");
    }

    /// A drain hands presence over (session::handover): users who come
    /// back on another node when their `reconnect` says show neither a
    /// leave nor a join; one who does not come back leaves within the drain
    /// window plus the hand-over margin, long before the TTL. On the old
    /// build every mover showed as leaving at the drain's start, then
    /// joining again.
    #[tokio::test]
    async fn a_drained_user_who_reconnects_elsewhere_shows_neither_leave_nor_join() {
        const WINDOW: Duration = Duration::from_secs(2);
        // Six, so that on a build without the hand-over some mover's leave
        // and rejoin fall in different batches whatever the delays.
        const MOVERS: usize = 6;
        let deployment = Deployment::redis(&[("RELAY_DRAIN_SECS", "2")]).await;
        let room = room("drained");
        let mut watcher = deployment.client(0, "watcher").await;
        watch(&mut watcher, &room).await;
        let mut movers = Vec::new();
        for n in 0..MOVERS {
            let mut client = deployment.client(1, &format!("mover-{n}")).await;
            watch(&mut client, &room).await;
            movers.push(client);
        }
        let mut gone = deployment.client(1, "gone").await;
        watch(&mut gone, &room).await;
        presence_until(&mut watcher, &room, Duration::from_secs(3), |joined, _| {
            joined.len() == MOVERS + 1
        })
        .await;

        let status = std::process::Command::new("kill")
            .args(["-TERM", &deployment.nodes[1].pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let drained = Instant::now();
        // Each mover does what `reconnect` says: waits its delay, then
        // joins on the other node.
        let bases = deployment.bases.clone();
        let room_name = room.clone();
        let moved = tokio::spawn(async move {
            let mut rejoined = Vec::new();
            let moves = movers.into_iter().enumerate().map(|(n, mut client)| {
                let base = bases[0].clone();
                let room = room_name.clone();
                async move {
                    let notice = client.wait_type("reconnect").await;
                    let delay = notice["delay_ms"].as_u64().expect("delay_ms");
                    assert!(delay < 2000, "{notice}");
                    drop(client);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(drained) + Duration::from_millis(delay))
                        .await;
                    let mut client = WsClient::connect_url(&format!("ws://{base}/v1/ws?user=mover-{n}")).await;
                    watch(&mut client, &room).await;
                    client
                }
            });
            rejoined.extend(futures_util::future::join_all(moves).await);
            rejoined
        });
        // "gone" never comes back.
        let left = presence_until(&mut watcher, &room, WINDOW + Duration::from_secs(4), |_, left| {
            left.contains("gone")
        })
        .await;
        let gone_after = drained.elapsed();
        let _movers = moved.await.expect("the movers rejoined");
        // Watch a while longer: the movers' old entries are removed by now.
        let settle = tokio::time::Instant::now() + Duration::from_millis(2500);
        let mut frames = left;
        while let Ok(frame) = tokio::time::timeout_at(
            settle,
            watcher.wait_for("presence", |frame| frame["type"] == "presence" && frame["room"] == room),
        )
        .await
        {
            frames.push(frame);
        }
        for frame in &frames {
            for list in ["joined", "left"] {
                assert!(
                    !names(&frame[list]).iter().any(|name| name.starts_with("mover-")),
                    "a mover showed in {list}: {frames:?}"
                );
            }
        }
        // Window, hand-over margin (0.8 s), one batch (1 s), and slack for
        // the machine.
        assert!(
            gone_after < WINDOW + Duration::from_secs(3),
            "gone left after {gone_after:?}"
        );
        let (status, members) = http_get_json(&deployment.url(0, &format!("/v1/rooms/{room}/presence"))).await;
        assert_eq!(status, 200, "{members}");
        let listed = names(&members["members"]);
        assert!(!listed.contains("gone"), "{members}");
        for n in 0..MOVERS {
            assert!(listed.contains(&format!("mover-{n}")), "{members}");
        }
        drop(gone);
    }
}

/// Signals count against the publish rate: a flood is refused with
/// `rate_limited` for the sender alone.
#[tokio::test]
async fn a_signal_flood_is_rate_limited_for_the_sender_alone() {
    let deployment = Deployment::memory(&["--max-connections-per-client", "0", "--publish-rate", "5"]).await;
    let room = room("flood");
    let mut flooder = deployment.client(0, "flooder").await;
    flooder.subscribe(&room, json!({})).await;
    let mut calm = deployment.client(0, "calm").await;
    calm.subscribe(&room, json!({})).await;
    for n in 0..20 {
        flooder
            .send_json(json!({"type": "signal", "room": room, "body": n, "req": format!("s{n}")}))
            .await;
    }
    let refused = flooder.wait_type("error").await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(
        refused["retry_after_ms"].as_u64().is_some_and(|wait| wait > 0),
        "{refused}"
    );
    let mut received = 0;
    while let Ok(frame) = tokio::time::timeout(Duration::from_millis(500), calm.wait_type("signal")).await {
        assert_eq!(frame["from"], "flooder");
        received += 1;
    }
    assert!(
        (1..20).contains(&received),
        "{received} of 20 signals passed the limit of 5/s"
    );
    // The other connection is unaffected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ack = calm.publish(&room, json!("still here"), None).await;
    assert_eq!(ack["type"], "ack", "{ack}");
}
