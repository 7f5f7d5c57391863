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
