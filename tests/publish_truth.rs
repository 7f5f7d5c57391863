//! A publish answered `unavailable` tells the truth about the store
//! (issue "make `unavailable` tell the truth"): `stored: false` only when
//! it never reached Redis, `"unknown"` when it was sent and no answer came
//! in time. Redis is frozen while a WebSocket and an HTTP client publish,
//! then resumed; what each client was told is checked against what the
//! history holds.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::nodes::RelayProcess;
use common::redis::TestRedis;
use common::{WsClient, http_publish_to};
use serde_json::{Value, json};

const ROOM: &str = "truth";

/// What one publish was told.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    Acked(String),
    NotStored,
    Unknown,
}

fn told_of_ws(reply: &Value) -> Told {
    match reply["type"].as_str() {
        Some("ack") => Told::Acked(reply["id"].as_str().unwrap().to_owned()),
        Some("error") => {
            assert_eq!(reply["code"], "unavailable", "{reply}");
            match &reply["stored"] {
                Value::Bool(false) => Told::NotStored,
                Value::String(text) if text == "unknown" => Told::Unknown,
                other => panic!("an unavailable publish must carry stored false or \"unknown\", got {other}: {reply}"),
            }
        }
        _ => panic!("unexpected reply to a publish: {reply}"),
    }
}

fn told_of_http(status: u16, body: &Value) -> Told {
    match status {
        201 => Told::Acked(body["id"].as_str().unwrap().to_owned()),
        503 => {
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
            assert_eq!(body["stored"], body["error"]["stored"], "{body}");
            match &body["error"]["stored"] {
                Value::Bool(false) => Told::NotStored,
                Value::String(text) if text == "unknown" => Told::Unknown,
                other => panic!("a 503 to a publish must carry stored false or \"unknown\", got {other}: {body}"),
            }
        }
        _ => panic!("unexpected answer to an HTTP publish: {status} {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_publisher_is_told_during_a_freeze_matches_what_the_history_holds() {
    let redis = TestRedis::start().await;
    let node = RelayProcess::spawn(&redis.url(), "truthful", &[]);
    let mut ws = WsClient::connect_url(&node.ws_url()).await;
    assert_eq!(ws.publish(ROOM, json!("before"), Some("before")).await["type"], "ack");

    redis.container.pause().await.expect("pause Redis");
    // Publishes spread over the freeze: the first ones reach Redis's socket
    // and wait there; the later ones wait in the node.
    let ws_task = tokio::spawn(async move {
        let mut told = Vec::new();
        for n in 0..24 {
            let cmid = format!("ws-{n}");
            let req = format!("r{n}");
            ws.send_json(json!({"type": "publish", "room": ROOM, "body": {"ws": n}, "cmid": cmid, "req": req}))
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for n in 0..24 {
            let reply = ws.reply_to(&format!("r{n}")).await;
            told.push((format!("ws-{n}"), told_of_ws(&reply)));
        }
        (ws, told)
    });
    let url = node.url(&format!("/v1/rooms/{ROOM}/messages"));
    let http_task = tokio::spawn(async move {
        let mut told = Vec::new();
        for n in 0..8 {
            let key = format!("http-{n}");
            let (status, body) = http_publish_to(&url, json!({"http": n}), Some(&key)).await;
            told.push((key, told_of_http(status, &body)));
        }
        told
    });
    tokio::time::sleep(Duration::from_secs(7)).await;
    redis.container.unpause().await.expect("unpause Redis");
    let (mut ws, mut told) = ws_task.await.unwrap();
    told.extend(http_task.await.unwrap());
    // Scripts that reached Redis before the freeze run once it resumes.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let history = common::history_at(&node.url(""), ROOM, 100).await;
    let mut stored: HashMap<String, String> = HashMap::new();
    for message in &history {
        let cmid = message["cmid"]
            .as_str()
            .expect("every test publish has a cmid")
            .to_owned();
        let id = message["id"].as_str().unwrap().to_owned();
        assert!(stored.insert(cmid.clone(), id).is_none(), "{cmid} stored twice");
    }
    let count = |wanted: fn(&Told) -> bool| told.iter().filter(|(_, told)| wanted(told)).count();
    eprintln!(
        "told: {} acked, {} stored:false, {} stored:unknown ({} of those in the history); {told:?}",
        count(|told| matches!(told, Told::Acked(_))),
        count(|told| *told == Told::NotStored),
        count(|told| *told == Told::Unknown),
        told.iter()
            .filter(|(cmid, told)| *told == Told::Unknown && stored.contains_key(cmid))
            .count(),
    );
    assert!(
        count(|told| *told == Told::Unknown) >= 1,
        "the publishes sent into the freeze are unknown: {told:?}"
    );
    assert!(
        count(|told| *told == Told::NotStored) >= 1,
        "publishes held back during the freeze are not stored: {told:?}"
    );
    for (cmid, answer) in &told {
        match answer {
            Told::Acked(id) => assert_eq!(stored.get(cmid), Some(id), "{cmid} acked as {id}"),
            Told::NotStored => assert!(
                !stored.contains_key(cmid),
                "{cmid} was answered stored:false but the history holds it as {:?}",
                stored.get(cmid)
            ),
            Told::Unknown => {}
        }
    }
    // An unknown publish retried with the same cmid learns the truth: the
    // original id if it was stored, else it is stored now, once.
    for (cmid, _) in told
        .iter()
        .filter(|(cmid, told)| *told == Told::Unknown && cmid.starts_with("ws-"))
    {
        let ack = ws.publish(ROOM, json!({"retry": cmid}), Some(cmid)).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        match stored.get(cmid) {
            Some(id) => assert_eq!((&ack["duplicate"], &ack["id"]), (&json!(true), &json!(id)), "{cmid}"),
            None => assert_eq!(ack["duplicate"], false, "{cmid}"),
        }
    }
    let failures_unknown = common::metric_at(&node.url(""), "relay_publish_failures_total{stored=\"unknown\"} ").await;
    let failures_false = common::metric_at(&node.url(""), "relay_publish_failures_total{stored=\"false\"} ").await;
    assert!(
        failures_unknown >= 1.0 && failures_false >= 1.0,
        "{failures_unknown} {failures_false}"
    );
}

/// Redis stopped cleanly (`SHUTDOWN`): the node learns its connections are
/// gone, and a publish after that is answered "not stored", never
/// "unknown": nothing was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_redis_was_stopped_cleanly_is_told_not_stored() {
    let redis = TestRedis::start().await;
    let node = RelayProcess::spawn(&redis.url(), "stopped", &[]);
    let mut client = WsClient::connect_url(&node.ws_url()).await;
    assert_eq!(client.publish(ROOM, json!(0), Some("c-0")).await["type"], "ack");
    let mut admin = redis.command_connection().await;
    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("NOSAVE").query_async(&mut admin).await;
    // The node's live feed sees the connection end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=3 {
        let started = std::time::Instant::now();
        let reply = client.publish(ROOM, json!(n), Some(&format!("c-{n}"))).await;
        assert_eq!(told_of_ws(&reply), Told::NotStored, "publish {n}: {reply}");
        assert!(started.elapsed() < Duration::from_secs(2), "told at once");
    }
    let (status, body) = http_publish_to(&node.url(&format!("/v1/rooms/{ROOM}/messages")), json!(9), Some("h-9")).await;
    assert_eq!(told_of_http(status, &body), Told::NotStored, "{body}");
}

/// A client that behaves as the SDK does: every publish has a cmid, up to
/// 32 wait for their answer at once, and what failed is sent again, in
/// order, before anything after it. Returns once all are acknowledged.
async fn publish_all_in_order(client: &mut WsClient, messages: &[(String, String)]) -> usize {
    let mut unacked: Vec<usize> = (0..messages.len()).collect();
    let mut failures = 0;
    while !unacked.is_empty() {
        let mut still = Vec::new();
        for chunk in unacked.chunks(32) {
            for &index in chunk {
                let (room, cmid) = &messages[index];
                client
                    .send_json(
                        json!({"type": "publish", "room": room, "body": {"i": index}, "cmid": cmid, "req": cmid}),
                    )
                    .await;
            }
            for &index in chunk {
                let (_, cmid) = &messages[index];
                let reply = client.wait_for("reply", |frame| frame["req"] == cmid.as_str()).await;
                if reply["type"] != "ack" {
                    assert_eq!(reply["code"], "unavailable", "{reply}");
                    failures += 1;
                    still.push(index);
                }
            }
            // A client sends again what failed before what came after it.
            if !still.is_empty() {
                still.extend(unacked.iter().copied().filter(|index| index > chunk.last().unwrap()));
                break;
            }
            // Paced, so that the restart falls amid the stream.
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        if !still.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unacked = still;
    }
    failures
}

/// A connection pipelines publishes to three rooms while Redis is killed
/// (`kill -9`) and started again (its append-only file kept): each room's
/// messages are committed in the order the connection sent them, each
/// once (issue 25: 12 publishes had been committed before ones sent earlier
/// on the same connection, around such a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_publishes_to_each_room_commit_in_send_order_across_a_redis_restart() {
    const COUNT: usize = 900;
    let redis = TestRedis::start_persistent().await;
    let node = RelayProcess::spawn(&redis.url(), "ordered", &[]);
    let rooms = ["order.a", "order.b", "order.c"];
    let messages: Vec<(String, String)> = (0..COUNT)
        .map(|index| (rooms[index % 3].to_owned(), format!("m-{index}")))
        .collect();
    let url = node.ws_url();
    let publisher = tokio::spawn(async move {
        let mut client = WsClient::connect_url(&url).await;
        publish_all_in_order(&mut client, &messages).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill_and_restart(Duration::from_millis(300)).await;
    let failures = tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("everything acknowledged in time")
        .unwrap();
    assert!(
        failures > 0,
        "the restart refused some publishes (else this tried nothing)"
    );
    for (offset, room) in rooms.iter().enumerate() {
        let (_, page) = common::http_get_json(&node.url(&format!("/v1/rooms/{room}/messages?limit=1000"))).await;
        let order: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["body"]["i"].as_u64().unwrap())
            .collect();
        let sent: Vec<u64> = (0..COUNT as u64).filter(|index| index % 3 == offset as u64).collect();
        assert_eq!(order, sent, "{room}: committed once each, in send order");
    }
}
