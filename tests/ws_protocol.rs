//! The WebSocket protocol against a real server on a loopback port.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use common::{TestRelay, WsClient, full_history, id_key};
use serde_json::json;

#[tokio::test]
async fn welcome_announces_node_user_and_limits() {
    let relay = TestRelay::start(&["--max-replay", "500", "--publish-rate", "20"]).await;
    let client = WsClient::connect_url(&relay.ws_url("?user=ann")).await;
    assert_eq!(client.welcome["node"], "test-node");
    assert_eq!(client.welcome["user"], "ann");
    assert_eq!(
        client.welcome["limits"],
        json!({"max_message_bytes": 65536, "max_replay": 500, "publish_rate": 20, "max_subscriptions": 256})
    );
    let anonymous = WsClient::connect(&relay).await;
    assert_eq!(anonymous.welcome["user"], serde_json::Value::Null);
}

#[tokio::test]
async fn publish_reaches_each_subscriber_once_with_the_same_shape() {
    let relay = TestRelay::start(&[]).await;
    let mut ann = WsClient::connect_url(&relay.ws_url("?user=ann")).await;
    let mut bob = WsClient::connect(&relay).await;
    let subscribed = bob.subscribe("lobby", json!({})).await;
    assert_eq!(subscribed["room"], "lobby");
    assert_eq!(subscribed["replay"], 0);
    assert!(
        subscribed.get("recovered").is_none(),
        "recovered only with since: {subscribed}"
    );
    ann.subscribe("lobby", json!({})).await;

    let ack = ann
        .publish("lobby", json!({"text": "hi", "n": [1, 2]}), Some("c-1"))
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["room"], "lobby");
    assert_eq!(ack["prev"], "0-0");
    assert_eq!(ack["duplicate"], false);

    for client in [&mut ann, &mut bob] {
        let message = client.wait_type("message").await;
        assert_eq!(message["id"], ack["id"]);
        assert_eq!(message["prev"], "0-0");
        assert_eq!(message["room"], "lobby");
        assert_eq!(message["from"], "ann");
        assert_eq!(message["cmid"], "c-1", "the publisher sees its own cmid");
        assert_eq!(message["body"], json!({"text": "hi", "n": [1, 2]}));
        assert!(message["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000));
        client.expect_silence(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_retried_cmid_is_acked_as_duplicate_and_stored_once() {
    let relay = TestRelay::start(&[]).await;
    let mut client = WsClient::connect(&relay).await;
    let first = client.publish("r", json!(1), Some("same")).await;
    let again = client.publish("r", json!(1), Some("same")).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["prev"], first["prev"]);
    assert_eq!(full_history(&relay, "r", 100).await.len(), 1);
}

#[tokio::test]
async fn ping_is_answered_with_pong_echoing_req() {
    let relay = TestRelay::start(&[]).await;
    let mut client = WsClient::connect(&relay).await;
    client.send_json(json!({"type": "ping", "req": 42})).await;
    assert_eq!(client.next_frame().await, json!({"type": "pong", "req": 42}));
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.next_frame().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_a_second_one_is_not_subscribed() {
    let relay = TestRelay::start(&[]).await;
    let mut reader = WsClient::connect(&relay).await;
    let mut writer = WsClient::connect(&relay).await;
    reader.subscribe("r", json!({})).await;
    reader
        .send_json(json!({"type": "unsubscribe", "room": "r", "req": "u1"}))
        .await;
    assert_eq!(
        reader.next_frame().await,
        json!({"type": "unsubscribed", "req": "u1", "room": "r"})
    );
    writer.publish("r", json!("after"), None).await;
    reader.expect_silence(std::time::Duration::from_millis(300)).await;
    reader
        .send_json(json!({"type": "unsubscribe", "room": "r", "req": "u2"}))
        .await;
    let error = reader.next_frame().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "not_subscribed");
    assert_eq!(error["req"], "u2");
    assert_eq!(error["room"], "r");
}

#[tokio::test]
async fn subscribing_twice_to_a_room_is_refused() {
    let relay = TestRelay::start(&[]).await;
    let mut client = WsClient::connect(&relay).await;
    client.subscribe("r", json!({})).await;
    client
        .send_json(json!({"type": "subscribe", "room": "r", "req": "again"}))
        .await;
    let error = client.next_frame().await;
    assert_eq!(error["code"], "bad_request", "{error}");
    assert!(error["message"].as_str().unwrap().contains("already subscribed"));
}

#[tokio::test]
async fn resume_with_since_delivers_exactly_what_was_missed_then_live() {
    let relay = TestRelay::start(&[]).await;
    let mut publisher = WsClient::connect(&relay).await;
    let mut acks = Vec::new();
    for n in 0..10 {
        acks.push(publisher.publish("room", json!({"n": n}), None).await);
    }
    let since = acks[3]["id"].as_str().unwrap().to_owned();
    let mut resumer = WsClient::connect(&relay).await;
    let subscribed = resumer.subscribe("room", json!({"since": since})).await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["replay"], 6);
    let replayed = resumer.messages("room", 6).await;
    assert_eq!(replayed[0]["prev"], since.as_str());
    for (message, ack) in replayed.iter().zip(&acks[4..]) {
        assert_eq!(message["id"], ack["id"]);
    }
    let live = publisher.publish("room", json!({"n": "live"}), None).await;
    let next = resumer.messages("room", 1).await;
    assert_eq!(next[0]["id"], live["id"]);
    assert_eq!(next[0]["prev"], acks[9]["id"]);
}

/// protocol.md, "Positions": a client without a cursor stores `position`
/// at once, and a reconnect before its first message resumes exactly.
#[tokio::test]
async fn a_live_only_subscriber_stores_its_position_and_resumes_exactly_from_it() {
    let relay = TestRelay::start(&[]).await;
    let mut publisher = WsClient::connect(&relay).await;
    let mut acks = Vec::new();
    for n in 0..3 {
        acks.push(publisher.publish("room", json!({"n": n}), None).await);
    }
    let mut first = WsClient::connect(&relay).await;
    let subscribed = first.subscribe("room", json!({})).await;
    assert_eq!(subscribed["position"], acks[2]["id"], "the room's head: {subscribed}");
    assert!(subscribed.get("recovered").is_none(), "{subscribed}");
    let position = subscribed["position"].as_str().unwrap().to_owned();
    drop(first);
    for n in 3..6 {
        acks.push(publisher.publish("room", json!({"n": n}), None).await);
    }
    let mut again = WsClient::connect(&relay).await;
    let resumed = again.subscribe("room", json!({"since": position})).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["position"], position.as_str(), "{resumed}");
    assert_eq!(resumed["replay"], 3, "{resumed}");
    let replayed = again.messages("room", 3).await;
    let mut prev = position;
    for (message, ack) in replayed.iter().zip(&acks[3..]) {
        assert_eq!(message["id"], ack["id"]);
        assert_eq!(message["prev"], prev.as_str());
        prev = message["id"].as_str().unwrap().to_owned();
    }
    // `last: N` stands right before the first replayed message.
    let mut last = WsClient::connect(&relay).await;
    let subscribed = last.subscribe("room", json!({"last": 2})).await;
    assert_eq!(subscribed["position"], acks[3]["id"], "{subscribed}");
    // An empty room stands at 0-0.
    let subscribed = last.subscribe("empty", json!({})).await;
    assert_eq!(subscribed["position"], "0-0", "{subscribed}");
}

#[tokio::test]
async fn resume_from_every_point_of_the_history_is_exact() {
    let relay = TestRelay::start(&[]).await;
    let mut publisher = WsClient::connect(&relay).await;
    for n in 0..30 {
        publisher.publish("points", json!(n), None).await;
    }
    let history = full_history(&relay, "points", 1000).await;
    let mut resumer = WsClient::connect(&relay).await;
    let starts = std::iter::once("0-0".to_owned())
        .chain(history.iter().map(|message| message["id"].as_str().unwrap().to_owned()));
    for since in starts {
        let subscribed = resumer.subscribe("points", json!({"since": since})).await;
        assert_eq!(subscribed["recovered"], true, "since {since}");
        let count = usize::try_from(subscribed["replay"].as_u64().unwrap()).unwrap();
        let received = resumer.messages("points", count).await;
        common::assert_exact_sequence(&format!("resume after {since}"), &received, &history, &since);
        resumer
            .send_json(json!({"type": "unsubscribe", "room": "points", "req": "u"}))
            .await;
        resumer.reply_to("u").await;
    }
}

#[tokio::test]
async fn since_unknown_to_the_room_is_not_recovered() {
    let relay = TestRelay::start(&[]).await;
    let mut publisher = WsClient::connect(&relay).await;
    let ack = publisher.publish("r", json!(1), None).await;
    let (ms, _) = id_key(&ack["id"]);
    let mut client = WsClient::connect(&relay).await;
    // An id between messages, and one after the last.
    for since in [format!("{}-0", ms - 1), format!("{}-5", ms + 10)] {
        let reply = client.subscribe("r", json!({"since": since})).await;
        assert_eq!(reply["recovered"], false, "since {since}: {reply}");
        client
            .messages("r", usize::try_from(reply["replay"].as_u64().unwrap()).unwrap())
            .await;
        client
            .send_json(json!({"type": "unsubscribe", "room": "r", "req": "u"}))
            .await;
        client.reply_to("u").await;
    }
    let empty_room = client.subscribe("never-used", json!({"since": "0-0"})).await;
    assert_eq!(
        empty_room["recovered"], true,
        "nothing was ever missed in an empty room"
    );
    assert_eq!(empty_room["replay"], 0);
}

#[tokio::test]
async fn resume_past_max_replay_is_not_recovered_and_gets_the_newest() {
    let relay = TestRelay::start(&["--max-replay", "5"]).await;
    let mut publisher = WsClient::connect(&relay).await;
    for n in 0..12 {
        publisher.publish("r", json!(n), None).await;
    }
    let history = full_history(&relay, "r", 5).await;
    let mut client = WsClient::connect(&relay).await;
    let reply = client.subscribe("r", json!({"since": "0-0"})).await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["replay"], 5);
    let received = client.messages("r", 5).await;
    assert_eq!(received, history[7..].to_vec(), "the newest max_replay messages");
}

#[tokio::test]
async fn last_n_delivers_the_newest_messages_first() {
    let relay = TestRelay::start(&[]).await;
    let mut publisher = WsClient::connect(&relay).await;
    for n in 0..8 {
        publisher.publish("r", json!(n), None).await;
    }
    let mut client = WsClient::connect(&relay).await;
    let reply = client.subscribe("r", json!({"last": 3})).await;
    assert_eq!(reply["replay"], 3);
    assert!(reply.get("recovered").is_none());
    let bodies: Vec<_> = client
        .messages("r", 3)
        .await
        .iter()
        .map(|message| message["body"].clone())
        .collect();
    assert_eq!(bodies, vec![json!(5), json!(6), json!(7)]);
    let mut other = WsClient::connect(&relay).await;
    let none = other.subscribe("r", json!({"last": 0})).await;
    assert_eq!(none["replay"], 0);
    other.expect_silence(std::time::Duration::from_millis(200)).await;
}

#[tokio::test]
async fn retention_trims_history_and_an_old_since_is_not_recovered() {
    let relay = TestRelay::start(&["--history-maxlen", "10"]).await;
    let mut publisher = WsClient::connect(&relay).await;
    let first = publisher.publish("r", json!(0), None).await;
    for n in 1..25 {
        publisher.publish("r", json!(n), None).await;
    }
    let history = full_history(&relay, "r", 100).await;
    assert_eq!(history.len(), 10, "memory broker keeps exactly maxlen");
    let mut client = WsClient::connect(&relay).await;
    let reply = client.subscribe("r", json!({"since": first["id"]})).await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["replay"], 10);
}

#[tokio::test]
async fn messages_of_one_connection_are_committed_in_order() {
    let relay = TestRelay::start(&["--publish-rate", "10000"]).await;
    let mut client = WsClient::connect(&relay).await;
    for n in 0..200 {
        client
            .send_json(json!({"type": "publish", "room": "order", "body": n, "req": n}))
            .await;
    }
    for n in 0..200 {
        let ack = client.reply_to_number(n).await;
        assert_eq!(ack["type"], "ack");
    }
    let history = full_history(&relay, "order", 1000).await;
    let bodies: Vec<_> = history
        .iter()
        .map(|message| message["body"].as_i64().unwrap())
        .collect();
    assert_eq!(bodies, (0..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn refresh_without_authentication_is_explained() {
    let relay = TestRelay::start(&[]).await;
    let mut client = WsClient::connect(&relay).await;
    client
        .send_json(json!({"type": "refresh", "token": "x", "req": 1}))
        .await;
    let reply = client.next_frame().await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["req"], 1);
    assert!(reply["message"].as_str().unwrap().contains("RELAY_AUTH=none"));
}

trait ReplyToNumber {
    async fn reply_to_number(&mut self, req: i64) -> serde_json::Value;
}

impl ReplyToNumber for WsClient {
    async fn reply_to_number(&mut self, req: i64) -> serde_json::Value {
        self.wait_for("numbered reply", |frame| frame["req"] == req).await
    }
}

/// The node answers pings and the client's close itself, between whole
/// frames: a client pinging while messages pour in gets every message
/// intact and in order, a pong with each ping's payload, and its close
/// code echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_a_close_are_answered_between_whole_frames_while_messages_pour_in() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    const MESSAGES: u64 = 400;
    const PINGS: u64 = 40;
    let relay = TestRelay::start(&["--publish-rate", "1000000"]).await;
    let mut reader = WsClient::connect(&relay).await;
    reader.subscribe("pour", json!({})).await;
    let mut publisher = WsClient::connect(&relay).await;
    let publishing = tokio::spawn(async move {
        for n in 0..MESSAGES {
            // A body long enough that a frame can be cut by a full socket.
            publisher
                .send_json(json!({"type": "publish", "room": "pour", "body": {"n": n, "pad": "x".repeat(3000)}}))
                .await;
        }
        publisher
    });
    let mut next_n = 0;
    let mut pongs = Vec::new();
    let mut pinged = 0;
    let last_ping = format!("ping {}", PINGS - 1);
    while next_n < MESSAGES || pongs.last() != Some(&last_ping) {
        if pinged < PINGS && next_n >= pinged * (MESSAGES / PINGS) {
            let payload = format!("ping {pinged}");
            reader
                .stream
                .send(Message::Ping(payload.into_bytes().into()))
                .await
                .unwrap();
            pinged += 1;
        }
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), reader.stream.next())
            .await
            .expect("a frame in time")
            .expect("the connection stays open")
            .expect("every frame parses: nothing was written into the middle of another");
        match message {
            Message::Text(text) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "message" {
                    assert_eq!(frame["body"]["n"], next_n, "every message once, in order");
                    next_n += 1;
                }
            }
            Message::Pong(payload) => pongs.push(String::from_utf8(payload.to_vec()).unwrap()),
            Message::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // RFC 6455 lets a node answer only the latest of pings it has not
    // answered yet: each pong is one ping's payload, in order, and the
    // last ping is answered.
    let numbers: Vec<usize> = pongs
        .iter()
        .map(|pong| {
            pong.strip_prefix("ping ")
                .and_then(|n| n.parse().ok())
                .expect("a ping's payload")
        })
        .collect();
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "pongs in order: {numbers:?}"
    );
    publishing.await.unwrap();
    reader
        .stream
        .send(Message::Close(Some(CloseFrame {
            code: 4321.into(),
            reason: "done".into(),
        })))
        .await
        .unwrap();
    let echoed = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), reader.stream.next())
            .await
            .expect("the close echo in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|frame| u16::from(frame.code)),
            Some(Ok(_)) => {}
            other => panic!("expected the close echo, got {other:?}"),
        }
    };
    assert_eq!(echoed, Some(4321), "the client's close code comes back");
}
