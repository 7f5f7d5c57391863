//! Slow consumers and dead peers: a client that truly stops reading (small
//! receive buffer, socket never polled) is closed with 4000 after the frames
//! already in flight, loses nothing once it resumes, and never slows others.
//! A client that answers no pings is dropped after two.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestRelay, WsClient, assert_exact_sequence, full_history};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn metric(relay: &TestRelay, line_start: &str) -> f64 {
    common::metric_at(&relay.url(""), line_start).await
}

async fn wait_for_metric(relay: &TestRelay, line_start: &str, wanted: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !wanted(metric(relay, line_start).await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "metric {line_start} never reached the wanted value"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_ws_client_is_closed_with_4000_after_frames_in_flight_and_loses_nothing() {
    const MESSAGES: usize = 300;
    // The resume replays every message the slow client missed (about 4 MB).
    let relay = TestRelay::start(&[
        "--outbound-queue",
        "16",
        "--publish-rate",
        "1000000",
        "--max-replay-bytes",
        "16777216",
    ])
    .await;

    // The slow client: a 4 KiB receive buffer, and after subscribing it
    // stops polling its socket altogether.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(relay.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(relay.ws_url(""), tcp).await.unwrap();
    let next_json = async |stream: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>| -> Option<Value> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("frame in time")?
            {
                Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(frame)) => return Some(json!({"close": frame.map(|frame| u16::from(frame.code))})),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    };
    assert_eq!(next_json(&mut slow).await.unwrap()["type"], "welcome");
    futures_util::SinkExt::send(&mut slow, Message::text(r#"{"type":"subscribe","room":"firehose"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut slow).await.unwrap()["type"], "subscribed");

    let mut bystander = WsClient::connect(&relay).await;
    bystander.subscribe("firehose", json!({})).await;
    // The bystander reads as fast as it can; the publisher keeps at most
    // a few messages ahead of it, so that only the client that stopped
    // reading falls behind, however busy the machine is.
    let progress = Arc::new(AtomicUsize::new(0));
    let bystander = tokio::spawn({
        let progress = progress.clone();
        async move {
            let mut everything = Vec::with_capacity(MESSAGES);
            while everything.len() < MESSAGES {
                everything.extend(bystander.messages("firehose", 1).await);
                progress.store(everything.len(), Ordering::Release);
            }
            everything
        }
    });
    let mut publisher = WsClient::connect(&relay).await;
    let big = "z".repeat(40_000);
    for n in 0..MESSAGES {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while progress.load(Ordering::Acquire) + 4 < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bystander stopped reading at {n}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        publisher
            .send_json(json!({"type": "publish", "room": "firehose", "req": n, "body": {"n": n, "pad": big}}))
            .await;
    }
    wait_for_metric(&relay, "relay_slow_consumer_closes_total", |value| value >= 1.0).await;

    // Reading again: the frames that were in flight, then 4000, no hole.
    let mut received = Vec::new();
    let close_code = loop {
        match next_json(&mut slow).await {
            Some(frame) if frame["type"] == "message" => received.push(frame),
            Some(frame) if frame.get("close").is_some() => break frame["close"].as_u64(),
            Some(other) => panic!("unexpected frame {other}"),
            None => break None,
        }
    };
    assert_eq!(close_code, Some(4000), "after {} messages", received.len());
    assert!(received.len() < MESSAGES, "the slow client was cut off early");

    for n in 0..MESSAGES {
        assert_eq!(
            publisher.wait_for("ack", |frame| frame["req"] == n).await["type"],
            "ack"
        );
    }
    let everything = bystander.await.expect("bystander read everything");
    let history = full_history(&relay, "firehose", 1000).await;
    assert_exact_sequence("bystander", &everything, &history, "0-0");

    // Resume: exactly the rest.
    let mut resumed_client = WsClient::connect(&relay).await;
    let since = received
        .last()
        .map_or("0-0".to_owned(), |last| last["id"].as_str().unwrap().to_owned());
    if !received.is_empty() {
        assert_exact_sequence("slow client before 4000", &received, &history[..received.len()], "0-0");
    }
    let reply = resumed_client.subscribe("firehose", json!({"since": since})).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let rest = resumed_client.messages("firehose", MESSAGES - received.len()).await;
    assert_exact_sequence("slow client after resume", &rest, &history, &since);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_pings_is_dropped_and_one_that_does_stays() {
    let relay = TestRelay::start(&["--ping-secs", "1"]).await;
    let mut silent = WsClient::connect(&relay).await;
    let mut lively = WsClient::connect(&relay).await;
    lively.subscribe("beat", json!({})).await;
    // The lively client reads (and so answers pings) for 4.5 seconds.
    let reader = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_millis(4500);
        let mut pings = 0;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, lively.stream.next()).await {
            if matches!(message, Message::Ping(_)) {
                pings += 1;
            }
        }
        (lively, pings)
    });
    let (mut lively, pings) = reader.await.unwrap();
    assert!(pings >= 3, "server pings every second, saw {pings}");
    let open = metric(&relay, "relay_connections{transport=\"ws\"}").await;
    assert!(
        (open - 1.0).abs() < f64::EPSILON,
        "the silent client was dropped: {open} open"
    );
    lively.send_json(json!({"type": "ping", "req": "still"})).await;
    assert_eq!(lively.reply_to("still").await["type"], "pong");
    // The silent client finds its connection gone once it reads again.
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), silent.stream.next())
            .await
            .expect("no hang")
        {
            Some(Ok(Message::Ping(_))) => {}
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(_)) | None => break true,
        }
    };
    assert!(ended);
}
