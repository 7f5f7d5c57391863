//! A node leaving (SIGTERM) is invisible to clients: every client is told
//! to reconnect with a delay spread over the drain window, the connection
//! closes with 1012, the process exits 0 within the window plus a margin,
//! and clients that resume on another node lose and double nothing.

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
