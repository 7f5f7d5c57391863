//! The runtime image (the layout of the Dockerfile's runtime stage; here
//! built offline by scripts/build-relay-image, named by
//! `RELAY_TEST_RELAY_IMAGE`): it serves as a non-root user with the binary
//! alone, and a SIGTERM drains it to exit 0.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::WsClient;
use serde_json::json;
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

const DEFAULT_RELAY_IMAGE: &str = "chat-relay-test/relay:local";

fn docker_inspect(what: &str, format: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "--format", format, what])
        .output()
        .expect("docker inspect");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_as_nonroot_and_drains_on_sigterm() {
    let image = std::env::var("RELAY_TEST_RELAY_IMAGE").unwrap_or_else(|_| DEFAULT_RELAY_IMAGE.to_owned());
    let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let container = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stdout("chat-relay listening"))
        .with_network("host")
        .with_env_var("RELAY_LISTEN", format!("127.0.0.1:{port}"))
        .with_env_var("RELAY_NODE_ID", "in-a-container")
        .with_env_var("RELAY_DRAIN_SECS", "2")
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot start {image}: {error}. Build it with scripts/build-relay-image or set RELAY_TEST_RELAY_IMAGE"
            )
        });
    let id = container.id().to_owned();

    assert_eq!(docker_inspect(&image, "{{.Config.User}}"), "65532:65532");
    let pid = docker_inspect(&id, "{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|line| line.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|uid| uid == "65532"),
        "the relay runs as 65532: {uid_line}"
    );

    let base = format!("http://127.0.0.1:{port}");
    let (ready, _) = common::http_get_json(&format!("{base}/readyz")).await;
    assert_eq!(ready, 200);
    let mut subscriber = WsClient::connect_url(&format!("ws://127.0.0.1:{port}/v1/ws")).await;
    assert_eq!(subscriber.welcome["node"], "in-a-container");
    subscriber.subscribe("boxed", json!({})).await;
    let mut publisher = WsClient::connect_url(&format!("ws://127.0.0.1:{port}/v1/ws")).await;
    let ack = publisher.publish("boxed", json!({"hello": "container"}), None).await;
    let message = &subscriber.messages("boxed", 1).await[0];
    assert_eq!(message["id"], ack["id"]);
    assert_eq!(message["body"]["hello"], "container");

    let stop = tokio::task::spawn_blocking({
        let id = id.clone();
        move || {
            Command::new("docker")
                .args(["stop", "--time", "10", &id])
                .output()
                .unwrap()
        }
    });
    let reconnect = subscriber.wait_type("reconnect").await;
    assert_eq!(reconnect["reason"], "draining");
    assert!(stop.await.unwrap().status.success());
    assert_eq!(
        docker_inspect(&id, "{{.State.ExitCode}}"),
        "0",
        "a drained relay exits 0"
    );
}
