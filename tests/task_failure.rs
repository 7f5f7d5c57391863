//! A node whose background task panics does not stay up half-alive: the
//! panic is logged with the task's name, the node drains (its clients are
//! told to reconnect elsewhere) and the run ends with the failure, which
//! the binary turns into exit code 1.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::time::Duration;

use chat_relay::shutdown::{Ending, run_until};
use common::{TestRelay, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_node_task_drains_the_node_and_ends_the_run_as_failed() {
    let relay = TestRelay::start(&["--drain-secs", "1"]).await;
    let mut client = WsClient::connect(&relay).await;
    let tasks = relay.running.node.tasks.clone();
    let run = tokio::spawn(run_until(relay.running, std::future::pending::<()>));
    tasks.spawn("doomed", async { panic!("deliberately") });
    let reconnect = client.wait_type("reconnect").await;
    assert_eq!(reconnect["reason"], "draining", "{reconnect}");
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1012, "clients are sent elsewhere");
    let ending = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run ends")
        .expect("run task");
    assert_eq!(
        ending,
        Ending::Failed("the doomed task panicked: deliberately".to_owned())
    );
    assert_eq!(tasks.running(), 0, "every background task was ended");
}
