//! `relay-load sweep`: fan-out figures that mean what they say.
//!
//! A fan-out offered more than a machine can carry measures the queue, not
//! the relay. So, for each system (Redis and two nodes, one room, every
//! subscriber on node 2, the publisher on node 1):
//!
//! 1. **Maximum sustainable rate.** Offered rates step up; a step keeps up
//!    when every subscriber got every message, once and in order, and the
//!    last delivery trailed the last publish by at most `--keep-up-ms`
//!    (a queue that grows during a step shows there). The maximum is the
//!    highest rate that kept up, refined once between it and the first
//!    that did not.
//! 2. **The same load for every system.** Latency and CPU at fractions of
//!    chat-relay's maximum (25, 50 and 75 percent by default), each point
//!    run in turn on every system.
//!
//! 3. **Latency below saturation.** At low fixed rates (by default 2, 5
//!    and 10 messages/s: 4,000 to 20,000 deliveries/s to 2,000), a sample
//!    of the subscribers is read live and timed; the rest are read only
//!    after the last publish (the kernel holds their frames meanwhile) and
//!    checked as exhaustively. Reading all 2,000 live costs the generator
//!    more per delivery than the relay spends, on the same two cores, so
//!    its own reading would be most of the latency measured.
//!
//! Every step and point reports node CPU per delivery (user and system
//! apart), the generator's own CPU share (to show it was not the ceiling),
//! and the CPU floor of its latency: the deliveries ahead of the median
//! subscriber times the receiving node's CPU per delivery, over the cores
//! the rest of the machine left free.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::report;
use crate::scenarios::Outcome;
use crate::scenarios::fanout::{self, Placement};
use crate::systems::{Deployment, Locations, SystemKind};

#[derive(clap::Args)]
pub struct Options {
    /// Systems to measure; the first must be chat-relay, whose maximum sets
    /// the points
    #[arg(long, value_delimiter = ',', default_value = "relay,socketio,nchan")]
    systems: Vec<SystemKind>,
    /// Subscribers in the room, all on node 2
    #[arg(long, default_value_t = 2000)]
    subscribers: usize,
    /// Offered rates to step through, messages per second, ascending
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5,10,20,40,60,80,100,130,160,200,250,300,400"
    )]
    rates: Vec<f64>,
    /// Seconds each step publishes
    #[arg(long, default_value_t = 8.0)]
    step_seconds: f64,
    /// Points to measure every system at, in percent of chat-relay's maximum
    #[arg(long, value_delimiter = ',', default_value = "25,50,75")]
    points: Vec<f64>,
    /// Seconds each point publishes
    #[arg(long, default_value_t = 20.0)]
    point_seconds: f64,
    /// Rates for the latency below saturation, messages per second
    #[arg(long, value_delimiter = ',', default_value = "2,5,10")]
    latency_rates: Vec<f64>,
    /// Subscribers read live (and timed) in the latency runs
    #[arg(long, default_value_t = 200)]
    latency_sample: usize,
    /// Seconds each latency run publishes (the kernel must hold what the
    /// other subscribers get meanwhile)
    #[arg(long, default_value_t = 15.0)]
    latency_seconds: f64,
    /// Most the last delivery may trail the last publish for a step to keep up
    #[arg(long, default_value_t = 500.0)]
    keep_up_ms: f64,
    /// Only find the maxima (skip the points)
    #[arg(long)]
    no_points: bool,
    /// Threads the load generator reads and publishes on (1: one thread,
    /// as `run`; more, when one thread would be the ceiling)
    #[arg(long, default_value_t = 2)]
    pub generator_threads: usize,
    /// Folder for sweep.json, sweep.md and the servers' logs
    #[arg(long, default_value = "target/sweep")]
    out: PathBuf,
    #[command(flatten)]
    locations: Locations,
}

/// One step or point: what was offered and what came of it.
#[derive(Debug, Serialize)]
struct Measured {
    /// Messages per second offered.
    rate: f64,
    kept_up: bool,
    /// Why a step did not keep up.
    verdict: String,
    /// The CPU floor of the median subscriber's latency, ms.
    floor_ms: Option<f64>,
    /// The cores the rest of the machine left to the receiving node.
    free_cores: Option<f64>,
    outcome: Outcome,
}

#[derive(Debug, Serialize)]
struct SystemSweep {
    system: SystemKind,
    version: String,
    steps: Vec<Measured>,
    /// The highest rate that kept up, messages per second.
    max_rate: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Point {
    percent: f64,
    rate: f64,
    results: Vec<Measured>,
}

#[derive(Debug, Serialize)]
struct SweepReport {
    date: String,
    machine: String,
    command: String,
    subscribers: usize,
    generator_threads: usize,
    sweeps: Vec<SystemSweep>,
    points: Vec<Point>,
    latency_sample: usize,
    /// Latency below saturation, a live sample timed: one row per rate and
    /// system.
    below_saturation: Vec<Measured>,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.systems.first().is_some_and(|system| system.is_relay()),
        "--systems must start with chat-relay (relay or relay-stomp): its maximum sets the points"
    );
    anyhow::ensure!(
        options.rates.windows(2).all(|pair| pair[0] < pair[1]) && options.rates.iter().all(|rate| *rate > 0.0),
        "--rates must be positive and ascending"
    );
    let mut sweeps = Vec::new();
    for &system in &options.systems {
        sweeps.push(sweep_system(&options, system).await?);
    }
    let mut points = Vec::new();
    if let Some(relay_max) = sweeps[0].max_rate.filter(|_| !options.no_points) {
        for &percent in &options.points {
            let rate = relay_max * percent / 100.0;
            let mut results = Vec::new();
            for &system in &options.systems {
                let work = work_dir(&options.out, &format!("point-{percent}"), system);
                let deployment = Deployment::start(system, &options.locations, &work)?;
                let room = room_name("point", percent);
                eprintln!(
                    "{percent}% of chat-relay's maximum ({rate} messages/s): {}",
                    system.label()
                );
                results.push(measure(&options, &deployment, rate, options.point_seconds, &room).await);
            }
            points.push(Point { percent, rate, results });
        }
    }
    let mut below_saturation = Vec::new();
    for &rate in &options.latency_rates {
        for &system in &options.systems {
            let work = work_dir(&options.out, &format!("latency-{rate}"), system);
            let deployment = Deployment::start(system, &options.locations, &work)?;
            eprintln!(
                "{rate} messages/s, {} of {} read live: {}",
                options.latency_sample,
                options.subscribers,
                system.label()
            );
            let room = room_name("latency", rate);
            below_saturation.push(
                measure_sampled(
                    &options,
                    &deployment,
                    rate,
                    options.latency_seconds,
                    &room,
                    Some(options.latency_sample),
                )
                .await,
            );
        }
    }
    let report = SweepReport {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: report::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        subscribers: options.subscribers,
        generator_threads: options.generator_threads,
        sweeps,
        points,
        latency_sample: options.latency_sample,
        below_saturation,
    };
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("sweep.json"), serde_json::to_string_pretty(&report)?)
        .context("write sweep.json")?;
    let markdown = report.markdown();
    std::fs::write(options.out.join("sweep.md"), &markdown).context("write sweep.md")?;
    print!("{markdown}");
    eprintln!("results in {}", options.out.display());
    Ok(())
}

/// A room of its own for each step, named in word characters only (Nchan's
/// channel ids).
fn room_name(phase: &str, value: f64) -> String {
    format!("{phase}{}", (value * 100.0).round() as u64)
}

fn work_dir(out: &Path, phase: &str, system: SystemKind) -> PathBuf {
    out.join("servers").join(format!("{phase}-{system:?}").to_lowercase())
}

/// Steps up the offered rate until one does not keep up, then tries once
/// between the last that did and that one.
async fn sweep_system(options: &Options, system: SystemKind) -> anyhow::Result<SystemSweep> {
    let work = work_dir(&options.out, "sweep", system);
    let deployment = Deployment::start(system, &options.locations, &work)?;
    let mut steps = Vec::new();
    let mut best: Option<f64> = None;
    let mut first_failed = None;
    for &rate in &options.rates {
        let step = sweep_step(options, &deployment, rate, "").await;
        let kept_up = step.kept_up;
        steps.push(step);
        if !kept_up {
            first_failed = Some(rate);
            break;
        }
        best = Some(rate);
    }
    if let (Some(good), Some(bad)) = (best, first_failed) {
        let rate = ((good + bad) / 2.0 * 10.0).round() / 10.0;
        if rate > good && rate < bad {
            let step = sweep_step(options, &deployment, rate, " (between)").await;
            if step.kept_up {
                best = Some(rate);
            }
            steps.push(step);
        }
    }
    Ok(SystemSweep {
        system,
        version: deployment.version.clone(),
        steps,
        max_rate: best,
    })
}

/// One step of the sweep, in a room of its own, said as it goes.
async fn sweep_step(options: &Options, deployment: &Deployment, rate: f64, note: &str) -> Measured {
    eprintln!("sweep {}: {rate} messages/s{note}", deployment.kind.label());
    let step = measure(
        options,
        deployment,
        rate,
        options.step_seconds,
        &room_name("sweep", rate),
    )
    .await;
    eprintln!("  {}", step.verdict);
    step
}

async fn measure(options: &Options, deployment: &Deployment, rate: f64, seconds: f64, room: &str) -> Measured {
    measure_sampled(options, deployment, rate, seconds, room, None).await
}

async fn measure_sampled(
    options: &Options,
    deployment: &Deployment,
    rate: f64,
    seconds: f64,
    room: &str,
    live_sample: Option<usize>,
) -> Measured {
    let size = fanout::Size {
        subscribers: options.subscribers,
        messages: ((rate * seconds).round() as u32).max(2),
        rate,
        placement: Placement::SecondNode,
        live_sample,
    };
    let outcome = match fanout::run_in(deployment, size, room).await {
        Ok(outcome) => outcome,
        Err(error) => Outcome::failed(deployment.kind, &deployment.version, &error),
    };
    let trail = outcome.trail_ms.unwrap_or(f64::INFINITY);
    let exact = outcome.correctness.is_exact() && outcome.correctness.expected > 0;
    let (kept_up, verdict) = if let Some(failure) = &outcome.failure {
        (false, format!("failed: {failure}"))
    } else if !exact {
        (
            false,
            format!("not every message arrived once and in order: {:?}", outcome.correctness),
        )
    } else if trail > options.keep_up_ms {
        (
            false,
            format!("fell behind: the last delivery trailed the last publish by {trail:.0} ms"),
        )
    } else {
        let latency = outcome.latency_ms.unwrap_or_default();
        (
            true,
            format!(
                "kept up: p50 {:.1} ms, p99 {:.1} ms, trail {trail:.0} ms, generator {:.0}% of a core",
                latency.p50,
                latency.p99,
                generator_share(&outcome) * 100.0
            ),
        )
    };
    let (floor_ms, free_cores) = cpu_floor(&outcome, options.subscribers);
    Measured {
        rate,
        kept_up,
        verdict,
        floor_ms,
        free_cores,
        outcome,
    }
}

/// The generator's CPU over the window, in cores.
fn generator_share(outcome: &Outcome) -> f64 {
    if outcome.window_seconds > 0.0 {
        outcome.generator_cpu.total() / outcome.window_seconds
    } else {
        0.0
    }
}

/// The median subscriber's latency if the receiving node (node 2) spent
/// only its CPU per delivery on the deliveries ahead of it, on the cores
/// the generator, node 1 and Redis left free: (floor ms, free cores).
fn cpu_floor(outcome: &Outcome, subscribers: usize) -> (Option<f64>, Option<f64>) {
    let (Some(receiving), true) = (outcome.each_node_cpu.get(1), outcome.deliveries > 0) else {
        return (None, None);
    };
    if outcome.window_seconds <= 0.0 {
        return (None, None);
    }
    let cores = std::thread::available_parallelism().map_or(1.0, |cores| cores.get() as f64);
    let others = outcome.generator_cpu.total()
        + outcome.redis_cpu.total()
        + outcome.each_node_cpu.first().map_or(0.0, |node| node.total());
    let free = (cores - others / outcome.window_seconds).max(0.1);
    let per_delivery = receiving.total() / outcome.deliveries as f64;
    let ahead = subscribers as f64 / 2.0;
    (Some(ahead * per_delivery / free * 1000.0), Some(free))
}

impl SweepReport {
    fn markdown(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "# Fan-out sweep\n");
        let _ = writeln!(
            text,
            "- date: {}\n- machine: {}\n- command: `{}`\n- one room, {} subscribers all on node 2, the publisher on node 1; the generator on {} threads\n",
            self.date, self.machine, self.command, self.subscribers, self.generator_threads
        );
        let _ = writeln!(text, "## Maximum sustainable fan-out rate\n");
        let _ = writeln!(
            text,
            "| system | max deliveries/s | messages/s | generator CPU at max (cores) | node 2 µs per delivery at max (user + system) | first step that did not keep up |"
        );
        let _ = writeln!(text, "|{}", " --- |".repeat(6));
        for sweep in &self.sweeps {
            let at_max = sweep
                .steps
                .iter()
                .find(|step| Some(step.rate) == sweep.max_rate && step.kept_up);
            let failed = sweep
                .steps
                .iter()
                .find(|step| !step.kept_up)
                .map_or("none (raise --rates)".to_owned(), |step| {
                    format!("{} messages/s: {}", step.rate, step.verdict)
                });
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} |",
                sweep.system.label(),
                sweep.max_rate.map_or("–".to_owned(), |rate| format!(
                    "{:.0}",
                    rate * self.subscribers as f64
                )),
                sweep.max_rate.map_or("–".to_owned(), |rate| format!("{rate}")),
                at_max.map_or("–".to_owned(), |step| format!(
                    "{:.2}",
                    generator_share(&step.outcome)
                )),
                at_max.map_or("–".to_owned(), |step| node_cell(&step.outcome, 1)),
                failed
            );
        }
        let _ = writeln!(text, "\nEvery step:\n");
        write_table(&mut text, self.sweeps.iter().flat_map(|sweep| sweep.steps.iter()));
        for point in &self.points {
            let _ = writeln!(
                text,
                "\n## {}% of chat-relay's maximum: {:.1} messages/s, {:.0} deliveries/s\n",
                point.percent,
                point.rate,
                point.rate * self.subscribers as f64
            );
            write_table(&mut text, point.results.iter());
            if let Some(relay) = point.results.first() {
                for other in &point.results[1..] {
                    let per_cpu =
                        |measured: &Measured| measured.outcome.cpu_seconds_per_million_deliveries.map(|cpu| 1e6 / cpu);
                    let p99 = |measured: &Measured| measured.outcome.latency_ms.map(|latency| latency.p99);
                    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                        _ => "–".to_owned(),
                    };
                    let _ = writeln!(
                        text,
                        "- vs {}: deliveries per node CPU second {}, p99 {}",
                        other.outcome.system.label(),
                        ratio(per_cpu(relay), per_cpu(other)),
                        ratio(p99(relay), p99(other)),
                    );
                }
            }
        }
        if !self.below_saturation.is_empty() {
            let _ = writeln!(
                text,
                "\n## Latency below saturation: {} of the {} subscribers read live\n\nThe others are read after the last publish and checked as exhaustively; the latency and \"delivered/s\" columns are the live sample's. The CPU floor: the deliveries ahead of the median subscriber ({}) times node 2's CPU per delivery, over the cores the generator, node 1 and Redis left free.\n",
                self.latency_sample,
                self.subscribers,
                self.subscribers / 2
            );
            write_table(&mut text, self.below_saturation.iter());
            let _ = writeln!(text, "\np50 against the CPU floor:\n");
            for row in &self.below_saturation {
                if let (Some(latency), Some(floor)) = (row.outcome.latency_ms, row.floor_ms) {
                    let _ = writeln!(
                        text,
                        "- {} at {:.0} deliveries/s: p50 {:.1} ms, floor {:.1} ms: {:.2}x",
                        row.outcome.system.label(),
                        row.outcome.offered_deliveries_per_second,
                        latency.p50,
                        floor,
                        latency.p50 / floor
                    );
                }
            }
        }
        text
    }
}

/// Node `index`'s CPU per delivery: "total (user + system)" in µs.
fn node_cell(outcome: &Outcome, index: usize) -> String {
    match outcome.each_node_cpu.get(index) {
        Some(node) if outcome.deliveries > 0 => {
            let per = 1e6 / outcome.deliveries as f64;
            format!(
                "{:.2} ({:.2} + {:.2})",
                node.total() * per,
                node.user * per,
                node.system * per
            )
        }
        _ => "–".to_owned(),
    }
}

fn write_table<'a>(text: &mut String, rows: impl Iterator<Item = &'a Measured>) {
    let _ = writeln!(
        text,
        "| system | offered deliveries/s | delivered/s | kept up | p50 ms | p90 ms | p99 ms | max ms | CPU floor ms | nodes µs per delivery (user + system) | node 2 µs per delivery (user + system) | deliveries per node CPU s | generator CPU (cores) | free cores | lost / doubled / out of order |"
    );
    let _ = writeln!(text, "|{}", " --- |".repeat(15));
    for row in rows {
        let outcome = &row.outcome;
        let latency = outcome.latency_ms;
        let ms = |value: Option<f64>| value.map_or("–".to_owned(), |value| format!("{value:.1}"));
        let nodes = report::cpu_cell(outcome);
        let _ = writeln!(
            text,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} / {} / {} |",
            outcome.system.label(),
            outcome.offered_deliveries_per_second,
            outcome.deliveries_per_second,
            if row.kept_up { "yes" } else { "no" },
            ms(latency.map(|l| l.p50)),
            ms(latency.map(|l| l.p90)),
            ms(latency.map(|l| l.p99)),
            ms(latency.map(|l| l.max)),
            ms(row.floor_ms),
            nodes,
            node_cell(outcome, 1),
            outcome
                .cpu_seconds_per_million_deliveries
                .map_or("–".to_owned(), |cpu| format!("{:.0}", 1e6 / cpu)),
            generator_share(outcome),
            row.free_cores.map_or("–".to_owned(), |free| format!("{free:.2}")),
            outcome.correctness.lost,
            outcome.correctness.duplicated,
            outcome.correctness.out_of_order,
        );
    }
}
