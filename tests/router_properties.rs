//! Arbitrary requests through the real router (`oneshot`, no sockets):
//! whatever the path, query, headers, method and body, the answer is a
//! status with a JSON error body when it is an error, never a panic and
//! never a 500.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use chat_relay::auth::{Authenticator, JwtKey, JwtVerifier};
use chat_relay::broker::{MemoryBroker, RetentionSettings};
use chat_relay::node::Node;
use proptest::prelude::*;
use tower::ServiceExt;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    open: Router,
    jwt: Router,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (open, jwt) = runtime.block_on(async {
            let router = |authenticator: Authenticator| {
                let settings = chat_relay::config::settings_from(["chat-relay", "--max-replay", "50"]).unwrap();
                let tasks = chat_relay::tasks::NodeTasks::new();
                let broker = MemoryBroker::new(
                    RetentionSettings {
                        history_maxlen: 100,
                        history_ttl: std::time::Duration::from_secs(60),
                        idempotency_ttl: std::time::Duration::from_secs(60),
                        replicas_acked: 0,
                    },
                    &tasks,
                );
                chat_relay::http::router(Node::new(settings, broker, authenticator, tasks))
            };
            let verifier = JwtVerifier::new(
                JwtKey::Secret("0123456789abcdef0123456789abcdef"),
                None,
                None,
                std::time::Duration::ZERO,
            )
            .unwrap();
            (
                router(Authenticator::Open),
                router(Authenticator::Jwt(Box::new(verifier))),
            )
        });
        Fixture { runtime, open, jwt }
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::OPTIONS),
        Just(Method::DELETE),
        Just(Method::PUT)
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        "/v1/rooms/[a-zA-Z0-9%:@=._*{} -]{0,30}/(messages|events)",
        "/v1/(ws|rooms|nothing)",
        "/(healthz|readyz|metrics)",
        "/[ -~]{0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_requests_get_an_answer_never_a_panic_or_a_500(
        method in method(), path in path(), query in "[ -~]{0,60}", header in "[ -~]{0,80}",
        body in "\\PC{0,120}", jwt in any::<bool>(),
    ) {
        let fixture = fixture();
        let router = if jwt { fixture.jwt.clone() } else { fixture.open.clone() };
        let uri = format!("{path}?{query}");
        let request = Request::builder()
            .method(method)
            .uri(&uri)
            .header("authorization", format!("Bearer {header}"))
            .header("last-event-id", header.as_str())
            .header("idempotency-key", header.as_str())
            .header("origin", header.as_str())
            .body(Body::from(body));
        let Ok(request) = request else { return Ok(()) };
        let response = fixture.runtime.block_on(router.oneshot(request)).unwrap();
        let status = response.status();
        prop_assert!(status != 500, "{uri} -> 500");
        let is_stream = response.headers().get("content-type").is_some_and(|value| value == "text/event-stream");
        if (status.is_client_error() || status.is_server_error()) && !is_stream {
            let bytes = fixture.runtime.block_on(http_body_util::BodyExt::collect(response.into_body())).unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| TestCaseError::fail(format!("{uri}: {status} without a JSON body")))?;
            prop_assert!(json["error"]["code"].is_string() && json["error"]["message"].is_string(), "{uri}: {json}");
        }
    }
}

#[test]
fn the_fixture_serves_real_answers() {
    let fixture = fixture();
    let request = Request::builder().uri("/healthz").body(Body::empty()).unwrap();
    let response = fixture.runtime.block_on(fixture.open.clone().oneshot(request)).unwrap();
    assert_eq!(response.status(), 200);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/rooms/r/messages")
        .body(Body::from(r#"{"body":1}"#))
        .unwrap();
    let response = fixture.runtime.block_on(fixture.jwt.clone().oneshot(request)).unwrap();
    assert_eq!(response.status(), 401);
}
