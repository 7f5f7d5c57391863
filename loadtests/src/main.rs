//! relay-load: load generator and benchmarks for chat-relay, side by side
//! with Socket.IO and Nchan.
//!
//! - `run`: the four scenarios (fan-out, many rooms, idle, reconnect storm)
//!   against each chosen system, deployed here as Redis plus two nodes on
//!   loopback; writes `results.json`, `results.md` and SVG charts.
//! - `throughput`: acked publishes per second through one running node.
//! - `latency`: publish-to-delivery latency across two running nodes.
//! - `sweep`: each system's maximum sustainable fan-out rate, then latency
//!   and CPU at the same fractions of chat-relay's maximum for every system.
//! - `soak`: Redis and three nodes under a seeded schedule of faults, then
//!   an independent check of every client's log against Redis.
//! - `hold`: a worker that keeps idle connections open (used by `run`).
//!
//! The generator measures with one clock (publishers and subscribers live
//! in this process) and only ever connects to loopback addresses.

#![allow(clippy::disallowed_methods, reason = "a load generator owns its tasks itself")]

mod client;
mod latency;
mod ledger;
mod presence;
mod report;
mod scenarios;
mod soak;
mod sweep;
mod systems;
mod throughput;
mod wire;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};

use crate::report::{Report, ScenarioResults};
use crate::systems::{Deployment, Endpoint, Locations, SystemKind};

#[derive(Parser)]
#[command(
    name = "relay-load",
    about = "Load generator and benchmarks for chat-relay, side by side with its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios against systems it deploys itself (Redis + two nodes each).
    Run(RunOptions),
    /// Acked publishes per second through one running node.
    Throughput(throughput::Options),
    /// Publish-to-delivery latency across two running nodes.
    Latency(latency::Options),
    /// Each system's maximum sustainable fan-out rate, then latency and CPU
    /// at fractions of chat-relay's maximum, the same load for every system.
    Sweep(sweep::Options),
    /// What presence costs per change, in a large room and a small one
    /// (deploys Redis and two nodes itself).
    Presence(presence::Options),
    /// Redis and three nodes under a seeded schedule of faults, then an
    /// independent check that nothing was lost, doubled or reordered untold.
    Soak(soak::Options),
    /// Keep idle connections open until killed (a worker of `run`).
    Hold(HoldOptions),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioName {
    Fanout,
    Rooms,
    Idle,
    Storm,
}

#[derive(clap::Args)]
struct RunOptions {
    /// Systems to measure, in this order
    #[arg(long, value_delimiter = ',', default_value = "relay,socketio,nchan")]
    systems: Vec<SystemKind>,
    /// Scenarios to run
    #[arg(long, value_delimiter = ',', default_value = "fanout,rooms,idle,storm")]
    scenarios: Vec<ScenarioName>,
    /// Sizes that run in seconds (CI); the default sizes are the full ones
    #[arg(long)]
    quick: bool,
    /// The fan-out's size instead: subscribers,messages,rate (messages/s)
    #[arg(long, value_delimiter = ',')]
    fanout_size: Option<Vec<u32>>,
    /// Folder for results, charts and server logs
    #[arg(long, default_value = "target/load-results")]
    out: PathBuf,
    /// Fail (exit 1) unless chat-relay lost, doubled and reordered nothing
    #[arg(long)]
    require_exact: bool,
    #[command(flatten)]
    locations: Locations,
}

#[derive(clap::Args)]
struct HoldOptions {
    #[arg(long)]
    system: SystemKind,
    /// Node ports on 127.0.0.1, comma-separated
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
}

fn main() -> anyhow::Result<()> {
    // Every connection is a file; take the whole allowance.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cli = Cli::parse();
    let runtime = match &cli.command {
        Command::Sweep(options) if options.generator_threads > 1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.generator_threads)
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(options) => run(options).await,
            Command::Throughput(options) => throughput::run(options).await,
            Command::Latency(options) => latency::run(options).await,
            Command::Sweep(options) => sweep::run(options).await,
            Command::Presence(options) => presence::run(options).await,
            Command::Soak(options) => soak::run(options).await,
            Command::Hold(options) => hold(options).await,
        }
    })
}

async fn hold(options: HoldOptions) -> anyhow::Result<()> {
    let endpoints: Vec<Endpoint> = options
        .ports
        .iter()
        .map(|&port| Endpoint {
            kind: options.system,
            port,
        })
        .collect();
    let _held = scenarios::idle::open_idle(&endpoints, options.first, options.count).await?;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}

/// The quick size or the full one.
fn sized<T>(quick: bool, quick_size: T, full_size: T) -> T {
    if quick { quick_size } else { full_size }
}

async fn run(options: RunOptions) -> anyhow::Result<()> {
    let size = if options.quick { "quick" } else { "full" };
    let mut results = Vec::new();
    let mut fanout = sized(options.quick, scenarios::fanout::QUICK, scenarios::fanout::FULL);
    if let Some(size) = options.fanout_size.as_deref() {
        let &[subscribers, messages, rate] = size else {
            bail!("--fanout-size takes subscribers,messages,rate (three numbers)");
        };
        fanout = scenarios::fanout::Size {
            subscribers: subscribers as usize,
            messages,
            rate: f64::from(rate.max(1)),
            placement: scenarios::fanout::Placement::Spread,
            live_sample: None,
        };
    }
    let rooms = sized(options.quick, scenarios::rooms::QUICK, scenarios::rooms::FULL);
    let idle = sized(options.quick, scenarios::idle::QUICK, scenarios::idle::FULL);
    let storm = sized(options.quick, scenarios::storm::QUICK, scenarios::storm::FULL);
    for scenario in &options.scenarios {
        let (name, description) = match scenario {
            ScenarioName::Fanout => (
                "fan-out",
                format!(
                    "One room, {} subscribers over 2 nodes, 1 publisher on node 1 at {} messages/s, {} messages.",
                    fanout.subscribers, fanout.rate, fanout.messages
                ),
            ),
            ScenarioName::Rooms => (
                "many rooms",
                format!(
                    "{} rooms of 2 to 5 members over 2 nodes; every member publishes {} messages, one every {} s (through 16 publisher connections).",
                    rooms.rooms, rooms.messages_per_member, rooms.interval_s
                ),
            ),
            ScenarioName::Idle => (
                "idle",
                format!(
                    "{} idle WebSocket connections over 2 nodes, each subscribed to one of 100 rooms; node RSS growth per connection.",
                    idle.connections
                ),
            ),
            ScenarioName::Storm => (
                "reconnect storm",
                format!(
                    "{} subscribers on node 1, {} messages at {}/s from node 2; node 1 is killed (SIGKILL) a third of the way in; subscribers resume on node 2 (Nchan: EventSource with Last-Event-ID).",
                    storm.subscribers, storm.messages, storm.rate
                ),
            ),
        };
        let mut outcomes = Vec::new();
        for &system in &options.systems {
            let work = options
                .out
                .join("servers")
                .join(format!("{name}-{system:?}").replace(' ', "-").to_lowercase());
            let mut deployment = Deployment::start(system, &options.locations, &work)?;
            eprintln!("{name}: {} ({})", system.label(), deployment.version);
            let result = match scenario {
                ScenarioName::Fanout => scenarios::fanout::run(&deployment, fanout).await,
                ScenarioName::Rooms => scenarios::rooms::run(&deployment, rooms).await,
                ScenarioName::Idle => scenarios::idle::run(&deployment, idle).await,
                ScenarioName::Storm => scenarios::storm::run(&mut deployment, storm).await,
            };
            // A system that falls over is a result; the others still run.
            let outcome = result.unwrap_or_else(|error| {
                eprintln!(
                    "  {} failed: {error:#} (server logs in {})",
                    system.label(),
                    work.display()
                );
                scenarios::Outcome::failed(system, &deployment.version, &error)
            });
            eprintln!("  {}", serde_json::to_string(&outcome)?);
            outcomes.push(outcome);
        }
        results.push(ScenarioResults {
            name,
            description,
            outcomes,
        });
    }
    let report = Report {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: report::machine(),
        size,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        scenarios: results,
    };
    report.write(&options.out)?;
    print!("{}", report.markdown());
    eprintln!("results in {}", options.out.display());
    if options.require_exact {
        for scenario in &report.scenarios {
            for outcome in &scenario.outcomes {
                if outcome.system.is_relay()
                    && let Some(failure) = &outcome.failure
                {
                    bail!("{}: chat-relay failed: {failure}", scenario.name);
                }
                if outcome.system.is_relay() && !outcome.correctness.is_exact() {
                    bail!("{}: chat-relay was not exact: {:?}", scenario.name, outcome.correctness);
                }
                if outcome.system.is_relay() && scenario.name != "idle" && outcome.correctness.expected == 0 {
                    bail!("{}: nothing was expected; the scenario measured nothing", scenario.name);
                }
            }
        }
    }
    Ok(())
}
