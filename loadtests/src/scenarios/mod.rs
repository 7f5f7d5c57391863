//! The four scenarios, run the same way against every system, and the
//! subscriber loop they share: read, account every delivery, reconnect and
//! resume when told to.

pub mod fanout;
pub mod idle;
pub mod rooms;
pub mod storm;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use crate::client::{Publisher, Resume, Subscriber, now_us, payload_json};
use crate::ledger::{Correctness, SubscriberLedger};
use crate::systems::{CpuTimes, Endpoint, SystemKind};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// The nodes' RSS over an idle run, MiB.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct RssTrace {
    pub before: f64,
    pub open: f64,
    pub closed: f64,
}

/// Reconnect-storm figures.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct ResumeStats {
    /// Subscribers that lost their node.
    pub disconnected: u64,
    /// Of those, resumed on the other node.
    pub resumed: u64,
    /// Seconds from the kill until the last one resumed.
    pub all_resumed_s: f64,
    /// Median seconds from the kill to a resume.
    pub p50_resume_s: f64,
}

/// One system's result in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub system: SystemKind,
    pub version: String,
    pub connections: u64,
    pub published: u64,
    pub deliveries: u64,
    pub seconds: f64,
    pub deliveries_per_second: f64,
    pub node_cpu_seconds: f64,
    pub cpu_seconds_per_million_deliveries: Option<f64>,
    /// The nodes' CPU over the measured window, user and system apart.
    pub node_cpu: CpuTimes,
    /// The load generator's own CPU over the same window (all its threads).
    pub generator_cpu: CpuTimes,
    /// Deliveries per second the schedule offered (publishes x subscribers).
    pub offered_deliveries_per_second: f64,
    /// Each node's CPU over the window (fan-out), in node order.
    pub each_node_cpu: Vec<CpuTimes>,
    /// The shared Redis's CPU over the window (fan-out).
    pub redis_cpu: CpuTimes,
    /// Seconds from the first measured publish to the last delivery.
    pub window_seconds: f64,
    /// How long the last delivery trailed the last publish, ms (fan-out).
    pub trail_ms: Option<f64>,
    pub latency_ms: Option<Percentiles>,
    pub rss_per_connection_kib: Option<f64>,
    /// The nodes' RSS before the idle connections, with them open, and
    /// after they all closed (MiB).
    pub rss_mib: Option<RssTrace>,
    pub resume: Option<ResumeStats>,
    pub correctness: Correctness,
    /// Why the run did not complete (a node crashed, a connection failed).
    pub failure: Option<String>,
    /// The latency distribution: (milliseconds, fraction of deliveries at
    /// or below), denser in the tail; the chart is drawn from it.
    pub latency_cdf: Vec<(f64, f64)>,
}

impl Outcome {
    pub fn new(system: SystemKind, version: &str) -> Self {
        Self {
            system,
            version: version.to_owned(),
            connections: 0,
            published: 0,
            deliveries: 0,
            seconds: 0.0,
            deliveries_per_second: 0.0,
            node_cpu_seconds: 0.0,
            cpu_seconds_per_million_deliveries: None,
            node_cpu: CpuTimes::default(),
            generator_cpu: CpuTimes::default(),
            offered_deliveries_per_second: 0.0,
            each_node_cpu: Vec::new(),
            redis_cpu: CpuTimes::default(),
            window_seconds: 0.0,
            trail_ms: None,
            latency_ms: None,
            rss_per_connection_kib: None,
            rss_mib: None,
            resume: None,
            correctness: Correctness::default(),
            failure: None,
            latency_cdf: Vec::new(),
        }
    }

    /// The outcome of a run that did not complete.
    pub fn failed(system: SystemKind, version: &str, error: &anyhow::Error) -> Self {
        Self {
            failure: Some(format!("{error:#}")),
            ..Self::new(system, version)
        }
    }

    /// Records the CPU the nodes and the generator spent over the measured
    /// window (call after the deliveries are counted).
    pub fn set_cpu(&mut self, nodes: CpuTimes, generator: CpuTimes) {
        self.node_cpu = nodes;
        self.node_cpu_seconds = nodes.total();
        self.generator_cpu = generator;
        if self.deliveries > 0 {
            self.cpu_seconds_per_million_deliveries = Some(nodes.total() * 1e6 / self.deliveries as f64);
        }
    }

    /// Node CPU per delivery in microseconds: (user, system).
    pub fn us_per_delivery(&self) -> Option<(f64, f64)> {
        (self.deliveries > 0).then(|| {
            let per = 1e6 / self.deliveries as f64;
            (self.node_cpu.user * per, self.node_cpu.system * per)
        })
    }

    pub fn set_latency(&mut self, histogram: &Histogram<u64>) {
        if histogram.is_empty() {
            return;
        }
        self.latency_ms = Some(Percentiles::of(histogram));
        self.latency_cdf = histogram
            .iter_quantiles(5)
            .map(|step| (step.value_iterated_to() as f64 / 1000.0, step.quantile_iterated_to()))
            .collect();
    }
}

/// Shared counters the progress bar reads.
#[derive(Default)]
pub struct Progress {
    pub deliveries: AtomicU64,
    /// `now_us` of the newest delivery.
    pub last_delivery_us: AtomicU64,
    /// Subscribers that received a warm-up message.
    pub warmed: AtomicU64,
}

/// Publisher id of warm-up messages, which are never counted.
pub const WARM_UP_PUBLISHER: u32 = u32::MAX;

/// How long warming up may take before the run is called off.
const WARM_UP_LIMIT: Duration = Duration::from_secs(60);

/// Publishes warm-up messages into `rooms` (one each per round, a round a
/// second) until every one of `subscribers` got one. Measuring starts only
/// then, with every subscription proven live: systems that subscribe to
/// their broker lazily (Nchan) or propagate joins across nodes
/// (Socket.IO) are not charged for messages sent before that.
pub async fn warm_up(
    publisher: &mut Publisher,
    rooms: &[String],
    subscribers: u64,
    progress: &Progress,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut round = 0;
    while progress.warmed.load(Ordering::Relaxed) < subscribers {
        if started.elapsed() > WARM_UP_LIMIT {
            anyhow::bail!(
                "only {} of {subscribers} subscribers received a message within {WARM_UP_LIMIT:?}: the system under test does not deliver",
                progress.warmed.load(Ordering::Relaxed)
            );
        }
        for room in rooms {
            publisher.publish(room, &payload_json(WARM_UP_PUBLISHER, round)).await?;
        }
        publisher.finish().await?;
        round += 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while progress.warmed.load(Ordering::Relaxed) < subscribers && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Where a subscriber goes when its connection drops.
#[derive(Clone)]
pub struct Failover {
    pub endpoint: Endpoint,
    /// Set by the scenario when it kills the node.
    pub killed_at: Arc<std::sync::OnceLock<Instant>>,
}

/// What one subscriber saw.
pub struct SubscriberReport {
    pub ledger: SubscriberLedger,
    pub latency: Histogram<u64>,
    /// Disconnected, then resumed after this long (from the kill).
    pub resumed_after: Option<Option<Duration>>,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The reader tasks of one run: one per subscriber, each accounting every
/// delivery until it has everything it expects or is told to stop.
pub struct Readers {
    tasks: Vec<tokio::task::JoinHandle<SubscriberReport>>,
    stop: watch::Sender<bool>,
    /// Released by `finish`: readers held after their warm-up read on.
    release: watch::Sender<bool>,
    pub progress: Arc<Progress>,
}

/// Whether a reader reads (and times) its deliveries as they come, or only
/// after the last publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Live,
    /// Reads its warm-up message, then nothing until the last publish;
    /// then checks everything (every message once, in order), untimed.
    /// The kernel holds what arrives meanwhile, so a small live sample
    /// times delivery without the generator's own reading in the way.
    AfterwardOnly,
}

impl Readers {
    pub fn new() -> Self {
        Self {
            tasks: Vec::new(),
            stop: watch::channel(false).0,
            release: watch::channel(false).0,
            progress: Arc::new(Progress::default()),
        }
    }

    /// Reads `subscriber` into `ledger`; on a lost connection, resumes
    /// through `failover` if given.
    pub fn spawn(
        &mut self,
        subscriber: Subscriber,
        ledger: SubscriberLedger,
        room: String,
        resume: Resume,
        failover: Option<Failover>,
    ) {
        self.spawn_reading(subscriber, ledger, room, resume, failover, Reading::Live);
    }

    fn spawn_reading(
        &mut self,
        subscriber: Subscriber,
        ledger: SubscriberLedger,
        room: String,
        resume: Resume,
        failover: Option<Failover>,
        reading: Reading,
    ) {
        let control = ReaderControl {
            progress: self.progress.clone(),
            stop: self.stop.subscribe(),
            release: (reading == Reading::AfterwardOnly).then(|| self.release.subscribe()),
        };
        self.tasks.push(tokio::spawn(read_subscriber(
            subscriber, ledger, room, resume, failover, control,
        )));
    }

    /// Readers for the subscribers of one room, each expecting `messages`
    /// from its single publisher (number 0).
    pub fn of_one_room(
        subscribers: Vec<Subscriber>,
        room: &str,
        messages: u32,
        resume: &Resume,
        failover: Option<&Failover>,
    ) -> Self {
        Self::of_one_room_sampled(subscribers, room, messages, resume, failover, None)
    }

    /// As [`Readers::of_one_room`]; with `live_sample`, only that many
    /// subscribers (spread evenly) read live, the rest afterwards
    /// ([`Reading::AfterwardOnly`]).
    pub fn of_one_room_sampled(
        subscribers: Vec<Subscriber>,
        room: &str,
        messages: u32,
        resume: &Resume,
        failover: Option<&Failover>,
        live_sample: Option<usize>,
    ) -> Self {
        let mut readers = Self::new();
        let every = live_sample.map_or(1, |sample| (subscribers.len() / sample.max(1)).max(1));
        for (index, subscriber) in subscribers.into_iter().enumerate() {
            let reading = if index % every == 0 {
                Reading::Live
            } else {
                Reading::AfterwardOnly
            };
            readers.spawn_reading(
                subscriber,
                SubscriberLedger::expecting([0], messages),
                room.to_owned(),
                resume.clone(),
                failover.cloned(),
                reading,
            );
        }
        readers
    }

    pub fn count(&self) -> u64 {
        self.tasks.len() as u64
    }

    /// Called after the last publish: waits until every reader has what it
    /// expects, or `grace` has passed (then what is missing is lost).
    pub async fn finish(self, grace: Duration) -> anyhow::Result<Vec<SubscriberReport>> {
        let _ = self.release.send(true);
        let stop = self.stop;
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = stop.send(true);
        });
        let mut reports = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            reports.push(task.await?);
        }
        stopper.abort();
        Ok(reports)
    }
}

/// What a reader task is told from outside.
struct ReaderControl {
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
    /// For a reader that reads only afterwards: released after the last
    /// publish.
    release: Option<watch::Receiver<bool>>,
}

async fn read_subscriber(
    mut subscriber: Subscriber,
    mut ledger: SubscriberLedger,
    room: String,
    mut resume: Resume,
    failover: Option<Failover>,
    control: ReaderControl,
) -> SubscriberReport {
    let ReaderControl {
        progress,
        mut stop,
        mut release,
    } = control;
    let afterward = release.is_some();
    let mut latency = new_histogram();
    let mut resumed_after = None;
    let mut warmed = false;
    let event_source = failover.is_some();
    while !ledger.complete() {
        if warmed && let Some(waiting) = release.as_mut() {
            let _ = waiting.wait_for(|released| *released).await;
            release = None;
        }
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            next = subscriber.next() => next,
        };
        match next {
            Ok((payload, position)) if payload.publisher == WARM_UP_PUBLISHER => {
                if !warmed {
                    warmed = true;
                    progress.warmed.fetch_add(1, Ordering::Relaxed);
                }
                if !matches!(position, Resume::Fresh) {
                    resume = position;
                }
            }
            Ok((payload, position)) => {
                let now = now_us();
                ledger.record(&payload);
                if !matches!(position, Resume::Fresh) {
                    resume = position;
                }
                progress.deliveries.fetch_add(1, Ordering::Relaxed);
                // Only live readers time deliveries and say when the last came.
                if !afterward {
                    latency.saturating_record(now.saturating_sub(payload.sent_us).max(1));
                    progress.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                }
            }
            Err(_) => {
                let Some(failover) = &failover else { break };
                if resumed_after.is_some() {
                    break;
                }
                let mut reconnected = None;
                while !*stop.borrow() {
                    if let Ok(fresh) = Subscriber::connect(&failover.endpoint, &room, &resume, event_source).await {
                        reconnected = Some(fresh);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let Some(fresh) = reconnected else {
                    resumed_after = Some(None);
                    break;
                };
                subscriber = fresh;
                resumed_after = Some(failover.killed_at.get().map(Instant::elapsed));
            }
        }
    }
    SubscriberReport {
        ledger,
        latency,
        resumed_after,
    }
}

/// Connects `count` subscribers, `connect(index)` each, at most 100 at a
/// time.
pub async fn connect_many<F, Fut, T>(count: usize, connect: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut results: Vec<(usize, T)> = futures_util::stream::iter(0..count)
        .map(|index| {
            let attempt = connect(index);
            async move { attempt.await.map(|value| (index, value)) }
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    results.sort_by_key(|(index, _)| *index);
    Ok(results.into_iter().map(|(_, value)| value).collect())
}

/// A progress bar of deliveries, drawn on a terminal only.
pub fn progress_bar(label: &str, total: u64, progress: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>28} {bar:40} {pos}/{len} deliveries {per_sec}")
            .expect("valid template"),
    );
    bar.set_prefix(label.to_owned());
    tokio::spawn(async move {
        loop {
            let done = progress.deliveries.load(Ordering::Relaxed);
            bar.set_position(done);
            if done >= total {
                bar.finish_and_clear();
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Merges subscriber reports into an outcome.
pub fn merge_reports(outcome: &mut Outcome, reports: Vec<SubscriberReport>) -> Histogram<u64> {
    let mut latency = new_histogram();
    let mut resumes = Vec::new();
    let mut disconnected = 0;
    for report in reports {
        outcome.correctness.add(report.ledger.tally());
        outcome.deliveries += report.ledger.received();
        let _ = latency.add(&report.latency);
        if let Some(resumed) = report.resumed_after {
            disconnected += 1;
            if let Some(after) = resumed {
                resumes.push(after.as_secs_f64());
            }
        }
    }
    if disconnected > 0 {
        resumes.sort_by(f64::total_cmp);
        outcome.resume = Some(ResumeStats {
            disconnected,
            resumed: resumes.len() as u64,
            all_resumed_s: resumes.last().copied().unwrap_or(0.0),
            p50_resume_s: resumes.get(resumes.len() / 2).copied().unwrap_or(0.0),
        });
    }
    latency
}
