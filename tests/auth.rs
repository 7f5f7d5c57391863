//! Authentication and authorization with real tokens: HS256, RS256 and
//! ES256 keys generated here, every way a token can be wrong, room
//! patterns, expiry on live connections, refresh, and connection caps.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{SseClient, TestRelay, WsClient, http_get_json};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str, rooms: &[&str], read: &[&str], exp_in: i64) -> Value {
    json!({"sub": sub, "exp": now().saturating_add_signed(exp_in), "rooms": rooms, "read": read})
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
}

async fn jwt_relay(extra: &[&str]) -> TestRelay {
    let mut args = vec!["--auth", "jwt", "--jwt-secret", SECRET, "--jwt-leeway-secs", "0"];
    args.extend_from_slice(extra);
    TestRelay::start(&args).await
}

/// Tries a WebSocket upgrade; returns the HTTP status and JSON body of a refusal.
async fn refused_upgrade(relay: &TestRelay, query: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut request = relay.ws_url(query).into_client_request().unwrap();
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("upgrade with {query} {bearer:?} should be refused"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map_or(Value::Null, |body| serde_json::from_slice(body).unwrap());
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

async fn connect_with(relay: &TestRelay, token: &str) -> WsClient {
    WsClient::connect_url(&relay.ws_url(&format!("?access_token={token}"))).await
}

#[tokio::test]
async fn a_valid_hs256_token_in_header_or_query_names_the_sender() {
    let relay = jwt_relay(&[]).await;
    let token = hs256(&claims("ann", &["*"], &[], 60));
    let mut by_query = connect_with(&relay, &token).await;
    assert_eq!(by_query.welcome["user"], "ann");
    by_query.subscribe("lobby", json!({})).await;
    let mut request = relay.ws_url("").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    drop(stream);
    let ack = by_query.publish("lobby", json!("hi"), None).await;
    let message = by_query.wait_type("message").await;
    assert_eq!(
        (message["id"].clone(), message["from"].clone()),
        (ack["id"].clone(), json!("ann"))
    );
    let response = reqwest::Client::new()
        .post(relay.url("/v1/rooms/lobby/messages"))
        .bearer_auth(&token)
        .json(&json!({"body": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_json_error_before_any_upgrade() {
    let relay = jwt_relay(&["--jwt-issuer", "https://issuer.example", "--jwt-audience", "relay"]).await;
    let good =
        json!({"sub": "ann", "exp": now() + 60, "iss": "https://issuer.example", "aud": "relay", "rooms": ["*"]});
    assert_eq!(
        connect_with(&relay, &hs256(&good)).await.welcome["user"],
        "ann",
        "the baseline token works"
    );
    let with = |change: Value| {
        let mut claims = good.clone();
        for (key, value) in change.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        claims
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let alg_none = format!(
        "{}.{}.",
        engine.encode(r#"{"alg":"none","typ":"JWT"}"#),
        engine.encode(good.to_string())
    );
    let wrong_key = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-9876543210"),
        &good,
    );
    let cases = [
        ("expired", hs256(&with(json!({"exp": now() - 5})))),
        ("not yet valid", hs256(&with(json!({"nbf": now() + 300})))),
        ("wrong issuer", hs256(&with(json!({"iss": "https://evil.example"})))),
        ("wrong audience", hs256(&with(json!({"aud": "someone-else"})))),
        ("no sub", hs256(&with(json!({"sub": null})))),
        ("no exp", hs256(&with(json!({"exp": null})))),
        ("wrong key", wrong_key),
        ("alg none", alg_none),
        ("malformed", "not-a-token".to_owned()),
        ("three garbage parts", "a.b.c".to_owned()),
        ("bad room pattern", hs256(&with(json!({"rooms": ["bad room"]})))),
    ];
    for (case, token) in &cases {
        let (status, body) = refused_upgrade(&relay, &format!("?access_token={token}"), None).await;
        assert_eq!(status, 401, "{case}");
        assert_eq!(body["error"]["code"], "unauthorized", "{case}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("token")),
            "{case}: {body}"
        );
        let (status, _) = refused_upgrade(&relay, "", Some(token)).await;
        assert_eq!(status, 401, "{case} in the header");
        let response = reqwest::Client::new()
            .post(relay.url("/v1/rooms/r/messages"))
            .bearer_auth(token)
            .json(&json!({"body": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{case} over HTTP");
        let (status, _) = http_get_json(&relay.url(&format!("/v1/rooms/r/messages?access_token={token}"))).await;
        assert_eq!(status, 401, "{case} on history");
        let events = SseClient::open(&relay.url(&format!("/v1/rooms/r/events?access_token={token}")), &[]).await;
        assert_eq!(events.status, 401, "{case} on SSE");
    }
    let (status, body) = refused_upgrade(&relay, "", None).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "says how: {body}"
    );
}

fn write_temp(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("chat-relay-{}-{name}", fastrand::u64(..)));
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test]
async fn rs256_and_es256_keys_accept_their_tokens_and_refuse_algorithm_confusion() {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let rsa_private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let rsa_public_pem = rsa_private.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
    let rsa_private_pem = rsa_private.to_pkcs8_pem(LineEnding::LF).unwrap();
    let ec = rcgen::KeyPair::generate().unwrap();
    for (algorithm, public_pem, encoding) in [
        (
            Algorithm::RS256,
            rsa_public_pem.clone(),
            EncodingKey::from_rsa_pem(rsa_private_pem.as_bytes()).unwrap(),
        ),
        (
            Algorithm::ES256,
            ec.public_key_pem(),
            EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
        ),
    ] {
        let key_file = write_temp("public.pem", &public_pem);
        let relay = TestRelay::start(&["--auth", "jwt", "--jwt-public-key-file", key_file.to_str().unwrap()]).await;
        let token = sign(algorithm, &encoding, &claims("kim", &["*"], &[], 60));
        assert_eq!(
            connect_with(&relay, &token).await.welcome["user"],
            "kim",
            "{algorithm:?}"
        );
        // The classic confusion: HS256 signed with the public key as secret.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(public_pem.as_bytes()),
            &claims("kim", &["*"], &[], 60),
        );
        let (status, _) = refused_upgrade(&relay, &format!("?access_token={confused}"), None).await;
        assert_eq!(status, 401, "{algorithm:?} refuses HS256");
        let _ = std::fs::remove_file(key_file);
    }
}

#[tokio::test]
async fn room_patterns_grant_exactly_what_they_say() {
    let relay = jwt_relay(&[]).await;
    let token = hs256(&claims("lee", &["team:*", "lobby"], &["news"], 60));
    let mut client = connect_with(&relay, &token).await;
    for room in ["team:a", "team:", "lobby", "news"] {
        client.subscribe(room, json!({})).await;
    }
    for room in ["team", "teams:a", "lobby2", "other"] {
        client
            .send_json(json!({"type": "subscribe", "room": room, "req": room}))
            .await;
        let reply = client.reply_to(room).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{room}: {reply}"
        );
        assert_eq!(reply["room"], room);
    }
    let refused = client.publish("news", json!("read only"), None).await;
    assert_eq!(
        refused["code"], "forbidden",
        "read-only rooms refuse publish: {refused}"
    );
    let allowed = client.publish("team:a", json!("ok"), None).await;
    assert_eq!(allowed["type"], "ack");
    let http = reqwest::Client::new();
    let response = http
        .post(relay.url("/v1/rooms/news/messages"))
        .bearer_auth(&token)
        .json(&json!({"body": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    let response = http
        .get(relay.url("/v1/rooms/news/messages"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "read grants history");
    let response = http
        .get(relay.url("/v1/rooms/other/messages"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let events = SseClient::open(&relay.url(&format!("/v1/rooms/other/events?access_token={token}")), &[]).await;
    assert_eq!(events.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_its_connection_with_4001_within_a_second() {
    let relay = jwt_relay(&[]).await;
    let exp = now() + 2;
    let token = hs256(&json!({"sub": "max", "exp": exp, "rooms": ["*"]}));
    let mut client = connect_with(&relay, &token).await;
    client.subscribe("r", json!({})).await;
    let error = client.wait_type("error").await;
    assert_eq!(error["code"], "unauthorized");
    let (code, _) = client.expect_close().await;
    let closed_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert_eq!(code, 4001);
    #[allow(clippy::cast_precision_loss)]
    let late = closed_at - exp as f64;
    assert!((-0.05..1.0).contains(&late), "closed {late:.3} s after exp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_extends_widens_and_narrowing_unsubscribes() {
    let relay = jwt_relay(&[]).await;
    let mut client = connect_with(&relay, &hs256(&claims("ann", &["a", "b"], &[], 2))).await;
    client.subscribe("a", json!({})).await;
    client.subscribe("b", json!({})).await;
    client
        .send_json(json!({"type": "subscribe", "room": "c", "req": "c-before"}))
        .await;
    assert_eq!(
        client.reply_to("c-before").await["code"],
        "forbidden",
        "c is not granted yet"
    );
    let longer = claims("ann", &["a"], &["c"], 30);
    client
        .send_json(json!({"type": "refresh", "token": hs256(&longer), "req": "r1"}))
        .await;
    let refreshed = client.reply_to("r1").await;
    assert_eq!(refreshed["type"], "refreshed");
    assert_eq!(refreshed["exp"], longer["exp"]);
    let dropped = client.wait_type("error").await;
    assert_eq!(
        (dropped["code"].as_str(), dropped["room"].as_str()),
        (Some("forbidden"), Some("b"))
    );
    client.subscribe("c", json!({})).await; // widened: c is readable now
    let mut publisher = connect_with(&relay, &hs256(&claims("pub", &["*"], &[], 60))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    publisher.publish("b", json!("not for ann any more"), None).await;
    let kept = publisher.publish("a", json!("still for ann"), None).await;
    let message = client.wait_type("message").await;
    assert_eq!(message["id"], kept["id"], "only room a is delivered");
    client.send_json(json!({"type": "ping", "req": "alive"})).await;
    assert_eq!(
        client.reply_to("alive").await["type"],
        "pong",
        "open past the first token's exp"
    );
}

#[tokio::test]
async fn refresh_with_a_bad_or_foreign_token_closes_4001() {
    let relay = jwt_relay(&[]).await;
    for bad in [
        hs256(&claims("ann", &["*"], &[], -5)),
        hs256(&claims("someone-else", &["*"], &[], 60)),
        "garbage".to_owned(),
    ] {
        let mut client = connect_with(&relay, &hs256(&claims("ann", &["*"], &[], 60))).await;
        client
            .send_json(json!({"type": "refresh", "token": bad, "req": 1}))
            .await;
        let reply = client.reply_to_number(1).await;
        assert_eq!(reply["code"], "unauthorized", "{reply}");
        assert_eq!(client.expect_close().await.0, 4001);
    }
}

#[tokio::test]
async fn connection_caps_refuse_with_503_per_node_and_429_per_client() {
    let relay = jwt_relay(&["--max-connections", "4", "--max-connections-per-client", "2"]).await;
    let bystander_token = hs256(&claims("bystander", &["*"], &[], 60));
    let mut bystander = connect_with(&relay, &bystander_token).await;
    bystander.subscribe("calm", json!({})).await;
    let hog = hs256(&claims("hog", &["*"], &[], 60));
    let first = connect_with(&relay, &hog).await;
    let _second = connect_with(&relay, &hog).await;
    let (status, body) = refused_upgrade(&relay, &format!("?access_token={hog}"), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let _other = connect_with(&relay, &hs256(&claims("other", &["*"], &[], 60))).await;
    let (status, body) = refused_upgrade(
        &relay,
        &format!("?access_token={}", hs256(&claims("late", &["*"], &[], 60))),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("overloaded")),
        "{body}"
    );
    let ack = bystander.publish("calm", json!("still fine"), None).await;
    assert_eq!(bystander.wait_type("message").await["id"], ack["id"]);
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        connect_with(&relay, &hog).await.welcome["user"],
        "hog",
        "a closed connection frees its place"
    );
}

trait ReplyToNumber {
    async fn reply_to_number(&mut self, req: i64) -> Value;
}

impl ReplyToNumber for WsClient {
    async fn reply_to_number(&mut self, req: i64) -> Value {
        self.wait_for("numbered reply", |frame| frame["req"] == req).await
    }
}
