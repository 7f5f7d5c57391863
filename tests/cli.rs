//! The `chat-relay` binary as an operator meets it: `--help` (kept equal to
//! `docs/cli-help.txt`), one-line errors for bad settings, the start-up line,
//! and a SIGTERM drain that tells clients to reconnect and exits 0.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::WsClient;
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_chat-relay");

fn relay_command() -> Command {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars() {
        if name.starts_with("RELAY_") || name == "REDIS_URL" {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

/// Kills the child when a test fails half-way.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn help_lists_every_setting_and_matches_the_committed_copy() {
    let output = relay_command().arg("--help").env("COLUMNS", "100").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for variable in [
        "RELAY_LISTEN",
        "REDIS_URL",
        "RELAY_REDIS_CLUSTER",
        "RELAY_NODE_ID",
        "RELAY_KEY_PREFIX",
        "RELAY_HISTORY_MAXLEN",
        "RELAY_HISTORY_TTL_SECS",
        "RELAY_MAX_REPLAY",
        "RELAY_MAX_MESSAGE_BYTES",
        "RELAY_PUBLISH_RATE",
        "RELAY_IDEMPOTENCY_TTL_SECS",
        "RELAY_OUTBOUND_QUEUE",
        "RELAY_PING_SECS",
        "RELAY_DRAIN_SECS",
        "RELAY_AUTH",
        "RELAY_JWT_SECRET",
        "RELAY_JWT_PUBLIC_KEY_FILE",
        "RELAY_JWT_ISSUER",
        "RELAY_JWT_AUDIENCE",
        "RELAY_ALLOWED_ORIGINS",
        "RELAY_LOG_FORMAT",
    ] {
        assert!(help.contains(&format!("env: {variable}")), "--help lacks {variable}");
    }
    for default in [
        "0.0.0.0:8080",
        "[default: 10000]",
        "[default: 604800]",
        "[default: 1000]",
        "[default: 65536]",
        "[default: 50]",
        "[default: 600]",
        "[default: 1024]",
        "[default: 25]",
        "[default: 8]",
        "[default: relay]",
    ] {
        assert!(help.contains(default), "--help lacks {default}");
    }
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli-help.txt")).unwrap();
    assert_eq!(
        help, committed,
        "docs/cli-help.txt is stale: regenerate it with `COLUMNS=100 cargo run -- --help > docs/cli-help.txt`"
    );
}

#[test]
fn a_bad_setting_exits_2_with_one_line_naming_it() {
    for (variable, value) in [
        ("RELAY_HISTORY_MAXLEN", "lots"),
        ("RELAY_MAX_REPLAY", "0"),
        ("RELAY_LISTEN", "nowhere"),
        ("RELAY_ALLOWED_ORIGINS", "example.com"),
        ("RELAY_AUTH", "maybe"),
        ("RELAY_REDIS_CLUSTER", "perhaps"),
        ("RELAY_STOMP_ENDPOINTS", "/v1/ws"),
        ("RELAY_STOMP_APP_ROUTES", "/app/chat/message"),
        ("RELAY_STOMP_APP_ROUTES", "/app/x=chat.{roomId"),
    ] {
        let output = relay_command().env(variable, value).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{variable}={value}: {stderr}");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
    // The STOMP settings say what to write instead.
    let said = |variable: &str, value: &str| {
        String::from_utf8(relay_command().env(variable, value).output().unwrap().stderr).unwrap()
    };
    assert!(said("RELAY_STOMP_ENDPOINTS", "/v1/ws").contains("such as /ws-stomp"));
    assert!(said("RELAY_STOMP_APP_ROUTES", "/app/chat/message").contains("destination=room-template"));
    assert!(said("RELAY_STOMP_APP_ROUTES", "/app/x=chat.{roomId").contains("never closes"));
}

fn start_relay(extra: &[(&str, &str)]) -> (Running, String, Value) {
    let mut command = relay_command();
    command
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .env("RELAY_LOG_FORMAT", "json")
        .env("RELAY_NODE_ID", "cli-node");
    for (name, value) in extra {
        command.env(name, value);
    }
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a start-up line").unwrap();
    let line: Value = serde_json::from_str(&first).expect("JSON log line");
    let address = line["listen"].as_str().expect("listen address logged").to_owned();
    std::thread::spawn(move || for _ in lines {});
    (running, address, line)
}

#[test]
fn logs_one_start_line_and_serves_until_sigterm_then_drains_and_exits_0() {
    let (mut running, address, line) = start_relay(&[("RELAY_DRAIN_SECS", "2")]);
    assert_eq!(line["message"], "chat-relay listening");
    assert_eq!(line["broker"], "memory");
    assert_eq!(line["auth"], "none");
    assert_eq!(line["node"], "cli-node");
    assert!(address.starts_with("127.0.0.1:"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ready = reqwest::get(format!("http://{address}/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200);
        let mut client = WsClient::connect_url(&format!("ws://{address}/v1/ws")).await;
        assert_eq!(client.welcome["node"], "cli-node");
        client.subscribe("r", serde_json::json!({})).await;

        let sent = Instant::now();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(running.0.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let reconnect = client.wait_type("reconnect").await;
        assert_eq!(reconnect["reason"], "draining");
        assert!(
            reconnect["delay_ms"].as_u64().is_some_and(|delay| delay < 2000),
            "{reconnect}"
        );
        let (code, _) = client.expect_close().await;
        assert_eq!(code, 1012);
        let refused = reqwest::get(format!("http://{address}/readyz")).await;
        if let Ok(response) = refused {
            assert_eq!(response.status(), 503, "readiness turns 503 while draining");
        }
        let deadline = sent + Duration::from_secs(2) + Duration::from_secs(3);
        loop {
            if let Some(status) = running.0.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within the drain window plus margin"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn a_port_in_use_exits_1_naming_relay_listen() {
    let (_running, address, _) = start_relay(&[]);
    let output = relay_command().env("RELAY_LISTEN", &address).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("RELAY_LISTEN"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Starts the relay with these Redis settings and returns what it printed
/// to stderr, asserting that it exits 1 within 15 s with one line.
fn start_up_failure(env: &[(&str, &str)]) -> String {
    let mut command = relay_command();
    command
        .env("RELAY_AUTH", "none")
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut running = Running(command.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the relay started with {env:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut running.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn a_cluster_seed_without_cluster_mode_exits_1_with_one_line_saying_what_to_change() {
    let cluster = common::cluster::TestCluster::start_primaries_only();
    let stderr = start_up_failure(&[("REDIS_URL", &cluster.seed_url())]);
    assert!(
        stderr.contains("REDIS_URL")
            && stderr.contains("Redis Cluster node")
            && stderr.contains("RELAY_REDIS_CLUSTER=true"),
        "{stderr}"
    );
}

#[test]
fn cluster_mode_on_a_single_redis_exits_1_with_one_line_saying_what_to_change() {
    let single = common::cluster::TestCluster::single_server();
    let stderr = start_up_failure(&[("REDIS_URL", &single.seed_url()), ("RELAY_REDIS_CLUSTER", "true")]);
    assert!(
        stderr.contains("is not a Redis Cluster node") && stderr.contains("unset RELAY_REDIS_CLUSTER"),
        "{stderr}"
    );
    // A list of seeds without cluster mode is refused as well.
    let stderr = start_up_failure(&[("REDIS_URL", &format!("{},127.0.0.1:1", single.seed_url()))]);
    assert!(stderr.contains("RELAY_REDIS_CLUSTER=true"), "{stderr}");
}

/// A Redis that refuses `WAIT` (managed services may rename it) with
/// `RELAY_REDIS_MIN_REPLICAS_ACKED` set would fail every publish: the node
/// says so at start instead. Without the setting it starts.
#[test]
fn min_replicas_acked_on_a_redis_that_refuses_wait_exits_1_with_one_line() {
    let single = common::cluster::TestCluster::single_server_with(&["--rename-command", "WAIT", ""]);
    let stderr = start_up_failure(&[
        ("REDIS_URL", &single.seed_url()),
        ("RELAY_REDIS_MIN_REPLICAS_ACKED", "1"),
    ]);
    assert!(
        stderr.contains("refuses WAIT") && stderr.contains("RELAY_REDIS_MIN_REPLICAS_ACKED=0"),
        "{stderr}"
    );
    let (_running, _, start) = start_relay(&[("REDIS_URL", &single.seed_url()), ("RELAY_AUTH", "none")]);
    assert_eq!(start["broker"], "redis", "{start}");
}

/// On a cluster the check asks a primary: a replica refuses `WAIT`
/// whatever the service allows, and a seed may be a replica (a former
/// primary back after a failover; the soak's seed 134616114 restarted a
/// node so, and the node exited). Publishes are then acked by a replica.
#[test]
fn min_replicas_acked_on_a_cluster_whose_seed_is_a_replica_starts_and_acks() {
    let cluster = common::cluster::TestCluster::start();
    let replica = common::cluster::TestCluster::replica_of(cluster.primary_of_slot(0));
    let (_running, address, start) = start_relay(&[
        ("REDIS_URL", &format!("redis://127.0.0.1:{replica}")),
        ("RELAY_REDIS_CLUSTER", "true"),
        ("RELAY_REDIS_MIN_REPLICAS_ACKED", "1"),
        ("RELAY_AUTH", "none"),
    ]);
    assert_eq!(start["message"], "chat-relay listening", "{start}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for room in ["alpha", "beta", "gamma"] {
        let (status, answer) = runtime.block_on(common::http_publish_to(
            &format!("http://{address}/v1/rooms/{room}/messages"),
            serde_json::json!({"n": 1}),
            None,
        ));
        assert_eq!(status, 201, "{room}: {answer}");
        assert!(answer["id"].is_string(), "{room}: {answer}");
    }
}

#[test]
fn operators_are_warned_of_a_misspelled_variable_and_trace_logs_keep_what_clients_send() {
    let mut command = relay_command();
    command
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .env("RELAY_LOG_FORMAT", "json")
        .env("RELAY_MAX_CONECTIONS", "5")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let address = loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(10)).expect("a start-up line");
        seen.push(line.clone());
        if let Ok(entry) = serde_json::from_str::<Value>(&line)
            && let Some(listen) = entry["listen"].as_str()
        {
            break listen.to_owned();
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = "do-not-log-me-0123456789";
    runtime.block_on(async {
        let mut client = WsClient::connect_url(&format!("ws://{address}/v1/ws?access_token={secret}")).await;
        client
            .send_json(serde_json::json!({"type": "publish", "room": "r", "body": secret, "req": "p"}))
            .await;
        assert_eq!(client.reply_to("p").await["type"], "ack");
        let _ = reqwest::Client::new()
            .get(format!("http://{address}/v1/rooms/r/messages"))
            .header("authorization", format!("Bearer {secret}"))
            .send()
            .await
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    seen.extend(lines_rx.try_iter());
    drop(running);
    assert!(
        seen.iter().any(|line| line.contains("\"WARN\"")
            && line
                .contains("RELAY_MAX_CONECTIONS is not a setting and is ignored; did you mean RELAY_MAX_CONNECTIONS?")),
        "{seen:#?}"
    );
    let leaks: Vec<&String> = seen.iter().filter(|line| line.contains(secret)).collect();
    assert!(leaks.is_empty(), "RUST_LOG=trace logged what a client sent: {leaks:#?}");
}
