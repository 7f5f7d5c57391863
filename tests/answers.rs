//! Answers that are true (issue 25): STOMP bodies reach JSON clients as the
//! JSON the sender wrote, a COMMIT is stored whole or refused whole, no
//! client can make a frame the node writes carry a NUL, one sender's `cmid`
//! never answers for another's publish, and a configured issuer or
//! audience is required in the token.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use common::stomp::StompClient;
use common::{TestRelay, WsClient, full_history, http_get_json};
use serde_json::{Value, json};

const SECRET: &str = "an-answers-test-secret-long-enough-0123456789";

fn token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_an_hour() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600
}

fn stomp_url(relay: &TestRelay) -> String {
    format!("ws://{}/v1/stomp", relay.addr)
}

#[tokio::test]
async fn a_stomp_senders_json_reaches_json_clients_as_the_value_and_stomp_clients_byte_for_byte() {
    let relay = TestRelay::start(&[]).await;
    let mut json_client = WsClient::connect(&relay).await;
    json_client.subscribe("chat.room.1", json!({})).await;
    let mut reader = StompClient::connect(&stomp_url(&relay), &[]).await;
    reader
        .send("SUBSCRIBE\nid:0\ndestination:/topic/chat/room/1\nreceipt:s\n\n\0")
        .await;
    reader.frame("RECEIPT").await;
    let mut sender = StompClient::connect(&stomp_url(&relay), &[]).await;
    // What Python's json.dumps writes, what a pretty printer writes (lines
    // and all), and JSON with a trailing newline.
    let bodies = [
        r#"{"text": "hi", "n": [1, 2]}"#,
        "{\n  \"text\" : \"pretty\",\n  \"n\" : 2\n}",
        "[1, 2, 3]\n",
    ];
    for (n, body) in bodies.iter().enumerate() {
        sender
            .send(&format!(
                "SEND\ndestination:/topic/chat/room/1\nreceipt:r{n}\n\n{body}\0"
            ))
            .await;
        sender.frame("RECEIPT").await;
    }
    for body in bodies {
        let message = json_client
            .wait_for("message", |frame| frame["type"] == "message")
            .await;
        let expected: Value = serde_json::from_str(body).unwrap();
        assert_eq!(message["body"], expected, "a JSON client gets the value, not a string");
        let frame = reader.frame("MESSAGE").await;
        assert_eq!(StompClient::body(&frame), body, "a STOMP reader gets the bytes sent");
        assert_eq!(StompClient::header(&frame, "content-type"), Some("application/json"));
    }
    // The history pages and SSE read the same values.
    let history = full_history(&relay, "chat.room.1", 100).await;
    let values: Vec<Value> = history.iter().map(|message| message["body"].clone()).collect();
    let expected: Vec<Value> = bodies.iter().map(|body| serde_json::from_str(body).unwrap()).collect();
    assert_eq!(values, expected);
    let mut events = common::SseClient::open(&relay.url("/v1/rooms/chat.room.1/events?last=3"), &[]).await;
    events.next_event().await;
    events.next_named("subscribed").await;
    for value in &expected {
        assert_eq!(&events.next_named("message").await.json()["body"], value);
    }
}

#[tokio::test]
async fn a_commit_is_stored_whole_or_refused_whole_and_a_forbidden_send_is_refused_when_it_arrives() {
    let relay = TestRelay::start(&["--auth", "jwt", "--jwt-secret", SECRET, "--publish-rate", "50"]).await;
    let sender = token(&json!({"sub": "ann", "exp": in_an_hour(), "rooms": ["t", "u"], "read": ["r"]}));
    // 300 SENDs in one transaction: more than the rate's burst (100), so
    // the COMMIT is refused, and nothing of it is stored.
    let mut stomp = StompClient::connect(&stomp_url(&relay), &[("passcode", &sender)]).await;
    let mut frames = String::from("BEGIN\ntransaction:big\n\n\0");
    for n in 0..300 {
        let _ = write!(frames, "SEND\ndestination:/topic/t\ntransaction:big\n\n{{\"n\":{n}}}\0");
    }
    frames.push_str("COMMIT\ntransaction:big\nreceipt:c\n\n\0");
    stomp.send(&frames).await;
    let error = stomp.frame("ERROR").await;
    assert_eq!(StompClient::header(&error, "code"), Some("rate_limited"), "{error}");
    assert_eq!(StompClient::header(&error, "receipt-id"), Some("c"), "{error}");
    assert!(error.contains("nothing of its 300 SENDs was stored"), "{error}");
    let history_url = |room: &str| relay.url(&format!("/v1/rooms/{room}/messages?access_token={sender}"));
    let (_, page) = http_get_json(&history_url("t")).await;
    assert_eq!(page["messages"], json!([]), "nothing of the refused COMMIT was stored");

    // 60 SENDs commit whole, in order.
    let mut stomp = StompClient::connect(&stomp_url(&relay), &[("passcode", &sender)]).await;
    let mut frames = String::from("BEGIN\ntransaction:ok\n\n\0");
    for n in 0..60 {
        let _ = write!(frames, "SEND\ndestination:/topic/u\ntransaction:ok\n\n{{\"n\":{n}}}\0");
    }
    frames.push_str("COMMIT\ntransaction:ok\nreceipt:c\n\n\0");
    stomp.send(&frames).await;
    stomp.frame("RECEIPT").await;
    let (_, page) = http_get_json(&format!("{}&limit=100", history_url("u"))).await;
    let stored: Vec<Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["body"]["n"].clone())
        .collect();
    assert_eq!(stored, (0..60).map(Value::from).collect::<Vec<_>>());

    // A SEND the token may not make (a read-only room), inside a
    // transaction: refused when it arrives, with its receipt id.
    let mut stomp = StompClient::connect(&stomp_url(&relay), &[("passcode", &sender)]).await;
    stomp
        .send("BEGIN\ntransaction:x\n\n\0SEND\ndestination:/topic/u\ntransaction:x\n\n1\0SEND\ndestination:/topic/r\ntransaction:x\nreceipt:bad\n\n2\0COMMIT\ntransaction:x\nreceipt:c\n\n\0")
        .await;
    let error = stomp.frame("ERROR").await;
    assert_eq!(StompClient::header(&error, "code"), Some("forbidden"), "{error}");
    assert_eq!(StompClient::header(&error, "receipt-id"), Some("bad"), "{error}");
    let (_, page) = http_get_json(&format!("{}&limit=100", history_url("u"))).await;
    assert_eq!(
        page["messages"].as_array().unwrap().len(),
        60,
        "the transaction's other SEND was not stored"
    );
}

#[tokio::test]
async fn no_client_can_make_a_frame_carry_a_nul_or_a_control_character() {
    let relay = TestRelay::start(&[]).await;
    // A cmid with a NUL or a line break: refused on every transport.
    let mut client = WsClient::connect(&relay).await;
    for cmid in ["a\u{0}ERROR", "a\nb", "a\u{7}"] {
        client
            .send_json(json!({"type": "publish", "room": "r", "body": 1, "cmid": cmid, "req": "p"}))
            .await;
        let reply = client.reply_to("p").await;
        assert_eq!(reply["code"], "bad_request", "{cmid:?}: {reply}");
    }
    let raw_http = |key: &str| {
        let request = format!(
            "POST /v1/rooms/r/messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\nidempotency-key: {key}\r\ncontent-length: 10\r\nconnection: close\r\n\r\n{{\"body\":1}}"
        );
        let addr = relay.addr;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
            socket.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            let _ = socket.read_to_string(&mut answer).await;
            answer
        }
    };
    let answer = raw_http("a\u{1}b").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let mut stomp = StompClient::connect(&stomp_url(&relay), &[]).await;
    stomp
        .send("SEND\ndestination:/topic/r\ncmid:a\\nb\nreceipt:s\n\n1\0")
        .await;
    let error = stomp.frame("ERROR").await;
    assert_eq!(StompClient::header(&error, "code"), Some("bad_request"), "{error}");
    assert!(full_history(&relay, "r", 100).await.is_empty(), "nothing stored");
    // A user name with a control character: refused on every transport.
    let (status, _) = http_get_json(&relay.url("/v1/rooms/r/messages?user=a%00b")).await;
    assert_eq!(status, 401);
    let (status, _) = http_get_json(&relay.url("/v1/rooms/r/events?user=evil%0AERROR")).await;
    assert_eq!(status, 401);
    let refused = tokio_tungstenite::connect_async(relay.ws_url("?user=a%00b")).await;
    assert!(matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(response)) if response.status() == 401));
    let mut login = StompClient::open(&stomp_url(&relay)).await;
    login.send("CONNECT\naccept-version:1.2\nlogin:a\u{1}b\n\n\0").await;
    let error = login.frame("ERROR").await;
    assert_eq!(StompClient::header(&error, "code"), Some("unauthorized"), "{error}");
    // A JWT whose sub holds a NUL is refused too.
    let jwt = TestRelay::start(&["--auth", "jwt", "--jwt-secret", SECRET]).await;
    let forged = token(&json!({"sub": "ann\u{0}MESSAGE", "exp": in_an_hour(), "rooms": ["*"]}));
    let (status, body) = http_get_json(&jwt.url(&format!("/v1/rooms/r/messages?access_token={forged}"))).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn one_senders_cmid_never_answers_for_anothers_publish() {
    let relay = TestRelay::start(&[]).await;
    let mut alice = WsClient::connect_url(&relay.ws_url("?user=alice")).await;
    let mut mallory = WsClient::connect_url(&relay.ws_url("?user=mallory")).await;
    let first = mallory.publish("shop", json!("mallory's"), Some("order-1001")).await;
    assert_eq!(first["duplicate"], false);
    let second = alice.publish("shop", json!("alice's"), Some("order-1001")).await;
    assert_eq!(
        second["duplicate"], false,
        "alice's publish is stored, not taken for mallory's: {second}"
    );
    assert_ne!(second["id"], first["id"]);
    // Each one's retry still finds their own.
    let again = alice.publish("shop", json!("alice's"), Some("order-1001")).await;
    assert_eq!(
        (again["duplicate"].clone(), again["id"].clone()),
        (json!(true), second["id"].clone())
    );
    let history = full_history(&relay, "shop", 100).await;
    let bodies: Vec<Value> = history.iter().map(|message| message["body"].clone()).collect();
    assert_eq!(bodies, [json!("mallory's"), json!("alice's")]);
}

#[tokio::test]
async fn a_configured_issuer_or_audience_is_required_in_the_token() {
    let relay = TestRelay::start(&[
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--jwt-issuer",
        "https://issuer.example",
        "--jwt-audience",
        "chat",
    ])
    .await;
    let exp = in_an_hour();
    let status = async |claims: Value| {
        let url = relay.url(&format!("/v1/rooms/r/messages?access_token={}", token(&claims)));
        http_get_json(&url).await.0
    };
    let full = json!({"sub": "ann", "exp": exp, "rooms": ["*"], "iss": "https://issuer.example", "aud": "chat"});
    assert_eq!(status(full.clone()).await, 200);
    let mut without_iss = full.clone();
    without_iss.as_object_mut().unwrap().remove("iss");
    assert_eq!(status(without_iss).await, 401, "a token without iss");
    let mut without_aud = full.clone();
    without_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(status(without_aud).await, 401, "a token without aud");
}

#[tokio::test]
async fn http_errors_and_stomp_protocol_closes_are_counted_by_code() {
    let relay = TestRelay::start(&[]).await;
    let base = relay.url("");
    let (status, _) = http_get_json(&relay.url("/v1/nowhere")).await;
    assert_eq!(status, 404);
    let (status, _) = http_get_json(&relay.url("/v1/rooms/bad%20room/messages")).await;
    assert_eq!(status, 400);
    assert!((common::metric_at(&base, "relay_errors_total{code=\"not_found\"}").await - 1.0).abs() < f64::EPSILON);
    assert!((common::metric_at(&base, "relay_errors_total{code=\"invalid_room\"}").await - 1.0).abs() < f64::EPSILON);
    // A STOMP protocol error: an ERROR, then close 1002, counted as such.
    let mut stomp = StompClient::connect(&stomp_url(&relay), &[]).await;
    stomp.send("SUBSCRIBE\n\n\0").await;
    stomp.frame("ERROR").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while common::metric_at(&base, "relay_closes_total{code=\"1002\"}").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 1002 close is counted under its code"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, metrics) = common::http_get_text(&relay.url("/metrics")).await;
    assert!(!metrics.contains("relay_closes_total{code=\"other\"}"), "{metrics}");
}

/// Opens a WebSocket on a raw socket (so the test can keep sending while
/// it reads), returning the socket after the 101.
async fn raw_websocket(relay: &TestRelay, path: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: relay\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(socket.read(&mut byte).await.unwrap(), 1, "the upgrade's answer");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    socket
}

/// Reads server frames until a close frame and returns its code; `None`
/// when the connection ends (or is reset) first.
async fn close_code(socket: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Server frames are unmasked: opcode, length (7, 16 or 64 bits), payload.
        if buffer.len() >= 2 {
            let opcode = buffer[0] & 0x0f;
            let (length, start) = match buffer[1] & 0x7f {
                126 if buffer.len() >= 4 => (usize::from(u16::from_be_bytes([buffer[2], buffer[3]])), 4),
                127 if buffer.len() >= 10 => {
                    let length = u64::from_be_bytes(buffer[2..10].try_into().unwrap());
                    (usize::try_from(length).unwrap(), 10)
                }
                126 | 127 => (usize::MAX, 0),
                length => (usize::from(length), 2),
            };
            if length != usize::MAX && buffer.len() >= start + length {
                if opcode == 8 {
                    return (length >= 2).then(|| u16::from_be_bytes([buffer[start], buffer[start + 1]]));
                }
                buffer.drain(..start + length);
                continue;
            }
        }
        match tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut chunk)).await {
            Ok(Ok(read)) if read > 0 => buffer.extend_from_slice(&chunk[..read]),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_gets_its_1009_every_time_while_the_client_keeps_sending() {
    use tokio::io::AsyncWriteExt;
    let relay = TestRelay::start(&[]).await;
    for run in 0..50 {
        let socket = raw_websocket(&relay, "/v1/ws").await;
        let (reading, mut writing) = socket.into_split();
        // A 4 MiB text frame, masked (with a zero mask), sent in pieces
        // while the node has long refused it.
        let sender = tokio::spawn(async move {
            let length: u64 = 4 << 20;
            let mut header = vec![0x81, 0x80 | 127];
            header.extend_from_slice(&length.to_be_bytes());
            header.extend_from_slice(&[0, 0, 0, 0]);
            let _ = writing.write_all(&header).await;
            let piece = vec![b'x'; 64 * 1024];
            for _ in 0..64 {
                if writing.write_all(&piece).await.is_err() {
                    break;
                }
            }
            writing
        });
        let mut reader = reading.reunite(sender.await.unwrap()).unwrap();
        let code = close_code(&mut reader).await;
        assert_eq!(code, Some(1009), "run {run}: the close frame arrived, not a reset");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_http_limit_on_kept_alive_connections_are_answered_never_reset() {
    let relay = TestRelay::start(&["--publish-rate", "5", "--auth", "jwt", "--jwt-secret", SECRET]).await;
    let writer = token(&json!({"sub": "ann", "exp": in_an_hour(), "rooms": ["r"]}));
    let reader = token(&json!({"sub": "bob", "exp": in_an_hour(), "read": ["r"]}));
    // Two clients on kept-alive connections: one past its rate (429), one
    // forbidden (403, refused before its body is read).
    let http = reqwest::Client::builder().pool_max_idle_per_host(4).build().unwrap();
    let (mut statuses, mut resets) = (std::collections::BTreeMap::new(), 0);
    for n in 0..400 {
        let token = if n % 2 == 0 { &writer } else { &reader };
        let sent = http
            .post(relay.url("/v1/rooms/r/messages"))
            .bearer_auth(token)
            .json(&json!({"body": {"n": n, "pad": "x".repeat(60_000)}}))
            .send()
            .await;
        match sent {
            Ok(response) => *statuses.entry(response.status().as_u16()).or_insert(0) += 1,
            Err(_) => resets += 1,
        }
    }
    assert_eq!(resets, 0, "no request reset; answers: {statuses:?}");
    assert_eq!(statuses.get(&403), Some(&200));
    assert!(statuses.get(&429).is_some_and(|count| *count > 150), "{statuses:?}");
}
