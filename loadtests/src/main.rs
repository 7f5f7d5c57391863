//! relay-load: load generator and benchmarks for chat-relay.
//!
//! - `throughput`: publishes through one node as fast as the node acks them
//!   (many connections, a window of outstanding publishes each) and reports
//!   acked publishes per second.
//! - `latency`: publishes at a fixed rate on one node and measures, on
//!   subscribers of another node, the time from the publisher's send to each
//!   subscriber's receive (one clock: both ends run in this process), with
//!   an HDR histogram; checks every subscriber got every message in order.
//! - `idle`: server memory per idle WebSocket connection (RSS growth).
//!
//! Each prints a human summary and one JSON line (`--json`) for scripts. The
//! generator runs on one thread, as redis-benchmark does, so that on a small
//! machine it leaves the other cores to the system under test.

mod idle;
mod latency;
mod throughput;
mod wire;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "relay-load", about = "Load generator and benchmarks for chat-relay")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Acked publishes per second through one node.
    Throughput(throughput::Options),
    /// Publish-to-delivery latency across nodes.
    Latency(latency::Options),
    /// Server memory per idle connection.
    Idle(idle::Options),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Throughput(options) => throughput::run(options).await,
        Scenario::Latency(options) => latency::run(options).await,
        Scenario::Idle(options) => idle::run(options).await,
    }
}
