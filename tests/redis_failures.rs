//! Stateless nodes on one Redis, as real processes: cross-node delivery,
//! a node killed with SIGKILL, a Redis blip (Pub/Sub connections killed,
//! Redis frozen), Redis flushed, a retried publish, retention and TTL.
//! Every subscriber's sequence is checked id by id against the stream.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::time::Duration;

use common::nodes::RelayProcess;
use common::redis::TestRedis;
use common::{WsClient, assert_exact_sequence, http_get_json, metric_at};
use serde_json::{Value, json};

/// Every message of a room, oldest first, through a node's history API
/// (pages of 20: some nodes here have a small `max_replay`).
async fn history(node: &RelayProcess, room: &str) -> Vec<Value> {
    common::history_at(&node.url(""), room, 20).await
}

/// Publishes until acked, retrying `unavailable` with the same cmid.
async fn publish_reliably(client: &mut WsClient, room: &str, n: usize, cmid: &str) -> Value {
    for attempt in 0..100 {
        let req = format!("{cmid}#{attempt}");
        client
            .send_json(json!({"type": "publish", "room": room, "body": {"n": n}, "cmid": cmid, "req": req}))
            .await;
        let reply = client
            .wait_for("publish reply", |frame| frame["req"] == req.as_str())
            .await;
        if reply["type"] == "ack" {
            return reply;
        }
        assert_eq!(reply["code"], "unavailable", "only unavailable is retried: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("publish {cmid} never acknowledged");
}

/// Reads a subscriber's frames until it has `count` messages or its
/// connection ends; returns the messages and gap frames seen.
async fn read_messages(
    client: &mut WsClient,
    room: &str,
    count: usize,
    messages: &mut Vec<Value>,
    gaps: &mut Vec<Value>,
) -> bool {
    while messages.len() < count {
        match client.try_next_frame().await {
            Some(frame) if frame["type"] == "message" && frame["room"] == room => messages.push(frame),
            Some(frame) if frame["type"] == "gap" => gaps.push(frame),
            Some(_) => {}
            None => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_on_one_node_reach_subscribers_on_the_others_exactly() {
    const ROOMS: usize = 10;
    const PER_ROOM: usize = 300;
    let redis = TestRedis::start().await;
    let nodes: Vec<_> = (1..=3)
        .map(|n| RelayProcess::spawn(&redis.url(), &format!("node-{n}"), &[]))
        .collect();

    let mut readers = Vec::new();
    for room in 0..ROOMS {
        for node in &nodes[1..] {
            let url = node.ws_url();
            let mut client = WsClient::connect_url(&url).await;
            let reply = client.subscribe(&format!("room-{room}"), json!({"since": "0-0"})).await;
            assert_eq!(reply["recovered"], true);
            readers.push(tokio::spawn(async move {
                let (mut messages, mut gaps) = (Vec::new(), Vec::new());
                assert!(
                    read_messages(&mut client, &format!("room-{room}"), PER_ROOM, &mut messages, &mut gaps).await,
                    "connection stayed up"
                );
                assert!(gaps.is_empty(), "no gap: {gaps:?}");
                (room, messages)
            }));
        }
    }
    let mut publishers = Vec::new();
    for room in 0..ROOMS {
        let url = nodes[0].ws_url();
        publishers.push(tokio::spawn(async move {
            let mut client = WsClient::connect_url(&url).await;
            for n in 0..PER_ROOM {
                client
                    .send_json(json!({"type": "publish", "room": format!("room-{room}"), "body": n, "req": n}))
                    .await;
            }
            for n in 0..PER_ROOM {
                assert_eq!(client.wait_for("ack", |frame| frame["req"] == n).await["type"], "ack");
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    for reader in readers {
        let (room, messages) = reader.await.unwrap();
        let stored = history(&nodes[0], &format!("room-{room}")).await;
        assert_eq!(stored.len(), PER_ROOM);
        let bodies: Vec<_> = stored.iter().map(|message| message["body"].as_u64().unwrap()).collect();
        assert_eq!(
            bodies,
            (0..PER_ROOM as u64).collect::<Vec<_>>(),
            "pipelined publishes committed in the order sent"
        );
        assert_exact_sequence(&format!("room-{room}"), &messages, &stored, "0-0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_elsewhere_with_nothing_lost_or_doubled() {
    const TOTAL: usize = 600;
    const SUBSCRIBERS: usize = 4;
    let redis = TestRedis::start().await;
    let publisher_node = RelayProcess::spawn(&redis.url(), "node-1", &[]);
    let mut doomed = RelayProcess::spawn(&redis.url(), "node-2", &[]);
    let survivor = RelayProcess::spawn(&redis.url(), "node-3", &[]);

    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut client = WsClient::connect_url(&doomed.ws_url()).await;
        client.subscribe("k", json!({})).await;
        subscribers.push(client);
    }
    let publisher_url = publisher_node.ws_url();
    let publisher = tokio::spawn(async move {
        let mut client = WsClient::connect_url(&publisher_url).await;
        for n in 0..TOTAL {
            publish_reliably(&mut client, "k", n, &format!("m{n}")).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    // Let some messages flow, then SIGKILL the subscribers' node.
    let mut seen: Vec<Vec<Value>> = vec![Vec::new(); SUBSCRIBERS];
    for (client, messages) in subscribers.iter_mut().zip(&mut seen) {
        let mut gaps = Vec::new();
        assert!(read_messages(client, "k", 100, messages, &mut gaps).await);
    }
    doomed.kill_hard();

    let mut resumed = Vec::new();
    for (client, mut messages) in subscribers.into_iter().zip(seen) {
        let mut client = client;
        let mut gaps = Vec::new();
        // Drain what was already received before the connection broke.
        read_messages(&mut client, "k", TOTAL, &mut messages, &mut gaps).await;
        let since = messages.last().unwrap()["id"].as_str().unwrap().to_owned();
        let url = survivor.ws_url();
        resumed.push(tokio::spawn(async move {
            let mut client = WsClient::connect_url(&url).await;
            assert_eq!(client.welcome["node"], "node-3");
            let reply = client.subscribe("k", json!({"since": since})).await;
            assert_eq!(reply["recovered"], true, "{reply}");
            assert!(read_messages(&mut client, "k", TOTAL, &mut messages, &mut gaps).await);
            assert!(gaps.is_empty(), "{gaps:?}");
            messages
        }));
    }
    publisher.await.unwrap();
    let stored = history(&publisher_node, "k").await;
    assert_eq!(stored.len(), TOTAL, "every publish stored once");
    let first_prev = stored[0]["prev"].as_str().unwrap().to_owned();
    for (index, task) in resumed.into_iter().enumerate() {
        let messages = task.await.unwrap();
        assert_exact_sequence(&format!("subscriber {index}"), &messages, &stored, &first_prev);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_blip_loses_nothing_and_doubles_nothing() {
    const TOTAL: usize = 300;
    let redis = TestRedis::start().await;
    let node_a = RelayProcess::spawn(&redis.url(), "node-a", &[]);
    let node_b = RelayProcess::spawn(&redis.url(), "node-b", &[]);
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut client = WsClient::connect_url(&node_b.ws_url()).await;
        client.subscribe("blip", json!({})).await;
        readers.push(tokio::spawn(async move {
            let (mut messages, mut gaps) = (Vec::new(), Vec::new());
            let complete = tokio::time::timeout(
                Duration::from_secs(120),
                read_messages(&mut client, "blip", TOTAL, &mut messages, &mut gaps),
            )
            .await;
            assert_eq!(
                complete.ok(),
                Some(true),
                "subscriber kept its connection and got everything"
            );
            (messages, gaps)
        }));
    }
    let publisher_url = node_a.ws_url();
    let publisher = tokio::spawn(async move {
        let mut client = WsClient::connect_url(&publisher_url).await;
        let mut unavailable_seen = false;
        for n in 0..TOTAL {
            let cmid = format!("b{n}");
            let req = format!("first-{n}");
            client
                .send_json(json!({"type": "publish", "room": "blip", "body": {"n": n}, "cmid": cmid, "req": req}))
                .await;
            let reply = client.wait_for("reply", |frame| frame["req"] == req.as_str()).await;
            if reply["type"] != "ack" {
                assert_eq!(reply["code"], "unavailable", "{reply}");
                unavailable_seen = true;
                publish_reliably(&mut client, "blip", n, &cmid).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        unavailable_seen
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut admin = redis.command_connection().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        killed >= 1,
        "the subscribing node's Pub/Sub connection was killed, got {killed}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.container.pause().await.expect("pause Redis");
    let frozen_at = std::time::Instant::now();
    // While Redis is frozen: readiness turns 503 and an HTTP publish fails
    // fast (bounded by the command timeout) with 503.
    let started = std::time::Instant::now();
    let (status, body) = common::http_publish_to(&node_a.url("/v1/rooms/other/messages"), json!(1), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "failed fast: {:?}",
        started.elapsed()
    );
    let mut not_ready = false;
    for _ in 0..40 {
        if http_get_json(&node_b.url("/readyz")).await.0 == 503 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_ready, "readiness reports the broker down");
    // Stay frozen well past the publish timeout so the publisher meets it.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(frozen_at.elapsed())).await;
    redis.container.unpause().await.expect("unpause Redis");

    let unavailable_seen = publisher.await.unwrap();
    assert!(
        unavailable_seen,
        "publishes during the freeze were refused with unavailable"
    );
    let stored = history(&node_a, "blip").await;
    assert_eq!(stored.len(), TOTAL, "each retried publish stored once");
    let bodies: Vec<_> = stored
        .iter()
        .map(|message| message["body"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(bodies, (0..TOTAL as u64).collect::<Vec<_>>());
    for (index, reader) in readers.into_iter().enumerate() {
        let (messages, gaps) = reader.await.unwrap();
        assert!(gaps.is_empty(), "subscriber {index}: no gap, {gaps:?}");
        assert_exact_sequence(&format!("subscriber {index}"), &messages, &stored, "0-0");
    }
    let (status, _) = http_get_json(&node_b.url("/readyz")).await;
    assert_eq!(status, 200, "ready again after the blip");
    let repairs = metric_at(&node_b.url(""), "relay_live_repairs_total ").await;
    assert!(
        repairs >= 1.0,
        "the live feed was caught up from the stream after reconnecting"
    );
    let resyncs = metric_at(&node_b.url(""), "relay_live_feed_resyncs_total ").await;
    assert!(resyncs >= 1.0, "the lost Pub/Sub connection was counted");
}

/// A healthy Pub/Sub connection survives its health checks (a PING every
/// 3 s, answered `["pong", ""]` in subscribed mode): no reconnect, no
/// repair, and every message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_live_feed_is_kept_across_health_checks() {
    const ROOMS: [&str; 3] = ["steady-a", "steady-b", "steady-c"];
    const PER_ROOM: usize = 8;
    let redis = TestRedis::start().await;
    let node = RelayProcess::spawn(&redis.url(), "steady", &[]);
    let mut subscriber = WsClient::connect_url(&node.ws_url()).await;
    for room in ROOMS {
        subscriber.subscribe(room, json!({})).await;
    }
    let mut publisher = WsClient::connect_url(&node.ws_url()).await;
    // Three health checks pass during these 8 s (at 3, 6 s, and one at
    // start-up), with messages flowing.
    for n in 0..PER_ROOM {
        for room in ROOMS {
            let ack = publisher.publish(room, json!({"n": n}), None).await;
            assert_eq!(ack["type"], "ack", "{ack}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut received: Vec<Value> = Vec::new();
    while received.len() < ROOMS.len() * PER_ROOM {
        let frame = subscriber.next_frame().await;
        assert_ne!(frame["type"], "gap", "{frame}");
        if frame["type"] == "message" {
            received.push(frame);
        }
    }
    for room in ROOMS {
        let mine: Vec<Value> = received.iter().filter(|frame| frame["room"] == room).cloned().collect();
        assert_exact_sequence(room, &mine, &history(&node, room).await, "0-0");
    }
    let base = node.url("");
    assert!(
        metric_at(&base, "relay_live_feed_resyncs_total ").await < 0.5,
        "no resync"
    );
    assert!(metric_at(&base, "relay_live_repairs_total ").await < 0.5, "no repair");
    assert_eq!(http_get_json(&node.url("/readyz")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_shows_as_a_gap_or_unrecovered_never_a_silent_hole() {
    let redis = TestRedis::start().await;
    let node_a = RelayProcess::spawn(&redis.url(), "node-a", &[]);
    let node_b = RelayProcess::spawn(&redis.url(), "node-b", &[]);
    let mut live = WsClient::connect_url(&node_b.ws_url()).await;
    live.subscribe("f", json!({})).await;
    let mut publisher = WsClient::connect_url(&node_a.ws_url()).await;
    for n in 0..30 {
        publisher.publish("f", json!(n), None).await;
    }
    let before = live.messages("f", 30).await;
    let last_before = before.last().unwrap()["id"].as_str().unwrap().to_owned();

    let mut admin = redis.command_connection().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut admin).await.unwrap();
    for n in 30..40 {
        publisher.publish("f", json!(n), None).await;
    }
    let gap = live.wait_type("gap").await;
    assert_eq!(gap["after"], last_before.as_str());
    let after = live.messages("f", 10).await;
    assert_eq!(gap["next"], after[0]["id"]);
    assert_eq!(after[0]["prev"], "0-0", "a new history started");
    for pair in after.windows(2) {
        assert_eq!(pair[1]["prev"], pair[0]["id"]);
    }

    let mut resumer = WsClient::connect_url(&node_b.ws_url()).await;
    let reply = resumer.subscribe("f", json!({"since": last_before})).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["replay"], 10, "what the store still holds after since");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_after_a_lost_ack_is_stored_once() {
    let redis = TestRedis::start().await;
    let node_a = RelayProcess::spawn(&redis.url(), "node-a", &[]);
    let node_b = RelayProcess::spawn(&redis.url(), "node-b", &[]);
    let mut first = WsClient::connect_url(&node_a.ws_url()).await;
    let original = first.publish("dup", json!("hello"), Some("lost-ack")).await;
    assert_eq!(original["duplicate"], false);
    // The client never saw that ack; it reconnects elsewhere and retries.
    let mut retry = WsClient::connect_url(&node_b.ws_url()).await;
    let again = retry.publish("dup", json!("hello"), Some("lost-ack")).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], original["id"]);
    assert_eq!(again["prev"], original["prev"]);
    let (status, body) =
        common::http_publish_to(&node_b.url("/v1/rooms/dup/messages"), json!("hello"), Some("lost-ack")).await;
    assert_eq!((status, body["duplicate"].as_bool()), (200, Some(true)));
    assert_eq!(history(&node_a, "dup").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_ttl_turn_an_old_since_into_unrecovered() {
    let redis = TestRedis::start().await;
    let trimmed = RelayProcess::spawn(
        &redis.url(),
        "node-trim",
        &[("RELAY_HISTORY_MAXLEN", "50"), ("RELAY_MAX_REPLAY", "20")],
    );
    let mut client = WsClient::connect_url(&trimmed.ws_url()).await;
    let first = client.publish("t", json!(0), None).await;
    for n in 1..300 {
        client.publish("t", json!(n), None).await;
    }
    let kept = history(&trimmed, "t").await;
    assert!(
        kept.len() >= 50 && kept.len() < 300,
        "approximate MAXLEN kept {}",
        kept.len()
    );
    let mut offline = WsClient::connect_url(&trimmed.ws_url()).await;
    let reply = offline.subscribe("t", json!({"since": first["id"]})).await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["replay"], 20);
    let replayed = offline.messages("t", 20).await;
    assert_eq!(replayed, kept[kept.len() - 20..].to_vec(), "the newest max_replay");

    let expiring = RelayProcess::spawn(
        &redis.url(),
        "node-ttl",
        &[("RELAY_HISTORY_TTL_SECS", "1"), ("RELAY_KEY_PREFIX", "ttl")],
    );
    let mut client = WsClient::connect_url(&expiring.ws_url()).await;
    let mut last = Value::Null;
    for n in 0..3 {
        last = client.publish("e", json!(n), None).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(history(&expiring, "e").await.is_empty(), "history expired");
    let reply = client.subscribe("e", json!({"since": last["id"]})).await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["replay"], 0);
    let next = client.publish("e", json!("fresh"), None).await;
    assert_eq!(next["prev"], "0-0", "an expired room starts a new history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded_and_order_is_kept() {
    let redis = TestRedis::start().await;
    let node = RelayProcess::spawn(&redis.url(), "node-script", &[]);
    let mut client = WsClient::connect_url(&node.ws_url()).await;
    client.publish("s", json!(-1), None).await;
    let mut admin = redis.command_connection().await;
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    for n in 0..200 {
        client
            .send_json(json!({"type": "publish", "room": "s", "body": n, "req": n}))
            .await;
    }
    for n in 0..200 {
        let ack = client.wait_for("ack", |frame| frame["req"] == n).await;
        assert_eq!(ack["type"], "ack", "publish {n} after SCRIPT FLUSH: {ack}");
    }
    let stored = history(&node, "s").await;
    let bodies: Vec<_> = stored.iter().map(|message| message["body"].as_i64().unwrap()).collect();
    assert_eq!(
        bodies,
        (-1..200).collect::<Vec<_>>(),
        "stored once each, in the order sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_is_used() {
    let redis = TestRedis::start().await;
    let mut admin = redis.command_connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query_async(&mut admin)
        .await
        .unwrap();
    let with_password = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let node = RelayProcess::spawn(&with_password, "node-auth", &[]);
    let mut client = WsClient::connect_url(&node.ws_url()).await;
    client.subscribe("p", json!({})).await;
    let ack = client.publish("p", json!("ok"), None).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(client.wait_type("message").await["id"], ack["id"]);
    let wrong = std::process::Command::new(common::nodes::relay_binary())
        .env("REDIS_URL", format!("redis://:wrong@127.0.0.1:{}", redis.port))
        .env("RELAY_AUTH", "none")
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8(wrong.stderr).unwrap();
    assert!(
        stderr.contains("REDIS_URL") && !stderr.contains("wrong"),
        "one line, password not shown: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_at_start_is_a_one_line_exit() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = std::process::Command::new(common::nodes::relay_binary())
        .env("REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .env("RELAY_AUTH", "none")
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("REDIS_URL") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
}
