//! Any path, query and header values through the real router (JWT on):
//! an answer, never a panic and never a 500.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
use chat_relay::auth::{Authenticator, JwtKey, JwtVerifier};
use chat_relay::broker::{MemoryBroker, RetentionSettings};
use chat_relay::node::Node;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

fn fixture() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static FIXTURE: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let router = runtime.block_on(async {
            let settings = chat_relay::config::settings_from(["chat-relay"]).expect("settings");
            let retention = RetentionSettings {
                history_maxlen: 100,
                history_ttl: std::time::Duration::from_secs(60),
                idempotency_ttl: std::time::Duration::from_secs(60),
                replicas_acked: 0,
            };
            let key = JwtKey::Secret("0123456789abcdef0123456789abcdef");
            let verifier = JwtVerifier::new(key, None, None, std::time::Duration::ZERO).expect("verifier");
            let tasks = chat_relay::tasks::NodeTasks::new();
            let broker = MemoryBroker::new(retention, &tasks);
            chat_relay::http::router(Node::new(settings, broker, Authenticator::Jwt(Box::new(verifier)), tasks))
        });
        (runtime, router)
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (path, header, body) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (runtime, router) = fixture();
    for method in ["GET", "POST"] {
        let request = Request::builder()
            .method(method)
            .uri(format!("/v1/rooms/{path}"))
            .header("authorization", format!("Bearer {header}"))
            .header("last-event-id", header)
            .header("idempotency-key", header)
            .body(Body::from(body.to_owned()));
        let Ok(request) = request else { return };
        let response = runtime.block_on(router.clone().oneshot(request)).expect("infallible");
        assert_ne!(response.status(), 500);
    }
});
