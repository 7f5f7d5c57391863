//! A node leaving (SIGTERM) is invisible to clients: every client is told
//! to reconnect with a delay spread over the drain window, the connection
//! closes with 1012, the process exits 0 within the window plus a margin,
//! and clients that resume on another node lose and double nothing.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::time::{Duration, Instant};

use common::nodes::RelayProcess;
use common::redis::TestRedis;
use common::{WsClient, assert_exact_sequence};
use serde_json::{Value, json};

const CLIENTS: usize = 300;
const MESSAGES: usize = 400;
const DRAIN_SECS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_tells_every_client_and_they_resume_elsewhere_losing_nothing() {
    let redis = TestRedis::start().await;
    let drain = DRAIN_SECS.to_string();
    let leaving = RelayProcess::spawn(&redis.url(), "leaving", &[("RELAY_DRAIN_SECS", &drain)]);
    let staying = RelayProcess::spawn(&redis.url(), "staying", &[]);

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = WsClient::connect_url(&leaving.ws_url()).await;
        client.subscribe("d", json!({})).await;
        clients.push(client);
    }
    let publisher_url = staying.ws_url();
    let publisher = tokio::spawn(async move {
        let mut client = WsClient::connect_url(&publisher_url).await;
        for n in 0..MESSAGES {
            let ack = client.publish("d", json!(n), Some(&format!("d{n}"))).await;
            assert_eq!(ack["type"], "ack", "{ack}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let staying_url = staying.ws_url();
    let mut tasks = Vec::new();
    for mut client in clients {
        let url = staying_url.clone();
        tasks.push(tokio::spawn(async move {
            let mut messages: Vec<Value> = Vec::new();
            let delay = loop {
                let frame = client.try_next_frame().await.expect("told before the connection ends");
                match frame["type"].as_str() {
                    Some("message") => messages.push(frame),
                    Some("reconnect") => {
                        assert_eq!(frame["reason"], "draining");
                        break frame["delay_ms"].as_u64().expect("delay_ms");
                    }
                    _ => {}
                }
            };
            let (code, _) = client.expect_close().await;
            assert_eq!(code, 1012);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut resumed = WsClient::connect_url(&url).await;
            let since = messages
                .last()
                .map_or("0-0".to_owned(), |last| last["id"].as_str().unwrap().to_owned());
            let reply = resumed.subscribe("d", json!({"since": since})).await;
            assert_eq!(reply["recovered"], true, "{reply}");
            (delay, messages, resumed)
        }));
    }

    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(leaving.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let status = leaving.wait();
        (status, signalled.elapsed())
    });

    let mut delays = Vec::new();
    let mut survivors = Vec::new();
    for task in tasks {
        let (delay, messages, resumed) = task.await.expect("client resumed");
        delays.push(delay);
        survivors.push((messages, resumed));
    }
    let (status, took) = exit.await.unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(DRAIN_SECS + 2), "exited after {took:?}");

    // Spread over the window: every quarter of it has clients.
    let window_ms = DRAIN_SECS * 1000;
    for quarter in 0..4 {
        let (low, high) = (quarter * window_ms / 4, (quarter + 1) * window_ms / 4);
        let count = delays.iter().filter(|delay| (low..high).contains(*delay)).count();
        assert!(count >= CLIENTS / 10, "only {count} delays in [{low}, {high}) ms");
    }

    publisher.await.unwrap();
    let history = common::history_at(&staying.url(""), "d", 1000).await;
    assert_eq!(history.len(), MESSAGES);
    for (index, (mut messages, mut resumed)) in survivors.into_iter().enumerate() {
        let already = messages.len();
        let rest = resumed.messages("d", MESSAGES - already).await;
        messages.extend(rest);
        assert_exact_sequence(&format!("client {index}"), &messages, &history, "0-0");
    }
}

fn signal(node_pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(node_pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Holds every write to Redis (the publish script included) for `millis`.
async fn pause_redis_writes(redis: &TestRedis, millis: u64) {
    let mut connection = redis.command_connection().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(millis)
        .arg("WRITE")
        .query_async(&mut connection)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_newcomers_get_503_a_publish_in_flight_is_acked_and_sse_is_told() {
    let redis = TestRedis::start().await;
    let node = RelayProcess::spawn(&redis.url(), "drainer", &[("RELAY_DRAIN_SECS", "4")]);
    let mut events = common::SseClient::open(&node.url("/v1/rooms/s/events"), &[]).await;
    assert_eq!(events.status, 200);
    assert_eq!(events.next_event().await.retry.as_deref(), Some("1000"));
    events.next_named("subscribed").await;
    let mut client = WsClient::connect_url(&node.ws_url()).await;

    // The publish waits on a paused Redis while the drain begins.
    pause_redis_writes(&redis, 1500).await;
    client
        .send_json(json!({"type": "publish", "room": "s", "body": "last words", "cmid": "w1", "req": 7}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(node.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, _) = common::http_get_json(&node.url("/readyz")).await;
    assert_eq!(status, 503, "readiness fails at once");
    let upgrade = tokio_tungstenite::connect_async(node.ws_url()).await;
    match upgrade {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a new WebSocket during the drain must get 503, got {other:?}"),
    }
    let newcomer = common::SseClient::open(&node.url("/v1/rooms/s/events"), &[]).await;
    assert_eq!(newcomer.status, 503, "a new SSE stream during the drain gets 503");

    let reconnect = events.next_named("reconnect").await.json();
    assert_eq!(reconnect["reason"], "draining");
    assert!(
        reconnect["delay_ms"].as_u64().is_some_and(|delay| delay < 4000),
        "{reconnect}"
    );
    assert!(
        events.ended_within(Duration::from_secs(2)).await,
        "the SSE stream ends after reconnect"
    );

    // The ack comes first, then reconnect, then 1012.
    let ack = client.next_frame().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["req"], 7);
    let reconnect = client.next_frame().await;
    assert_eq!(reconnect["type"], "reconnect", "{reconnect}");
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1012);
    let exit = tokio::task::spawn_blocking(move || node.wait()).await.unwrap();
    assert!(exit.success(), "exit status {exit}");

    let survivor = RelayProcess::spawn(&redis.url(), "survivor", &[]);
    let history = common::history_at(&survivor.url(""), "s", 10).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["id"], ack["id"]);
    assert_eq!(history[0]["body"], "last words");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_at_once() {
    let redis = TestRedis::start().await;
    let node = RelayProcess::spawn(&redis.url(), "impatient", &[("RELAY_DRAIN_SECS", "30")]);
    let mut client = WsClient::connect_url(&node.ws_url()).await;
    // A publish held by a paused Redis keeps the drain busy for seconds.
    pause_redis_writes(&redis, 5000).await;
    client
        .send_json(json!({"type": "publish", "room": "i", "body": 1, "req": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(node.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Instant::now();
    signal(node.pid(), "INT");
    let exit = tokio::task::spawn_blocking(move || node.wait()).await.unwrap();
    let took = second.elapsed();
    assert!(took < Duration::from_secs(1), "exited {took:?} after the second signal");
    assert_eq!(exit.code(), Some(1), "a cut-short drain exits 1");
}
