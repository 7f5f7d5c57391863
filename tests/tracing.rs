//! One trace per message across nodes: with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! set, node 1's publish span, its round trip to the script in Redis and
//! node 2's delivery span share one trace id, joined parent to child. The
//! spans go to a small OTLP/HTTP (JSON) receiver this test runs.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use common::WsClient;
use common::nodes::RelayProcess;
use common::redis::TestRedis;
use serde_json::{Value, json};

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct ExportedSpan {
    node: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Value,
}

fn string_attribute(attributes: &Value, key: &str) -> Option<String> {
    attributes
        .as_array()?
        .iter()
        .find(|attribute| attribute["key"] == key)
        .and_then(|attribute| {
            let value = &attribute["value"];
            value["stringValue"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| value.as_str().map(str::to_owned))
        })
}

fn flatten(request: &Value) -> Vec<ExportedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
        let node =
            string_attribute(&resource_spans["resource"]["attributes"], "service.instance.id").unwrap_or_default();
        for scope_spans in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope_spans["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_lowercase();
                spans.push(ExportedSpan {
                    node: node.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    attributes: span["attributes"].clone(),
                });
            }
        }
    }
    spans
}

/// An OTLP/HTTP receiver for `POST /v1/traces` with JSON bodies.
async fn start_receiver() -> (String, Arc<Mutex<Vec<ExportedSpan>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: String| {
            let sink = sink.clone();
            async move {
                let request: Value = serde_json::from_str(&body).expect("OTLP JSON body");
                sink.lock().unwrap().extend(flatten(&request));
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_the_publish_on_node_1_and_the_delivery_on_node_2() {
    let redis = TestRedis::start().await;
    let (endpoint, received) = start_receiver().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let publishing = RelayProcess::spawn(&redis.url(), "trace-pub", &otel);
    let delivering = RelayProcess::spawn(&redis.url(), "trace-sub", &otel);

    let mut subscriber = WsClient::connect_url(&delivering.ws_url()).await;
    subscriber.subscribe("traced", json!({})).await;
    let mut publisher = WsClient::connect_url(&publishing.ws_url()).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let ack = publisher.publish("traced", json!({"n": n}), None).await;
        ids.push(ack["id"].as_str().expect("ack id").to_owned());
    }
    let delivered = subscriber.messages("traced", ids.len()).await;
    let delivered_ids: Vec<&str> = delivered
        .iter()
        .map(|message| message["id"].as_str().unwrap())
        .collect();
    assert_eq!(delivered_ids, ids);
    for message in &delivered {
        let keys: HashSet<&str> = message.as_object().unwrap().keys().map(String::as_str).collect();
        let expected: HashSet<&str> = ["type", "room", "id", "prev", "from", "ts", "body"].into();
        assert_eq!(keys, expected, "the trace context never reaches clients: {message}");
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut trace_ids = HashSet::new();
    for id in &ids {
        let (deliver, redis_span, publish) = loop {
            let spans = received.lock().unwrap().clone();
            let deliver = spans.iter().find(|span| {
                span.node == "trace-sub"
                    && span.name == "deliver"
                    && string_attribute(&span.attributes, "id").as_deref() == Some(id)
            });
            let found = deliver.and_then(|deliver| {
                let redis_span = spans.iter().find(|span| span.span_id == deliver.parent_span_id)?;
                let publish = spans.iter().find(|span| span.span_id == redis_span.parent_span_id)?;
                Some((deliver.clone(), redis_span.clone(), publish.clone()))
            });
            if let Some(found) = found {
                break found;
            }
            assert!(
                Instant::now() < deadline,
                "no joined trace for {id} within 20 s; spans: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(redis_span.node, "trace-pub");
        assert_eq!(redis_span.name, "redis publish");
        assert_eq!(publish.node, "trace-pub");
        assert_eq!(publish.name, "publish");
        assert_eq!(string_attribute(&publish.attributes, "room").as_deref(), Some("traced"));
        assert_eq!(deliver.trace_id, publish.trace_id);
        assert_eq!(redis_span.trace_id, publish.trace_id);
        assert!(publish.trace_id.len() == 32 && publish.trace_id != "0".repeat(32));
        trace_ids.insert(publish.trace_id.clone());
    }
    assert_eq!(trace_ids.len(), ids.len(), "each message has a trace of its own");

    for node in [&publishing, &delivering] {
        let log = node.log.lock().unwrap().clone();
        assert!(!log.is_empty());
        for line in &log {
            let entry: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            assert_eq!(entry["node"], node.node_id.as_str(), "{line}");
        }
    }
}

/// The raw Pub/Sub payloads of a room, as any Redis client sees them.
async fn watch_channel(redis: &TestRedis, room: &str) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
    use futures_util::StreamExt;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(format!("relay:{{{room}}}:c")).await.unwrap();
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            if sender.send(message.get_payload_bytes().to_vec()).is_err() {
                break;
            }
        }
    });
    receiver
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_rides_before_the_frame_only_while_traces_are_exported() {
    let redis = TestRedis::start().await;
    let (endpoint, _received) = start_receiver().await;
    let traced = RelayProcess::spawn(
        &redis.url(),
        "traced",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    );
    let plain = RelayProcess::spawn(&redis.url(), "plain", &[]);
    let mut payloads = watch_channel(&redis, "wire").await;
    for node in [&traced, &plain] {
        let mut publisher = WsClient::connect_url(&node.ws_url()).await;
        let ack = publisher.publish("wire", json!("x"), None).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let first = tokio::time::timeout(Duration::from_secs(5), payloads.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), payloads.recv())
        .await
        .unwrap()
        .unwrap();
    let first = String::from_utf8(first).unwrap();
    let (traceparent, frame) = first
        .split_once('\n')
        .expect("traced payload starts with a traceparent line");
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    assert!(
        traceparent.starts_with("00-") && traceparent.ends_with("-01"),
        "{traceparent}"
    );
    let frame: Value = serde_json::from_str(frame).unwrap();
    assert_eq!(frame["type"], "message");
    assert_eq!(second.first(), Some(&b'{'), "untraced payload is the frame alone");
    let frame: Value = serde_json::from_slice(&second).unwrap();
    assert_eq!(frame["type"], "message");
}
