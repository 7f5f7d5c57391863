//! Every row of the protocol's error and close tables, each run while a
//! bystander on the same node publishes and receives a steady stream: the
//! bad client gets its error or close, and the bystander gets every message,
//! in order, with an unbroken `prev` chain.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::time::Duration;

use common::{TestRelay, WsClient, assert_exact_sequence, full_history};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const BYSTANDER_MESSAGES: usize = 30;

/// Runs `attack` while a bystander room carries traffic, then checks the
/// bystander's sequence exhaustively.
async fn with_bystander(relay_args: &[&str], attack: impl AsyncFnOnce(&TestRelay)) {
    let relay = TestRelay::start(relay_args).await;
    let mut watcher = WsClient::connect(&relay).await;
    watcher.subscribe("calm", json!({})).await;
    let url = relay.ws_url("?user=bystander");
    let publisher = tokio::spawn(async move {
        let mut client = WsClient::connect_url(&url).await;
        for n in 0..BYSTANDER_MESSAGES {
            let ack = client.publish("calm", json!({"n": n}), None).await;
            assert_eq!(ack["type"], "ack", "bystander publish {n}: {ack}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    attack(&relay).await;
    publisher.await.expect("bystander publisher finished");
    let received = watcher.messages("calm", BYSTANDER_MESSAGES).await;
    let history = full_history(&relay, "calm", 1000).await;
    assert_exact_sequence("bystander", &received, &history, "0-0");
}

async fn expect_error(client: &mut WsClient, text: &str, code: &str) -> Value {
    client.send_text(text).await;
    let reply = client.wait_type("error").await;
    assert_eq!(reply["code"], code, "for {text}: {reply}");
    assert!(
        reply["message"].as_str().is_some_and(|message| message.len() > 10),
        "an explanation: {reply}"
    );
    reply
}

async fn still_open(client: &mut WsClient) {
    client.send_json(json!({"type": "ping", "req": "alive"})).await;
    assert_eq!(client.reply_to("alive").await["type"], "pong");
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_open() {
    with_bystander(&[], async |relay| {
        let mut client = WsClient::connect(relay).await;
        for text in [
            "not json",
            "[1,2,3]",
            "\"a string\"",
            "{}",
            r#"{"type":"dance"}"#,
            r#"{"type":7}"#,
            r#"{"type":"subscribe"}"#,
            r#"{"type":"publish","room":"r"}"#,
            r#"{"type":"subscribe","room":5}"#,
            r#"{"type":"subscribe","room":"r","last":"three"}"#,
            r#"{"type":"subscribe","room":"r","since":"yesterday"}"#,
            r#"{"type":"subscribe","room":"r","since":"12-"}"#,
            r#"{"type":"subscribe","room":"r","last":-1}"#,
            r#"{"type":"subscribe","room":"r","last":100000000000000000000}"#,
            r#"{"type":"subscribe","room":"r","last":2,"since":"1-0"}"#,
            r#"{"type":"publish","room":"r","body":1,"cmid":""}"#,
            r#"{"type":"publish","room":"r","body":1,"cmid":{"a":1}}"#,
        ] {
            expect_error(&mut client, text, "bad_request").await;
        }
        still_open(&mut client).await;
    })
    .await;
}

#[tokio::test]
async fn req_is_echoed_in_errors_but_not_when_it_is_itself_invalid() {
    with_bystander(&[], async |relay| {
        let mut client = WsClient::connect(relay).await;
        let reply = expect_error(&mut client, r#"{"type":"nope","req":"r-1"}"#, "bad_request").await;
        assert_eq!(reply["req"], "r-1");
        let long = format!(r#"{{"type":"ping","req":"{}"}}"#, "x".repeat(65));
        let reply = expect_error(&mut client, &long, "bad_request").await;
        assert!(reply.get("req").is_none(), "an over-long req is not echoed: {reply}");
        let exactly = format!(r#"{{"type":"ping","req":"{}"}}"#, "x".repeat(64));
        client.send_text(&exactly).await;
        assert_eq!(client.wait_type("pong").await["req"], "x".repeat(64));
        still_open(&mut client).await;
    })
    .await;
}

#[tokio::test]
async fn bad_room_names_get_invalid_room() {
    with_bystander(&[], async |relay| {
        let mut client = WsClient::connect(relay).await;
        for room in ["", "has space", "slash/room", "star*", "é", &"a".repeat(129)] {
            let frame = json!({"type": "subscribe", "room": room}).to_string();
            let reply = expect_error(&mut client, &frame, "invalid_room").await;
            assert!(reply["message"].as_str().unwrap().contains("room name"), "{reply}");
            let publish = json!({"type": "publish", "room": room, "body": 1}).to_string();
            expect_error(&mut client, &publish, "invalid_room").await;
        }
        client.subscribe(&"a".repeat(128), json!({})).await;
        still_open(&mut client).await;
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_too_large_and_nothing_is_stored() {
    with_bystander(&["--max-message-bytes", "1000"], async |relay| {
        let mut client = WsClient::connect(relay).await;
        let body = "x".repeat(999); // 1001 bytes serialized with its quotes
        let frame = json!({"type": "publish", "room": "big", "body": body, "req": "big"}).to_string();
        let reply = expect_error(&mut client, &frame, "too_large").await;
        assert_eq!(reply["room"], "big");
        let fits = client.publish("big", json!("x".repeat(998)), None).await;
        assert_eq!(fits["type"], "ack", "exactly the limit fits: {fits}");
        assert_eq!(full_history(relay, "big", 100).await.len(), 1);
        still_open(&mut client).await;
    })
    .await;
}

#[tokio::test]
async fn a_binary_frame_closes_with_1003() {
    with_bystander(&[], async |relay| {
        let mut client = WsClient::connect(relay).await;
        client.stream.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        let (code, reason) = client.expect_close().await;
        assert_eq!(code, 1003, "{reason}");
    })
    .await;
}

#[tokio::test]
async fn a_frame_over_the_hard_limit_closes_with_1009() {
    with_bystander(
        &["--max-message-bytes", "1000", "--max-frame-bytes", "4096"],
        async |relay| {
            let mut client = WsClient::connect(relay).await;
            let frame = json!({"type": "publish", "room": "r", "body": "y".repeat(10_000)}).to_string();
            client.send_text(&frame).await;
            let (code, reason) = client.expect_close().await;
            assert_eq!(code, 1009, "{reason}");
        },
    )
    .await;
}

#[tokio::test]
async fn a_stream_of_invalid_frames_closes_with_1008() {
    with_bystander(&["--invalid-frame-limit", "5"], async |relay| {
        let mut client = WsClient::connect(relay).await;
        for _ in 0..5 {
            expect_error(&mut client, "garbage", "bad_request").await;
        }
        client.send_text("garbage").await;
        let (code, reason) = client.expect_close().await;
        assert_eq!(code, 1008, "{reason}");
    })
    .await;
}

#[tokio::test]
async fn a_publish_flood_is_rate_limited_with_retry_after() {
    with_bystander(&["--publish-rate", "20"], async |relay| {
        let mut client = WsClient::connect(relay).await;
        for n in 0..60 {
            client
                .send_json(json!({"type": "publish", "room": "flood", "body": n, "req": n}))
                .await;
        }
        let mut acked = 0;
        let mut limited = 0;
        for n in 0..60 {
            let reply = client.wait_for("flood reply", |frame| frame["req"] == n).await;
            match reply["type"].as_str() {
                Some("ack") => acked += 1,
                Some("error") => {
                    assert_eq!(reply["code"], "rate_limited", "{reply}");
                    assert!(
                        reply["retry_after_ms"]
                            .as_u64()
                            .is_some_and(|ms| (1..=1000).contains(&ms)),
                        "{reply}"
                    );
                    limited += 1;
                }
                _ => panic!("unexpected reply {reply}"),
            }
        }
        assert!(
            (40..=45).contains(&acked),
            "a burst of twice the rate passes, got {acked}"
        );
        assert_eq!(acked + limited, 60);
        assert_eq!(
            full_history(relay, "flood", 1000).await.len(),
            acked,
            "only acked publishes are stored"
        );
        still_open(&mut client).await;
    })
    .await;
}

#[tokio::test]
async fn a_client_that_vanishes_mid_frame_does_not_disturb_the_node() {
    with_bystander(&[], async |relay| {
        for _ in 0..20 {
            let mut client = WsClient::connect(relay).await;
            client.subscribe("calm", json!({})).await;
            drop(client.stream.next());
            drop(client);
        }
    })
    .await;
}

/// Issue "Prove it under combined faults", closes that arrive: a client
/// that floods invalid frames without reading must still receive the 1008
/// close frame. The node keeps reading (and discarding) after its close
/// until the peer's close, so the kernel never answers the flood with a
/// reset that destroys the close frame in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_invalid_frames_gets_1008_every_time() {
    let relay = TestRelay::start(&["--invalid-frame-limit", "20"]).await;
    let mut endings = Vec::new();
    for round in 0..50 {
        let (stream, _) = tokio::time::timeout(
            common::FRAME_TIMEOUT,
            tokio_tungstenite::connect_async(relay.ws_url("")),
        )
        .await
        .expect("connect in time")
        .expect("handshake");
        // Frames keep arriving while the node closes: the flood goes on
        // beside the reader until the connection ends (bounded).
        let (mut sink, mut source) = stream.split();
        let garbage = "not json ".repeat(200);
        let flood = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while tokio::time::Instant::now() < deadline {
                if sink.send(Message::text(garbage.as_str())).await.is_err() {
                    return;
                }
            }
        });
        // A busy client reads late: the close frame waits in its socket
        // while its frames keep reaching the node.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ending = loop {
            match tokio::time::timeout(common::FRAME_TIMEOUT, source.next()).await {
                Ok(Some(Ok(Message::Close(Some(frame))))) => break format!("close {}", u16::from(frame.code)),
                Ok(Some(Ok(Message::Close(None)))) => break "close without a code".to_owned(),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(error))) => break format!("error {error}"),
                Ok(None) => break "end of stream without a close".to_owned(),
                Err(_) => panic!("round {round}: no close within the timeout"),
            }
        };
        flood.abort();
        endings.push(ending);
    }
    let wrong: Vec<(usize, &String)> = endings
        .iter()
        .enumerate()
        .filter(|(_, ending)| *ending != "close 1008")
        .collect();
    assert!(
        wrong.is_empty(),
        "every flood ends with a 1008 close frame; {} of 50 did not: {wrong:?}",
        wrong.len()
    );
}
