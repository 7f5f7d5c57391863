//! HTTP publish, history pages, health, readiness, metrics, CORS and errors.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use common::{TestRelay, full_history, http_get_json, http_publish};
use serde_json::{Value, json};

#[tokio::test]
async fn publish_returns_201_then_200_for_a_repeated_idempotency_key() {
    let relay = TestRelay::start(&[]).await;
    let (status, first) = http_publish(&relay, "r", json!({"a": 1}), Some("key-1")).await;
    assert_eq!(status, 201);
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["prev"], "0-0");
    let (status, again) = http_publish(&relay, "r", json!({"a": 1}), Some("key-1")).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);
    let history = full_history(&relay, "r", 100).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["cmid"], "key-1");
}

async fn post_raw(relay: &TestRelay, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(relay.url(path)).body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_publishes_get_clear_json_errors() {
    let relay = TestRelay::start(&["--max-message-bytes", "100"]).await;
    for (path, body, status, code) in [
        ("/v1/rooms/r/messages", "not json", 400, "bad_request"),
        ("/v1/rooms/r/messages", "[1]", 400, "bad_request"),
        (
            "/v1/rooms/r/messages",
            r#"{"text":"no body field"}"#,
            400,
            "bad_request",
        ),
        ("/v1/rooms/bad%20room/messages", r#"{"body":1}"#, 400, "invalid_room"),
        (
            "/v1/rooms/r/messages",
            &format!(r#"{{"body":"{}"}}"#, "x".repeat(200)),
            413,
            "too_large",
        ),
    ] {
        let (got, reply) = post_raw(&relay, path, body, &[]).await;
        assert_eq!(got, status, "{path} {body}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|message| !message.is_empty())
        );
    }
    let (got, reply) = post_raw(
        &relay,
        "/v1/rooms/r/messages",
        r#"{"body":1}"#,
        &[("Idempotency-Key", &"k".repeat(65))],
    )
    .await;
    assert_eq!((got, reply["error"]["code"].as_str()), (400, Some("bad_request")));
    assert!(full_history(&relay, "r", 100).await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn http_publish_flood_gets_429_with_retry_after() {
    let relay = TestRelay::start(&["--publish-rate", "5"]).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for n in 0..15 {
        let response = reqwest::Client::new()
            .post(relay.url("/v1/rooms/r/messages"))
            .json(&json!({"body": n}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(
        statuses.iter().filter(|status| **status == 201).count(),
        10,
        "burst of twice the rate: {statuses:?}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
}

/// The `body` of every message of a history page.
fn bodies(page: &Value) -> Vec<Value> {
    page["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|message| message["body"].clone())
        .collect()
}

#[tokio::test]
async fn history_pages_forwards_and_backwards_with_complete() {
    let relay = TestRelay::start(&[]).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        let (_, ack) = http_publish(&relay, "h", json!(n), None).await;
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    let page = |query: String| {
        let url = relay.url(&format!("/v1/rooms/h/messages?{query}"));
        async move { http_get_json(&url).await }
    };
    let (status, body) = page("after=0-0&limit=4".into()).await;
    assert_eq!(status, 200);
    assert_eq!(bodies(&body), vec![json!(0), json!(1), json!(2), json!(3)]);
    assert_eq!(body["complete"], true);

    let (_, body) = page(format!("before={}&limit=3", ids[5])).await;
    assert_eq!(
        bodies(&body),
        vec![json!(2), json!(3), json!(4)],
        "the N right before, oldest first"
    );
    assert_eq!(body["complete"], true);

    let (_, body) = page(format!("after={}", ids[9])).await;
    assert_eq!(body["messages"], json!([]));
    assert_eq!(body["complete"], true, "nothing after the newest is complete");

    let (_, body) = page("after=1-0".into()).await;
    assert_eq!(body["complete"], false, "an id unknown to the room");

    let (_, body) = page("limit=2".into()).await;
    assert_eq!(bodies(&body), vec![json!(8), json!(9)], "without a cursor: the newest");

    for bad in ["after=x", "before=1", "limit=0", "limit=1001", "after=0-0&before=1-0"] {
        let (status, body) = page(bad.into()).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
    }
}

#[tokio::test]
async fn history_of_a_trimmed_room_is_not_complete() {
    let relay = TestRelay::start(&["--history-maxlen", "5"]).await;
    for n in 0..8 {
        http_publish(&relay, "t", json!(n), None).await;
    }
    let (_, body) = http_get_json(&relay.url("/v1/rooms/t/messages?after=0-0")).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 5);
    assert_eq!(body["complete"], false);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let relay = TestRelay::start(&[]).await;
    assert_eq!(reqwest::get(relay.url("/healthz")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(relay.url("/readyz")).await.unwrap().status(), 200);
    http_publish(&relay, "m", json!(1), None).await;
    let metrics = reqwest::get(relay.url("/metrics")).await.unwrap().text().await.unwrap();
    for name in [
        "relay_connections{transport=\"ws\"}",
        "relay_subscriptions",
        "relay_rooms",
        "relay_messages_published_total{outcome=\"stored\"} 1",
        "relay_messages_delivered_total",
        "relay_publish_duration_seconds_bucket",
        "relay_slow_consumer_closes_total",
        "relay_errors_total{code=\"bad_request\"}",
        "relay_live_repairs_total",
        "relay_gaps_total",
        "relay_info{",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let relay = TestRelay::start(&[]).await;
    let (status, body) = http_get_json(&relay.url("/v2/nothing")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let response = reqwest::Client::new()
        .delete(relay.url("/v1/rooms/r/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (status, body) = http_get_json(&relay.url("/v1/ws")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
}

#[tokio::test]
async fn cors_preflight_and_headers_for_an_allowed_origin_only() {
    let relay = TestRelay::start(&["--allowed-origins", "https://app.example.com"]).await;
    let client = reqwest::Client::new();
    let preflight = client
        .request(reqwest::Method::OPTIONS, relay.url("/v1/rooms/r/messages"))
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "https://app.example.com");
    let methods = headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    assert!(methods.contains("GET") && methods.contains("POST"), "{methods}");
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in ["authorization", "content-type", "idempotency-key", "last-event-id"] {
        assert!(allowed.contains(header), "{allowed}");
    }
    let response = client
        .get(relay.url("/v1/rooms/r/messages"))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("retry-after")
    );
    let foreign = client
        .get(relay.url("/v1/rooms/r/messages"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(foreign.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn websocket_upgrade_from_a_foreign_origin_is_403() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let relay = TestRelay::start(&["--allowed-origins", "https://app.example.com"]).await;
    let mut request = relay.ws_url("").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let error = tokio_tungstenite::connect_async(request).await.expect_err("refused");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    let mut request = relay.ws_url("").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://app.example.com".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}
