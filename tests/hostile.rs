//! Hostile clients against the release binary (issue 24): each attack of the
//! outside trial, run while a bystander publishes and reads a steady stream
//! on the same node, with the node's resident memory and descriptors
//! measured. Every bound holds, the node never aborts (the memory-hungry
//! attacks run it under an address-space limit, as a container's memory
//! limit would), and the bystander gets every message once, in order.
//!
//! `RELAY_TEST_BINARY` runs these against another build (an older one, to
//! see them fail there).

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::nodes::RelayProcess;
use common::redis::TestRedis;
use common::stomp::StompClient;
use common::{WsClient, assert_exact_sequence, http_get_json};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "a-hostile-test-secret-long-enough-0123456789";
/// The address space a node under attack may use: what a 2 GB container
/// allows (the trial's crashes happened under this).
const MEMORY_LIMIT_KIB: u64 = 2 * 1024 * 1024;
const BYSTANDER_MESSAGES: usize = 40;

fn node(redis: Option<&str>, extra: &[(&str, &str)]) -> RelayProcess {
    let mut env = vec![("RELAY_LOG_FORMAT", "json"), ("RUST_LOG", "warn,chat_relay=info")];
    env.extend_from_slice(extra);
    RelayProcess::spawn_with(redis, "hostile", &env, Some(MEMORY_LIMIT_KIB))
}

fn token(sub: &str, rooms: &[&str], exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": exp, "rooms": rooms}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_an_hour() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600
}

/// Every message of a room, page by page (with `query`'s token, if any).
async fn history(node: &RelayProcess, room: &str, query: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut after = "0-0".to_owned();
    let separator = if query.is_empty() { "?" } else { "&" };
    loop {
        let url = node.url(&format!(
            "/v1/rooms/{room}/messages{query}{separator}after={after}&limit=1000"
        ));
        let (status, page) = http_get_json(&url).await;
        assert_eq!(status, 200, "history page: {page}");
        let messages = page["messages"].as_array().expect("messages").clone();
        let Some(last) = messages.last() else { return all };
        after = last["id"].as_str().unwrap().to_owned();
        all.extend(messages);
    }
}

/// A publisher and a watcher of room `calm` on the node, paced over a few
/// seconds while an attack runs; [`Bystander::check`] then compares what
/// the watcher got with the room's history, id by id.
struct Bystander {
    watcher: WsClient,
    publisher: tokio::task::JoinHandle<()>,
    query: String,
}

impl Bystander {
    /// `query` carries the bystander's token, when the node wants one.
    async fn start(node: &RelayProcess, query: &str) -> Self {
        let url = format!("{}{query}", node.ws_url());
        let mut watcher = WsClient::connect_url(&url).await;
        watcher.subscribe("calm", json!({})).await;
        let publisher = tokio::spawn(async move {
            let mut client = WsClient::connect_url(&url).await;
            for n in 0..BYSTANDER_MESSAGES {
                let ack = client
                    .publish("calm", json!({"n": n}), Some(&format!("calm-{n}")))
                    .await;
                assert_eq!(ack["type"], "ack", "bystander publish {n}: {ack}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self {
            watcher,
            publisher,
            query: query.to_owned(),
        }
    }

    async fn check(mut self, node: &RelayProcess) {
        self.publisher.await.expect("the bystander published everything");
        let received = self.watcher.messages("calm", BYSTANDER_MESSAGES).await;
        let history = history(node, "calm", &self.query).await;
        assert_exact_sequence("bystander", &received, &history, "0-0");
    }
}

/// Publishes `count` bodies of `bytes` bytes to `room` over one WebSocket.
async fn fill_room(node: &RelayProcess, room: &str, count: usize, bytes: usize) {
    let mut client = WsClient::connect_url(&node.ws_url()).await;
    let pad = "x".repeat(bytes);
    for n in 0..count {
        let ack = client.publish(room, json!({"n": n, "pad": pad}), None).await;
        assert_eq!(ack["type"], "ack", "fill {n}: {ack}");
    }
}

/// A TCP socket to the node with a small receive buffer, as a reader that
/// stops reading holds it.
async fn small_socket(node: &RelayProcess) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(node.addr.parse().unwrap()).await.unwrap()
}

/// Waits until `condition` holds, at most `limit`.
async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status line's code of what a raw socket got, or `None` if the node
/// closed it without an answer.
async fn read_status(socket: &mut TcpStream) -> Option<u16> {
    let mut head = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut head))
        .await
        .expect("an answer or a close in time")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&head[..read]);
    text.split(' ').nth(1).and_then(|code| code.parse().ok())
}

/// Whether the node has closed `socket` (EOF or reset), waiting up to
/// `limit` and discarding anything it sends.
async fn closed_by_node(socket: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut sink = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_to_readers_that_never_read_are_bounded_in_bytes_and_in_number() {
    let mut node = node(
        None,
        &[
            ("RELAY_PUBLISH_RATE", "100000"),
            ("RELAY_IDLE_TIMEOUT_SECS", "3"),
            ("RELAY_SSE_KEEPALIVE_SECS", "1"),
        ],
    );
    // 120 messages of 60 KB: a page of them all is 7.3 MB.
    fill_room(&node, "big", 120, 60_000).await;
    let bystander = Bystander::start(&node, "").await;
    let before = node.rss_kib();
    // 40 readers over HTTP/1.1 that never read their page.
    let mut sockets = Vec::new();
    for _ in 0..40 {
        let mut socket = small_socket(&node).await;
        socket
            .write_all(b"GET /v1/rooms/big/messages?limit=1000 HTTP/1.1\r\nhost: relay\r\n\r\n")
            .await
            .unwrap();
        sockets.push(socket);
    }
    // And 20 streams of one HTTP/2 connection whose bodies are never read.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(h2.get(node.url("/v1/rooms/big/messages?limit=1000")).send());
    }
    let responses: Vec<reqwest::Response> = futures_util::future::join_all(streams)
        .await
        .into_iter()
        .map(|response| response.expect("an HTTP/2 answer"))
        .collect();
    let mut statuses = Vec::new();
    for socket in &mut sockets {
        statuses.push(read_status(socket).await);
    }
    statuses.extend(responses.iter().map(|response| Some(response.status().as_u16())));
    let pages = statuses.iter().filter(|status| **status == Some(200)).count();
    let refused = statuses.iter().filter(|status| **status == Some(429)).count();
    assert!(
        pages <= 4,
        "at most 4 history reads of one client at once: {statuses:?}"
    );
    assert_eq!(pages + refused, 60, "every other read is told 429: {statuses:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_mib = node.rss_kib().saturating_sub(before) / 1024;
    // Four pages of at most 4 MiB, and the sockets' buffers.
    println!("measured: 60 readers that never read: {pages} pages, {refused} told 429, RSS +{grown_mib} MiB");
    assert!(
        grown_mib < 48,
        "the node grew by {grown_mib} MiB for 60 readers that never read"
    );
    // The readers are idle past RELAY_IDLE_TIMEOUT_SECS: their connections
    // close and their places come back.
    for socket in &mut sockets {
        assert!(
            closed_by_node(socket, Duration::from_secs(10)).await,
            "an idle reader's socket is closed"
        );
    }
    drop(responses);
    let (status, page) = http_get_json(&node.url("/v1/rooms/big/messages?limit=1000")).await;
    assert_eq!(status, 200, "{page}");
    let read = page["messages"].as_array().unwrap().len();
    assert!(
        read < 120 && page["more"] == true,
        "a page ends at 4 MiB and says more: {read}"
    );
    assert!(node.is_running(), "the node did not abort");
    bystander.check(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_transactions_check_sends_when_they_arrive_and_hold_what_is_stored_only() {
    let mut node = node(None, &[("RELAY_AUTH", "jwt"), ("RELAY_JWT_SECRET", SECRET)]);
    let bystander = Bystander::start(
        &node,
        &format!("?access_token={}", token("calm", &["calm"], in_an_hour())),
    )
    .await;
    let before = node.rss_kib();
    // A token with a grant: 90 SENDs (within the burst of its rate) of
    // 110 KB frames of tiny headers in one transaction. What is held is the
    // bodies, not the headers.
    let stomp_url = format!("ws://{}/v1/stomp", node.addr);
    let mut stomp = StompClient::connect(&stomp_url, &[("passcode", &token("bomber", &["bomb"], in_an_hour()))]).await;
    stomp.send("BEGIN\ntransaction:t\n\n\0").await;
    let headers: String = (0..14_000).fold(String::new(), |mut headers, n| {
        let _ = writeln!(headers, "h{n}:v");
        headers
    });
    let frame = format!("SEND\ndestination:/topic/bomb\ntransaction:t\n{headers}\n{{\"n\":1}}\0");
    assert!(frame.len() > 100_000);
    for _ in 0..90 {
        stomp.send(&frame).await;
    }
    stomp.send("COMMIT\ntransaction:t\nreceipt:c\n\n\0").await;
    let receipt = stomp.frame("RECEIPT").await;
    assert!(receipt.contains("receipt-id:c"), "{receipt}");
    let grown_mib = node.rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 32, "90 header bombs held {grown_mib} MiB");
    println!("measured: a STOMP transaction of 90 header bombs: RSS +{grown_mib} MiB");
    let bomber = format!("?access_token={}", token("bomber", &["bomb"], in_an_hour()));
    assert_eq!(history(&node, "bomb", &bomber).await.len(), 90);

    // A token without that grant: its first SEND in a transaction is
    // refused when it arrives, with its receipt id, and nothing is held.
    let mut mallory = StompClient::connect(&stomp_url, &[("passcode", &token("mallory", &[], in_an_hour()))]).await;
    mallory.send("BEGIN\ntransaction:t\n\n\0").await;
    mallory
        .send(&format!(
            "SEND\ndestination:/topic/bomb\ntransaction:t\nreceipt:s1\n{headers}\n{{}}\0"
        ))
        .await;
    let error = mallory.frame("ERROR").await;
    assert!(
        error.contains("code:forbidden") && error.contains("receipt-id:s1"),
        "{error}"
    );
    assert!(node.is_running());
    bystander.check(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_finish_a_request_are_counted_and_timed_out() {
    let mut node = node(
        None,
        &[
            ("RELAY_MAX_CONNECTIONS", "20"),
            ("RELAY_HEADER_TIMEOUT_SECS", "4"),
            ("RELAY_IDLE_TIMEOUT_SECS", "5"),
            ("RELAY_SSE_KEEPALIVE_SECS", "1"),
        ],
    );
    let bystander = Bystander::start(&node, "").await;
    let before = node.descriptors();
    // 150 sockets: silent, trickling a header, and upgrades left half-way.
    let mut sockets = Vec::new();
    for n in 0..150 {
        let Ok(mut socket) = TcpStream::connect(&node.addr).await else {
            continue;
        };
        let start: &[u8] = match n % 3 {
            0 => b"",
            1 => b"GET /healthz HTTP/1.1\r\nhost: r",
            _ => b"GET /v1/ws HTTP/1.1\r\nhost: relay\r\nupgrade: websocket\r\nconnection: upgrade\r\n",
        };
        let _ = socket.write_all(start).await;
        sockets.push(socket);
    }
    // Sockets past the cap are answered 503 and closed within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = node.descriptors().saturating_sub(before);
    println!("measured: 150 half-open sockets against a cap of 20: {held} descriptors held");
    // 20 connections and a headroom of 64 sockets (the bystander holds 2).
    assert!(
        held <= 82 + 2,
        "the node holds {held} more descriptors for 150 half-open sockets"
    );
    // Keep trickling: time still runs out.
    for socket in sockets.iter_mut().skip(1).step_by(3) {
        let _ = socket.write_all(b"e").await;
    }
    let mut closed = 0;
    for socket in &mut sockets {
        if closed_by_node(socket, Duration::from_secs(8)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, sockets.len(), "every half-open socket was closed by the node");
    eventually("descriptors back to where they were", Duration::from_secs(5), || {
        node.descriptors() <= before + 2
    })
    .await;
    // New clients get in again.
    let mut fresh = WsClient::connect_url(&node.ws_url()).await;
    fresh.subscribe("fresh", json!({})).await;
    assert!(node.is_running());
    bystander.check(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_sockets_take_a_place_before_connect_and_must_connect_in_time() {
    let mut node = node(
        None,
        &[("RELAY_MAX_CONNECTIONS", "20"), ("RELAY_HEADER_TIMEOUT_SECS", "2")],
    );
    let bystander = Bystander::start(&node, "").await;
    let url = format!("ws://{}/v1/stomp", node.addr);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((stream, _)) => accepted.push(stream),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503);
                refused += 1;
            }
            Err(error) => panic!("unexpected: {error}"),
        }
    }
    // The bystander's two connections hold two of the 20 places.
    assert_eq!(accepted.len(), 18, "upgrades before CONNECT take places");
    assert_eq!(refused, 22);
    // One sends more than a CONNECT can be before authenticating.
    let mut big = StompClient {
        stream: accepted.pop().unwrap(),
    };
    big.send(&format!("CONNECT\naccept-version:1.2\nx:{}", "y".repeat(20_000)))
        .await;
    let error = big.frame("ERROR").await;
    assert!(error.contains("code:too_large"), "{error}");
    // The others never CONNECT: an ERROR, then the close, within the
    // header timeout.
    let started = Instant::now();
    for stream in accepted {
        let error = StompClient { stream }.frame("ERROR").await;
        assert!(error.contains("no CONNECT within 2 s"), "{error}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Their places come back once they are closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio_tungstenite::connect_async(url.as_str()).await.is_err() {
        assert!(Instant::now() < deadline, "a place for a new STOMP client");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _fresh = StompClient::connect(&url, &[]).await;
    assert!(node.is_running());
    bystander.check(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_never_read_hold_a_bounded_replay_and_queue() {
    let redis = TestRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mut node = node(Some(&url), &[("RELAY_PUBLISH_RATE", "100000")]);
    // 150 messages of 60 KB: 9 MB of history, read fresh from Redis by each
    // subscriber.
    fill_room(&node, "big", 150, 60_000).await;
    let bystander = Bystander::start(&node, "").await;
    let before = node.rss_kib();
    let mut readers = Vec::new();
    for _ in 0..20 {
        let socket = small_socket(&node).await;
        let (mut stream, _) = tokio_tungstenite::client_async(node.ws_url().into_client_request().unwrap(), socket)
            .await
            .unwrap();
        stream
            .send(Message::text(r#"{"type":"subscribe","room":"big","last":1000}"#))
            .await
            .unwrap();
        readers.push(stream);
    }
    // A reader that does read sees the replay cut at 4 MiB.
    let mut reader = WsClient::connect_url(&node.ws_url()).await;
    let subscribed = reader.subscribe("big", json!({"last": 1000})).await;
    let replay = subscribed["replay"].as_u64().unwrap();
    assert!(replay < 80, "a replay of 60 KB messages stops near 4 MiB: {replay}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown_mib = node.rss_kib().saturating_sub(before) / 1024;
    // Each holds at most its replay (4 MiB) while it does not read.
    println!("measured: 20 non-reading subscribers: replay cut at {replay} messages, RSS +{grown_mib} MiB");
    assert!(grown_mib < 20 * 6, "20 non-reading subscribers took {grown_mib} MiB");
    // Live messages past 4 MiB queued for one of them: a slow consumer.
    fill_room(&node, "big", 100, 60_000).await;
    let mut first = readers.remove(0);
    let mut closed_with = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), first.next()).await {
        if let Message::Close(frame) = message {
            closed_with = frame.map(|frame| u16::from(frame.code));
            break;
        }
    }
    assert_eq!(
        closed_with,
        Some(4000),
        "the live queue's byte bound closed the slow consumer"
    );
    assert!(node.is_running());
    drop(readers);
    bystander.check(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_holds_at_most_its_replay_memory_however_many_readers_stop_reading() {
    let redis = TestRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // Replays of 8 MiB (twice what the kernel's buffers of a socket take),
    // 32 MiB of them in memory at once: four.
    let mut node = node(
        Some(&url),
        &[
            ("RELAY_PUBLISH_RATE", "100000"),
            ("RELAY_MAX_REPLAY_BYTES", "8388608"),
            ("RELAY_REPLAY_MEMORY_BYTES", "33554432"),
        ],
    );
    fill_room(&node, "big", 150, 60_000).await;
    let bystander = Bystander::start(&node, "").await;
    let before = node.rss_kib();
    // 20 readers that ask for a full replay each and never read it.
    let mut readers = Vec::new();
    for _ in 0..20 {
        let socket = small_socket(&node).await;
        let (mut stream, _) = tokio_tungstenite::client_async(node.ws_url().into_client_request().unwrap(), socket)
            .await
            .unwrap();
        stream
            .send(Message::text(r#"{"type":"subscribe","room":"big","last":1000}"#))
            .await
            .unwrap();
        readers.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown_mib = node.rss_kib().saturating_sub(before) / 1024;
    println!("measured: 20 non-reading readers of 8 MiB replays, 32 MiB of replay memory: RSS +{grown_mib} MiB");
    assert!(
        grown_mib < 32 + 40,
        "20 non-reading readers of 8 MiB replays took {grown_mib} MiB"
    );
    // A reader that reads waits its turn, then is told to come back.
    let mut reader = WsClient::connect_url(&node.ws_url()).await;
    reader
        .send_json(json!({"type": "subscribe", "room": "big", "last": 1000, "req": "late"}))
        .await;
    let refused = tokio::time::timeout(Duration::from_secs(15), reader.reply_to("late"))
        .await
        .expect("an answer within the wait");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(refused["retry_after_ms"], 1000);
    // Replays without history to hold are not held up.
    reader.subscribe("light", json!({})).await;
    drop(readers);
    assert!(node.is_running());
    bystander.check(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_on_every_transport() {
    let mut node = node(None, &[("RELAY_MAX_SUBSCRIPTIONS", "256")]);
    let bystander = Bystander::start(&node, "").await;
    let mut client = WsClient::connect_url(&node.ws_url()).await;
    assert_eq!(client.welcome["limits"]["max_subscriptions"], 256);
    for n in 0..256 {
        client
            .send_json(json!({"type": "subscribe", "room": format!("r{n}"), "req": n}))
            .await;
    }
    for n in 0..256 {
        assert_eq!(
            client.wait_for("subscribed", |frame| frame["req"] == n).await["type"],
            "subscribed"
        );
    }
    client
        .send_json(json!({"type": "subscribe", "room": "one-more", "req": "more"}))
        .await;
    let refused = client.reply_to("more").await;
    assert_eq!(refused["code"], "too_many_subscriptions", "{refused}");
    client.send_json(json!({"type": "ping", "req": "alive"})).await;
    assert_eq!(
        client.reply_to("alive").await["type"],
        "pong",
        "the connection stays open"
    );
    // Presence: 32 rooms a connection.
    let mut watcher = WsClient::connect_url(&node.ws_url()).await;
    for n in 0..32 {
        watcher.subscribe(&format!("p{n}"), json!({"presence": true})).await;
    }
    watcher
        .send_json(json!({"type": "subscribe", "room": "p32", "presence": true, "req": "p"}))
        .await;
    assert_eq!(watcher.reply_to("p").await["code"], "too_many_subscriptions");
    watcher.subscribe("p32", json!({})).await;
    // STOMP: the 257th SUBSCRIBE is an ERROR.
    let mut stomp = StompClient::connect(&format!("ws://{}/v1/stomp", node.addr), &[]).await;
    let mut frames = String::new();
    for n in 0..257 {
        let _ = write!(frames, "SUBSCRIBE\nid:{n}\ndestination:/topic/s{n}\n\n\0");
    }
    stomp.send(&frames).await;
    let error = stomp.frame("ERROR").await;
    assert!(error.contains("code:too_many_subscriptions"), "{error}");
    assert!(node.is_running());
    bystander.check(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_writing_from_a_hundred_connections_shares_one_budget() {
    // 50 publishes a second per connection, and per client twice that and
    // 1.6 MB a second (the defaults).
    let mut node = node(
        None,
        &[
            ("RELAY_AUTH", "jwt"),
            ("RELAY_JWT_SECRET", SECRET),
            ("RELAY_PUBLISH_RATE", "50"),
        ],
    );
    let alice = format!("?access_token={}", token("alice", &["calm", "alice"], in_an_hour()));
    let bystander = Bystander::start(&node, &alice).await;
    let mallory = token("mallory", &["flood"], in_an_hour());
    let pad = "x".repeat(60_000);
    let started = Instant::now();
    let mut floods = Vec::new();
    for _ in 0..100 {
        let url = format!("{}?access_token={mallory}", node.ws_url());
        let pad = pad.clone();
        floods.push(tokio::spawn(async move {
            let mut client = WsClient::connect_url(&url).await;
            let mut acked: u32 = 0;
            while started.elapsed() < Duration::from_secs(3) {
                let reply = client.publish("flood", json!({"pad": pad}), None).await;
                if reply["type"] == "ack" {
                    acked += 1;
                } else {
                    assert_eq!(reply["code"], "rate_limited", "{reply}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            acked
        }));
    }
    // Alice, meanwhile, is not held back by mallory's budget.
    let mut own = WsClient::connect_url(&format!("{}{alice}", node.ws_url())).await;
    for n in 0..20 {
        assert_eq!(own.publish("alice", json!({"n": n}), None).await["type"], "ack");
    }
    let mut acked: u32 = 0;
    for flood in floods {
        acked += flood.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    // 1.6 MB/s with a burst of 3.2 MB, at 60 KB a message: 27 a second + 54.
    let most = 27.0 * seconds + 55.0;
    println!(
        "measured: one client from 100 connections: {acked} messages of 60 KB stored in {seconds:.1} s (bound {most:.0})"
    );
    assert!(
        f64::from(acked) <= most,
        "{acked} messages of 60 KB stored in {seconds:.1} s; at most {most:.0}"
    );
    assert_eq!(
        history(&node, "flood", &format!("?access_token={mallory}")).await.len(),
        acked as usize
    );
    assert!(node.is_running());
    bystander.check(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_nested_32_deep_pass_and_33_are_too_large_on_every_transport() {
    let mut node = node(None, &[]);
    let bystander = Bystander::start(&node, "").await;
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // WebSocket.
    let mut client = WsClient::connect_url(&node.ws_url()).await;
    client
        .send_text(&format!(
            r#"{{"type":"publish","room":"deep","body":{},"req":"ok"}}"#,
            nested(32)
        ))
        .await;
    assert_eq!(client.reply_to("ok").await["type"], "ack");
    for depth in [33, 32_000] {
        client
            .send_text(&format!(
                r#"{{"type":"publish","room":"deep","body":{},"req":"no"}}"#,
                nested(depth)
            ))
            .await;
        assert_eq!(client.reply_to("no").await["code"], "too_large", "{depth} deep");
    }
    // HTTP.
    let post = |depth: usize| {
        reqwest::Client::new()
            .post(node.url("/v1/rooms/deep/messages"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"body":{}}}"#, nested(depth)))
            .send()
    };
    assert_eq!(post(32).await.unwrap().status(), 201);
    for depth in [33, 32_000] {
        let response = post(depth).await.unwrap();
        assert_eq!(response.status(), 413, "{depth} deep");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_large");
    }
    // STOMP.
    let mut stomp = StompClient::connect(&format!("ws://{}/v1/stomp", node.addr), &[]).await;
    stomp
        .send(&format!(
            "SEND\ndestination:/topic/deep\nreceipt:ok\n\n{}\0",
            nested(32)
        ))
        .await;
    assert!(stomp.frame("RECEIPT").await.contains("receipt-id:ok"));
    stomp
        .send(&format!(
            "SEND\ndestination:/topic/deep\nreceipt:no\n\n{}\0",
            nested(33)
        ))
        .await;
    let error = stomp.frame("ERROR").await;
    assert!(
        error.contains("code:too_large") && error.contains("receipt-id:no"),
        "{error}"
    );
    // What was stored reads back, over SSE too: three bodies 32 deep.
    let mut events = common::SseClient::open(&node.url("/v1/rooms/deep/events?last=10"), &[]).await;
    assert_eq!(events.next_event().await.retry.as_deref(), Some("1000"));
    assert_eq!(events.next_named("subscribed").await.json()["replay"], 3);
    for _ in 0..3 {
        let message = events.next_named("message").await.json();
        assert_eq!(message["body"].to_string(), nested(32));
    }
    assert!(node.is_running());
    bystander.check(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_every_kind_spend_a_budget_and_no_chosen_number_panics() {
    let redis = TestRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mut node = node(
        Some(&url),
        &[
            ("RELAY_AUTH", "jwt"),
            ("RELAY_JWT_SECRET", SECRET),
            ("RELAY_INVALID_FRAME_LIMIT", "20"),
        ],
    );
    let calm = format!("?access_token={}", token("calm", &["calm"], in_an_hour()));
    let bystander = Bystander::start(&node, &calm).await;
    // Forbidden publishes are refused, and past the budget the connection
    // is closed.
    let mut client = WsClient::connect_url(&format!("{}{calm}", node.ws_url())).await;
    for n in 0..20 {
        let req = format!("f{n}");
        client
            .send_json(json!({"type": "publish", "room": "elsewhere", "body": n, "req": req}))
            .await;
        assert_eq!(client.reply_to(&req).await["code"], "forbidden");
    }
    client
        .send_json(json!({"type": "publish", "room": "elsewhere", "body": 0}))
        .await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1008, "the 21st refusal in a minute closes");
    // A token whose exp is past what a clock holds.
    let forever = token("forever", &["*"], u64::MAX);
    let mut eternal = WsClient::connect_url(&format!("{}?access_token={forever}", node.ws_url())).await;
    eternal.subscribe("ever", json!({})).await;
    eternal
        .send_json(json!({"type": "refresh", "token": forever, "req": "r"}))
        .await;
    assert_eq!(eternal.reply_to("r").await["type"], "refreshed");
    // The largest message id: nothing follows it, no error, no warning.
    let largest = "18446744073709551615-18446744073709551615";
    let subscribed = eternal.subscribe("calm", json!({"since": largest})).await;
    assert_eq!(subscribed["type"], "subscribed");
    let (status, page) = http_get_json(&node.url(&format!(
        "/v1/rooms/calm/messages?after={largest}&access_token={forever}"
    )))
    .await;
    assert_eq!(status, 200, "{page}");
    let mut events = common::SseClient::open(
        &node.url(&format!("/v1/rooms/calm/events?access_token={forever}")),
        &[("last-event-id", largest)],
    )
    .await;
    assert_eq!(events.status, 200);
    assert_eq!(events.next_event().await.retry.as_deref(), Some("1000"));
    assert_eq!(events.next_named("subscribed").await.json()["recovered"], false);
    assert!(node.is_running());
    bystander.check(&node).await;
    assert!(
        node.warnings().is_empty(),
        "no warning for any of it: {:?}",
        node.warnings()
    );
}
