//! Exhaustive delivery correctness under concurrency: many publishers into
//! one room, many subscribers, some joining late with `since`; every
//! subscriber's sequence is checked message by message against the history.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TestRelay, WsClient, assert_exact_sequence, full_history};
use serde_json::{Value, json};

const PUBLISHERS: usize = 20;
const PER_PUBLISHER: usize = 500;
const EARLY_SUBSCRIBERS: usize = 30;
const LATE_SUBSCRIBERS: usize = 20;
const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;

async fn collect(mut client: WsClient, count: usize) -> Vec<Value> {
    tokio::time::timeout(Duration::from_secs(120), client.messages("crowd", count))
        .await
        .expect("all messages in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_and_late_joiners_see_every_message_once_in_order() {
    let relay = TestRelay::start(&[
        "--publish-rate",
        "1000000",
        "--outbound-queue",
        "20000",
        "--max-replay",
        "20000",
        "--history-maxlen",
        "20000",
    ])
    .await;

    let mut early = Vec::new();
    for _ in 0..EARLY_SUBSCRIBERS {
        let mut client = WsClient::connect(&relay).await;
        let reply = client.subscribe("crowd", json!({"since": "0-0"})).await;
        assert_eq!(reply["recovered"], true);
        early.push(tokio::spawn(collect(client, TOTAL)));
    }

    let mut publishers = Vec::new();
    for publisher in 0..PUBLISHERS {
        let url = relay.ws_url(&format!("?user=p{publisher}"));
        publishers.push(tokio::spawn(async move {
            let mut client = WsClient::connect_url(&url).await;
            for n in 0..PER_PUBLISHER {
                client
                    .send_json(json!({"type": "publish", "room": "crowd", "req": n, "cmid": format!("{publisher}-{n}"), "body": {"p": publisher, "n": n}}))
                    .await;
                if n % 50 == 49 {
                    tokio::task::yield_now().await;
                }
            }
            for n in 0..PER_PUBLISHER {
                let ack = client.wait_for("ack", |frame| frame["req"] == n).await;
                assert_eq!(ack["type"], "ack", "{ack}");
                assert_eq!(ack["duplicate"], false);
            }
        }));
    }

    // Late joiners resume from points taken from the history while it grows.
    let mut late = Vec::new();
    for joiner in 0..LATE_SUBSCRIBERS {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let (_, page) = common::http_get_json(&relay.url("/v1/rooms/crowd/messages?limit=1000")).await;
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        let since = if messages.is_empty() {
            "0-0".to_owned()
        } else {
            messages[(joiner * 37) % messages.len()]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let mut client = WsClient::connect(&relay).await;
        let reply = client.subscribe("crowd", json!({"since": since})).await;
        assert_eq!(reply["recovered"], true, "late joiner {joiner} after {since}: {reply}");
        late.push((since, client));
    }

    for publisher in publishers {
        publisher.await.expect("publisher finished");
    }
    let history = full_history(&relay, "crowd", 5000).await;
    assert_eq!(history.len(), TOTAL, "every publish stored once");
    let cmids: HashSet<_> = history
        .iter()
        .map(|message| message["cmid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cmids.len(), TOTAL, "no message stored twice");
    for publisher in 0..PUBLISHERS {
        let own: Vec<_> = history
            .iter()
            .filter(|message| message["body"]["p"] == publisher)
            .map(|message| message["body"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(
            own,
            (0..PER_PUBLISHER as u64).collect::<Vec<_>>(),
            "publisher {publisher}'s messages committed in its order"
        );
    }

    for (index, subscriber) in early.into_iter().enumerate() {
        let received = subscriber.await.expect("subscriber finished");
        assert_exact_sequence(&format!("early subscriber {index}"), &received, &history, "0-0");
    }
    for (index, (since, client)) in late.into_iter().enumerate() {
        let start = if since == "0-0" {
            0
        } else {
            history
                .iter()
                .position(|message| message["id"] == since.as_str())
                .unwrap()
                + 1
        };
        let received = collect(client, TOTAL - start).await;
        assert_exact_sequence(
            &format!("late subscriber {index} after {since}"),
            &received,
            &history,
            &since,
        );
    }
}
